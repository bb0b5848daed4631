"""TFRecord shards of a split: each frame's JPEG bytes and labels, read back by tf.data.

    write_shards(index, out, shards, view)      out/<split>-00000-of-00008.tfrecord, ...,
                                                out/metadata.json (written last)
    shard_dataset(folder, tasks, ...)           (images, {task: labels}) batches, the
                                                elements of `pipeline.frame_dataset`
    shard_labels(folder, tasks)                 the labels `shard_dataset` yields, unshuffled
    shard_frames(folder)                        `video`, `frame` of each record, unshuffled
    shard_command(data, edition, split, out)    `affectkit shard`: index a split, write it

One record (`tf.train.Example`) per frame that the frame pipeline yields for the view
(`missing_images="skip"`: the frame's own image; `"fill"`: every frame with an image to
read, the nearest frame's when its own is absent):

    image        bytes       the JPEG file exactly as stored on disk (no re-encoding)
    video        bytes       video name (UTF-8)
    frame        int64       frame number (1-based)
    image_frame  int64       the frame whose JPEG `image` is (`frame` itself unless filled)
    height, width int64      the JPEG's size, from its header
    va           2 x float   valence, arousal (-5 missing)
    expr         int64       expression (-1 missing)
    au           K x int64   one per AU of the schema (-1 missing)

Shards hold whole videos, in index order (video, then frame), cut where the frame counts
are most even (the smallest possible largest shard, then cuts near equal shares), so
reading the shards one after the other gives the rows of the index: `shard_dataset`
without `training` yields exactly `frame_dataset`'s elements (same decode, resize and
normalisation), read by one `TFRecordDataset` over the file list in order. Training
shuffles the shard files (seeded, each epoch), interleaves them and shuffles records in a
buffer. The file list is the dataset's source, so
`tf.distribute` shards it by file (`AutoShardPolicy.FILE`, set on the dataset): write at
least as many shards as workers. Under `distribute_datasets_from_function`, pass the
`tf.distribute.InputContext`: pipeline i reads the shard files i, i + n, ...

Writing is resumable: the plan (`plan.json`: which videos go where, a fingerprint of the
frames and labels) is written first, each shard is written to `<name>.partial` and renamed
when complete, and `metadata.json` is written last. A rerun skips the shards already
renamed and refuses a folder written for other frames, labels or settings.
"""

import datetime
import hashlib
import json
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

from affectkit.data.affwild2 import FrameIndex, view_columns
from affectkit.data.augmentation import augment_batch, augmentation_spec, batch_seeds
from affectkit.data.pipeline import (NORMALIZATIONS, TASKS, _apply_augment, _check_choice,
                                     _check_tasks, _fused_normalizer, _image_hw, _image_paths,
                                     _row_mask)
from affectkit.labels import get_schema

FORMAT = "affectkit-frame-shards-1"
METADATA_FILE = "metadata.json"
PLAN_FILE = "plan.json"
PARTIAL_SUFFIX = ".partial"
ANNOTATIONS = ("auto", "mtl", "per_task")
# `shards=None`: about this many bytes of JPEGs per shard, at least `MIN_AUTO_SHARDS` shards
# (when there are that many videos), so that several workers and the training interleave
# each get files.
SHARD_BYTES = 128 * 2**20
MIN_AUTO_SHARDS = 8
# Read-ahead of each shard reader (TensorFlow's default, 256 KiB, costs a third more CPU
# time per record in read calls).
READ_BUFFER_BYTES = 4 * 2**20
# The plan's keys that a rerun must match to resume (the rest says who wrote it and when).
_PLAN_KEYS = ("format", "split", "edition", "aus", "view", "missing_images", "fingerprint",
              "frames", "videos", "shards")
_SHARD_NAME = re.compile(r"^.+-\d{5}-of-\d{5}\.tfrecord(\.partial)?$")


# ------------------------------------------------------------------------- plan


def shard_file_name(split, shard, shards):
    """`<split>-00003-of-00008.tfrecord` (`frames-...` without a split)."""
    return f"{split or 'frames'}-{shard:05d}-of-{shards:05d}.tfrecord"


def balanced_cuts(counts, parts):
    """Cuts of consecutive items with `counts` into `parts` non-empty runs, as even as possible.

    The largest run is the smallest possible (binary search on it, greedy check); each cut
    is then put near an equal share of what is left, keeping that bound.

    Returns:
        list of `parts + 1` item positions, from 0 to `len(counts)`.
    """
    counts = np.asarray(counts, np.int64)
    n = len(counts)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} videos into {parts} shards: a video's frames stay "
                         f"in one shard, so expected 1 <= shards <= {n}.")
    cum = np.concatenate([[0], np.cumsum(counts)])

    def last_end(start, cap):  # the furthest end of a run from `start` holding <= cap
        return int(np.searchsorted(cum, cum[start] + cap, side="right")) - 1

    def runs_needed(start, cap):
        runs = 0
        while start < n:
            start, runs = last_end(start, cap), runs + 1
        return runs

    low, high = int(counts.max()), int(cum[-1])
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if runs_needed(0, middle) <= parts else (middle + 1, high)
    cap = low
    cuts, start = [0], 0
    for left in range(parts, 1, -1):  # runs left, this one included
        furthest = min(last_end(start, cap), n - (left - 1))
        target = cum[start] + (cum[-1] - cum[start]) / left
        near = int(np.searchsorted(cum, target))
        candidates = sorted({e for e in (near - 1, near) if start < e <= furthest},
                            key=lambda e: abs(cum[e] - target))
        end = next((e for e in candidates if runs_needed(e, cap) <= left - 1), furthest)
        cuts.append(end)
        start = end
    cuts.append(n)
    return cuts


def _records(index, view, missing_images):
    """Rows (positions in `index.frames`) that become records, and their JPEG paths."""
    mask = _row_mask(index, missing_images, view)
    if not mask.any():
        raise ValueError(
            f"Nothing to shard: none of the {len(mask)} frames of the index has an image in "
            f"the {view!r} view with missing_images={missing_images!r}; expected an index of "
            "frames with JPEGs (FrameIndex.from_affwild2 / from_mtl on a folder with "
            f"{view_columns(view).has_image!r} frames).")
    return np.flatnonzero(mask), list(_image_paths(index, view, mask))


def _video_runs(videos, frames):
    """`(names, starts)` of the runs of equal video names; raises unless each video is one
    run with increasing frame numbers (the order of `FrameIndex` constructors)."""
    change = np.flatnonzero(videos[1:] != videos[:-1]) + 1
    starts = np.concatenate([[0], change])
    names = videos[starts]
    if len(set(names.tolist())) != len(names):
        seen = {}
        for name, start in zip(names.tolist(), starts.tolist()):
            if name in seen:
                raise ValueError(
                    f"Index rows are not grouped by video: {name!r} appears at record {seen[name]} "
                    f"and again at {start}; expected rows sorted by video then frame (as "
                    "FrameIndex constructors sort them).")
            seen[name] = start
    same = videos[1:] == videos[:-1]
    bad = np.flatnonzero(same & (frames[1:] <= frames[:-1]))
    if len(bad):
        raise ValueError(
            f"Index rows of video {videos[bad[0]]!r} are not in frame order (frame "
            f"{frames[bad[0] + 1]} after {frames[bad[0]]}); expected rows sorted by video then "
            "frame, each frame once.")
    return names.tolist(), starts


def _relative_paths(paths, root):
    if root is None:
        return list(paths)
    prefix = os.path.join(root, "")
    cut = len(prefix)
    return [p[cut:] if p.startswith(prefix) else os.path.relpath(p, root) for p in paths]


def _fingerprint(index, rows, paths, view, missing_images):
    """sha256 of what the records hold except the JPEG bytes: names, numbers, labels, the
    JPEG paths relative to the index root."""
    frames = index.frames.iloc[rows]
    digest = hashlib.sha256()
    digest.update(json.dumps([index.schema.edition, list(index.schema.aus), view,
                              missing_images]).encode())
    digest.update("\0".join(frames["video"].astype(str).tolist()).encode())
    digest.update("\0".join(_relative_paths(paths, index.root)).encode())
    digest.update(frames["frame"].to_numpy(np.int64).tobytes())
    for values in index.labels(TASKS).values():
        digest.update(np.ascontiguousarray(values[rows]).tobytes())
    return digest.hexdigest()


def _auto_shards(paths, videos):
    """About `SHARD_BYTES` of JPEGs per shard (sizes of up to 256 files spread over `paths`),
    at least `MIN_AUTO_SHARDS`, at most one per video."""
    picks = np.unique(np.linspace(0, len(paths) - 1, min(256, len(paths))).astype(int))
    mean = np.mean([_file_size(paths[i]) for i in picks])
    wanted = max(MIN_AUTO_SHARDS, int(np.ceil(mean * len(paths) / SHARD_BYTES)))
    return min(wanted, videos)


def _file_size(path):
    try:
        return os.path.getsize(path)
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read this frame's JPEG ({error.strerror}); "
                                "expected the image file the index points to.") from None


def _plan(index, view, missing_images, shards, split):
    rows, paths = _records(index, view, missing_images)
    frames = index.frames
    videos = frames["video"].to_numpy()[rows].astype(str)
    numbers = frames["frame"].to_numpy(np.int64)[rows]
    names, starts = _video_runs(videos, numbers)
    counts = np.diff(np.concatenate([starts, [len(rows)]]))
    if shards is None:
        shards = _auto_shards(paths, len(names))
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ValueError(f"shards={shards!r}: expected a positive integer (or None: about "
                         f"{SHARD_BYTES // 2**20} MiB per shard).")
    cuts = balanced_cuts(counts, int(shards))
    plan_videos, plan_shards = [], []
    for shard, (first, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
        for v in range(first, stop):
            start = starts[v]
            plan_videos.append({"video": names[v], "frames": int(counts[v]), "shard": shard,
                                "first_frame": int(numbers[start]),
                                "last_frame": int(numbers[start + counts[v] - 1])})
        plan_shards.append({"file": shard_file_name(split, shard, int(shards)),
                            "records": int(counts[first:stop].sum()),
                            "videos": int(stop - first)})
    plan = {
        "format": FORMAT,
        "split": split,
        "edition": index.schema.edition,
        "aus": list(index.schema.aus),
        "view": view,
        "missing_images": missing_images,
        "fingerprint": _fingerprint(index, rows, paths, view, missing_images),
        "frames": int(len(rows)),
        "videos": plan_videos,
        "shards": plan_shards,
    }
    return plan, rows, paths, cuts, starts


# ------------------------------------------------------------------------ write


def _jpeg_size(data, path):
    """`(height, width)` from a JPEG's frame header (SOF marker); raises naming `path`."""
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"{path}: not a JPEG file (it does not start with the JPEG marker "
                         "FF D8); expected the frame's JPEG image.")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            break
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 <= n:
                height = int.from_bytes(data[i + 5:i + 7], "big")
                width = int.from_bytes(data[i + 7:i + 9], "big")
                if height and width:
                    return height, width
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise ValueError(f"{path}: no valid JPEG frame header (truncated or corrupt file); "
                     "expected a complete JPEG image.")


def _read_jpeg_bytes(path):
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read this frame's JPEG ({error.strerror}); "
                                "expected the image file the index points to.") from None
    return data, _jpeg_size(data, path)


class _RecordEncoder:
    """Serializes one frame's `tf.train.Example`, refilling one message (5x faster than
    building a new one per frame)."""

    _BYTES = ("image", "video")
    _INTS = ("frame", "image_frame", "height", "width", "expr", "au")

    def __init__(self):
        self.example = tf.train.Example()
        feature = self.example.features.feature
        self.values = {name: feature[name].bytes_list.value for name in self._BYTES}
        self.values.update({name: feature[name].int64_list.value for name in self._INTS})
        self.values["va"] = feature["va"].float_list.value

    def __call__(self, data, size, video, frame, image_frame, va, expr, au):
        values = self.values
        values["image"][:] = [data]
        values["video"][:] = [video.encode()]
        values["frame"][:] = [frame]
        values["image_frame"][:] = [image_frame]
        values["height"][:] = [size[0]]
        values["width"][:] = [size[1]]
        values["va"][:] = va
        values["expr"][:] = [expr]
        values["au"][:] = au
        return self.example.SerializeToString()


def _write_json(path, content):
    partial = path + PARTIAL_SUFFIX
    with open(partial, "w") as file:
        json.dump(content, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def _read_json(path):
    try:
        with open(path) as file:
            return json.load(file)
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); expected the shard metadata that "
                         "write_shards writes.") from None


def _mismatch(path, old, new):
    """A sentence naming the first plan key where `old` (a file) and `new` differ, or None."""
    def planned(plan, key):  # a finished shard's entry also has its `bytes`
        value = plan.get(key)
        if key == "shards" and isinstance(value, list):
            value = [{k: v for k, v in s.items() if k != "bytes"} for s in value]
        return value

    for key in _PLAN_KEYS:
        if planned(old, key) != planned(new, key):
            if key in ("videos", "shards"):
                layout = (f"{len(old.get('shards', []))} shards over "
                          f"{len(old.get('videos', []))} videos")
                what = (f"{layout}, this call {len(new['shards'])} shards over "
                        f"{len(new['videos'])} videos")
                if what.startswith(layout + ", this call " + layout):
                    what = "another assignment of videos to shards"
            elif key == "fingerprint":
                what = "other frames, labels or image paths than this index"
            else:
                what = f"{key}={old.get(key)!r}, this call {key}={new[key]!r}"
            return (f"{path} was written for {what}; expected a new folder for these shards "
                    "(or overwrite=True, `affectkit shard --overwrite`, to replace them).")
    return None


def _prepare_folder(out, plan, overwrite):
    """Checks `out` against `plan` and writes `plan.json`; returns the finished metadata when
    the folder already holds these shards, else None."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"{out}: exists and is not a folder; expected a folder for "
                                 "the shards.")
    os.makedirs(out, exist_ok=True)
    ours = sorted(n for n in os.listdir(out)
                  if _SHARD_NAME.match(n) or n in (METADATA_FILE, PLAN_FILE)
                  or n in (METADATA_FILE + PARTIAL_SUFFIX, PLAN_FILE + PARTIAL_SUFFIX))
    if overwrite:
        for name in ours:
            os.remove(os.path.join(out, name))
        ours = []
    for name in (METADATA_FILE, PLAN_FILE):
        path = os.path.join(out, name)
        if name in ours:
            problem = _mismatch(path, _read_json(path), plan)
            if problem:
                raise ValueError(problem)
            if name == METADATA_FILE:
                metadata = _read_json(path)
                done = all(os.path.isfile(os.path.join(out, s["file"]))
                           for s in metadata["shards"])
                if done:
                    if PLAN_FILE in ours:  # stopped between the metadata and this removal
                        os.remove(os.path.join(out, PLAN_FILE))
                    return metadata
            break
    else:
        shard_files = [n for n in ours if _SHARD_NAME.match(n)]
        if shard_files:
            raise ValueError(
                f"{out}: holds shard files ({shard_files[0]}, ...) but no {METADATA_FILE} or "
                f"{PLAN_FILE} saying what they are; expected an empty folder or one written "
                "by write_shards (or overwrite=True, `affectkit shard --overwrite`, to replace them).")
    _write_json(os.path.join(out, PLAN_FILE), plan)
    return None


def _write_shard(path, items, progress):
    """Writes the serialized records of `items` to `path + ".partial"`, then renames it."""
    partial = path + PARTIAL_SUFFIX
    sizes = {}
    count = 0
    with tf.io.TFRecordWriter(partial) as writer:
        for record, size in items:
            writer.write(record)
            sizes[size] = sizes.get(size, 0) + 1
            count += 1
            if count % 256 == 0:
                progress.add(256)
    progress.add(count % 256)
    with open(partial, "rb") as file:
        os.fsync(file.fileno())
    os.replace(partial, path)
    return count, sizes


def _shard_sizes(path):
    """`(records, {(height, width): frames})` of a finished shard file."""
    features = {"height": tf.io.FixedLenFeature([], tf.int64),
                "width": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(path).batch(4096)
    sizes, count = {}, 0
    for part in ds.map(lambda s: tf.io.parse_example(s, features)).as_numpy_iterator():
        for size in zip(part["height"].tolist(), part["width"].tolist()):
            sizes[size] = sizes.get(size, 0) + 1
        count += len(part["height"])
    return count, sizes


def write_shards(index, out, shards=None, view="aligned", split=None, missing_images="skip",
                 overwrite=False, verbose=False, created_by=None):
    """Writes the frames of `index` with an image in `view` as TFRecord shards.

    Args:
        index: `affectkit.data.affwild2.FrameIndex`, rows sorted by video then frame.
        out: folder for `<split>-00000-of-0000N.tfrecord` and `metadata.json`; one split
            per folder.
        shards: number of shard files (at most the number of videos); `None`: about 128 MiB
            of JPEGs each, at least 8.
        view: `"aligned"` or `"cropped"`.
        split: name of the split (`"train"`, `"val"`), used in the file names.
        missing_images: the frames to write, as in `frame_dataset`: `"skip"` (frames with
            their own image) or `"fill"` (also frames filled from the nearest image; build
            the index with `fill_missing_images=True`).
        overwrite: replace shard files already in `out` instead of resuming.
        verbose: show a progress bar over the frames.
        created_by: JSON-able dict stored in the metadata (e.g. the command line).

    Returns:
        The metadata dict (also `out/metadata.json`): `format`, `split`, `edition`, `aus`,
        `view`, `missing_images`, `fingerprint`, `frames`, `videos` (per video: `video`,
        `frames`, `shard`, `first_frame`, `last_frame`), `shards` (per shard: `file`,
        `records`, `videos`, `bytes`), `image_sizes` (`[height, width, frames]`), `label_markers`,
        `tasks`, `created_by` (what made it, from where, when) and `skipped` (shards already
        finished by an earlier call).

    Example:
    >>> index = FrameIndex.from_mtl("/data/affwild2", "abaw3", "train")  # doctest: +SKIP
    >>> write_shards(index, "/data/shards/train", shards=64, split="train")  # doctest: +SKIP
    """
    if not isinstance(index, FrameIndex):
        raise TypeError(f"write_shards: index must be a FrameIndex, got {type(index)}.")
    view_columns(view)
    _check_choice("missing_images", missing_images, ("skip", "fill"))
    out = os.path.abspath(os.fspath(out))
    started = time.time()
    plan, rows, paths, cuts, starts = _plan(index, view, missing_images, shards, split)
    finished = _prepare_folder(out, plan, overwrite)
    if finished is not None:
        return dict(finished, skipped=len(finished["shards"]))

    frames = index.frames
    videos = frames["video"].to_numpy()[rows].astype(str)
    numbers = frames["frame"].to_numpy(np.int64)[rows].tolist()
    used = frames[view_columns(view).image_frame].to_numpy(np.int64)[rows].tolist()
    labels = index.labels(TASKS)
    va = labels["va"][rows].tolist()
    expr = labels["expr"][rows].tolist()
    au = labels["au"][rows].astype(np.int64).tolist()
    bounds = np.concatenate([starts, [len(rows)]])
    progress = keras.utils.Progbar(len(rows), unit_name="frame", verbose=1 if verbose else 0)

    encode = _RecordEncoder()

    def items(first, stop):
        for r in range(first, stop):
            data, size = _read_jpeg_bytes(paths[r])
            yield encode(data, size, videos[r], numbers[r], used[r], va[r], expr[r],
                           au[r]), size

    sizes, skipped = {}, 0
    for shard, entry in enumerate(plan["shards"]):
        path = os.path.join(out, entry["file"])
        first, stop = int(bounds[cuts[shard]]), int(bounds[cuts[shard + 1]])
        if os.path.isfile(path):  # renamed only once complete
            skipped += 1
            count, shard_sizes = _shard_sizes(path)
            progress.add(stop - first)
        else:
            count, shard_sizes = _write_shard(path, items(first, stop), progress)
        if count != entry["records"]:
            raise ValueError(f"{path}: holds {count} records, the plan {entry['records']}; "
                             "expected the shard this plan describes (delete it to rewrite "
                             "it, or overwrite=True).")
        for size, n in shard_sizes.items():
            sizes[size] = sizes.get(size, 0) + n

    import affectkit

    schema = index.schema
    metadata = dict(plan)
    metadata["shards"] = [dict(s, bytes=os.path.getsize(os.path.join(out, s["file"])))
                          for s in plan["shards"]]
    metadata["image_sizes"] = sorted([h, w, n] for (h, w), n in sizes.items())
    metadata["label_markers"] = {"va": float(schema.va_missing),
                                 "expr": int(schema.expr_missing),
                                 "au": int(schema.au_missing)}
    sources = index.sources  # the annotations read, when the index says (None: unknown)
    metadata["tasks"] = None if sources is None else (
        list(TASKS) if "mtl" in sources else [t for t in TASKS if t in sources])
    metadata["created_by"] = {
        "writer": "affectkit.data.shards.write_shards",
        "affectkit": affectkit.__version__,
        "tensorflow": tf.__version__,
        "root": index.root,
        "sources": index.sources,
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3),
        **(created_by or {}),
    }
    _write_json(os.path.join(out, METADATA_FILE), metadata)
    os.remove(os.path.join(out, PLAN_FILE))
    return dict(metadata, skipped=skipped)


# ------------------------------------------------------------------------- read


def read_shard_metadata(folder):
    """The metadata of a finished shard folder, its shard files checked to exist."""
    folder = os.fspath(folder)
    path = os.path.join(folder, METADATA_FILE)
    if not os.path.isfile(path):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: no such shard folder.")
        partial = os.path.isfile(os.path.join(folder, PLAN_FILE))
        raise FileNotFoundError(
            f"{folder}: no {METADATA_FILE}; expected a folder written by write_shards / "
            "`affectkit shard`" + (" (its plan.json says the writing stopped before the end: "
                                   "rerun it to finish)" if partial else "") + ".")
    metadata = _read_json(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: format {metadata.get('format')!r}; expected {FORMAT!r}.")
    for shard in metadata["shards"]:
        file = os.path.join(folder, shard["file"])
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: shard file missing; {path} lists "
                                    f"{len(metadata['shards'])} shards.")
    return metadata


def _shard_files(folder, metadata):
    return [os.path.join(os.fspath(folder), s["file"]) for s in metadata["shards"]]


def _label_features(tasks, num_aus):
    features = {}
    if "va" in tasks:
        features["va"] = tf.io.FixedLenFeature([2], tf.float32)
    if "expr" in tasks:
        features["expr"] = tf.io.FixedLenFeature([], tf.int64)
    if "au" in tasks:
        features["au"] = tf.io.FixedLenFeature([num_aus], tf.int64)
    return features


def _cast_labels(parsed, tasks):
    casts = {"va": tf.float32, "expr": tf.int32, "au": tf.float32}
    return {task: tf.cast(parsed[task], casts[task]) for task in tasks}


def shard_labels(folder, tasks=TASKS):
    """The labels `shard_dataset(folder)` yields, unshuffled (as `pipeline.label_arrays`).

    Reads every record (the JPEG bytes too, not decoded).

    Returns:
        dict task -> NumPy array: `va` (n, 2) float32, `expr` (n,) int32, `au` (n, K)
        float32, missing markers kept.
    """
    tasks = _check_tasks(tasks)
    metadata = read_shard_metadata(folder)
    features = _label_features(tasks, len(metadata["aus"]))
    ds = tf.data.TFRecordDataset(_shard_files(folder, metadata),
                                buffer_size=READ_BUFFER_BYTES).batch(4096)
    ds = ds.map(lambda s: _cast_labels(tf.io.parse_example(s, features), tasks))
    parts = list(ds.as_numpy_iterator())
    return {task: np.concatenate([p[task] for p in parts]) for task in tasks}


def shard_frames(folder):
    """`pandas.DataFrame` of `video`, `frame`, `image_frame` per record, unshuffled (as
    `pipeline.frame_rows`), to put predictions back on frames."""
    import pandas as pd

    metadata = read_shard_metadata(folder)
    features = {"video": tf.io.FixedLenFeature([], tf.string),
                "frame": tf.io.FixedLenFeature([], tf.int64),
                "image_frame": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(_shard_files(folder, metadata),
                                buffer_size=READ_BUFFER_BYTES).batch(4096)
    parts = list(ds.map(lambda s: tf.io.parse_example(s, features)).as_numpy_iterator())
    return pd.DataFrame({
        "video": [v.decode() for p in parts for v in p["video"]],
        "frame": np.concatenate([p["frame"] for p in parts]),
        "image_frame": np.concatenate([p["image_frame"] for p in parts]),
    })


def _decode_jpeg(data, size, resize):
    image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
    if not resize:
        return tf.ensure_shape(image, (*size, 3))
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.saturate_cast(tf.round(image), tf.uint8)


def shard_dataset(folder, tasks=TASKS, batch_size=32, image_size=112, normalization="imagenet",
                  training=False, shuffle_seed=0, augment=None, view=None, missing_images=None,
                  drop_remainder=False, repeat=False, shuffle_buffer=10_000, cycle_length=4,
                  deterministic=True, input_context=None):
    """A batched `tf.data.Dataset` of `(images, {task: labels})` read from TFRecord shards.

    Unshuffled, it yields the elements of `pipeline.frame_dataset` on the index the shards
    were written from, with the same settings, in the same order.

    Args:
        folder: a folder written by `write_shards`.
        tasks, batch_size, image_size, normalization, augment, drop_remainder, repeat,
            deterministic: as in `frame_dataset`. With `input_context`, `batch_size` is the
            batch of this input pipeline (`input_context.get_per_replica_batch_size`).
        training: shuffle (the shard files, then records in a buffer; seeded, a new order
            each epoch) and apply `augment`.
        shuffle_seed: seed of both shuffles and of the augmentation draws.
        view, missing_images: if given, checked against the shards' (fixed when written).
        shuffle_buffer: records in the training shuffle buffer (about one JPEG each).
        cycle_length: shard files read at a time in training.
        input_context: `tf.distribute.InputContext`: read only this pipeline's shard files
            (`distribute_datasets_from_function`). Without it the dataset carries
            `AutoShardPolicy.FILE`, so `tf.distribute` gives each worker its own files.

    Returns:
        `tf.data.Dataset` of `images` `(B, H, W, 3)` float32 and a dict of labels: `va`
        `(B, 2)` float32, `expr` `(B,)` int32, `au` `(B, K)` float32, missing markers kept.

    Example:
    >>> ds = shard_dataset("/data/shards/train", batch_size=64, training=True,
    ...                    augment="phan2022")  # doctest: +SKIP
    """
    tasks = _check_tasks(tasks)
    metadata = read_shard_metadata(folder)
    for name, value in (("view", view), ("missing_images", missing_images)):
        if value is not None and value != metadata[name]:
            raise ValueError(f"{folder}: shards written with {name}={metadata[name]!r}, "
                             f"asked for {name}={value!r}; expected shards of that {name}.")
    if not callable(normalization) and normalization is not None:
        _check_choice("normalization", normalization, NORMALIZATIONS)
    height, width = _image_hw(image_size)
    resize = {(h, w) for h, w, _ in metadata["image_sizes"]} != {(height, width)}
    layer = augment if callable(augment) else None
    spec = None if layer is not None else augmentation_spec(augment)
    augmenting = training and (layer is not None or spec is not None)
    normalize = _fused_normalizer(normalization)
    autotune = tf.data.AUTOTUNE
    features = {"image": tf.io.FixedLenFeature([], tf.string),
                **_label_features(tasks, len(metadata["aus"]))}
    frame_spec = tf.TensorSpec((height, width, 3), tf.uint8)

    files = _shard_files(folder, metadata)
    policy = tf.data.experimental.AutoShardPolicy.FILE
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        if pipelines > len(files):
            raise ValueError(f"{folder}: {len(files)} shard files for {pipelines} input "
                             "pipelines; expected at least one file per pipeline (write more "
                             "shards).")
        files = files[input_context.input_pipeline_id::pipelines]
        policy = tf.data.experimental.AutoShardPolicy.OFF

    def read(file_names):
        return tf.data.TFRecordDataset(file_names, buffer_size=READ_BUFFER_BYTES)

    if training:
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.interleave(read, cycle_length=min(cycle_length, len(files)), block_length=1,
                           num_parallel_calls=autotune, deterministic=deterministic)
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    else:
        # One reader over the file list, in order: no per-record cost of an interleave
        # (a third of the reading CPU time); tf.distribute still shards it by file.
        ds = read(files)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def load_batch(serialized):
        parsed = tf.io.parse_example(serialized, features)
        images = tf.map_fn(lambda data: _decode_jpeg(data, (height, width), resize),
                           parsed["image"], fn_output_signature=frame_spec,
                           parallel_iterations=4)
        return images, _cast_labels(parsed, tasks)

    def finish(images, labels, seed=None):
        if seed is not None:
            images = augment_batch(images, spec, seed)
        elif augmenting:
            images = _apply_augment(layer, tf.cast(images, tf.float32))
        return normalize(images), labels

    def load_and_finish(serialized, seed=None):
        return finish(*load_batch(serialized), seed)

    if augmenting and spec is not None:
        ds = tf.data.Dataset.zip(ds, batch_seeds(shuffle_seed))
        ds = ds.map(load_and_finish, num_parallel_calls=autotune, deterministic=deterministic)
    elif augmenting:  # a Keras layer draws from its seed variable: one batch at a time
        ds = ds.map(load_batch, num_parallel_calls=autotune, deterministic=deterministic)
        ds = ds.map(finish) if deterministic else ds.map(
            finish, num_parallel_calls=autotune, deterministic=False)
    else:
        ds = ds.map(load_and_finish, num_parallel_calls=autotune, deterministic=deterministic)

    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = policy
    return ds.with_options(options).prefetch(autotune)


# ---------------------------------------------------------------------- command


def split_index(data, edition, split, tasks=TASKS, annotations="auto",
                fill_missing_images=False):
    """The `FrameIndex` of a split as `Recipe.index` reads it: `"auto"` takes the MTL file
    where the folder has one, else the per-task folders; `"mtl"` or `"per_task"` only that."""
    from affectkit.data.affwild2 import AnnotationNotFoundError

    _check_choice("annotations", annotations, ANNOTATIONS)
    if annotations in ("auto", "mtl"):
        try:
            return FrameIndex.from_mtl(data, edition, split,
                                       fill_missing_images=fill_missing_images)
        except AnnotationNotFoundError:
            if annotations == "mtl":
                raise
    return FrameIndex.from_affwild2(data, edition, split, tasks=tasks,
                                    fill_missing_images=fill_missing_images)


def shard_command(data, edition, split, out, shards=None, view="aligned", tasks=TASKS,
                  annotations="auto", missing_images="skip", overwrite=False, verbose=True):
    """`affectkit shard`: indexes a split of an Aff-Wild2 folder, writes its shards to `out`
    (resuming an interrupted run) and prints a summary.

    Args:
        data: Aff-Wild2 folder (annotations and `cropped_aligned/` or `cropped/`).
        edition: ABAW edition name (`"abaw3"`, ...).
        split: `"train"` or `"val"`.
        out: folder for this split's shards.
        shards: number of shard files, or None (about 128 MiB each, at least 8).
        view: `"aligned"` or `"cropped"`.
        tasks: tasks of the per-task folders to read (the MTL file holds all three).
        annotations: `"auto"`, `"mtl"` or `"per_task"` (see `split_index`).
        missing_images: `"skip"` or `"fill"` (see `write_shards`).
        overwrite: replace existing shards instead of resuming.
        verbose: progress bar and summary lines.

    Returns:
        The metadata dict of `write_shards`.
    """
    get_schema(edition)  # raises, naming the editions
    if not os.path.isdir(os.fspath(data)):
        raise FileNotFoundError(f"{data}: no such Aff-Wild2 folder.")
    view_columns(view)
    started = time.time()
    index = split_index(data, edition, split, _check_tasks(tasks), annotations,
                        fill_missing_images=missing_images == "fill")
    command = {"command": f"affectkit shard --data {data} --edition {edition} --split {split} "
                          f"--out {out}" + ("" if shards is None else f" --shards {shards}")
                          + ("" if view == "aligned" else f" --view {view}")}
    metadata = write_shards(index, out, shards=shards, view=view, split=split,
                            missing_images=missing_images, overwrite=overwrite,
                            verbose=verbose, created_by=command)
    seconds = time.time() - started
    if verbose:
        megabytes = sum(s["bytes"] for s in metadata["shards"]) / 1e6
        records = [s["records"] for s in metadata["shards"]]
        skipped = metadata["skipped"]
        print(f"{split} of {data} ({metadata['edition']}, {view} view, "
              f"{'MTL file' if 'mtl' in (index.sources or {}) else 'per-task folders'}): "
              f"{metadata['frames']} frames of {len(metadata['videos'])} videos")
        print(f"  {len(records)} shards in {out}, {min(records)}-{max(records)} frames each, "
              f"{megabytes:.1f} MB, {seconds:.1f} s"
              + (f" ({skipped} finished shards kept)" if skipped else ""))
    return metadata
