"""The feature cache: a model run once over every frame, its outputs stored per video.

Training a temporal model on windows or segments recomputes nothing when the per-frame
features come from a cache (`affectkit.data.sequences` gathers them with `tf.gather`).
Caches are written by `affectkit.features.extraction.extract_features` (visual) and
`affectkit.features.audio.extract_audio_features` (audio), through `CacheWriter`.

Layout of a cache folder:

    <cache>/manifest.json    format, model, output names and dims, image size, view,
                             normalisation (audio caches: sample rate, bands, window)
    <cache>/<video>.npz      `frames`: int64 (n,) 1-based frame numbers, ascending
                             (frame k is `<video>/<k:05d>.jpg`, line k of an annotation
                             file); one float array (n, dim) per output name;
                             audio caches add `fps` (the source video's frame rate)

A visual cache stores only the frames with an image in its view (`manifest["view"]`);
`FeatureCache.features_for` gives every other frame of the video the features of its
nearest stored frame (ties: the earlier one), as Liu et al. (ABAW5 2023) fill frames
without a face. Each video file is written to `<video>.npz.partial` and then renamed, so an
interrupted extraction leaves only whole files and a second run skips the videos already
done.

Example:
>>> summary = extract_features(face_model, index, "cache/do2020", normalization="unit")
>>> cache = FeatureCache("cache/do2020")
>>> feats = cache.features_for(index)             # {"feature": (n, 2048), "probabilities": (n, 7)}
>>> x = feature_matrix(index, [cache, FeatureCache("cache/logmel")])  # (n, 2048 + 7 + 80)
"""

import json
import mmap
import os

import numpy as np

CACHE_FORMAT = "affectkit-feature-cache"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
FRAMES_KEY = "frames"
VIDEO_SUFFIX = ".npz"
PARTIAL_SUFFIX = ".partial"
RESERVED_KEYS = (FRAMES_KEY, "fps")
FRAME_NUMBERING = "1-based: frame k is <video>/<k:05d>.jpg and line k of an annotation file"
STORAGE_DTYPES = ("float32", "float16")
# Manifest keys the writer sets itself; the others are the settings a resumed run must match.
_MANIFEST_OWN_KEYS = ("format", "version", "outputs", "pooled_outputs", "frame_numbering")


# ------------------------------------------------------------------------- lookup


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

    Attributes:
        manifest: the manifest dict. outputs: output names, manifest order. dims: name ->
        dim. view: `"aligned"` / `"cropped"`, the view a visual cache was extracted from
        (which frames it stores), None for an audio cache.

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
        self.view = manifest.get("view")  # the image view of a visual cache; None for audio

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

    def load_frames(self, video):
        """The stored frame numbers of one video (int64), without reading its features."""
        path = self.video_path(video)
        if not os.path.isfile(path):
            return self.load(video, [])[FRAMES_KEY]  # raises the message of a missing video
        with np.load(path, allow_pickle=False) as data:
            frames = data[FRAMES_KEY].astype(np.int64)
        if len(frames) == 0:
            raise ValueError(f"{path}: no stored frame for video {video!r}, so its frames "
                             "cannot take a nearest frame's features.")
        return frames

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

    def mapped(self, video, name):
        """One output of one video as a read-only `np.memmap` `(n, dim)` in the storage
        dtype: nothing is read until rows are indexed. `np.savez` stores each array
        uncompressed in the `.npz` (a zip), so the array's bytes lie at a fixed offset of
        the file."""
        import zipfile

        path = self.video_path(video)
        if not os.path.isfile(path):
            self.load(video, [name])  # raises the message of a missing video
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: {name} is compressed; expected the uncompressed "
                                 "arrays `CacheWriter` writes (np.savez).")
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_length, extra_length = (int.from_bytes(local[26:28], "little"),
                                         int.from_bytes(local[28:30], "little"))
            f.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if fortran or shape != (shape[0], self.dims[name]):
            raise ValueError(f"{path}: {name} has shape {shape}; expected (n, "
                             f"{self.dims[name]}) in C order.")
        values = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        if hasattr(mmap, "MADV_RANDOM"):  # rows are read scattered: no read-ahead
            values._mmap.madvise(mmap.MADV_RANDOM)
        return values

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


class MappedFeatures:
    """The features `feature_matrix` would give, read on demand from memory-mapped cache
    files: an index of millions of frames holds a video id and a stored position per row
    and cache (8 bytes), never the matrix (2.7 M x 2048 float16 is 11 GB).

    `features[rows]` is the float32 `(len(rows), dim)` of those index rows, read from the
    page cache; sources are as in `feature_matrix` (caches, `(cache, names)`, or arrays
    aligned to the rows, kept as they are).

    Example:
    >>> features = MappedFeatures(index, [FeatureCache("cache/vit"), audio])
    >>> features.shape, features[np.arange(8)].shape     # ((2040000, 848), (8, 848))
    """

    def __init__(self, index, sources, view=None):
        videos, frames = _frame_table(index)
        self.codes, self.videos = _factorize(videos)
        self.codes = self.codes.astype(np.int32)
        self.parts = []  # (cache, names, positions, {video code: [memmap per name]}) or array
        for source in sources if isinstance(sources, list) else [sources]:
            cache, names = _cache_and_names(source, view)
            if cache is None:
                array = np.asarray(source, np.float32)
                if array.shape[:1] != (len(frames),) or array.ndim != 2:
                    raise ValueError(f"MappedFeatures: an array of shape {array.shape}; "
                                     f"expected ({len(frames)}, dim) aligned to the index rows.")
                self.parts.append(array)
                continue
            names = cache._check_names(names)
            positions = np.zeros(len(frames), np.int32)
            order = np.argsort(self.codes, kind="stable")
            bounds = np.searchsorted(self.codes[order], np.arange(len(self.videos) + 1))
            for k, video in enumerate(self.videos):
                rows = order[bounds[k]:bounds[k + 1]]
                stored = cache.load_frames(video)
                positions[rows] = nearest_positions(stored, frames[rows])
            self.parts.append((cache, names, positions, {}))
        self.dim = sum(part.shape[1] if isinstance(part, np.ndarray)
                       else sum(part[0].dims[n] for n in part[1]) for part in self.parts)
        self.shape = (len(frames), self.dim)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), np.float32)
        codes = self.codes[rows]
        column = 0
        for part in self.parts:
            if isinstance(part, np.ndarray):
                out[:, column:column + part.shape[1]] = part[rows]
                column += part.shape[1]
                continue
            cache, names, positions, maps = part
            for code in np.unique(codes).tolist():
                chosen = np.flatnonzero(codes == code)
                if code not in maps:
                    maps[code] = [cache.mapped(self.videos[code], name) for name in names]
                at = column
                for values in maps[code]:
                    out[chosen, at:at + values.shape[1]] = values[positions[rows[chosen]]]
                    at += values.shape[1]
            column += sum(cache.dims[n] for n in names)
        return out


def _cache_and_names(source, view):
    """`(FeatureCache, names or None)` of a cache source (checked against `view`), or
    `(None, None)` for an array."""
    names = None
    if isinstance(source, (str, os.PathLike)):
        source = FeatureCache(source)
    elif (isinstance(source, tuple) and len(source) == 2
            and isinstance(source[0], FeatureCache)):
        source, names = source
    if not isinstance(source, FeatureCache):
        return None, None
    if view is not None and source.view is not None and source.view != view:
        raise ValueError(
            f"{source.path}: features of the {source.view!r} view, but the frames are "
            f"selected by the images of the {view!r} view; pass view={source.view!r}, or "
            f"a cache extracted from the {view!r} view."
        )
    return source, names


def feature_matrix(index, sources, view=None):
    """One float32 matrix `(len(index), dim)` from one or several feature sources.

    A source is a `FeatureCache` (all outputs, manifest order), a cache folder path,
    `(cache, names)` (those outputs, in that order), or an array `(len(index), dim)` already
    aligned to the index rows. A list of sources is concatenated along the feature axis, in
    order: modalities (visual caches, audio caches) combine this way.

    Args:
        index: `FrameIndex`, or a DataFrame with `video` and `frame` columns.
        sources: a source or a list of sources.
        view: `None`, or the image view (`"aligned"` / `"cropped"`) the caller selects
            frames by: a visual cache of another view (`FeatureCache.view`) then raises.

    Example:
    >>> x = feature_matrix(index, [FeatureCache("cache/vit"), (audio, ["logmel"])])
    """
    if isinstance(sources, list):
        if not sources:
            raise ValueError("feature_matrix: an empty list of sources; expected at least one.")
        return np.concatenate([feature_matrix(index, s, view) for s in sources], axis=1)
    cache, names = _cache_and_names(sources, view)
    if cache is not None:
        return cache.matrix(index, names)
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
