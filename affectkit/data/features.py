"""The feature cache: a model run once over every frame, its outputs stored per video.

Training a temporal model on windows or segments recomputes nothing when the per-frame
features come from a cache (`affectkit.data.sequences` gathers them with `tf.gather`).

Layout of a cache folder:

    <cache>/manifest.json    format, model, output names and dims, image size, view,
                             normalisation (audio caches: sample rate, bands, window)
    <cache>/<video>.npz      `frames`: int64 (n,) 1-based frame numbers, ascending
                             (frame k is `<video>/<k:05d>.jpg`, line k of an annotation
                             file); one float array (n, dim) per output name;
                             audio caches add `fps` (the source video's frame rate)

Only frames with an image are stored; `FeatureCache.features_for` gives every other frame of
the video the features of its nearest stored frame (ties: the earlier one), as Liu et al.
(ABAW5 2023) fill frames without a face. Each video file is written to
`<video>.npz.partial` and then renamed, so an interrupted extraction leaves only whole files
and a second run skips the videos already done.

Example:
>>> summary = extract_features(face_model, index, "cache/do2020", normalization="unit")
>>> cache = FeatureCache("cache/do2020")
>>> feats = cache.features_for(index)             # {"feature": (n, 2048), "probabilities": (n, 7)}
>>> x = feature_matrix(index, [cache, FeatureCache("cache/logmel")])  # (n, 2048 + 7 + 80)
"""

import json
import os
import re

import numpy as np

CACHE_FORMAT = "affectkit-feature-cache"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
FRAMES_KEY = "frames"
VIDEO_SUFFIX = ".npz"
PARTIAL_SUFFIX = ".partial"
RESERVED_KEYS = (FRAMES_KEY, "fps")
FRAME_NUMBERING = "1-based: frame k is <video>/<k:05d>.jpg and line k of an annotation file"
VIEW_FOLDERS = {"aligned": "cropped_aligned", "cropped": "cropped"}
STORAGE_DTYPES = ("float32", "float16")
# Manifest keys the writer sets itself; the others are the settings a resumed run must match.
_MANIFEST_OWN_KEYS = ("format", "version", "outputs", "pooled_outputs", "frame_numbering")

_FRAME_FILE = re.compile(r"^(\d+)\.jpg$", re.IGNORECASE)


# ------------------------------------------------------------------------- helpers


def nearest_positions(stored_frames, frames):
    """Position in `stored_frames` of the nearest stored frame of each of `frames`.

    Args:
        stored_frames: ascending, distinct frame numbers (at least one).
        frames: frame numbers to look up.
    Returns:
        int64 positions; ties between an earlier and a later frame go to the earlier one.
    """
    stored = np.asarray(stored_frames, np.int64)
    frames = np.asarray(frames, np.int64)
    if len(stored) == 0:
        raise ValueError("nearest_positions: no stored frames to choose from.")
    right = np.minimum(np.searchsorted(stored, frames), len(stored) - 1)
    left = np.maximum(right - 1, 0)
    take_left = np.abs(frames - stored[left]) <= np.abs(stored[right] - frames)
    return np.where(take_left, left, right).astype(np.int64)


def _frame_table(frames):
    """`(video, frame)` arrays of a `FrameIndex` or a DataFrame with those columns."""
    table = getattr(frames, "frames", frames)
    try:
        return table["video"].to_numpy(), table["frame"].to_numpy(np.int64)
    except (KeyError, TypeError, AttributeError):
        raise TypeError(
            "Expected a FrameIndex or a DataFrame with `video` and `frame` columns; got "
            f"{type(frames).__name__}."
        ) from None


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON ({error}); expected a feature-cache manifest."
        ) from None


def _write_atomic(path, write):
    """Calls `write(file)` on `<path>.partial`, then renames it to `path`."""
    partial = path + PARTIAL_SUFFIX
    try:
        with open(partial, "wb") as f:
            write(f)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


# ------------------------------------------------------------------------- reading


class FeatureCache:
    """A feature-cache folder (see the module docstring for its layout).

    Args:
        path: the cache folder, holding `manifest.json`.

    Example:
    >>> cache = FeatureCache("cache/regnet")
    >>> cache.outputs, cache.dims, len(cache.videos)
    (('features',), {'features': 888}, 475)
    >>> matrix = cache.matrix(index)                  # (len(index), 888), index row order
    """

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        manifest_path = os.path.join(self.path, MANIFEST_NAME)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(
                f"{manifest_path}: no such file; expected a feature cache written by "
                "`affectkit extract-features` (or `extract_features`)."
            )
        manifest = _read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise ValueError(
                f"{manifest_path}: not an affectkit feature-cache manifest (expected "
                f"\"format\": {CACHE_FORMAT!r})."
            )
        if manifest.get("version") != CACHE_VERSION:
            raise ValueError(
                f"{manifest_path}: cache format version {manifest.get('version')!r}; this "
                f"affectkit reads version {CACHE_VERSION}."
            )
        self.manifest = manifest
        self.dims = {str(k): int(v) for k, v in manifest.get("outputs", {}).items()}
        self.outputs = tuple(self.dims)

    def __repr__(self):
        return (f"FeatureCache({self.path!r}, {len(self.videos)} videos, "
                f"outputs={self.dims})")

    @property
    def videos(self):
        """Sorted names of the videos whose file is complete."""
        names = [name[: -len(VIDEO_SUFFIX)] for name in os.listdir(self.path)
                 if name.endswith(VIDEO_SUFFIX)]
        return sorted(names)

    def __contains__(self, video):
        return os.path.isfile(self.video_path(video))

    def video_path(self, video):
        """`<cache>/<video>.npz`."""
        return os.path.join(self.path, f"{video}{VIDEO_SUFFIX}")

    def _check_names(self, names):
        if names is None:
            return self.outputs
        names = (names,) if isinstance(names, str) else tuple(names)
        unknown = [n for n in names if n not in self.dims]
        if unknown:
            raise ValueError(
                f"{self.path}: no output(s) {unknown} in this cache; it has {list(self.outputs)}."
            )
        return names

    def load(self, video, names=None):
        """The stored arrays of one video: `frames` (n,) and each output (n, dim), float32."""
        names = self._check_names(names)
        path = self.video_path(video)
        if not os.path.isfile(path):
            raise ValueError(
                f"{self.path}: no features for video {video!r} (expected {path}); extract "
                "them (e.g. `affectkit extract-features`) or leave the video out of the index."
            )
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in (FRAMES_KEY, *names) if key not in data.files]
            if missing:
                raise ValueError(
                    f"{path}: lacks the array(s) {missing}; expected {[FRAMES_KEY, *names]}."
                )
            out = {FRAMES_KEY: data[FRAMES_KEY].astype(np.int64)}
            for name in names:
                values = data[name].astype(np.float32)
                if values.shape != (len(out[FRAMES_KEY]), self.dims[name]):
                    raise ValueError(
                        f"{path}: {name} has shape {values.shape}; expected "
                        f"({len(out[FRAMES_KEY])}, {self.dims[name]}) (one row per stored frame)."
                    )
                out[name] = values
        return out

    def features_for(self, index, names=None):
        """Features aligned to the rows of a `FrameIndex` (or a DataFrame of video, frame).

        A frame without stored features takes those of the nearest stored frame of its video
        (ties: the earlier frame).

        Args:
            index: `FrameIndex`, or a DataFrame with `video` and `frame` columns.
            names: output names (default: all, in manifest order).
        Returns:
            dict name -> float32 `(len(index), dim)`, in row order.
        Raises:
            ValueError: a video of the index has no file in the cache, or no stored frame.
        """
        names = self._check_names(names)
        videos, frames = _frame_table(index)
        out = {name: np.zeros((len(frames), self.dims[name]), np.float32) for name in names}
        if len(frames) == 0:
            return out
        codes, uniques = _factorize(videos)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        for k, video in enumerate(uniques):
            rows = order[bounds[k]:bounds[k + 1]]
            stored = self.load(video, names)
            if len(stored[FRAMES_KEY]) == 0:
                raise ValueError(
                    f"{self.video_path(video)}: no stored frame for video {video!r}, so its "
                    "frames cannot take a nearest frame's features."
                )
            positions = nearest_positions(stored[FRAMES_KEY], frames[rows])
            for name in names:
                out[name][rows] = stored[name][positions]
        return out

    def matrix(self, index, names=None):
        """`features_for` concatenated along the feature axis: float32 `(len(index), dim)`."""
        features = self.features_for(index, names)
        return np.concatenate([features[name] for name in self._check_names(names)], axis=1)


def _factorize(values):
    """Codes and unique values of an array, codes in order of first appearance."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    return codes.astype(np.int64), [str(u) for u in uniques]


def feature_matrix(index, sources):
    """One float32 matrix `(len(index), dim)` from one or several feature sources.

    A source is a `FeatureCache` (all outputs, manifest order), a cache folder path,
    `(cache, names)` (those outputs, in that order), or an array `(len(index), dim)` already
    aligned to the index rows. A list of sources is concatenated along the feature axis, in
    order: modalities (visual caches, audio caches) combine this way.

    Example:
    >>> x = feature_matrix(index, [FeatureCache("cache/vit"), (audio, ["logmel"])])
    """
    if isinstance(sources, list):
        if not sources:
            raise ValueError("feature_matrix: an empty list of sources; expected at least one.")
        return np.concatenate([feature_matrix(index, s) for s in sources], axis=1)
    if isinstance(sources, (str, os.PathLike)):
        return FeatureCache(sources).matrix(index)
    if isinstance(sources, FeatureCache):
        return sources.matrix(index)
    if (isinstance(sources, tuple) and len(sources) == 2
            and isinstance(sources[0], FeatureCache)):
        return sources[0].matrix(index, sources[1])
    array = np.asarray(sources, np.float32)
    rows = len(_frame_table(index)[0])
    if array.ndim != 2 or len(array) != rows:
        raise ValueError(
            f"feature_matrix: an array of shape {array.shape}; expected (rows of the index = "
            f"{rows}, dim), aligned to the index rows, or a FeatureCache."
        )
    return array


# ------------------------------------------------------------------------- writing


class CacheWriter:
    """Writes a feature cache folder: the manifest, then one file per video, atomically.

    On an existing cache it checks that the settings match the manifest (so that one folder
    never mixes features of two models) and reports which videos are done.

    Args:
        path: the cache folder (created).
        settings: JSON-serialisable dict stored in the manifest (model, image size, ...).
        dtype: storage dtype of the outputs, `"float32"` or `"float16"`.
    """

    def __init__(self, path, settings, dtype="float32"):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}: expected one of {STORAGE_DTYPES}.")
        self.path = os.path.abspath(os.fspath(path))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"{self.path}: exists and is not a folder; expected a cache folder.")
        os.makedirs(self.path, exist_ok=True)
        self.dtype = dtype
        self.settings = json.loads(json.dumps({**settings, "dtype": dtype}))
        self.manifest_path = os.path.join(self.path, MANIFEST_NAME)
        self.dims = None
        if os.path.exists(self.manifest_path):
            existing = FeatureCache(self.path).manifest
            theirs = {k: v for k, v in existing.items() if k not in _MANIFEST_OWN_KEYS}
            if theirs != self.settings:
                keys = sorted(k for k in set(theirs) | set(self.settings)
                              if theirs.get(k) != self.settings.get(k))
                details = "; ".join(
                    f"{k}: cache {theirs.get(k)!r}, now {self.settings.get(k)!r}" for k in keys
                )
                raise ValueError(
                    f"{self.path}: holds features made with other settings ({details}); "
                    "use another output folder, or delete this one to start over."
                )
            self.dims = {k: int(v) for k, v in existing["outputs"].items()}
        for name in os.listdir(self.path):  # leftovers of an interrupted run
            if name.endswith(VIDEO_SUFFIX + PARTIAL_SUFFIX):
                os.remove(os.path.join(self.path, name))

    def done(self, video):
        """True when `<video>.npz` is complete."""
        return os.path.isfile(os.path.join(self.path, f"{video}{VIDEO_SUFFIX}"))

    def set_outputs(self, dims, pooled=()):
        """Writes the manifest with the output dims, or checks them against an existing one.

        `pooled`: names of outputs averaged over spatial axes (noted in the manifest).
        """
        dims = {str(k): int(v) for k, v in dims.items()}
        if self.dims is not None:
            if dims != self.dims:
                raise ValueError(
                    f"{self.path}: the cache holds outputs {self.dims}, but the model now "
                    f"gives {dims}; use another output folder."
                )
            return
        manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **self.settings,
                    "outputs": dims, "pooled_outputs": sorted(pooled),
                    "frame_numbering": FRAME_NUMBERING}
        text = json.dumps(manifest, indent=2) + "\n"
        _write_atomic(self.manifest_path, lambda f: f.write(text.encode("utf-8")))
        self.dims = dims

    def write(self, video, frames, outputs, extra=None):
        """Writes `<video>.npz` atomically: `frames` (n,) and each output (n, dim)."""
        if self.dims is None:
            self.set_outputs({name: np.shape(v)[1] for name, v in outputs.items()})
        frames = np.asarray(frames, np.int64)
        if len(frames) > 1 and np.any(np.diff(frames) <= 0):
            raise ValueError(f"{video}: frame numbers are not ascending and distinct.")
        arrays = {FRAMES_KEY: frames}
        for name, dim in self.dims.items():
            values = np.asarray(outputs[name], np.float32)
            if values.shape != (len(frames), dim):
                raise ValueError(
                    f"{video}: output {name!r} has shape {values.shape}; expected "
                    f"({len(frames)}, {dim})."
                )
            arrays[name] = values.astype(self.dtype)
        arrays.update(extra or {})
        path = os.path.join(self.path, f"{video}{VIDEO_SUFFIX}")
        _write_atomic(path, lambda f: np.savez(f, **arrays))


# ------------------------------------------------------------------------- frames to run


def list_frame_images(folder):
    """`(frames, paths)` of the `<n>.jpg` files of one video folder, by frame number."""
    if not os.path.isdir(folder):
        return np.zeros(0, np.int64), []
    found = []
    for entry in os.scandir(folder):
        match = _FRAME_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.path))
    found.sort()
    return np.array([f for f, _ in found], np.int64), [p for _, p in found]


def video_frame_images(data, edition=None, split="all", view="aligned", videos=None):
    """The frame images to run a model on, per video.

    Args:
        data: a `FrameIndex` (its rows with their own image, `has_image`), or an Aff-Wild2
            folder (every `<n>.jpg` in `<data>/cropped_aligned/<video>/`, or `cropped/`).
        edition: edition name, needed with a folder and `split` "train" / "val".
        split: with a folder: `"all"` (every video folder) or `"train"` / `"val"` (the videos
            of that split's annotation folders).
        view: `"aligned"` or `"cropped"`.
        videos: only these videos (default: all).
    Returns:
        dict video -> `(frames int64 (n,), paths list)`, sorted by video, frames ascending.
    """
    if view not in VIEW_FOLDERS:
        raise ValueError(f"Unknown view {view!r}: expected one of {tuple(VIEW_FOLDERS)}.")
    if hasattr(data, "frames") and hasattr(data, "schema"):
        return _index_frame_images(data, view, videos)
    root = os.path.abspath(os.fspath(data))
    folder = os.path.join(root, VIEW_FOLDERS[view])
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder}: no such folder; expected the frame images of an Aff-Wild2 layout "
            f"({VIEW_FOLDERS[view]}/<video>/<n:05d>.jpg)."
        )
    names = video_names(root, edition, split)
    if videos is not None:
        names = _select(names, videos, root)
    return {name: list_frame_images(os.path.join(folder, name)) for name in names}


def video_names(root, edition=None, split="all"):
    """Video names of an Aff-Wild2 folder: every `cropped_aligned` folder (`"all"`), or the
    videos of a split's annotation folders (`"train"` / `"val"`, which need `edition`)."""
    root = os.path.abspath(os.fspath(root))
    if split == "all":
        names = set()
        for view in VIEW_FOLDERS.values():
            folder = os.path.join(root, view)
            if os.path.isdir(folder):
                names.update(e.name for e in os.scandir(folder) if e.is_dir())
        return sorted(names)
    if split not in ("train", "val"):
        raise ValueError(f"Unknown split {split!r}: expected 'train', 'val' or 'all'.")
    if edition is None:
        raise ValueError(
            f"split={split!r} needs the ABAW edition (folder names differ by edition); "
            "pass edition=..., or split='all'."
        )
    import warnings

    from affectkit.data.affwild2 import FrameIndex

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a folder without images is reported later
        return FrameIndex.from_affwild2(root, edition, split).videos


def _select(names, videos, where):
    videos = [videos] if isinstance(videos, str) else list(videos)
    unknown = sorted(set(videos) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown video(s) {unknown[:5]}; expected names from {where}.")
    return [name for name in names if name in set(videos)]


def _index_frame_images(index, view, videos):
    from affectkit.data.pipeline import VIEWS

    frames = index.frames
    if videos is not None:
        frames = frames[frames["video"].isin(_select(index.videos, videos, "the index"))]
    out = {video: (np.zeros(0, np.int64), []) for video in sorted(set(frames["video"]))}
    frames = frames[frames["has_image"].to_numpy(bool)]
    for video, rows in frames.groupby("video", sort=True):
        rows = rows.sort_values("frame").drop_duplicates("frame")
        paths = rows[VIEWS[view]].tolist()
        empty = [f for f, p in zip(rows["frame"], paths) if not (isinstance(p, str) and p)]
        if empty:
            raise ValueError(
                f"{video}: frame {empty[0]} has has_image=True but no {VIEWS[view]!r} path; "
                "expected a JPEG path for every frame with an image."
            )
        out[video] = (rows["frame"].to_numpy(np.int64), paths)
    return out


# ------------------------------------------------------------------------- extraction


def _pool(values):
    """`(B, ..., C)` -> `(B, C)` by the mean over the middle axes; `(B,)` -> `(B, 1)`."""
    values = np.asarray(values, np.float32)
    if values.ndim == 1:
        return values[:, None], False
    if values.ndim > 2:
        return values.mean(axis=tuple(range(1, values.ndim - 1))), True
    return values, False


def _named_outputs(result, output_names, model):
    """A model's batch output as an ordered dict name -> NumPy array."""
    import keras

    if isinstance(result, dict):
        names = list(result)
        values = [result[k] for k in names]
    elif isinstance(result, (list, tuple)):
        values = list(result)
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(values):
            names = [f"output_{i}" for i in range(len(values))]
    else:
        values, names = [result], ["features"]
    if output_names is not None:
        output_names = [output_names] if isinstance(output_names, str) else list(output_names)
        if len(output_names) != len(values):
            raise ValueError(
                f"output_names {output_names} has {len(output_names)} names; the model gives "
                f"{len(values)} output(s) ({names})."
            )
        names = output_names
    for name in names:
        if name in RESERVED_KEYS:
            raise ValueError(f"Output name {name!r} is reserved in the cache; pass output_names.")
    return {name: keras.ops.convert_to_numpy(v) for name, v in zip(names, values)}


def _model_image_size(model):
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[2]:
        return int(shape[1]), int(shape[2])
    return None


def _probe_image_size(paths):
    import cv2

    image = cv2.imread(paths[0])
    if image is None:
        raise ValueError(f"Cannot read image {paths[0]!r}: expected a JPEG file.")
    return int(image.shape[0]), int(image.shape[1])


def _frame_batches(paths, image_size, normalization, batch_size):
    """A tf.data pipeline of normalised `(B, H, W, 3)` batches of one video's frames."""
    import tensorflow as tf

    from affectkit.data.pipeline import decode_frame, normalize_images

    height, width = image_size

    def resize(image):  # as `decode_frame(path, image_size)`, on the decoded frame
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.saturate_cast(tf.round(image), tf.uint8)

    def load(path):
        image = decode_frame(path)
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
        return tf.cond(same, lambda: image, lambda: resize(image))

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths))
    ds = ds.map(lambda p: tf.ensure_shape(load(p), (height, width, 3)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).map(lambda x: normalize_images(x, normalization),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _predictor(model):
    import keras

    if isinstance(model, keras.Model):
        return model.predict_on_batch
    if callable(model):
        return model
    raise TypeError(f"`model` must be a keras.Model or a callable; got {type(model).__name__}.")


def extract_features(
    model,
    data,
    out,
    edition=None,
    split="all",
    image_size=None,
    view="aligned",
    normalization="unit",
    batch_size=64,
    videos=None,
    output_names=None,
    description=None,
    dtype="float32",
    verbose=1,
):
    """Runs a model once over every frame image of every video; caches its outputs per video.

    Videos whose file is already in `out` are skipped, so a second run after an interruption
    finishes the job. Outputs with spatial axes (`(B, H, W, C)` maps) are averaged to
    `(B, C)`.

    Args:
        model: a `keras.Model` with one output, a list or a dict of outputs (e.g.
            `do2020_face_model`'s `{"feature", "probabilities"}`), or a callable from a batch
            of images to such outputs.
        data: a `FrameIndex` (its frames with their own image) or an Aff-Wild2 folder (every
            frame image of the chosen videos); see `video_frame_images`.
        out: the cache folder.
        edition: ABAW edition, for a folder with `split` "train" / "val".
        split: `"all"`, `"train"` or `"val"` (folders only).
        image_size: int or `(height, width)` fed to the model; default the model's input
            size, else the stored size of the first image.
        view: `"aligned"` (`cropped_aligned`) or `"cropped"`.
        normalization: pixel normalisation before the model (`normalize_images`): `"unit"`
            (RGB in [0, 1], what affectkit models take), `"imagenet"`, `"caffe"` or `None`.
        batch_size: frames per model call.
        videos: only these videos (default: all).
        output_names: names of the outputs (default: dict keys, `output_names` of the
            model, or `"features"` for one output).
        description: str or dict describing the model, stored in the manifest (default: its
            name). A resumed run must give the same.
        dtype: storage dtype, `"float32"` or `"float16"`.
        verbose: 0 silent, 1 a line of counts and a progress bar over frames.

    Returns:
        dict: `path`, `videos_done` (extracted now), `videos_skipped` (already in the cache),
        `videos_without_frames` (no image, nothing stored), `frames` (extracted now),
        `outputs` (name -> dim) and `pooled_outputs` (outputs averaged over space).
    """
    import keras

    if normalization is not None and not isinstance(normalization, str):
        raise ValueError("`normalization` must be a name or None here: the manifest stores it.")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; got {batch_size}.")
    table = video_frame_images(data, edition, split, view, videos)
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    model_size = _model_image_size(model)
    if image_size is not None and model_size is not None and tuple(image_size) != model_size:
        raise ValueError(
            f"image_size {tuple(image_size)} differs from the input size {model_size} of "
            f"model {getattr(model, 'name', '')!r}; leave image_size out, or rebuild the model "
            "for that size (e.g. model_file_backbone(..., input_shape=...))."
        )
    image_size = tuple(image_size) if image_size is not None else model_size
    if image_size is None:
        first = next((paths for _, paths in table.values() if paths), None)
        image_size = _probe_image_size(first) if first else (112, 112)
    if isinstance(description, str) or description is None:
        name = description or getattr(model, "name", None) or getattr(model, "__name__", None)
        description = {"name": str(name or type(model).__name__)}
    settings = {
        "modality": "visual",
        "model": dict(description),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "view": view,
        "normalization": normalization,
    }
    writer = CacheWriter(out, settings, dtype)
    todo = [v for v in table if not writer.done(v)]
    skipped = len(table) - len(todo)
    empty = [v for v in todo if len(table[v][0]) == 0]
    todo = [v for v in todo if len(table[v][0])]
    total = int(sum(len(table[v][0]) for v in todo))
    if verbose:
        print(f"Extracting features of {len(todo)} videos ({total} frames) to {writer.path}; "
              f"{skipped} already done, {len(empty)} without frame images.")
    progress = keras.utils.Progbar(total, unit_name="frame", verbose=1 if verbose else 0)
    predict = _predictor(model)
    pooled = set()
    done_frames = 0
    for video in todo:
        frames, paths = table[video]
        chunks = {}
        try:
            for batch in _frame_batches(paths, image_size, normalization, batch_size):
                outputs = _named_outputs(predict(batch), output_names, model)
                for key, values in outputs.items():
                    values, was_pooled = _pool(values)
                    if was_pooled:
                        pooled.add(key)
                    chunks.setdefault(key, []).append(values)
                done_frames += len(batch)
                progress.update(done_frames)
        except Exception as error:  # name the video in whatever went wrong
            import tensorflow as tf

            if isinstance(error, tf.errors.OpError):
                raise ValueError(
                    f"{video}: could not read its frame images ({paths[0]} ...): "
                    f"{error.message.strip().splitlines()[0]}"
                ) from error
            raise
        arrays = {key: np.concatenate(parts) for key, parts in chunks.items()}
        writer.set_outputs({key: values.shape[1] for key, values in arrays.items()}, pooled)
        writer.write(video, frames, arrays)
    return {
        "path": writer.path,
        "videos_done": len(todo),
        "videos_skipped": skipped,
        "videos_without_frames": len(empty),
        "frames": done_frames,
        "outputs": dict(writer.dims or {}),
        "pooled_outputs": sorted(pooled),
    }


# ------------------------------------------------------------------------- backbones


def backbone_feature_model(name, image_size=112, weights=None):
    """A registered backbone as a feature extractor: RGB in [0, 1] -> pooled feature vector.

    The family's own input normalisation is a layer of the model (VGGFace2 BGR minus mean,
    InceptionV3's [-1, 1], ImageNet mean and std otherwise), so frames go in with
    `normalization="unit"`; the backbone's last feature map is averaged over space.

    Args:
        name: a name from `affectkit.models.backbones.available_backbones()`.
        image_size: int or `(height, width)`.
        weights: `None` (random initialisation) or a local weights file of the backbone.
    Returns:
        A functional `keras.Model` with one output `(batch, channels)`.
    """
    import keras

    from affectkit.models import backbones
    from affectkit.models.backbones import inception, regnet, resnet_vggface2

    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    shape = (int(image_size[0]), int(image_size[1]), 3)
    backbone = backbones.build_backbone(name, shape, weights=weights)
    if name == "vggface2_resnet50":
        normalize = resnet_vggface2.VGGFace2Preprocessing(name="vggface2_preprocessing")
    elif name == "inception_v3":
        normalize = inception.inception_preprocessing()
    else:
        normalize = regnet.regnet_preprocessing()  # ImageNet mean and std on [0, 1] RGB
    # Functional graph.
    inputs = keras.Input(shape, name="image")
    x = backbone(normalize(inputs))
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, x, name=f"{name}_features")
