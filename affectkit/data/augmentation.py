"""The papers' image augmentations as plain data, run as stateless, batched TF ops.

An augmentation is a dict (so presets keep it as config), resolved by `augmentation_spec`:

    {"flip": 0.5,                                   horizontal flip with probability 0.5
     "resize_crop": 1.02,                           torchvision Resize(int(1.02 x size)) then
                                                    RandomCrop(size)
     "affine": {"rotation": 10.8, "zoom": 0.1,      rotation up to 10.8 degrees, scale in
                "shift": 0.05},                     [0.9, 1.1], shift up to 5 % (reflected fill)
     "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
                      "p": 0.8}}                    RandomApply(ColorJitter(...), p=0.8)

Every operation is optional and draws per image. A batch `(N, H, W, 3)` of 0..255 float32
pixels goes through, in this order:

1. geometry: `resize_crop`, `affine` and `flip`, composed into one affine map per image and
   applied as one bilinear resampling (coordinates beyond the border reflect, as
   `d c b a | a b c d | d c b a`). Resize is torchvision's (bilinear, half-pixel centres;
   upscaling, so antialiasing changes nothing); the crop offsets are whole pixels, drawn
   uniformly in `0..int(scale x size) - size` as `RandomCrop` does.
2. `color_jitter`, with torchvision `ColorJitter` semantics on the 0..255 range: factors
   uniform in `[max(0, 1 - b), 1 + b]` (hue shift in `[-h, h]` turns); brightness multiplies,
   contrast blends with the mean of the image's grayscale, saturation with the grayscale
   image (ITU-R 601-2 luma 0.299, 0.587, 0.114), hue shifts the HSV hue; the result is
   clipped to 0..255 after each, and the operations present run in a random order per image
   (as `ColorJitter` draws `randperm(4)` per call). `p` applies the whole jitter to each
   image with that probability (`RandomApply`). Flipping commutes with the jitter, so
   torchvision's `[crop, jitter, flip]` and this order give the same distribution.

Draws come from `tf.random.stateless_*` with one seed per batch (`batch_seeds`), so
tf.data runs batches in parallel and a seed reproduces them. `draw_augmentation` gives the
draws and `apply_augmentation` applies given draws (pure functions, for tests);
`augment_batch` does both. The resampling and each jitter step run as one XLA-compiled
pass each where the CPU build has XLA (3-10x faster than TF's own kernels on 2 cores;
frames/s in `tools/bench_pipeline.py`).

Named specs (`AUGMENTATIONS`): `"default"` (`data.augment: true`), `"phan2022"` (Phan et al.,
ABAW3 2022, per frame), `"haider2022"` (Haider et al., ABAW4 2022, the ABAW3 winner's code).

Example:
>>> spec = augmentation_spec("haider2022")
>>> images = augment_batch(images, spec, seed=tf.constant([0, 7], tf.int64))
"""

import functools
import math

import tensorflow as tf

AUGMENTATIONS = {
    # Face-safe and mild, the kinds of the Keras layers affectkit used before: flip,
    # rotation up to 10.8 degrees (Keras' 0.03 turn), zoom 10 %, shift 5 %, brightness and
    # contrast 20 % (here with torchvision's multiplicative brightness).
    "default": {"flip": 0.5, "affine": {"rotation": 10.8, "zoom": 0.1, "shift": 0.05},
                "color_jitter": {"brightness": 0.2, "contrast": 0.2}},
    # Phan et al. 2022, per frame: RandomHorizontalFlip(0.5), ColorJitter(brightness=0.5,
    # contrast=0.25, saturation=0.25) (REFERENCE.md section 6).
    "phan2022": {"flip": 0.5,
                 "color_jitter": {"brightness": 0.5, "contrast": 0.25, "saturation": 0.25}},
    # Haider et al. 2022, the ABAW3 winner's base code: Resize(1.02x), RandomCrop,
    # RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8), RandomHorizontalFlip (section 6).
    "haider2022": {"resize_crop": 1.02,
                   "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                                    "hue": 0.1, "p": 0.8},
                   "flip": 0.5},
}

COLOR_OPS = ("brightness", "contrast", "saturation", "hue")
LUMA_RGB = (0.299, 0.587, 0.114)

# key -> (lowest, highest, what is expected), None: unbounded
_LIMITS = {
    "flip": (0.0, 1.0, "a probability in [0, 1]"),
    "resize_crop": (1.0, None, "a resize scale >= 1 (1.02: Resize(1.02 x size), RandomCrop)"),
    "rotation": (0.0, 180.0, "the largest rotation in degrees, in [0, 180]"),
    "zoom": (0.0, 0.99, "the largest relative scale change, in [0, 0.99]"),
    "shift": (0.0, 1.0, "the largest shift as a fraction of the size, in [0, 1]"),
    "brightness": (0.0, None, "a jitter strength >= 0"),
    "contrast": (0.0, None, "a jitter strength >= 0"),
    "saturation": (0.0, None, "a jitter strength >= 0"),
    "hue": (0.0, 0.5, "the largest hue shift in turns, in [0, 0.5]"),
    "p": (0.0, 1.0, "a probability in [0, 1]"),
}
_GROUPS = {"affine": ("rotation", "zoom", "shift"), "color_jitter": COLOR_OPS + ("p",)}


def _checked_number(where, key, value):
    low, high, expected = _LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value and (high is None or value <= high)):
        raise ValueError(f"augmentation {where}{key}={value!r}: expected {expected}.")
    return float(value)


def augmentation_spec(augment):
    """The validated augmentation dict for `augment`, or None for no augmentation.

    Args:
        augment: `True` (`"default"`), a name of `AUGMENTATIONS`, a dict (see the module
            docstring; missing jitter strengths are 0, `p` defaults to 1), or `False`/`None`.
    Returns:
        A new dict with every given key checked, or None when nothing would change.
    Raises:
        ValueError: an unknown name or key, or a bad value; the message names the key and
            what is expected.
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        augment = "default"
    if isinstance(augment, str):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {augment!r}: expected one of "
                             f"{tuple(AUGMENTATIONS)}, a dict, true or false.")
        augment = AUGMENTATIONS[augment]
    if not isinstance(augment, dict):
        raise ValueError(f"augmentation {augment!r}: expected true/false, a name of "
                         f"{tuple(AUGMENTATIONS)} or a dict.")
    spec = {}
    for key, value in augment.items():
        if key in _GROUPS:
            if not isinstance(value, dict):
                raise ValueError(f"augmentation {key}={value!r}: expected a dict with some "
                                 f"of {_GROUPS[key]}.")
            unknown = sorted(set(value) - set(_GROUPS[key]))
            if unknown:
                raise ValueError(f"Unknown augmentation key {key}.{unknown[0]}: expected "
                                 f"some of {_GROUPS[key]}.")
            group = {name: _checked_number(f"{key}.", name, value.get(name, 0.0))
                     for name in _GROUPS[key] if name != "p"}
            if key == "color_jitter":
                group["p"] = _checked_number("color_jitter.", "p", value.get("p", 1.0))
            spec[key] = group
        elif key in ("flip", "resize_crop"):
            spec[key] = _checked_number("", key, value)
        else:
            raise ValueError(f"Unknown augmentation key {key!r}: expected some of "
                             f"('flip', 'resize_crop', 'affine', 'color_jitter').")
    return spec if _active(spec) else None


def _active(spec):
    affine = spec.get("affine", {})
    jitter = spec.get("color_jitter", {})
    return bool(spec.get("flip") or spec.get("resize_crop", 1.0) > 1.0
                or any(affine.values()) or (jitter.get("p") and _color_ops(spec)))


def _color_ops(spec):
    """The jitter operations the spec turns on, in `COLOR_OPS` order."""
    jitter = spec.get("color_jitter", {})
    return tuple(op for op in COLOR_OPS if jitter.get(op, 0.0) > 0.0)


def resized_size(size, scale):
    """torchvision `Resize(int(scale x size))` of one side."""
    return int(scale * size)


# ------------------------------------------------------------------------------ draws


def batch_seeds(seed):
    """An endless `tf.data.Dataset` of `(2,)` int64 seeds, one per batch.

    A new sequence each iteration (epoch) of the dataset it is zipped into, and the same
    sequence of sequences for the same `seed` (`Dataset.random(rerandomize_each_iteration)`).
    """
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def draw_augmentation(spec, seed, batch, height, width):
    """Per-image draws of `spec` for a batch, from a `(2,)` integer `seed`.

    Returns:
        dict of `(batch, ...)` tensors, only for the operations in `spec`: `flip` (bool),
        `crop` (int32 `(batch, 2)`: top, left offsets in the resized image), `rotation`
        (degrees), `zoom` (scale), `shift` (`(batch, 2)`: down, right in pixels),
        `brightness`, `contrast`, `saturation` (factors, 1 where the jitter is not applied),
        `hue` (turns, 0 there) and `order` (int32 `(batch, n)`: indices into `COLOR_OPS` of
        the n jitter operations in the order each image applies them).
    """
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), num=12)

    def uniform(i, low, high, shape=(batch,)):
        return tf.random.stateless_uniform(shape, seeds[i], low, high)

    draws = {}
    if spec.get("flip"):
        draws["flip"] = uniform(0, 0.0, 1.0) < spec["flip"]
    scale = spec.get("resize_crop", 1.0)
    if scale > 1.0:
        offsets = [tf.random.stateless_uniform((batch,), seeds[1 + axis], 0,
                                               resized_size(size, scale) - size + 1, tf.int32)
                   for axis, size in enumerate((height, width))]
        draws["crop"] = tf.stack(offsets, axis=1)
    affine = spec.get("affine", {})
    if any(affine.values()):
        rotation, zoom, shift = affine["rotation"], affine["zoom"], affine["shift"]
        draws["rotation"] = uniform(3, -rotation, rotation)
        draws["zoom"] = uniform(4, 1.0 - zoom, 1.0 + zoom)
        draws["shift"] = uniform(5, -shift, shift, (batch, 2)) * tf.constant(
            [height, width], tf.float32)
    ops = _color_ops(spec)
    jitter = spec.get("color_jitter", {})
    if ops and jitter["p"]:
        applied = uniform(6, 0.0, 1.0) < jitter["p"]
        for i, op in enumerate(ops):
            strength = jitter[op]
            if op == "hue":
                draws[op] = tf.where(applied, uniform(8 + i, -strength, strength), 0.0)
            else:
                factor = uniform(8 + i, max(0.0, 1.0 - strength), 1.0 + strength)
                draws[op] = tf.where(applied, factor, 1.0)
        codes = tf.constant([COLOR_OPS.index(op) for op in ops], tf.int32)
        draws["order"] = tf.gather(codes, tf.argsort(uniform(7, 0.0, 1.0, (batch, len(ops)))))
    return draws


# ----------------------------------------------------------------------------- geometry


def _source_maps(spec, draws, height, width):
    """`(N, 2, 3)` maps from output pixel `(x, y, 1)` to source `(x, y)` of the drawn
    flip, rotation / zoom / shift and resize + crop, composed."""
    batch = tf.shape(next(iter(draws.values())))[:1]
    ones, zeros = tf.ones(batch), tf.zeros(batch)

    def matrix(row_x, row_y):  # per-image rows (a, b, c): x' = a x + b y + c -> (N, 3, 3)
        return tf.stack([tf.stack(row_x, -1), tf.stack(row_y, -1),
                         tf.stack([zeros, zeros, ones], -1)], -2)

    maps = []  # from output to source coordinates, applied first to last
    if "flip" in draws:  # flips the output: x -> W - 1 - x
        sign = tf.where(draws["flip"], -1.0, 1.0)
        maps.append(matrix([sign, zeros, (1.0 - sign) * ((width - 1) / 2)],
                           [zeros, ones, zeros]))
    if "rotation" in draws:  # q = c + R(-angle) (p - shift - c) / zoom
        angle = draws["rotation"] * (math.pi / 180.0)
        cos, sin = tf.cos(angle) / draws["zoom"], tf.sin(angle) / draws["zoom"]
        cx, cy = (width - 1) / 2, (height - 1) / 2
        px, py = draws["shift"][:, 1] + cx, draws["shift"][:, 0] + cy
        maps.append(matrix([cos, -sin, cx - cos * px + sin * py],
                           [sin, cos, cy - sin * px - cos * py]))
    if "crop" in draws:  # crop at whole-pixel offsets of the Resize (half-pixel centres)
        scale = spec["resize_crop"]
        rx, ry = width / resized_size(width, scale), height / resized_size(height, scale)
        top, left = tf.unstack(tf.cast(draws["crop"], tf.float32), axis=1)
        maps.append(matrix([rx * ones, zeros, (left + 0.5) * rx - 0.5],
                           [zeros, ry * ones, (top + 0.5) * ry - 0.5]))
    total = maps[0]
    for step in maps[1:]:
        total = tf.matmul(step, total)
    return total[:, :2]


def _bilinear_taps(source, size):
    """The two pixel indices either side of float coordinates `source` and the weight of
    the second, beyond the border reflected as `d c b a | a b c d | d c b a`.

    The coordinate is reflected into [-0.5, size - 0.5] first (float ops: integer modulo
    on every tap index costs more than the gathers here); the taps are then clamped, which
    reflects the half pixel at either border onto the edge pixel."""
    period = 2.0 * size
    shifted = source + 0.5
    folded = shifted - period * tf.floor(shifted * (1.0 / period)) - 0.5
    folded = tf.where(folded > size - 0.5, period - 1.0 - folded, folded)
    low = tf.floor(folded)
    index = tf.cast(low, tf.int32)
    return tf.maximum(index, 0), tf.minimum(index + 1, size - 1), folded - low


# ------------------------------------------------------------------------------ stages


@functools.cache
def xla_on_cpu():
    """Whether XLA compiles on this build's CPU, where tf.data runs."""
    try:
        with tf.device("/CPU:0"):
            tf.function(lambda x: x + 1.0, jit_compile=True)(tf.zeros((2,)))
        return True
    except Exception:  # no XLA for this device or build
        return False


def _stage(function):
    """`function` as its own XLA cluster (one fused pass, 3-10x faster than TF's CPU
    kernels here), or plain TF ops where XLA does not compile. A stage keeps its result:
    one compiled function over all stages recomputes resampled or jittered pixels inside
    every later fusion that reads them (measured 3-5x slower)."""
    compiled = tf.function(function, jit_compile=True)

    @functools.wraps(function)
    def run(*args):
        return (compiled if xla_on_cpu() else function)(*args)

    return run


def _per_image(values):
    return values[:, None, None, None]


@_stage
def _flip(images, flip):
    """The images where `flip` is true, mirrored left to right."""
    images = tf.cast(images, tf.float32)
    return tf.where(_per_image(flip), tf.reverse(images, axis=[2]), images)


@_stage
def _resample(images, maps):
    """Bilinear samples of `images` `(N, H, W, 3)` at `maps` `(N, 2, 3)` of each pixel."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    y, x = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                       indexing="ij")
    coeff = maps[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    left, right, wx = _bilinear_taps(coeff[:, 0, 0] * x + coeff[:, 0, 1] * y + coeff[:, 0, 2],
                                     width)
    top, bottom, wy = _bilinear_taps(coeff[:, 1, 0] * x + coeff[:, 1, 1] * y + coeff[:, 1, 2],
                                     height)
    pixels = tf.reshape(images, (-1, 3))  # gathered as they are (uint8: 4x less to move)
    first = (tf.range(batch) * (height * width))[:, None, None]

    def row(index):
        start = first + index * width
        low, high = (tf.cast(tf.gather(pixels, start + column), tf.float32)
                     for column in (left, right))
        return low + wx[..., None] * (high - low)

    upper = row(top)
    return upper + wy[..., None] * (row(bottom) - upper)


def _shift_hue(images, shift):
    """torchvision `adjust_hue` on 0..255 pixels: the HSV hue plus `shift` turns, with
    value and saturation kept (so each pixel keeps its max and min channel), computed
    without the HSV round trip (2x faster than `tf.image.rgb_to_hsv` and back)."""
    red, green, blue = images[..., 0:1], images[..., 1:2], images[..., 2:3]
    high = tf.maximum(tf.maximum(red, green), blue)
    low = tf.minimum(tf.minimum(red, green), blue)
    chroma = high - low
    inverse = 1.0 / tf.where(chroma > 0.0, chroma, 1.0)
    hue6 = tf.where(high == red, (green - blue) * inverse,  # hue in sixths of a turn
                    tf.where(high == green, (blue - red) * inverse + 2.0,
                             (red - green) * inverse + 4.0))
    hue6 = hue6 + 6.0 * _per_image(shift)
    hue6 = hue6 - 6.0 * tf.floor(hue6 * (1.0 / 6.0))
    # Each channel's share of the chroma at hue6 (R: |h - 3| - 1, G: 2 - |h - 2|, B: 2 - |h - 4|)
    centre, sign, offset = ((3.0, 2.0, 4.0), (1.0, -1.0, -1.0), (-1.0, 2.0, 2.0))
    share = tf.clip_by_value(tf.constant(sign) * tf.abs(hue6 - tf.constant(centre))
                             + tf.constant(offset), 0.0, 1.0)
    return low + chroma * share


def _gray_mean(images):
    """Mean grayscale of each image: one matrix-vector product (XLA's reductions over an
    image run 6x slower here)."""
    height, width = images.shape[1], images.shape[2]
    weights = tf.tile(tf.constant(LUMA_RGB, tf.float32) / (height * width), [height * width])
    return tf.linalg.matvec(tf.reshape(images, (-1, height * width * 3)), weights)


@_stage
def _jitter_slot(images, scale, gray_weight, mean_weight, hue=None, is_hue=None, flip=None):
    """One jitter step per image: `clip(scale x + gray_weight gray(x) + mean_weight
    mean(gray(x)))` covers brightness, contrast and saturation (identity: 1, 0, 0); with
    `hue`, the images where `is_hue` shift their hue instead; with `flip`, the images
    where it is true are flipped first (the mean does not change)."""
    images = tf.cast(images, tf.float32)
    mean = _gray_mean(images)
    if flip is not None:
        images = tf.where(_per_image(flip), tf.reverse(images, axis=[2]), images)
    gray = (LUMA_RGB[0] * images[..., 0:1] + LUMA_RGB[1] * images[..., 1:2]
            + LUMA_RGB[2] * images[..., 2:3])
    blended = tf.clip_by_value(_per_image(scale) * images + _per_image(gray_weight) * gray
                               + _per_image(mean_weight * mean), 0.0, 255.0)
    if hue is None:
        return blended
    return tf.where(_per_image(is_hue & (hue != 0.0)), _shift_hue(images, hue), blended)


# ------------------------------------------------------------------------------- apply


def _color_jitter(images, draws, flip=None):
    """The jitter operations in each image's drawn order, one `_jitter_slot` per step;
    `flip` (per image) flips the images first."""
    order = draws["order"]
    hue = "hue" in draws
    for slot in range(order.shape[1]):
        op = order[:, slot]
        scale = tf.ones_like(op, tf.float32)
        gray_weight = mean_weight = tf.zeros_like(scale)
        for code, name in enumerate(COLOR_OPS[:3]):
            if name in draws:
                picked = op == code
                scale = tf.where(picked, draws[name], scale)
                if name == "contrast":
                    mean_weight = tf.where(picked, 1.0 - draws[name], 0.0)
                elif name == "saturation":
                    gray_weight = tf.where(picked, 1.0 - draws[name], 0.0)
        images = _jitter_slot(images, scale, gray_weight, mean_weight,
                              draws["hue"] if hue else None,
                              op == COLOR_OPS.index("hue") if hue else None,
                              flip if slot == 0 else None)
    return images


def apply_augmentation(images, spec, draws):
    """`images` `(N, H, W, 3)` of 0..255 (uint8 or float) augmented with the given `draws`
    (`draw_augmentation`): the geometry in one resampling, then the colour jitter.

    Returns:
        float32 `(N, H, W, 3)` in 0..255.
    """
    images = tf.convert_to_tensor(images)
    flip = draws.get("flip")
    if "rotation" in draws or "crop" in draws:  # the flip goes into the resampling
        images = _resample(images, _source_maps(spec, draws, images.shape[1],
                                                images.shape[2]))
        flip = None
    if "order" in draws:
        images = _color_jitter(images, draws, flip)
    elif flip is not None:
        images = _flip(images, flip)
    return tf.cast(images, tf.float32)


def augment_batch(images, spec, seed):
    """Augments a batch with fresh draws of `spec` from `seed`.

    Args:
        images: `(N, H, W, 3)` of 0..255, uint8 or float, with static H and W.
        spec: from `augmentation_spec` (not None).
        seed: `(2,)` integer tensor, e.g. from `batch_seeds`.
    Returns:
        float32 `(N, H, W, 3)` in 0..255.
    """
    images = tf.convert_to_tensor(images)
    draws = draw_augmentation(spec, seed, tf.shape(images)[0], images.shape[1],
                              images.shape[2])
    return apply_augmentation(images, spec, draws)
