"""Visual feature extraction: a model run once over every frame image, into a feature cache.

`extract_features` reads the frame images of one view (`"aligned"`: `cropped_aligned/`,
`"cropped"`: `cropped/`) video by video, as normalised batches (`tf.data`, decoded with
`affectkit.data.pipeline.decode_frame`), runs the model and writes one `<video>.npz` per
video through `affectkit.features.cache.CacheWriter`. Which frames have an image is the
view's own availability: `FrameIndex`'s per-view columns, or `affwild2.list_frame_images`
for a folder. `backbone_feature_model` turns a registered backbone into such a model.

Example:
>>> model = backbone_feature_model("regnety_1.6gf", image_size=112)
>>> extract_features(model, index, "cache/regnet", view="aligned")
>>> FeatureCache("cache/regnet").dims              # from affectkit.features.cache
{'features': 888}
"""

import os

import numpy as np

from affectkit.data.affwild2 import VIEW_FOLDERS, list_frame_images, video_names, view_columns
from affectkit.features.cache import RESERVED_KEYS, CacheWriter


# ------------------------------------------------------------------------- frames to run


def video_frame_images(data, edition=None, split="all", view="aligned", videos=None):
    """The frame images to run a model on, per video.

    Args:
        data: a `FrameIndex` (its rows with their own image in `view`: `has_image` for
            `"aligned"`, `has_image_cropped` for `"cropped"`), or an Aff-Wild2 folder
            (every frame image, as `affwild2.list_frame_images` lists them, of
            `<data>/cropped_aligned/<video>/` or `<data>/cropped/<video>/`).
        edition: edition name, needed with a folder and `split` "train" / "val".
        split: with a folder: `"all"` (every video folder) or `"train"` / `"val"` (the videos
            of that split's annotation folders).
        view: `"aligned"` or `"cropped"`.
        videos: only these videos (default: all).
    Returns:
        dict video -> `(frames int64 (n,), paths list)`, sorted by video, frames ascending.
    """
    view_columns(view)  # checks the name
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


def _select(names, videos, where):
    videos = [videos] if isinstance(videos, str) else list(videos)
    unknown = sorted(set(videos) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown video(s) {unknown[:5]}; expected names from {where}.")
    return [name for name in names if name in set(videos)]


def _index_frame_images(index, view, videos):
    columns = view_columns(view)
    frames = index.frames
    keep = np.ones(len(frames), bool)
    if videos is not None:
        keep = frames["video"].isin(_select(index.videos, videos, "the index")).to_numpy()
    out = {video: (np.zeros(0, np.int64), [])
           for video in sorted(set(frames["video"].to_numpy()[keep]))}
    rows = np.flatnonzero(keep & frames[columns.has_image].to_numpy(bool))
    frames = frames.iloc[rows].assign(path=index.image_paths(view, rows))
    for video, rows in frames.groupby("video", sort=True):
        rows = rows.sort_values("frame").drop_duplicates("frame")
        paths = rows["path"].tolist()
        empty = [f for f, p in zip(rows["frame"], paths) if not (isinstance(p, str) and p)]
        if empty:
            raise ValueError(
                f"{video}: frame {empty[0]} has {columns.has_image}=True but no image path; "
                f"expected a JPEG path for every frame with an image in the {view!r} view."
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
        data: a `FrameIndex` (its frames with their own image in `view`) or an Aff-Wild2
            folder (every frame image of the chosen videos); see `video_frame_images`.
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


def backbone_feature_model(name, image_size=112, weights=None, **hyperparameters):
    """A registered backbone as a feature extractor: RGB in [0, 1] -> pooled feature vector.

    The family's own input normalisation is a layer of the model (VGGFace2 BGR minus mean,
    InceptionV3's [-1, 1], ImageNet mean and std otherwise), so frames go in with
    `normalization="unit"`; the backbone's last feature map is averaged over space.

    Args:
        name: a name from `affectkit.models.backbones.available_backbones()`.
        image_size: int or `(height, width)`.
        weights: `None` (random initialisation) or a local weights file of the backbone.
        **hyperparameters: the backbone's own (`build_backbone`), e.g. smaller `widths`.
    Returns:
        A functional `keras.Model` with one output `(batch, channels)`.
    """
    import keras

    from affectkit.models import backbones

    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    shape = (int(image_size[0]), int(image_size[1]), 3)
    backbone = backbones.build_backbone(name, shape, weights=weights, **hyperparameters)
    normalize = backbones.normalization_layer(backbones.backbone_normalization(name))
    # Functional graph.
    inputs = keras.Input(shape, name="image")
    x = backbone(normalize(inputs))
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, x, name=f"{name}_features")


def cache_extractor(cache):
    """The model that made a visual cache, rebuilt from its manifest, for the features of
    new frames (`affectkit predict` on a video never cached).

    A manifest `model` naming a model `file` (and `layer`) loads that file cut there; one
    naming a `backbone` builds it with its `hyperparameters` and `weights` file, or, for a
    randomly initialised one, from its recorded `seed`, as `keras.utils.set_random_seed`
    and `backbone_feature_model` drew it.

    Raises:
        ValueError: naming the cache, when the manifest does not say how to rebuild it (an
            unseeded random model, a callable).
        FileNotFoundError: the model or weights file is gone.
    """
    import keras

    from affectkit.models.backbones import model_file_backbone

    model = cache.manifest.get("model") or {}
    size = tuple(int(v) for v in cache.manifest.get("image_size") or (112, 112))
    for key in ("file", "weights"):
        if model.get(key) and not os.path.isfile(model[key]):
            raise FileNotFoundError(f"{cache.path}: its features were made with {model[key]}, "
                                    "which is gone; expected that file to compute the same "
                                    "features of new frames.")
    if model.get("file"):
        return model_file_backbone(model["file"], layer=model.get("layer"),
                                   input_shape=size + (3,), trainable=False)
    if model.get("backbone") and (model.get("weights") or model.get("seed") is not None):
        if not model.get("weights"):
            keras.utils.set_random_seed(int(model["seed"]))
        return backbone_feature_model(model["backbone"], size, weights=model.get("weights"),
                                      **(model.get("hyperparameters") or {}))
    raise ValueError(
        f"{cache.path}: the manifest's model {model} says neither a model file nor a backbone "
        "with its weights file or seed, so the same features of new frames cannot be computed; "
        "expected a cache extracted from a model file or a backbone (`affectkit "
        "extract-features --model FILE.keras|BACKBONE --weights FILE`).")
