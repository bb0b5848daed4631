"""Windows of previous frames and video segments over cached per-frame features, as tf.data.

The index logic is plain NumPy over the row numbers of a `FrameIndex` (rows sorted by video,
then frame). It cuts by frame number, not by row: a *run* is a block of rows of one video
whose frame numbers go up by one (`video_runs`). A video's first row starts a run, and so
does a gap in its frame numbers (`frames[i] != frames[i - 1] + 1`, e.g. an MTL-file index
or an index of labelled frames only), so that nothing ever joins two distant frames:

    window_indices(videos, frames, window)           (n, window): for each target row the
                                                     `window` rows at or before it in its
                                                     run, oldest first, target last; the
                                                     run's first row repeated at its start
    segment_indices(videos, frames, length, stride)  Segments(rows, valid, video, position,
                                                     starts_video): consecutive rows of one
                                                     run, the last segment of a run padded
                                                     with its last row

The dataset builders gather features from a resident float32 matrix (one row per index row,
e.g. from `affectkit.features.cache.FeatureCache`) with `tf.gather`, one batch per tf.data
element, so no per-frame Python runs while training:

    window_dataset   ({input: (B, W, D) windowed | (B, D) target frame}, {task: (B, ...)})
    segment_dataset  ((B, L, D) or {input: (B, L, D)}, {task: (B, L, ...)})

Labels keep the dataset's missing markers (valence/arousal -5, expression -1, AU -1) exactly
as `affectkit.data.pipeline.label_arrays` returns them; the padded steps of a segment get the
missing markers, so masked losses and metrics leave them out. Which frames count as having
an image (`missing_images`) is the availability of the view the features come from (`view`).

Windows follow Do et al. (ABAW 2020): the target frame and the previous `s - 1` frames of the
same video (s = 16 or 32), padded at the video start by repeating its first frame (here: at
a run's start, so also after a gap). Segments follow Liu et al. (ABAW5 2023):
non-overlapping segments (stride = length) whose LSTM state is carried from one segment of a
video to the next (`order="streams"` lays segments out for that with batches larger than
one); the state is reset where `starts_video` is True, at a video's start and after a gap.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from affectkit.data.affwild2 import view_columns
from affectkit.data.pipeline import TASKS, _check_tasks, _row_mask, label_arrays
from affectkit.features.cache import MappedFeatures, feature_matrix

SEGMENT_ORDERS = ("video", "shuffle", "streams")
BALANCE_CHOICES = (None, "expr")
INFO_KEYS = ("valid", "starts_video", "segment")
# Feature matrices up to this size stay in memory (`tf.gather`); larger ones, or any with
# `mapped=True`, are read on demand from the memory-mapped caches (`MappedFeatures`).
RESIDENT_BYTES = 1 << 30
MAPPED_CHOICES = ("auto", True, False)

_LABEL_DTYPES = {"va": np.float32, "expr": np.int32, "au": np.float32}


# ------------------------------------------------------------------------- index logic


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
    return int(value)


def video_runs(videos, frames):
    """First and one-past-last row of each run of consecutive frames of one video.

    A run starts at a video's first row and wherever the frame number does not follow the
    previous row's by one (`frames[i] != frames[i - 1] + 1` within a video: a gap).

    Args:
        videos: `(n,)` video id per row; each video's rows must be contiguous (as in
            `FrameIndex.frames`, sorted by video then frame).
        frames: `(n,)` frame numbers per row (`FrameIndex.frames["frame"]`), ascending
            within each video.
    Returns:
        `(starts, stops)`, int64 arrays with one entry per run, in row order.
    Raises:
        ValueError: the arrays differ in length, a video's rows are split into several
            blocks, or its frame numbers do not ascend (the message names the video and rows).

    Example:
    >>> video_runs(["a", "a", "a", "a", "b"], [1, 2, 5, 6, 1])
    (array([0, 2, 4]), array([2, 4, 5]))
    """
    videos = np.asarray(videos)
    frames = np.asarray(frames)
    if videos.ndim != 1:
        raise ValueError(f"`videos` must be a 1-d array of video ids; got shape {videos.shape}.")
    if frames.shape != videos.shape or not (
            frames.size == 0 or np.issubdtype(frames.dtype, np.integer)):
        raise ValueError(
            f"`frames` must be integer frame numbers, one per row of `videos` "
            f"({len(videos)}); got shape {frames.shape}, dtype {frames.dtype}."
        )
    frames = frames.astype(np.int64)
    n = len(videos)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero(videos[1:] != videos[:-1]) + 1
    video_starts = np.r_[0, change].astype(np.int64)
    run_videos = videos[video_starts]
    order = np.argsort(run_videos, kind="stable")
    repeated = np.flatnonzero(run_videos[order][1:] == run_videos[order][:-1])
    if len(repeated):
        video = run_videos[order][repeated[0]]
        rows = video_starts[run_videos == video]
        raise ValueError(
            f"The rows of video {str(video)!r} are not contiguous (they start at rows "
            f"{rows[:4].tolist()}): expected rows sorted by video then frame, as in "
            "FrameIndex.frames."
        )
    same = videos[1:] == videos[:-1]
    step = frames[1:] - frames[:-1]
    bad = np.flatnonzero(same & (step <= 0))
    if len(bad):
        i = int(bad[0]) + 1
        raise ValueError(
            f"Rows {i - 1} and {i} of video {str(videos[i])!r} have frames {frames[i - 1]} then "
            f"{frames[i]}: expected rows sorted by video then frame, each frame once (as "
            "FrameIndex builds them)."
        )
    breaks = np.flatnonzero(~same | (step != 1)) + 1
    starts = np.r_[0, breaks].astype(np.int64)
    stops = np.r_[breaks, n].astype(np.int64)
    return starts, stops


def _run_firsts(videos, frames):
    """Per row, the first row of its run."""
    starts, stops = video_runs(videos, frames)
    return np.repeat(starts, stops - starts)


def window_indices(videos, frames, window):
    """Row numbers of the window of previous frames of every row.

    Args:
        videos: `(n,)` video id per row, rows sorted by video then frame.
        frames: `(n,)` frame number per row.
        window: frames per window, the target included.
    Returns:
        int64 `(n, window)`: row `i` holds the `window` rows at or before row `i` in its
        run (`video_runs`), oldest first, `i` last; at a run's start (a video's first
        frame, or the first frame after a gap) its first row is repeated. A window never
        holds a later row, a row of another video or a frame from before a gap.

    Example:
    >>> window_indices(["a", "a", "a", "a", "b", "b"], [1, 2, 3, 7, 1, 2], 3)
    array([[0, 0, 0],
           [0, 0, 1],
           [0, 1, 2],
           [3, 3, 3],
           [4, 4, 4],
           [4, 4, 5]])
    """
    window = _check_positive_int("window", window)
    first = _run_firsts(videos, frames)
    rows = np.arange(len(first), dtype=np.int64)[:, None] + np.arange(1 - window, 1,
                                                                       dtype=np.int64)
    return np.maximum(rows, first[:, None])


class Segments(NamedTuple):
    """Segments of consecutive frames of one run each (`video_runs`), in row order.

    Attributes:
        rows: int64 `(n_segments, length)` row numbers; padding repeats the run's last row.
        valid: bool `(n_segments, length)`, False on padding.
        video: `(n_segments,)` the video id of each segment (values of `videos`).
        position: int64 `(n_segments,)` index of the segment within its run.
        starts_video: bool `(n_segments,)`, True where a stream starts: the first segment
            of a run, i.e. of a video or after a gap in its frame numbers. A stateful model
            resets its state there and carries it otherwise; it never carries state across
            a gap.
    """

    rows: np.ndarray
    valid: np.ndarray
    video: np.ndarray
    position: np.ndarray
    starts_video: np.ndarray

    def __len__(self):
        return len(self.rows)

    def take(self, order):
        """The segments at the positions `order` (e.g. a permutation), as `Segments`."""
        order = np.asarray(order, np.int64)
        return Segments(*(np.asarray(field)[order] for field in self))

    def to_rows(self, outputs, num_rows):
        """Per-step outputs (dict name -> `(n_segments, length, ...)`, in segment order) put
        back on the rows they were read from: dict name -> `(num_rows, ...)`. With
        non-overlapping segments every row gets exactly one value; padding is dropped."""
        rows = self.rows[self.valid]
        per_row = {}
        for name, values in outputs.items():
            values = np.asarray(values)
            per_row[name] = np.zeros((num_rows,) + values.shape[2:], values.dtype)
            per_row[name][rows] = values[self.valid]
        return per_row


def segment_indices(videos, frames, length, stride=None):
    """Cuts every run of consecutive frames into segments of `length` rows, `stride` apart.

    Runs are as in `video_runs`: a video, split wherever its frame numbers have a gap, so
    a segment never spans a gap. A run of `n` rows gets `1 + ceil(max(n - length, 0) /
    stride)` segments starting at rows 0, stride, 2 * stride, ... of the run; the last one
    reaches the run's end and is padded by repeating the run's last row (`valid` False
    there). With `stride == length` every row lies in exactly one segment, padding aside.

    Args:
        videos: `(n,)` video id per row, rows sorted by video then frame.
        frames: `(n,)` frame number per row.
        length: rows per segment.
        stride: rows between segment starts, 1..length; default `length`.
    Returns:
        `Segments`, in row order (by video, then run, then position).

    Example:
    >>> s = segment_indices(["a"] * 5 + ["b"] * 2, [1, 2, 3, 4, 5, 1, 2], length=3)
    >>> s.rows.tolist(), s.valid.sum(axis=1).tolist(), s.starts_video.tolist()
    ([[0, 1, 2], [3, 4, 4], [5, 6, 6]], [3, 2, 2], [True, False, True])
    >>> segment_indices(["a"] * 5, [1, 2, 6, 7, 8], length=2).rows.tolist()  # gap after 2
    [[0, 1], [2, 3], [4, 4]]
    """
    length = _check_positive_int("length", length)
    stride = length if stride is None else _check_positive_int("stride", stride)
    if stride > length:
        raise ValueError(
            f"`stride` ({stride}) is larger than `length` ({length}): segments would skip "
            "rows; expected 1 <= stride <= length."
        )
    videos = np.asarray(videos)
    starts, stops = video_runs(videos, frames)
    sizes = stops - starts
    per_run = 1 + -(-np.maximum(sizes - length, 0) // stride)
    owner = np.repeat(np.arange(len(starts)), per_run)
    position = np.arange(len(owner), dtype=np.int64) - np.repeat(
        np.cumsum(per_run) - per_run, per_run
    )
    first = starts[owner] + position * stride
    rows = first[:, None] + np.arange(length, dtype=np.int64)
    last = (stops[owner] - 1)[:, None]
    valid = rows <= last
    return Segments(
        rows=np.minimum(rows, last),
        valid=valid,
        video=videos[starts][owner],
        position=position,
        starts_video=position == 0,
    )


def shuffle_segments(segments, seed):
    """`segments` in a random order drawn from `seed` (the same seed, the same order)."""
    return segments.take(np.random.default_rng(seed).permutation(len(segments)))


def stream_order(segments, streams):
    """Lays segments out in `streams` parallel streams for a stateful model, batch by batch.

    Each stream of segments (a run: a video, or its part between gaps, from a segment with
    `starts_video` to the next) goes whole, in order, to one stream (longest first, each to
    the stream with the fewest segments so far), so that in `order.reshape(-1, streams)`
    column `b` of consecutive batches holds consecutive segments of a run: the state of
    batch slot `b` carries from one batch to the next, and is reset where `starts_video`
    is True.

    Args:
        segments: `Segments` in video order (from `segment_indices`).
        streams: the batch size.
    Returns:
        int64 `(n_batches * streams,)` segment numbers, row-major over `(n_batches,
        streams)`; -1 marks filler slots after a stream's last run.
    """
    streams = _check_positive_int("streams", streams)
    starts = np.flatnonzero(segments.starts_video)
    counts = np.diff(np.r_[starts, len(segments)])
    assigned = [[] for _ in range(streams)]
    totals = np.zeros(streams, np.int64)
    for video in np.argsort(-counts, kind="stable"):
        slot = int(np.argmin(totals))
        assigned[slot].append(video)
        totals[slot] += counts[video]
    steps = int(totals.max()) if len(counts) else 0
    order = np.full((steps, streams), -1, np.int64)
    for slot, videos in enumerate(assigned):
        ids = [np.arange(starts[v], starts[v] + counts[v]) for v in sorted(videos)]
        if ids:
            ids = np.concatenate(ids)
            order[: len(ids), slot] = ids
    return order.reshape(-1)


# ------------------------------------------------------------------------- datasets


def _index_runs(index):
    """`video_runs` of a `FrameIndex`'s rows (raises unless sorted by video then frame)."""
    frames = index.frames
    return video_runs(frames["video"].to_numpy(), frames["frame"].to_numpy(np.int64))


def _input_matrices(index, inputs, view, mapped="auto"):
    """`(matrices, single)`: name -> the features of every index row, a float32 tf constant
    or (`mapped`) a `MappedFeatures` read on demand, and whether `inputs` was one source
    rather than a dict. Visual caches must be of `view`."""
    single = not isinstance(inputs, dict)
    sources = {"features": inputs} if single else dict(inputs)
    if not sources:
        raise ValueError("`inputs` is an empty dict: expected at least one feature source.")
    if mapped not in MAPPED_CHOICES:
        raise ValueError(f"mapped={mapped!r}: expected one of {MAPPED_CHOICES}.")
    matrices = {}
    for name, source in sources.items():
        features = MappedFeatures(index, source, view=view)
        resident = features.shape[0] * features.dim * 4 <= RESIDENT_BYTES
        if mapped is True or (mapped == "auto" and not resident):
            matrices[name] = features
        else:
            matrices[name] = tf.constant(feature_matrix(index, source, view=view))
    return matrices, single


def _gather(matrix, rows):
    """`tf.gather(matrix, rows)` of a tf constant or a `MappedFeatures` (read in NumPy)."""
    if not isinstance(matrix, MappedFeatures):
        return tf.gather(matrix, rows)
    values = tf.numpy_function(lambda r: matrix[r].reshape(r.shape + (matrix.dim,)),
                               [rows], tf.float32, stateful=False)
    return tf.ensure_shape(values, rows.shape.concatenate([matrix.dim]))


def _window_sizes(window):
    if isinstance(window, (list, tuple, np.ndarray)):
        sizes = tuple(_check_positive_int("window", int(w)) for w in window)
        if not sizes:
            raise ValueError("`window` is an empty list: expected window sizes such as (16, 32).")
        return sizes
    return (_check_positive_int("window", window),)


def _balance_cdf(index, mask):
    """Cumulative sampling probabilities over the targets that balance expression classes.

    Each expression class present gets an equal share of the labelled frames' probability;
    frames without an expression label keep their natural share (their fraction of the
    targets), so multi-task frames are still drawn.
    """
    expr = index.frames["expr"].to_numpy(np.int64)[mask]
    missing = expr == index.schema.expr_missing
    weights = np.zeros(len(expr), np.float64)
    labelled_share = 1.0 - missing.mean()
    classes, inverse, counts = np.unique(expr[~missing], return_inverse=True,
                                         return_counts=True)
    if len(classes) == 0:
        raise ValueError(
            "balance='expr': none of the target frames has an expression label; expected "
            "some frames with expr != -1."
        )
    weights[~missing] = labelled_share / (len(classes) * counts[inverse])
    weights[missing] = 1.0 / len(expr)
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _finish(ds, deterministic=True):
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def window_dataset(
    index,
    inputs,
    tasks=TASKS,
    window=16,
    windowed=None,
    batch_size=32,
    training=False,
    shuffle_seed=0,
    balance=None,
    missing_images="skip",
    view="aligned",
    drop_remainder=False,
    repeat=False,
    mapped="auto",
):
    """Batches of per-frame features over windows of previous frames, with the target's labels.

    Windows are cut over every row of `index` by frame number (`window_indices`: never
    across a gap in a video's frame numbers; frames without an image of their own take the
    nearest frame's features, see `FeatureCache.features_for`); the targets are the rows
    `label_arrays(index, tasks, missing_images, view)` describes, in that order when not
    shuffled.

    Args:
        index: `FrameIndex`, rows sorted by video then frame.
        inputs: one feature source, or a dict input name -> source. A source is a
            `FeatureCache` (all its outputs, concatenated), `(cache, names)`, a cache folder,
            a float array `(len(index), dim)` aligned to the index rows, or a list of
            sources concatenated along the feature axis (modalities); see
            `affectkit.features.cache.feature_matrix`.
        tasks: label keys, some of `("va", "expr", "au")`.
        window: frames per window (e.g. 4, 8, 16, 32), or a list of sizes: each batch then
            uses one of them, drawn from `shuffle_seed` (window axis `None` in the shapes).
        windowed: names of the dict inputs given as windows `(B, W, D)`; the others are the
            target frame's `(B, D)`. Default: every input. Ignored for a single source.
        batch_size: targets per batch.
        training: shuffle the targets (seeded; a new order each epoch, the same sequence of
            orders for the same seed).
        shuffle_seed: seed of the shuffle, the class-balanced sampling and the window sizes.
        balance: `None`, or `"expr"` to draw targets at random so that every expression class
            present is drawn equally often (frames without an expression label keep their
            share); an epoch has as many targets as the unbalanced one. Seeded, in training
            and evaluation alike.
        missing_images: `"skip"` targets frames with their own image only; `"fill"` every
            frame with an image to use (`image_frame >= 0`), as in `frame_dataset`.
        view: the view whose image availability `missing_images` follows: the view the
            visual features were extracted from (`"aligned"` or `"cropped"`); a visual
            `FeatureCache` of another view raises.
        drop_remainder: drop a last, smaller batch.
        repeat: repeat forever.
        mapped: read the features of each batch from the memory-mapped caches
            (`MappedFeatures`) instead of holding their matrix: `"auto"` above
            `RESIDENT_BYTES` (1 GiB), True, or False.

    Returns:
        `tf.data.Dataset` of `(x, labels)`: `x` is `(B, W, D)` float32 for a single source,
        else a dict of `(B, W, D)` (windowed) and `(B, D)` (target frame) float32; `labels`
        `va` `(B, 2)` float32, `expr` `(B,)` int32, `au` `(B, K)` float32 of the target
        frames, missing markers kept.

    Example:
    >>> cache = FeatureCache("cache/do2020")
    >>> ds = window_dataset(index, {"probabilities": (cache, "probabilities"),
    ...                             "feature": (cache, "feature")},
    ...                     windowed=["probabilities"], window=32, training=True)
    """
    tasks = _check_tasks(tasks)
    batch_size = _check_positive_int("batch_size", batch_size)
    if balance not in BALANCE_CHOICES:
        raise ValueError(f"Unknown balance {balance!r}: expected one of {BALANCE_CHOICES}.")
    sizes = _window_sizes(window)
    view_columns(view)  # checks the name
    starts, stops = _index_runs(index)
    matrices, single = _input_matrices(index, inputs, view, mapped)
    if single or windowed is None:
        windowed = tuple(matrices)
    else:
        windowed = (windowed,) if isinstance(windowed, str) else tuple(windowed)
        unknown = sorted(set(windowed) - set(matrices))
        if unknown:
            raise ValueError(
                f"`windowed` names {unknown} that are not inputs; expected some of "
                f"{sorted(matrices)}."
            )

    mask = _row_mask(index, missing_images, view)
    targets = np.flatnonzero(mask)
    if not len(targets):
        raise ValueError(
            f"No target frames: none of the {len(mask)} frames of the index is kept with "
            f"missing_images={missing_images!r} (view {view!r})."
        )
    labels = label_arrays(index, tasks, missing_images, view)
    # Windows are built per batch from the first row of each row's run, exactly as
    # `window_indices` builds them, instead of holding an (n, window) table in memory.
    first_rows = tf.constant(np.repeat(starts, stops - starts))
    target_rows = tf.constant(targets.astype(np.int64))
    label_tables = {task: tf.constant(values) for task, values in labels.items()}
    size_table = tf.constant(np.asarray(sizes, np.int64))
    n_targets = len(targets)
    n_batches = n_targets // batch_size if drop_remainder else -(-n_targets // batch_size)
    if n_batches == 0:
        raise ValueError(
            f"{n_targets} target frames make no full batch of {batch_size} with "
            "drop_remainder=True."
        )
    cdf = tf.constant(_balance_cdf(index, mask)) if balance == "expr" else None

    def random_int(randoms, stream):
        return tf.random.stateless_uniform(
            [], seed=tf.stack([randoms, tf.constant(stream, tf.int64)]), maxval=2**31 - 1,
            dtype=tf.int64,
        )

    def sample_positions(randoms):
        seed = tf.stack([randoms, tf.constant(0, tf.int64)])
        uniform = tf.random.stateless_uniform([batch_size], seed=seed, dtype=tf.float64)
        positions = tf.searchsorted(cdf, uniform, side="right")
        return tf.minimum(tf.cast(positions, tf.int64), n_targets - 1)

    def load(positions, randoms):
        rows = tf.gather(target_rows, positions)
        if len(sizes) > 1:
            size = tf.gather(size_table, random_int(randoms, 1) % len(sizes))
        else:
            size = sizes[0]
        offsets = tf.range(1 - size, 1, dtype=tf.int64)
        windows = tf.maximum(rows[:, None] + offsets, tf.gather(first_rows, rows)[:, None])
        x = {
            name: _gather(matrix, windows if name in windowed else rows)
            for name, matrix in matrices.items()
        }
        y = {task: tf.gather(values, positions) for task, values in label_tables.items()}
        return (x["features"] if single else x), y

    randoms = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True)
    if balance == "expr":
        ds = randoms.take(n_batches).map(lambda r: (sample_positions(r), r))
    else:
        ds = tf.data.Dataset.range(n_targets)
        if training:
            ds = ds.shuffle(n_targets, seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = tf.data.Dataset.zip((ds, randoms))
    if repeat:
        ds = ds.repeat()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds)


def _row_labels(index, tasks, missing_images, view):
    """Label tables with one row per index row plus a last all-missing row (for padding);
    rows left out by `missing_images` (in `view`) get the missing markers too."""
    schema = index.schema
    mask = _row_mask(index, missing_images, view)
    labels = index.labels(tasks)
    markers = {"va": schema.va_missing, "expr": schema.expr_missing, "au": schema.au_missing}
    tables = {}
    for task in tasks:
        values = np.asarray(labels[task], _LABEL_DTYPES[task])
        filler = np.full((1,) + values.shape[1:], markers[task], values.dtype)
        values = np.concatenate([values, filler])
        values[:-1][~mask] = markers[task]
        tables[task] = values
    return tables


def segment_labels(index, segments, tasks=TASKS, missing_images="skip", view="aligned"):
    """The labels `segment_dataset` yields for `segments` (same order), as NumPy arrays.

    Returns:
        dict task -> `(n_segments, length, ...)`: `va` float32, `expr` int32, `au` float32;
        the missing markers on padded steps and on frames left out by `missing_images`
        (with `view`'s image availability).
    """
    tasks = _check_tasks(tasks)
    tables = _row_labels(index, tasks, missing_images, view)
    rows = np.where(segments.valid, segments.rows, len(index.frames))
    return {task: table[rows] for task, table in tables.items()}


def segment_dataset(
    index,
    inputs,
    tasks=TASKS,
    length=128,
    stride=None,
    batch_size=8,
    order="video",
    shuffle_seed=0,
    missing_images="skip",
    view="aligned",
    with_info=False,
    drop_remainder=False,
    repeat=False,
    mapped="auto",
):
    """Batches of video segments of per-frame features, with per-step labels.

    Segments are cut by frame number (`segment_indices`): one never spans a gap in a
    video's frame numbers, and the segment after a gap starts a new stream
    (`starts_video`). Every row of `index` lies in a segment (frames without an image take
    the nearest frame's features). Steps whose labels should not count carry the missing
    markers: padding after a run's end, and frames without their own image when
    `missing_images="skip"`.

    Args:
        index: `FrameIndex`, rows sorted by video then frame.
        inputs: one feature source, or a dict input name -> source (see `window_dataset`).
        tasks: label keys, some of `("va", "expr", "au")`.
        length: steps per segment (128 in Liu et al. 2023).
        stride: steps between segment starts (1..length); default `length`.
        batch_size: segments per batch.
        order: `"video"`: by video, then position (`segment_indices` order); `"shuffle"`:
            seeded random order, a new one each epoch; `"streams"`: `stream_order`, so that
            batch slot `b` holds consecutive segments of a run from batch to batch (for an
            LSTM whose state is carried across segments; slots past a stream's end are
            fillers, all steps invalid and labelled missing).
        shuffle_seed: seed of the shuffle.
        missing_images: `"skip"` labels frames without their own image as missing; `"fill"`
            keeps the labels of frames with an image to use (`image_frame >= 0`).
        view: the view whose image availability `missing_images` follows (see
            `window_dataset`).
        with_info: `x` becomes a dict with the inputs (a single source under `"features"`)
            plus `valid` `(B, L)` bool, `starts_video` `(B,)` bool and `segment` `(B,)`
            int64 (the segment's number in `segment_indices` order, -1 for fillers).
        drop_remainder: drop a last, smaller batch (not with `"streams"`).
        repeat: repeat forever.
        mapped: as in `window_dataset`.

    Returns:
        `tf.data.Dataset` of `(x, labels)`: `x` `(B, L, D)` float32 (or a dict, see
        `inputs` and `with_info`); `labels` `va` `(B, L, 2)` float32, `expr` `(B, L)` int32,
        `au` `(B, L, K)` float32.

    Example:
    >>> ds = segment_dataset(index, [visual_cache, audio_cache], tasks=("expr",),
    ...                      length=128, batch_size=16, order="shuffle")
    """
    tasks = _check_tasks(tasks)
    batch_size = _check_positive_int("batch_size", batch_size)
    if order not in SEGMENT_ORDERS:
        raise ValueError(f"Unknown order {order!r}: expected one of {SEGMENT_ORDERS}.")
    view_columns(view)  # checks the name
    _index_runs(index)
    matrices, single = _input_matrices(index, inputs, view, mapped)
    if with_info:
        clash = sorted(set(matrices) & set(INFO_KEYS))
        if clash:
            raise ValueError(f"Input names {clash} clash with the with_info keys {INFO_KEYS}.")
    segments = segment_indices(index.frames["video"].to_numpy(),
                               index.frames["frame"].to_numpy(np.int64), length, stride)
    n_segments = len(segments)
    if n_segments == 0:
        raise ValueError("The index has no rows: expected at least one frame to cut into segments.")
    n_rows = len(index.frames)
    label_tables = {
        task: tf.constant(values)
        for task, values in _row_labels(index, tasks, missing_images, view).items()
    }
    # One filler segment after the real ones: row 0 everywhere, nothing valid.
    rows = np.concatenate([segments.rows, np.zeros((1, segments.rows.shape[1]), np.int64)])
    valid = np.concatenate([segments.valid, np.zeros((1, rows.shape[1]), bool)])
    starts_video = np.r_[segments.starts_video, True]
    row_table = tf.constant(rows)
    label_row_table = tf.constant(np.where(valid, rows, n_rows))
    valid_table = tf.constant(valid)
    starts_table = tf.constant(starts_video)

    def load(ids):
        slots = tf.where(ids < 0, tf.constant(n_segments, tf.int64), ids)
        steps = tf.gather(row_table, slots)
        x = {name: _gather(matrix, steps) for name, matrix in matrices.items()}
        label_rows = tf.gather(label_row_table, slots)
        y = {task: tf.gather(values, label_rows) for task, values in label_tables.items()}
        if with_info:
            x.update(valid=tf.gather(valid_table, slots),
                     starts_video=tf.gather(starts_table, slots), segment=ids)
            return x, y
        return (x["features"] if single else x), y

    if order == "streams":
        ds = tf.data.Dataset.from_tensor_slices(stream_order(segments, batch_size))
        ds = ds.batch(batch_size)
    else:
        ds = tf.data.Dataset.range(n_segments)
        if order == "shuffle":
            ds = ds.shuffle(n_segments, seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds)
