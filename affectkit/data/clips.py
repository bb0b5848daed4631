"""Clips of consecutive frames over a `FrameIndex`, as tf.data: the input of `input_kind="clips"`
models (`AffectModel`: `frames` `(B, T, H, W, 3)` RGB in [0, 1], per-frame outputs `(B, T, ...)`).

    clip_segments(index, length, stride, frames)   Clips(index, segments): the rows a clip may
                                                   hold, cut into clips of `length` frames
    clip_labels(clips, tasks)                      {task: (n_clips, length, ...)}, the labels
                                                   `clip_dataset` yields, unshuffled
    clip_dataset(clips, tasks, image_size, ...)    (frames (B, T, H, W, 3), {task: (B, T, ...)})
    predict_clip_frames(model, index, tasks)       {task: (len(index), ...)}: one prediction
                                                   per frame, each frame in exactly one clip

Clips are cut by frame number (`affectkit.data.sequences.segment_indices`): a clip holds
consecutive frames of one video and never spans a gap in the frame numbers of the rows it
is cut from; the last clip of a run of consecutive frames is padded by repeating the run's
last frame, and padded steps carry the missing markers. Which rows a clip may hold
(`frames`):

- `"all"`: every frame with an image of the view to read (`image_frame >= 0`). Built with
  `fill_missing_images=True`, an index points frames without their own image at the
  nearest frame's, so the clips run over whole videos and stay contiguous in time. Frames
  without their own image are labelled missing, like unlabelled ones (left out of losses
  and metrics): a label is only ever paired with its own frame's image.
- `"labelled"`: only frames with their own image and a label of at least one task (Phan et
  al., ABAW3 2022, chunk these); a frame left out is a gap, so a clip never joins the
  frames on either side of it.

Each tf.data element decodes one clip's JPEGs (in parallel, OpenCV's pixels, as
`affectkit.data.pipeline.frame_dataset`); frames whose size differs from `image_size` are
resized (antialiased bilinear). Training shuffles whole clips (seeded; a new order each
epoch), so labels travel with their frames, and may augment every frame on its own
(`affectkit.data.augmentation`: each frame draws its own flip and jitter, as Phan et al.
apply torchvision transforms per frame), from a seed per batch of clips.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from affectkit.data.affwild2 import FrameIndex, view_columns
from affectkit.data.augmentation import augment_batch, augmentation_spec, batch_seeds
from affectkit.data.pipeline import (TASKS, _check_tasks, _fused_normalizer, _image_paths,
                                     _probe_sizes, decode_frame)
from affectkit.data.sequences import Segments, segment_indices, segment_labels

CLIP_FRAMES = ("all", "labelled")


class Clips(NamedTuple):
    """Clips over the rows of a `FrameIndex`.

    Attributes:
        index: `FrameIndex` of the rows the clips hold (the `frames` selection of
            `clip_segments`), sorted by video then frame.
        segments: `affectkit.data.sequences.Segments` over the rows of `index`: `rows`
            `(n_clips, length)`, `valid` (False on padding), `video`, `position`,
            `starts_video`.
    """

    index: FrameIndex
    segments: Segments


def _labelled_rows(index, tasks):
    """Rows with a label of at least one of `tasks` (any of its values not missing)."""
    schema = index.schema
    markers = {"va": schema.va_missing, "expr": schema.expr_missing, "au": schema.au_missing}
    labelled = np.zeros(len(index.frames), bool)
    for task, values in index.labels(tasks).items():
        values = np.asarray(values).reshape(len(labelled), -1)
        labelled |= (values != markers[task]).any(axis=1)
    return labelled


def clip_segments(index, length, stride=None, frames="all", tasks=TASKS, view="aligned"):
    """The rows of `index` a clip may hold, cut into clips of `length` consecutive frames.

    Args:
        index: `FrameIndex` (rows sorted by video then frame); for `frames="all"` build it
            with `fill_missing_images=True` so that clips run over frames without an image.
        length: frames per clip (64 in Phan et al. 2022).
        stride: frames between clip starts, 1..length; default `length` (no overlap).
        frames: `"all"` or `"labelled"` (see the module docstring).
        tasks: the tasks whose labels make a frame labelled (`frames="labelled"`).
        view: the view whose images the clips read (`"aligned"` or `"cropped"`).
    Returns:
        `Clips(index, segments)`.
    Raises:
        ValueError: an unknown `frames`, or no row of `index` to put in a clip.

    Example:
    >>> clips = clip_segments(index, length=64, stride=16)
    >>> clips.segments.rows.shape                     # (n_clips, 64) rows of clips.index
    """
    if frames not in CLIP_FRAMES:
        raise ValueError(f"Unknown frames={frames!r}: expected one of {CLIP_FRAMES}.")
    tasks = _check_tasks(tasks)
    columns = view_columns(view)
    table = index.frames
    if frames == "labelled":
        keep = table[columns.has_image].to_numpy(bool) & _labelled_rows(index, tasks)
        what = f"its own {view} image and a label of {'/'.join(tasks)}"
    else:
        keep = table[columns.image_frame].to_numpy() >= 0
        what = f"an image of the {view} view to read"
    if not keep.any():
        raise ValueError(
            f"None of the {len(table)} frames of the index (root {index.root}) has {what}; "
            f"expected some (check the annotation folders and the {view} image folder)."
        )
    kept = FrameIndex(table[keep].reset_index(drop=True), index.schema, index.root)
    segments = segment_indices(kept.frames["video"].to_numpy(),
                               kept.frames["frame"].to_numpy(np.int64), length, stride)
    return Clips(kept, segments)


def clip_labels(clips, tasks=TASKS, view="aligned"):
    """The labels `clip_dataset` yields for `clips`, unshuffled, as NumPy arrays.

    Returns:
        dict task -> `(n_clips, length, ...)`: `va` float32, `expr` int32, `au` float32;
        the missing markers on padded steps and on frames without their own image in `view`.
    """
    return segment_labels(clips.index, clips.segments, tasks=tasks, missing_images="skip",
                          view=view)


def clip_dataset(
    clips,
    tasks=TASKS,
    image_size=112,
    batch_size=16,
    view="aligned",
    training=False,
    augment=None,
    shuffle_seed=0,
    cache=False,
    with_labels=True,
    normalization="unit",
):
    """Batches of clips `(B, length, size, size, 3)` float32, with per-frame labels.

    Args:
        clips: from `clip_segments`.
        tasks: label keys, some of `("va", "expr", "au")`.
        image_size: frame size; frames of another size are resized.
        batch_size: clips per batch.
        view: the view whose images are read (`"aligned"` or `"cropped"`).
        training: shuffle the clips (seeded, a new order each epoch) and apply `augment`.
        augment: in training only, an augmentation of `affectkit.data.augmentation`
            (`True`, a name such as `"phan2022"`, or a dict) applied to every frame on its
            own, on 0..255 pixels before normalisation.
        shuffle_seed: seed of the shuffle and of the augmentation draws.
        cache: keep the decoded uint8 clips in memory after the first epoch (small data
            only: with `stride < length` a frame is held once per clip it lies in).
        with_labels: yield `(frames, {task: labels})`; otherwise frames only.
        normalization: see `affectkit.data.pipeline.normalize_images`; `"unit"` (RGB in
            [0, 1]) is what `AffectModel` takes.

    Returns:
        `tf.data.Dataset` of `frames` `(B, length, size, size, 3)` float32 and, with
        `with_labels`, a dict of labels as `clip_labels` gives them: `va` `(B, length, 2)`,
        `expr` `(B, length)`, `au` `(B, length, K)`.

    Example:
    >>> clips = clip_segments(index, length=32, stride=8)
    >>> ds = clip_dataset(clips, tasks=("expr",), image_size=64, batch_size=4, training=True,
    ...                   augment="phan2022")
    """
    tasks = _check_tasks(tasks)
    kept, segments = clips
    size = int(image_size)
    paths = _image_paths(kept, view, np.ones(len(kept.frames), bool))
    resize = _probe_sizes(paths) != {(size, size)}
    spec = augmentation_spec(augment)
    normalize = _fused_normalizer(normalization)
    path_table = tf.constant(paths)
    row_table = tf.constant(segments.rows)
    label_tables = ({task: tf.constant(values)
                     for task, values in clip_labels(clips, tasks, view).items()}
                    if with_labels else {})
    frame_spec = tf.TensorSpec((size, size, 3), tf.uint8)

    def load_frame(path):
        if resize:
            return decode_frame(path, (size, size))
        return tf.ensure_shape(decode_frame(path), (size, size, 3))

    def load_clip(clip):
        frames = tf.map_fn(load_frame, tf.gather(path_table, tf.gather(row_table, clip)),
                           fn_output_signature=frame_spec, parallel_iterations=4)
        return frames, clip

    def finish(frames, clip_ids, seed=None):
        if seed is not None:  # (B, T, H, W, 3) -> one image per frame and back
            shape = tf.shape(frames)
            frames = tf.reshape(augment_batch(tf.reshape(frames, (-1, size, size, 3)), spec,
                                              seed), shape)
        images = normalize(frames)
        if not with_labels:
            return images
        return images, {task: tf.gather(table, clip_ids) for task, table in label_tables.items()}

    autotune = tf.data.AUTOTUNE
    ds = tf.data.Dataset.range(len(segments))
    if cache:
        ds = ds.map(load_clip, num_parallel_calls=autotune, deterministic=True).cache()
    if training:
        ds = ds.shuffle(len(segments), seed=shuffle_seed, reshuffle_each_iteration=True)
    if not cache:
        ds = ds.map(load_clip, num_parallel_calls=autotune, deterministic=True)
    ds = ds.batch(batch_size)
    if training and spec is not None:
        ds = tf.data.Dataset.zip(ds, batch_seeds(shuffle_seed))
        ds = ds.map(lambda clip, seed: finish(*clip, seed), num_parallel_calls=autotune,
                    deterministic=True)
    else:
        ds = ds.map(finish, num_parallel_calls=autotune, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(autotune)


def predict_clip_frames(model, index, tasks, batch_size=16, view="aligned"):
    """Per-frame outputs of a clip model for every row of a `FrameIndex`.

    The frames are cut into non-overlapping clips of the model's length (`clip_segments`,
    `frames="all"`), each clip predicted once and the padded steps dropped, so every frame
    gets exactly one prediction, made with the frames around it.

    Args:
        model: a Keras model taking `(batch, length, size, size, 3)` RGB in [0, 1] (an
            `AffectModel` of `input_kind="clips"`, or its reloaded `model.keras`) and giving
            per-frame outputs `(batch, length, ...)`.
        index: `FrameIndex` built with `fill_missing_images=True`, so that frames without an
            image read the nearest frame's.
        tasks: the outputs to return, e.g. `("expr",)`.
        batch_size: clips per batch.
        view: the view whose images are read.
    Returns:
        dict task -> `(len(index), ...)` NumPy array, row for row with `index.frames`.
    Raises:
        ValueError: the model does not take clips, or a frame has no image to read.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 5 or shape[1] is None or shape[2] != shape[3] or shape[4] != 3:
        raise ValueError(f"predict_clip_frames: expected a model with input (batch, length, "
                         f"size, size, 3); {getattr(model, 'name', model)!r} takes {shape}.")
    kept, segments = clips = clip_segments(index, int(shape[1]), frames="all", view=view)
    if len(kept.frames) != len(index.frames):
        image_frame = index.frames[view_columns(view).image_frame].to_numpy()
        row = index.frames.iloc[int(np.flatnonzero(image_frame < 0)[0])]
        raise ValueError(
            f"Video {row['video']!r} frame {row['frame']} has no {view} image to read "
            f"({len(index.frames) - len(kept.frames)} such frames): expected an index built "
            "with fill_missing_images=True over videos that have images."
        )
    dataset = clip_dataset(clips, image_size=int(shape[2]), batch_size=batch_size, view=view,
                           with_labels=False)
    outputs = model.predict(dataset, verbose=0)
    return segments.to_rows({task: outputs[task] for task in tasks}, len(kept.frames))
