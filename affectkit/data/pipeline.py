"""tf.data input pipeline over a `FrameIndex`: frames in, `(images, {task: labels})` out.

One element per frame row of the index, batched:

    images            (B, H, W, 3) float32, normalised (see `normalize_images`)
    labels["va"]      (B, 2)  float32, -5 where missing
    labels["expr"]    (B,)    int32,   -1 where missing
    labels["au"]      (B, K)  float32, -1 where missing

Order of operations, cheapest first:

    row numbers -> shuffle (training; int64s only, so a full-size buffer is cheap)
      -> batch the row numbers
      -> per batch, batches in parallel: read + decode its JPEGs [+ resize, only if the
         frames' size differs], gather its labels, (training: augment on 0..255
         pixels), normalise (cast and scale fused by XLA) -> prefetch

Decoding a batch per tf.data element instead of a frame per element removes the
per-element overhead of tf.data (measured on 2 CPU cores: 0.80x -> 0.95x of the throughput
of bare `decode_jpeg`; see `tools/bench_pipeline.py`).
With `cache`, decoded uint8 frames are cached one by one and the shuffle mixes frames.

Decoding uses `dct_method="INTEGER_ACCURATE"`, which gives the same pixels as OpenCV
(`cv2.imread`, used by `affectkit.data.video` at inference); TensorFlow's default DCT
differs from OpenCV by up to 6 grey levels and is no faster.

Resizing is decided per dataset: the sizes of up to 16 frames spread over the rows are
read with OpenCV. If all have `image_size` (Aff-Wild2's 112x112 `cropped_aligned`), frames
are decoded only, and a frame of another size stops the iteration with a shape error; if
any differs (the `cropped` view), every frame is resized (antialiased bilinear, rounded to
uint8). A per-frame size test would cost about 10 % of decoding throughput.

Order and augmentation are reproducible: the shuffle is seeded (`shuffle_seed`; a new
order each epoch, the same sequence of orders for the same seed), each batch draws its
augmentation from its own seed (`affectkit.data.augmentation.batch_seeds(shuffle_seed)`,
zipped with the batches: a new draw each epoch, the same draws for the same seed), and
the parallel stages keep their input order (`deterministic=True`). Evaluation datasets
are not shuffled, so predictions line up with `label_arrays(...)` and `frame_rows(...)`
row for row.
"""

import inspect

import numpy as np
import tensorflow as tf

from affectkit.data.affwild2 import view_columns
from affectkit.data.augmentation import (augment_batch, augmentation_spec, batch_seeds,
                                        xla_on_cpu)

TASKS = ("va", "expr", "au")
MISSING_IMAGE_POLICIES = ("skip", "fill")
NORMALIZATIONS = ("imagenet", "unit", "caffe")

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# VGGFace2 (Cao et al., 2018) channel means, BGR order, on 0..255.
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)

_LABEL_DTYPES = {"va": np.float32, "expr": np.int32, "au": np.float32}


# --------------------------------------------------------------------------- rows


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}: expected one of {tuple(choices)}.")


def _check_tasks(tasks):
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("`tasks` is empty: expected some of ('va', 'expr', 'au').")
    for task in tasks:
        _check_choice("task", task, TASKS)
    return tasks


def _row_mask(index, missing_images, view="aligned"):
    """Boolean mask over `index.frames` of the rows a dataset of `view` yields."""
    _check_choice("missing_images", missing_images, MISSING_IMAGE_POLICIES)
    columns = view_columns(view)
    frames = index.frames
    if missing_images == "skip":
        return frames[columns.has_image].to_numpy(dtype=bool)
    return frames[columns.image_frame].to_numpy() >= 0


def frame_rows(index, missing_images="skip", view="aligned"):
    """The rows of `index.frames` a dataset of `view` yields, in unshuffled order.

    `"skip"` keeps frames whose own image exists in `view` (`has_image`, or
    `has_image_cropped` for `"cropped"`); `"fill"` keeps every frame that has an image of
    `view` to read, its own or the nearest one of its video (`image_frame >= 0`, or
    `image_frame_cropped >= 0`). Use with an unshuffled dataset to put predictions back
    on `video`/`frame`.
    """
    return index.frames[_row_mask(index, missing_images, view)]


def label_arrays(index, tasks=TASKS, missing_images="skip", view="aligned"):
    """Labels of exactly the rows `frame_dataset(..., view=view)` yields, in unshuffled order.

    Returns:
        dict task -> NumPy array: `va` (n, 2) float32, `expr` (n,) int32,
        `au` (n, K) float32, missing markers kept.
    """
    tasks = _check_tasks(tasks)
    mask = _row_mask(index, missing_images, view)
    labels = index.labels(tasks)
    out = {}
    for task in tasks:
        values = np.asarray(labels[task])
        if len(values) != len(mask):
            raise ValueError(
                f"FrameIndex.labels({task!r}) has {len(values)} rows but the index has "
                f"{len(mask)} frames: expected one label row per frame."
            )
        out[task] = np.ascontiguousarray(values[mask], dtype=_LABEL_DTYPES[task])
    return out


def _image_paths(index, view, mask):
    rows = np.flatnonzero(mask)
    paths = np.asarray(index.image_paths(view, rows), dtype=object)
    bad = np.flatnonzero([not (isinstance(p, str) and p) for p in paths])
    if len(bad):
        row = index.frames.iloc[rows[bad[0]]]
        raise ValueError(
            f"{len(bad)} selected frames have no image path in the {view!r} view, first "
            f"video {row['video']!r} frame {row['frame']}: expected a JPEG path for every "
            f"frame with an image of the {view!r} view (`{view_columns(view).has_image}`, or "
            f"`{view_columns(view).image_frame} >= 0` with missing_images='fill')."
        )
    return paths.astype(str)


# ----------------------------------------------------------------------- pixels


def _image_hw(image_size):
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    height, width = image_size
    return int(height), int(width)


def _read_jpeg(path):
    return tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")


def decode_frame(path, image_size=None):
    """Reads one JPEG as uint8 RGB `(H, W, 3)`, with OpenCV's pixels.

    Args:
        path: string tensor.
        image_size: `None` keeps the stored size; an int or `(height, width)` resizes
            (antialiased bilinear, rounded back to uint8).
    """
    image = _read_jpeg(path)
    if image_size is None:
        return image
    height, width = _image_hw(image_size)
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return tf.saturate_cast(tf.round(image), tf.uint8)


def _probe_sizes(paths, count=16):
    """`(height, width)` of up to `count` frames spread evenly over `paths` (OpenCV)."""
    import cv2

    picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).astype(int))
    sizes = set()
    for i in picks:
        image = cv2.imread(paths[i])
        if image is None:
            raise ValueError(f"Cannot read image {paths[i]!r}: expected a JPEG file.")
        sizes.add(image.shape[:2])
    return sizes


def normalize_images(images, normalization="imagenet"):
    """Maps RGB pixels in 0..255 to a backbone's input range, as float32.

    Args:
        images: `(..., H, W, 3)` RGB in 0..255, uint8 or float.
        normalization: `"imagenet"` (RGB in [0, 1], minus ImageNet mean, over std),
            `"unit"` (RGB in [0, 1]), `"caffe"` (BGR in 0..255 minus the VGGFace2 means
            `(91.4953, 103.8827, 131.0912)`), `None` (unchanged 0..255 RGB) or a callable
            applied to the 0..255 RGB float32 tensor.
    """
    images = tf.convert_to_tensor(images)
    if normalization is not None and not callable(normalization):
        _check_choice("normalization", normalization, NORMALIZATIONS)
        if normalization == "caffe":  # RGB -> BGR, cheaper on uint8 than on float32
            images = tf.reverse(images, axis=[-1])
    if not images.dtype.is_floating:
        images = tf.cast(images, tf.float32)
    if normalization is None:
        return images
    if callable(normalization):
        return normalization(images)
    dtype = images.dtype
    if normalization == "unit":
        return images * tf.constant(1.0 / 255.0, dtype)
    if normalization == "imagenet":
        std = np.asarray(IMAGENET_STD_RGB)
        scale, offset = 1.0 / (255.0 * std), -np.asarray(IMAGENET_MEAN_RGB) / std
    else:
        scale, offset = np.ones(3), -np.asarray(VGGFACE2_MEAN_BGR)
    # A (3,)-vector broadcast over the last axis runs 4x slower in TF's CPU kernels than
    # one over the leading axes: spread the per-channel constants over (H, W, 3) first.
    hwc = tf.shape(images)[-3:]
    scale = tf.broadcast_to(tf.constant(scale, dtype), hwc)
    offset = tf.broadcast_to(tf.constant(offset, dtype), hwc)
    return images * scale + offset


_FUSED_NORMALIZERS = {}


def _fused_normalizer(normalization):
    """`normalize_images` compiled with XLA into one pass (3x faster on CPU), if XLA works."""
    if normalization is None or callable(normalization):
        return lambda images: normalize_images(images, normalization)
    if normalization not in _FUSED_NORMALIZERS:

        def normalize(images):
            return normalize_images(images, normalization)

        # tf.data runs on the CPU: plain TF ops where XLA does not compile there.
        _FUSED_NORMALIZERS[normalization] = (
            tf.function(normalize, jit_compile=True, reduce_retracing=True)
            if xla_on_cpu() else normalize)
    return _FUSED_NORMALIZERS[normalization]


# ---------------------------------------------------------------------- dataset


def _apply_augment(augment, images):
    call = getattr(augment, "call", augment)
    try:
        takes_training = "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        takes_training = False
    return augment(images, training=True) if takes_training else augment(images)


def frame_dataset(
    index,
    tasks=TASKS,
    batch_size=32,
    image_size=112,
    view="aligned",
    training=False,
    augment=None,
    shuffle_seed=0,
    missing_images="skip",
    normalization="imagenet",
    drop_remainder=False,
    repeat=False,
    cache=False,
    deterministic=True,
):
    """A batched `tf.data.Dataset` of `(images, {task: labels})` over a `FrameIndex`.

    Args:
        index: `affectkit.data.affwild2.FrameIndex` (uses `.frames` and `.labels`).
        tasks: label keys to yield, some of `("va", "expr", "au")`.
        batch_size: frames per batch.
        image_size: int or `(height, width)` of the images yielded.
        view: `"aligned"` (`image_aligned`) or `"cropped"` (`image_cropped`); which
            frames have an image is that view's own (`affwild2.view_columns`).
        training: shuffle (seeded, reshuffled every epoch) and apply `augment`.
        augment: in training only, on 0..255 RGB pixels before normalisation: an
            augmentation of `affectkit.data.augmentation` (`True` for `"default"`, a name
            such as `"phan2022"`, or a dict; run in the parallel map, drawn per batch
            from `shuffle_seed`), or your own Keras layer or callable, applied to float32
            batches one batch at a time (Keras random layers hold a seed variable).
        shuffle_seed: seed of the shuffle and of the augmentation draws; the same seed
            gives the same orders and draws.
        missing_images: `"skip"` drops frames whose own image is absent in `view`;
            `"fill"` keeps every frame with an image of `view` to read (its
            `image_frame >= 0`; the path column then holds the nearest frame's image).
        normalization: see `normalize_images`.
        drop_remainder: drop a last, smaller batch.
        repeat: repeat forever (each repetition reshuffled in training).
        cache: `True` keeps decoded uint8 frames in memory after the first epoch
            (112x112: 37.6 KB per frame), a path string caches to that file;
            the shuffle then runs over the cached frames.
        deterministic: `True` keeps the seeded order through the parallel stages, so
            that a seed reproduces a run. `False` lets batches overtake each other (each
            keeps its augmentation draws) and runs a Keras-layer `augment` in parallel:
            faster on many cores, but the order does not repeat.

    Returns:
        `tf.data.Dataset` yielding `images` `(B, H, W, 3)` float32 and a dict of labels:
        `va` `(B, 2)` float32, `expr` `(B,)` int32, `au` `(B, K)` float32, with the
        dataset's missing markers (-5, -1) kept.

    Example:
    >>> index = FrameIndex.from_affwild2(root, "abaw3", split="train")
    >>> ds = frame_dataset(index, batch_size=64, training=True, augment="phan2022")
    >>> images, labels = next(iter(ds))
    """
    tasks = _check_tasks(tasks)
    height, width = _image_hw(image_size)
    if not callable(normalization) and normalization is not None:
        _check_choice("normalization", normalization, NORMALIZATIONS)
    mask = _row_mask(index, missing_images, view)
    if not mask.any():
        raise ValueError(
            f"No frames to read: none of the {len(mask)} frames of the index has an image "
            f"in the {view!r} view with missing_images={missing_images!r}."
        )
    paths = _image_paths(index, view, mask)
    labels = label_arrays(index, tasks, missing_images, view)
    resize = _probe_sizes(paths) != {(height, width)}
    layer = augment if callable(augment) else None  # the user's own, stateful
    spec = None if layer is not None else augmentation_spec(augment)
    augmenting = training and (layer is not None or spec is not None)
    normalize = _fused_normalizer(normalization)
    autotune = tf.data.AUTOTUNE
    path_table = tf.constant(paths)
    label_tables = {task: tf.constant(values) for task, values in labels.items()}
    frame_spec = tf.TensorSpec((height, width, 3), tf.uint8)

    def load_frame(path):
        if resize:
            return decode_frame(path, (height, width))
        return tf.ensure_shape(decode_frame(path), (height, width, 3))

    def load_batch(rows):
        # One tf.data element per batch: decoding inside `map_fn` saves the per-element
        # costs of tf.data (about 20 % of the decoding time of a 112x112 frame).
        images = tf.map_fn(load_frame, tf.gather(path_table, rows),
                           fn_output_signature=frame_spec, parallel_iterations=4)
        return images, rows

    def finish(images, rows, seed=None):
        batch_labels = {task: tf.gather(table, rows) for task, table in label_tables.items()}
        if seed is not None:
            images = augment_batch(images, spec, seed)
        elif augmenting:
            images = _apply_augment(layer, tf.cast(images, tf.float32))
        return normalize(images), batch_labels

    def load_and_finish(rows, seed=None):
        return finish(*load_batch(rows), seed)

    ds = tf.data.Dataset.range(len(paths))
    shuffle = lambda d: d.shuffle(  # noqa: E731
        len(paths), seed=shuffle_seed, reshuffle_each_iteration=True
    )
    if cache:  # decoded frames are cached one by one, so that the shuffle mixes frames
        ds = ds.map(lambda row: (load_frame(tf.gather(path_table, row)), row),
                    num_parallel_calls=autotune, deterministic=True)
        ds = ds.cache(cache if isinstance(cache, str) else "")
    if training:
        ds = shuffle(ds)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augmenting and spec is not None:
        # Stateless draws from each batch's own seed: the batches run in parallel.
        ds = tf.data.Dataset.zip(ds, batch_seeds(shuffle_seed))
        step = (lambda batch, seed: finish(*batch, seed)) if cache else load_and_finish
        ds = ds.map(step, num_parallel_calls=autotune, deterministic=deterministic)
    elif augmenting:
        # Keras random layers draw from a seed variable: one batch at a time keeps the
        # augmentation reproducible (deterministic=True).
        if not cache:
            ds = ds.map(load_batch, num_parallel_calls=autotune, deterministic=deterministic)
        if deterministic:
            ds = ds.map(finish)
        else:
            ds = ds.map(finish, num_parallel_calls=autotune, deterministic=False)
    elif cache:  # without augmentation every stage is pure and runs in parallel
        ds = ds.map(finish, num_parallel_calls=autotune, deterministic=deterministic)
    else:
        ds = ds.map(load_and_finish, num_parallel_calls=autotune, deterministic=deterministic)

    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(autotune)
