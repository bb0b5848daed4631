"""Augmentation as data (affectkit.data.augmentation): each operation against an independent
NumPy / SciPy reference of its torchvision formula given the drawn factors, the draws'
ranges and frequencies, seeded reproducibility in `frame_dataset` and `clip_dataset`, per-frame
draws in clips, and the spec's validation."""

import os

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from scipy import ndimage

from affectkit.data import augmentation as aug
from affectkit.data import clips as clip_data
from affectkit.data import pipeline
from affectkit.data.affwild2 import FrameIndex
from affectkit.labels import get_schema

SCHEMA = get_schema("abaw3")
LUMA = np.array([0.299, 0.587, 0.114])


def random_images(n=6, height=12, width=10, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, height, width, 3)).astype(np.float32)


def apply(images, spec, draws):
    draws = {k: tf.constant(v) for k, v in draws.items()}
    return aug.apply_augmentation(tf.constant(images), aug.augmentation_spec(spec), draws).numpy()


# ------------------------------------------------------- torchvision formulas in NumPy


def tv_gray(img):  # torchvision rgb_to_grayscale, ITU-R 601-2 luma
    return img @ LUMA


def tv_blend(img1, img2, ratio):  # torchvision _blend on [0, 1] floats
    return np.clip(ratio * img1 + (1.0 - ratio) * img2, 0.0, 1.0)


def tv_rgb2hsv(img):  # torchvision _rgb2hsv, channels last
    r, g = img[..., 0], img[..., 1]
    maxc, minc = img.max(-1), img.min(-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, 1.0, maxc)
    cr_divisor = np.where(eqc, 1.0, cr)
    rc, gc, bc = ((maxc[..., None] - img) / cr_divisor[..., None]).transpose(2, 0, 1)
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return np.stack([h, s, maxc], -1)


def tv_hsv2rgb(hsv):  # torchvision _hsv2rgb, channels last
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(int) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = np.stack([np.stack(c, -1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p),
                                                  (p, p, t, v, v, q))], -2)  # (..., 3, 6)
    return np.take_along_axis(table, i[..., None, None].repeat(3, -2), -1)[..., 0]


def tv_adjust(img, op, factor):
    """torchvision adjust_brightness / contrast / saturation / hue of a [0, 1] image."""
    if op == "brightness":
        return tv_blend(img, np.zeros_like(img), factor)
    if op == "contrast":
        return tv_blend(img, tv_gray(img).mean(), factor)
    if op == "saturation":
        return tv_blend(img, tv_gray(img)[..., None], factor)
    hsv = tv_rgb2hsv(img)
    hsv[..., 0] = np.mod(hsv[..., 0] + factor, 1.0)
    return tv_hsv2rgb(hsv)


def np_resize(img, out_h, out_w):
    """PyTorch bilinear interpolation (align_corners=False), as torchvision Resize upscales."""
    def taps(out, size):
        source = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
        low = source.astype(int)
        return low, np.minimum(low + 1, size - 1), source - low

    y0, y1, wy = taps(out_h, img.shape[0])
    x0, x1, wx = taps(out_w, img.shape[1])
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


# --------------------------------------------------------------------------- geometry


def test_flip_alone_is_numpy_flip():
    images = random_images()
    flip = np.array([True, False, True, True, False, False])
    out = apply(images, {"flip": 0.5}, {"flip": flip})
    np.testing.assert_array_equal(out[flip], images[flip][:, :, ::-1])
    np.testing.assert_array_equal(out[~flip], images[~flip])


def test_resize_crop_is_torchvision_resize_then_crop_then_flip():
    images = random_images(n=4, height=50, width=40)
    size_h, size_w = aug.resized_size(50, 1.1), aug.resized_size(40, 1.1)  # 55, 44
    crop = np.array([[0, 0], [5, 4], [2, 3], [5, 0]], np.int32)
    flip = np.array([False, False, True, True])
    out = apply(images, {"resize_crop": 1.1, "flip": 0.5}, {"crop": crop, "flip": flip})
    for image, (top, left), flipped, result in zip(images, crop, flip, out):
        ref = np_resize(image.astype(np.float64), size_h, size_w)[top:top + 50, left:left + 40]
        np.testing.assert_allclose(result, ref[:, ::-1] if flipped else ref, atol=2e-3)


def test_affine_matches_scipy_bilinear_with_reflection():
    images = random_images(n=3, height=15, width=11)
    rotation = np.array([30.0, -7.0, 0.0], np.float32)
    zoom = np.array([1.2, 0.8, 1.0], np.float32)
    shift = np.array([[1.5, -2.0], [0.0, 3.25], [-4.0, 0.5]], np.float32)  # down, right
    flip = np.array([False, True, False])
    spec = {"flip": 0.5, "affine": {"rotation": 30, "zoom": 0.2, "shift": 0.3}}
    out = apply(images, spec, {"rotation": rotation, "zoom": zoom, "shift": shift,
                               "flip": flip})
    h, w = 15, 11
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    for i in range(3):
        if flip[i]:
            x_out = w - 1 - x
        else:
            x_out = x
        a = np.deg2rad(rotation[i])
        dx, dy = x_out - shift[i, 1] - cx, y - shift[i, 0] - cy
        # source = centre + R(-angle) (output - shift - centre) / zoom (y points down)
        sx = cx + (np.cos(a) * dx - np.sin(a) * dy) / zoom[i]
        sy = cy + (np.sin(a) * dx + np.cos(a) * dy) / zoom[i]
        ref = np.stack([ndimage.map_coordinates(images[i, :, :, c].astype(np.float64),
                                                [sy, sx], order=1, mode="reflect")
                        for c in range(3)], -1)
        np.testing.assert_allclose(out[i], ref, atol=2e-3)


def test_affine_directions_rot90_and_whole_pixel_shift():
    images = random_images(n=2, height=9, width=9)
    out = apply(images, {"affine": {"rotation": 90}},
                {"rotation": np.float32([90, 0]), "zoom": np.float32([1, 1]),
                 "shift": np.float32([[0, 0], [2, 3]])})
    np.testing.assert_allclose(out[0], np.rot90(images[0]), atol=1e-3)  # counter-clockwise
    np.testing.assert_allclose(out[1, 2:, 3:], images[1, :-2, :-3], atol=1e-3)  # down, right


# ----------------------------------------------------------------------------- colour


@pytest.mark.parametrize("op,factors", [
    ("brightness", [0.5, 1.0, 1.5, 1.9]),
    ("contrast", [0.0, 0.7, 1.0, 1.6]),
    ("saturation", [0.0, 0.6, 1.0, 1.8]),
    ("hue", [-0.5, -0.1, 0.0, 0.37]),
])
def test_each_jitter_operation_is_torchvision(op, factors):
    images = random_images(n=4)
    images[1, :3] = 90.0  # grey pixels: no hue
    spec = {"color_jitter": {op: 0.5 if op == "hue" else 1.0}}
    draws = {op: np.float32(factors), "order": np.full((4, 1), aug.COLOR_OPS.index(op),
                                                       np.int32)}
    out = apply(images, spec, draws)
    for image, factor, result in zip(images, factors, out):
        ref = tv_adjust(image.astype(np.float64) / 255.0, op, factor) * 255.0
        np.testing.assert_allclose(result, ref, atol=2e-3)


def test_jitter_runs_in_each_images_drawn_order():
    images = random_images(n=3)
    jitter = {"brightness": 0.9, "contrast": 0.9, "saturation": 0.9, "hue": 0.4}
    factors = {"brightness": [1.8, 0.4, 1.5], "contrast": [0.3, 1.7, 1.2],
               "saturation": [1.9, 0.2, 0.0], "hue": [0.3, -0.25, 0.0]}
    order = np.array([[3, 0, 1, 2], [1, 2, 3, 0], [0, 3, 2, 1]], np.int32)
    draws = {k: np.float32(v) for k, v in factors.items()}
    out = apply(images, {"color_jitter": jitter}, dict(draws, order=order))
    for i in range(3):
        ref = images[i].astype(np.float64) / 255.0
        for code in order[i]:
            op = aug.COLOR_OPS[code]
            ref = tv_adjust(ref, op, factors[op][i])
        np.testing.assert_allclose(out[i], ref * 255.0, atol=1e-2)
    # The order matters: brightness 1.8 (clipped) before contrast is not contrast first.
    swapped = apply(images, {"color_jitter": jitter}, dict(draws, order=order[:, ::-1]))
    assert np.abs(swapped[0] - out[0]).max() > 1.0


def test_draws_ranges_and_frequencies():
    spec = aug.augmentation_spec("haider2022")
    n = 20000
    draws = {k: v.numpy() for k, v in
             aug.draw_augmentation(spec, tf.constant([3, 4], tf.int64), n, 112, 112).items()}
    assert abs(draws["flip"].mean() - 0.5) < 0.02
    assert set(np.unique(draws["crop"])) == {0, 1, 2}  # int(1.02 * 112) = 114: offsets 0..2
    applied = draws["brightness"] != 1.0
    assert abs(applied.mean() - 0.8) < 0.02  # RandomApply(p=0.8)
    for op in ("brightness", "contrast", "saturation"):
        jittered = draws[op][applied]
        assert jittered.min() >= 0.6 and jittered.max() <= 1.4
        assert jittered.min() < 0.61 and jittered.max() > 1.39  # uniform over [0.6, 1.4]
        assert (draws[op][~applied] == 1.0).all()
    assert (draws["hue"][~applied] == 0.0).all()
    assert np.abs(draws["hue"]).max() <= 0.1 and np.abs(draws["hue"][applied]).max() > 0.099
    order = draws["order"]
    assert (np.sort(order, axis=1) == np.arange(4)).all()  # a permutation per image
    for slot in range(4):  # each operation about equally often in each place
        counts = np.bincount(order[:, slot], minlength=4) / n
        assert np.abs(counts - 0.25).max() < 0.02
    default = {k: v.numpy() for k, v in aug.draw_augmentation(
        aug.augmentation_spec(True), tf.constant([0, 1], tf.int64), n, 100, 50).items()}
    assert np.abs(default["rotation"]).max() <= 10.8 and np.abs(default["rotation"]).max() > 10.7
    assert default["zoom"].min() >= 0.9 and default["zoom"].max() <= 1.1
    assert np.abs(default["shift"]).max(0) == pytest.approx([5.0, 2.5], abs=0.01)  # 5 % of H, W
    assert default["brightness"].min() >= 0.8 and default["brightness"].max() <= 1.2
    assert "saturation" not in default and "hue" not in default


def test_augment_batch_flips_about_p_of_the_images_and_is_seeded():
    images = np.tile(np.arange(8, dtype=np.float32)[None, None, :, None], (400, 2, 1, 3))
    spec = aug.augmentation_spec({"flip": 0.3})
    out = aug.augment_batch(images, spec, tf.constant([5, 6], tf.int64)).numpy()
    flipped = out[:, 0, 0, 0] == 7.0
    assert (out[flipped] == images[flipped][:, :, ::-1]).all()
    assert (out[~flipped] == images[~flipped]).all()
    assert abs(flipped.mean() - 0.3) < 0.07
    again = aug.augment_batch(images, spec, tf.constant([5, 6], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)
    other = aug.augment_batch(images, spec, tf.constant([5, 7], tf.int64)).numpy()
    assert (other != out).any()


@pytest.mark.parametrize("name", ["default", "phan2022", "haider2022"])
def test_named_augmentations_keep_the_pixel_range(name):
    images = random_images(n=5, height=20, width=20).astype(np.uint8)
    out = aug.augment_batch(images, aug.augmentation_spec(name), tf.constant([1, 2], tf.int64))
    assert out.dtype == tf.float32 and out.shape == images.shape
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0
    assert float(tf.reduce_mean(tf.abs(out - images.astype(np.float32)))) > 1.0


# ---------------------------------------------------------------------------- datasets


def write_frames(root, videos=2, frames=6, size=16):
    """JPEGs of `videos` videos; frame k of video v is a textured face-sized patch."""
    rng = np.random.default_rng(1)
    rows = []
    for v in range(videos):
        folder = os.path.join(root, "cropped_aligned", f"v{v}")
        os.makedirs(folder)
        for k in range(1, frames + 1):
            path = os.path.join(folder, f"{k:05d}.jpg")
            cv2.imwrite(path, rng.integers(40, 220, (size, size, 3)).astype(np.uint8))
            rows.append((f"v{v}", k, path))
    n = len(rows)
    table = pd.DataFrame({"video": [r[0] for r in rows],
                          "frame": np.array([r[1] for r in rows], np.int64),
                          "valence": np.linspace(-0.9, 0.9, n).astype(np.float32),  # frame id
                          "arousal": np.zeros(n, np.float32),
                          "expr": np.arange(n, dtype=np.int64) % SCHEMA.num_expressions})
    for name in SCHEMA.aus:
        table[name] = np.zeros(n, np.int64)
    for column in ("image_aligned", "image_cropped"):
        table[column] = [r[2] for r in rows]
    table["has_image"] = table["has_image_cropped"] = True
    table["image_frame"] = table["image_frame_cropped"] = table["frame"]
    return FrameIndex(table, SCHEMA, root)


def epochs(ds, count=2):
    """Per epoch: images sorted by frame (valence is unique per frame)."""
    out = []
    for _ in range(count):
        images, ids = [], []
        for x, y in ds:
            images.append(x.numpy())
            ids.append(y["va"].numpy()[:, 0])
        images, ids = np.concatenate(images), np.concatenate(ids)
        out.append(images[np.argsort(ids)])
    return out


@pytest.mark.parametrize("cache", [False, True])
def test_frame_dataset_same_seed_same_draws_new_draws_each_epoch(tmp_path, cache):
    index = write_frames(str(tmp_path))

    def make(seed, augment="haider2022"):
        return pipeline.frame_dataset(index, batch_size=4, image_size=16, training=True,
                                      augment=augment, shuffle_seed=seed, cache=cache,
                                      normalization=None)

    first, second = epochs(make(0)), epochs(make(0))
    for a, b in zip(first, second):  # a fresh dataset with the same seed: the same draws
        np.testing.assert_array_equal(a, b)
    assert np.abs(first[0] - first[1]).mean() > 1.0  # a new draw each epoch, frame by frame
    assert np.abs(epochs(make(1), 1)[0] - first[0]).mean() > 1.0
    plain = epochs(make(0, augment=None), 1)[0]
    assert np.abs(first[0] - plain).mean() > 1.0
    evaluation = pipeline.frame_dataset(index, batch_size=4, image_size=16, augment=True,
                                        normalization=None)
    np.testing.assert_array_equal(epochs(evaluation, 1)[0], plain)  # no augmentation


def test_clip_frames_draw_independently_and_reproducibly(tmp_path):
    index = write_frames(str(tmp_path), videos=2, frames=8)
    clips = clip_data.clip_segments(index, length=4, frames="all", tasks=("va",))
    spec = {"color_jitter": {"brightness": 0.5}}

    def make(seed):
        return clip_data.clip_dataset(clips, tasks=("va",), image_size=16, batch_size=2,
                                      training=True, augment=spec, shuffle_seed=seed,
                                      normalization=None)

    plain = {round(float(y[0, 0]), 4): x for xs, ys in clip_data.clip_dataset(
        clips, tasks=("va",), image_size=16, batch_size=2, normalization=None)
        for x, y in zip(xs.numpy(), ys["va"].numpy())}
    runs = [[(x.numpy(), y["va"].numpy()) for x, y in make(0)] for _ in range(2)]
    for (x1, y1), (x2, y2) in zip(*runs):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    for frames, labels in runs[0]:
        for clip, label in zip(frames, labels):
            source = plain[round(float(label[0, 0]), 4)]
            # brightness only: each frame is its source times its own factor (few clip)
            bright = source > 5
            ratios = [np.median(clip[t][bright[t]] / source[t][bright[t]]) for t in range(4)]
            assert len(set(np.round(ratios, 3))) == 4, ratios
            assert all(0.5 <= r <= 1.5 for r in ratios)


# -------------------------------------------------------------------------------- spec


def test_spec_resolution():
    assert aug.augmentation_spec(None) is None and aug.augmentation_spec(False) is None
    assert aug.augmentation_spec(True) == aug.augmentation_spec("default")
    phan = aug.augmentation_spec("phan2022")
    assert phan == {"flip": 0.5, "color_jitter": {"brightness": 0.5, "contrast": 0.25,
                                                  "saturation": 0.25, "hue": 0.0, "p": 1.0}}
    mine = {"flip": 0.2, "color_jitter": {"hue": 0.05}}
    assert aug.augmentation_spec(mine)["color_jitter"]["hue"] == 0.05
    assert mine == {"flip": 0.2, "color_jitter": {"hue": 0.05}}  # not modified
    assert aug.augmentation_spec({"flip": 0.0}) is None  # nothing would change


@pytest.mark.parametrize("augment,message", [
    ("phan", "Unknown augmentation 'phan'.*expected one of"),
    ({"rotate": 10}, "Unknown augmentation key 'rotate'.*flip"),
    ({"color_jitter": {"brightnes": 0.2}}, "color_jitter.brightnes.*brightness"),
    ({"flip": 1.5}, "flip=1.5: expected a probability"),
    ({"flip": True}, "flip=True: expected a probability"),
    ({"resize_crop": 0.9}, "resize_crop=0.9: expected a resize scale >= 1"),
    ({"color_jitter": {"hue": 0.7}}, "color_jitter.hue=0.7: expected .*0, 0.5"),
    ({"color_jitter": {"contrast": -1}}, "color_jitter.contrast=-1: expected .*>= 0"),
    ({"color_jitter": {"brightness": 0.2, "p": "often"}}, "color_jitter.p='often'"),
    ({"affine": 10}, "affine=10: expected a dict"),
    ({"affine": {"rotation": "10"}}, "affine.rotation='10': expected .*degrees"),
    (3, "expected true/false"),
])
def test_spec_errors_name_the_key_and_what_is_expected(augment, message):
    with pytest.raises(ValueError, match=message):
        aug.augmentation_spec(augment)
