"""tf.data frame pipeline: rows, shapes, dtypes, missing markers, pixels, order, augmentation.

References are independent of the pipeline: pixels come from `cv2.imread` and NumPy,
labels from the hand-made table below.
"""

import os

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from affectkit.data import pipeline
from affectkit.data.affwild2 import FrameIndex, write_annotation_file
from affectkit.labels import get_schema

SCHEMA = get_schema("abaw3")
K = SCHEMA.num_aus
SIZE = 32

# video, frames, frames without an image of their own, (h, w) of the cropped view
VIDEOS = (("vid_a", 7, {3}, (40, 48)), ("vid_b", 5, {5}, (SIZE, SIZE)), ("vid_c", 1, {1}, None))


def _make_index(frames):
    return FrameIndex(frames, SCHEMA, None)


def _random_face(rng, h, w):
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3) + 2.0 * x[..., None] - 1.5 * y[..., None]
    img = base + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    rows = []
    for video, n, missing, cropped_hw in VIDEOS:
        for view in ("cropped_aligned", "cropped"):
            os.makedirs(root / view / video)
        have = [k for k in range(1, n + 1) if k not in missing]
        for k in have:
            cv2.imwrite(str(root / "cropped_aligned" / video / f"{k:05d}.jpg"),
                        _random_face(rng, SIZE, SIZE), [cv2.IMWRITE_JPEG_QUALITY, 90])
            cv2.imwrite(str(root / "cropped" / video / f"{k:05d}.jpg"),
                        _random_face(rng, *cropped_hw), [cv2.IMWRITE_JPEG_QUALITY, 90])
        for k in range(1, n + 1):
            image_frame = min(have, key=lambda j: abs(j - k)) if have else -1
            rows.append((video, k, k not in missing, image_frame))
    n = len(rows)
    valence = rng.uniform(-1, 1, n).astype(np.float32)
    arousal = rng.uniform(-1, 1, n).astype(np.float32)
    valence[[1, 8]] = arousal[[1, 8]] = -5.0
    expr = rng.integers(0, SCHEMA.num_expressions, n)
    expr[[0, 4, 9]] = -1
    au = rng.integers(0, 2, (n, K))
    au[[5, 6]] = -1
    frames = pd.DataFrame(
        {
            "video": [r[0] for r in rows],
            "frame": np.array([r[1] for r in rows], np.int64),
            "valence": valence,
            "arousal": arousal,
            "expr": expr.astype(np.int64),
        }
    )
    for j, name in enumerate(SCHEMA.aus):
        frames[name] = au[:, j].astype(np.int64)
    frames["image_aligned"] = [
        str(root / "cropped_aligned" / r[0] / f"{r[3]:05d}.jpg") if r[3] > 0 else "" for r in rows
    ]
    frames["image_cropped"] = [
        str(root / "cropped" / r[0] / f"{r[3]:05d}.jpg") if r[3] > 0 else "" for r in rows
    ]
    frames["has_image"] = np.array([r[2] for r in rows], bool)
    frames["image_frame"] = np.array([r[3] for r in rows], np.int64)
    # Both views hold the same frames here.
    frames["has_image_cropped"] = frames["has_image"]
    frames["image_frame_cropped"] = frames["image_frame"]
    expected = {"va": np.stack([valence, arousal], 1), "expr": expr.astype(np.int32),
                "au": au.astype(np.float32)}
    return _make_index(frames), frames, expected


def _collect(ds):
    images, labels = [], {}
    for x, y in ds:
        images.append(x.numpy())
        for task, value in y.items():
            labels.setdefault(task, []).append(value.numpy())
    return np.concatenate(images), {t: np.concatenate(v) for t, v in labels.items()}


def _cv2_rgb(path):
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB).astype(np.float64)


def test_batches_shapes_dtypes_and_missing_markers(data):
    index, frames, expected = data
    ds = pipeline.frame_dataset(index, batch_size=4, image_size=SIZE)
    assert ds.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]
    x, y = next(iter(ds))
    assert x.shape == (4, SIZE, SIZE, 3) and x.dtype == tf.float32
    assert set(y) == {"va", "expr", "au"}
    assert y["va"].shape == (4, 2) and y["va"].dtype == tf.float32
    assert y["expr"].shape == (4,) and y["expr"].dtype == tf.int32
    assert y["au"].shape == (4, K) and y["au"].dtype == tf.float32

    _, labels = _collect(ds)
    keep = frames["has_image"].to_numpy()
    for task in ("va", "expr", "au"):
        np.testing.assert_array_equal(labels[task], expected[task][keep])
    assert (labels["va"] == -5).all(axis=1).sum() == 2  # rows 1 and 8 both have images
    assert (labels["expr"] == -1).sum() == 3
    assert (labels["au"] == -1).all(axis=1).sum() == 2
    arrays = pipeline.label_arrays(index, ("va", "expr", "au"), "skip")
    for task in arrays:
        np.testing.assert_array_equal(arrays[task], labels[task])

    x, y = next(iter(pipeline.frame_dataset(index, tasks=("expr",), batch_size=3, image_size=SIZE)))
    assert set(y) == {"expr"} and y["expr"].shape == (3,)


@pytest.mark.parametrize("normalization", ["imagenet", "unit", "caffe", "callable"])
def test_pixels_match_cv2_and_numpy(data, normalization):
    index, frames, _ = data
    norm = (lambda t: t * 2.0 - 1.0) if normalization == "callable" else normalization
    images, _ = _collect(pipeline.frame_dataset(index, batch_size=5, image_size=SIZE,
                                                normalization=norm))
    paths = frames.loc[frames["has_image"], "image_aligned"]
    rgb = np.stack([_cv2_rgb(p) for p in paths])
    if normalization == "imagenet":
        ref = (rgb / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        level = 1 / (255 * 0.224)
    elif normalization == "unit":
        ref, level = rgb / 255.0, 1 / 255
    elif normalization == "caffe":
        ref, level = rgb[..., ::-1] - np.array([91.4953, 103.8827, 131.0912]), 1.0
    else:
        ref, level = rgb * 2.0 - 1.0, 2.0
    diff = np.abs(images - ref)
    # Same libjpeg-turbo accurate IDCT as OpenCV: identical here; allow 2 levels elsewhere.
    assert diff.max() <= 2 * level + 1e-4
    assert diff.mean() <= 0.05 * level


def test_skip_and_fill_rows(data):
    index, frames, expected = data
    skip, _ = _collect(pipeline.frame_dataset(index, batch_size=5, image_size=SIZE,
                                              missing_images="skip", normalization=None))
    fill, fill_labels = _collect(pipeline.frame_dataset(index, batch_size=5, image_size=SIZE,
                                                        missing_images="fill",
                                                        normalization=None))
    assert len(frames) == 13 and len(skip) == 10 and len(fill) == 12
    assert len(pipeline.frame_rows(index, "fill")) == 12
    keep = frames["image_frame"].to_numpy() >= 0
    for task in ("va", "expr", "au"):
        np.testing.assert_array_equal(fill_labels[task], expected[task][keep])
    # vid_a frame 3 has no image: it reads frame 2's (nearest; ties go to the earlier one)
    rows = pipeline.frame_rows(index, "fill").reset_index(drop=True)
    pos = rows.index[(rows["video"] == "vid_a") & (rows["frame"] == 3)][0]
    np.testing.assert_array_equal(fill[pos], fill[pos - 1])
    np.testing.assert_array_equal(fill[pos], _cv2_rgb(rows.loc[pos, "image_aligned"]))


def test_each_view_reads_its_own_images(tmp_path):
    """A frame deleted from `cropped/` only: skipped (or filled from the nearest cropped
    frame) in the cropped view; the aligned view still reads it."""
    rng = np.random.default_rng(5)
    root = tmp_path / "aff"
    write_annotation_file(root / "EXPR_Classification_Challenge" / "Train_Set" / "v.txt",
                          "expr", np.array([0, 1, 2, 3, 4, 5]), SCHEMA)
    for view in ("cropped_aligned", "cropped"):
        os.makedirs(root / view / "v")
        for k in range(1, 7):
            if not (view == "cropped" and k == 4):
                cv2.imwrite(str(root / view / "v" / f"{k:05d}.jpg"),
                            _random_face(rng, SIZE, SIZE), [cv2.IMWRITE_JPEG_QUALITY, 90])
    index = FrameIndex.from_affwild2(str(root), SCHEMA, "train", tasks=("expr",))
    filled = FrameIndex.from_affwild2(str(root), SCHEMA, "train", tasks=("expr",),
                                      fill_missing_images=True)

    def read(index, view, missing_images):
        return _collect(pipeline.frame_dataset(index, tasks=("expr",), batch_size=4,
                                               image_size=SIZE, view=view,
                                               missing_images=missing_images,
                                               normalization=None))

    def cv2_frames(view, numbers):
        return np.stack([_cv2_rgb(str(root / view / "v" / f"{k:05d}.jpg")) for k in numbers])

    aligned, aligned_labels = read(index, "aligned", "skip")
    np.testing.assert_array_equal(aligned, cv2_frames("cropped_aligned", range(1, 7)))
    assert aligned_labels["expr"].tolist() == [0, 1, 2, 3, 4, 5]
    cropped, cropped_labels = read(index, "cropped", "skip")
    np.testing.assert_array_equal(cropped, cv2_frames("cropped", [1, 2, 3, 5, 6]))
    assert cropped_labels["expr"].tolist() == [0, 1, 2, 4, 5]
    assert pipeline.label_arrays(index, "expr", view="cropped")["expr"].tolist() == [0, 1, 2, 4, 5]
    assert pipeline.frame_rows(index, view="cropped")["frame"].tolist() == [1, 2, 3, 5, 6]
    # Filled: frame 4 reads cropped frame 3 (tie 3 / 5 -> the earlier), keeping its label.
    cropped_fill, fill_labels = read(filled, "cropped", "fill")
    np.testing.assert_array_equal(cropped_fill, cv2_frames("cropped", [1, 2, 3, 3, 5, 6]))
    assert fill_labels["expr"].tolist() == [0, 1, 2, 3, 4, 5]
    aligned_fill, _ = read(filled, "aligned", "fill")
    np.testing.assert_array_equal(aligned_fill, cv2_frames("cropped_aligned", range(1, 7)))


def _order(ds):
    images, _ = _collect(ds)
    return [round(float(v), 3) for v in images.reshape(len(images), -1).sum(1)]


def test_seeded_shuffle(data):
    index, _, _ = data
    make = lambda seed: pipeline.frame_dataset(  # noqa: E731
        index, batch_size=4, image_size=SIZE, training=True, shuffle_seed=seed,
        normalization=None)
    plain = _order(pipeline.frame_dataset(index, batch_size=4, image_size=SIZE,
                                          normalization=None))
    assert len(set(plain)) == len(plain)  # every frame identifiable by its pixel sum
    ds = make(1)
    first, second = _order(ds), _order(ds)
    assert sorted(first) == sorted(plain) and first != plain
    assert second != first  # reshuffled every epoch
    again = make(1)
    assert _order(again) == first and _order(again) == second
    assert _order(make(2)) != first


def test_resize_only_when_size_differs(data):
    index, frames, _ = data
    cropped, _ = _collect(pipeline.frame_dataset(index, batch_size=6, image_size=SIZE,
                                                 view="cropped", normalization=None))
    paths = frames.loc[frames["has_image"], "image_cropped"].tolist()
    for image, path in zip(cropped, paths):
        rgb = _cv2_rgb(path)
        if rgb.shape[:2] == (SIZE, SIZE):
            np.testing.assert_array_equal(image, rgb)  # untouched
        else:  # 40x48 -> 32x32: area-like downscale, close to OpenCV's INTER_AREA
            ref = cv2.resize(rgb.astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            assert np.abs(image - ref).mean() < 4.0
    small, _ = _collect(pipeline.frame_dataset(index, batch_size=6, image_size=(24, 20),
                                               normalization=None))
    assert small.shape == (10, 24, 20, 3)
    assert small.min() >= 0 and small.max() <= 255


class _Marker:
    """An 'augmentation' whose effect is unmistakable: every pixel becomes 7."""

    def __call__(self, images, training=False):
        return tf.zeros_like(images) + 7.0 if training else images


def test_augmentation_only_when_training(data):
    index, _, _ = data
    kwargs = dict(batch_size=4, image_size=SIZE, normalization=None, augment=_Marker())
    train, _ = _collect(pipeline.frame_dataset(index, training=True, **kwargs))
    evaluation, _ = _collect(pipeline.frame_dataset(index, training=False, **kwargs))
    assert (train == 7).all()
    assert not (evaluation == 7).all()


def test_default_augmentation_runs_and_is_seeded(data):
    index, _, _ = data

    def run(seed):
        ds = pipeline.frame_dataset(index, batch_size=4, image_size=SIZE, training=True,
                                    augment=True, shuffle_seed=seed, normalization=None)
        return _collect(ds)[0]

    plain, _ = _collect(pipeline.frame_dataset(index, batch_size=4, image_size=SIZE,
                                               training=True, normalization=None))
    a, b = run(0), run(0)
    assert a.shape == plain.shape and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255
    assert np.abs(a - plain).mean() > 1.0  # it changed the pixels
    np.testing.assert_allclose(a, b, atol=1e-3)  # same seeds, same augmentation


def test_cache_repeat_and_drop_remainder(data):
    index, _, _ = data
    base = dict(batch_size=4, image_size=SIZE, normalization="unit")
    plain, plain_labels = _collect(pipeline.frame_dataset(index, **base))
    cached_ds = pipeline.frame_dataset(index, cache=True, **base)
    for _ in range(2):
        cached, cached_labels = _collect(cached_ds)
        np.testing.assert_array_equal(cached, plain)
        np.testing.assert_array_equal(cached_labels["au"], plain_labels["au"])
    sizes = [x.shape[0] for x, _ in pipeline.frame_dataset(index, drop_remainder=True, **base)]
    assert sizes == [4, 4]
    repeated = pipeline.frame_dataset(index, repeat=True, drop_remainder=True, **base)
    assert sum(x.shape[0] for x, _ in repeated.take(6)) == 24
    shuffled = pipeline.frame_dataset(index, cache=True, training=True, **base)
    assert sorted(_order(shuffled)) == sorted(_order(pipeline.frame_dataset(index, **base)))


def test_bad_arguments_are_named(data):
    index, frames, _ = data
    with pytest.raises(ValueError, match="view"):
        pipeline.frame_dataset(index, view="profile")
    with pytest.raises(ValueError, match="missing_images"):
        pipeline.frame_dataset(index, missing_images="drop")
    with pytest.raises(ValueError, match="task"):
        pipeline.frame_dataset(index, tasks=("va", "emotion"))
    with pytest.raises(ValueError, match="normalization"):
        pipeline.frame_dataset(index, normalization="torch")
    empty = _make_index(frames.assign(has_image=False))
    with pytest.raises(ValueError, match="No frames"):
        pipeline.frame_dataset(empty)
    no_path = frames.copy()
    no_path.loc[0, "image_aligned"] = ""
    with pytest.raises(ValueError, match="vid_a.*frame 1"):
        pipeline.frame_dataset(_make_index(no_path))


def test_unprobed_frame_of_another_size_fails_loudly(data, tmp_path):
    index, frames, _ = data
    # 20 rows: the size probe reads 16 of them, spread evenly (rows 4, 9, 14, 18 unread).
    rows = frames[frames["has_image"]].iloc[[i % 10 for i in range(20)]].reset_index(drop=True)
    odd = tmp_path / "odd.jpg"
    cv2.imwrite(str(odd), np.full((40, 40, 3), 128, np.uint8))
    rows.loc[4, "image_aligned"] = str(odd)
    ds = pipeline.frame_dataset(_make_index(rows), batch_size=5, image_size=SIZE)
    with pytest.raises(tf.errors.InvalidArgumentError, match="40"):
        _collect(ds)


def test_nondeterministic_and_cached_augmented_variants_yield_every_frame(data):
    index, _, _ = data
    plain = sorted(_order(pipeline.frame_dataset(index, batch_size=3, image_size=SIZE,
                                                 normalization=None)))
    fast = pipeline.frame_dataset(index, batch_size=3, image_size=SIZE, training=True,
                                  deterministic=False, normalization=None)
    assert sorted(_order(fast)) == plain
    cached = pipeline.frame_dataset(index, batch_size=3, image_size=SIZE, training=True,
                                    cache=True, augment=_Marker(), normalization=None)
    images, labels = _collect(cached)
    assert images.shape == (10, SIZE, SIZE, 3) and (images == 7).all()
    assert sorted(labels["expr"].tolist()) == sorted(
        pipeline.label_arrays(index, ("expr",))["expr"].tolist())


def test_frame_index_from_affwild2_layout(tmp_path):
    from affectkit.data.affwild2 import annotation_dir, write_annotation_file

    rng = np.random.default_rng(5)
    for video, n, missing in (("v1", 6, {2, 3}), ("v2", 4, set())):
        folder = tmp_path / "cropped_aligned" / video
        os.makedirs(folder)
        for k in range(1, n + 1):
            if k not in missing:
                cv2.imwrite(str(folder / f"{k:05d}.jpg"), _random_face(rng, SIZE, SIZE))
        va = rng.uniform(-1, 1, (n, 2))
        va[0] = -5
        write_annotation_file(str(tmp_path / annotation_dir("abaw3", "va", "train") /
                                  f"{video}.txt"), "va", va, SCHEMA)
    for fill, expected_rows in ((False, 8), (True, 10)):
        index = FrameIndex.from_affwild2(str(tmp_path), "abaw3", "train", tasks=("va",),
                                         fill_missing_images=fill)
        policy = "fill" if fill else "skip"
        images, labels = _collect(pipeline.frame_dataset(
            index, tasks=("va",), batch_size=4, image_size=SIZE, missing_images=policy,
            normalization=None))
        assert images.shape == (expected_rows, SIZE, SIZE, 3)
        assert (labels["va"] == -5).all(axis=1).sum() == 2
        rows = pipeline.frame_rows(index, policy)
        for image, path in zip(images, index.image_paths("aligned", rows.index)):
            np.testing.assert_array_equal(image, _cv2_rgb(path))
