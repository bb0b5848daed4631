"""RegNet: RegNetX and RegNetY (Radosavovic et al., "Designing Network Design Spaces", CVPR 2020).

One functional builder, `regnet`, takes the per-stage depths and widths directly; the paper's
quantised linear rule that derives them from `(w_0, w_a, w_m, depth)` is `stages_from_design`.
Phan et al. (ABAW 2022) use RegNetY-1.6GF at 112x112 and keep its 888-d pooled feature per
frame (`regnet(..., pooling="avg")`).

Layout and numerics follow torchvision's `RegNet`, the implementation Phan et al. used:

- stem: 3x3/2 convolution (`stem_width` filters), BatchNorm, ReLU;
- four stages of X blocks ("ResBottleneckBlock"): 1x1 convolution to the bottleneck width
  `w_b = round(width * bottleneck_ratio)`, 3x3 grouped convolution (groups of `group_width`
  channels; stride 2 in the first block of each stage), for RegNetY a squeeze-and-excitation
  block whose squeeze width is `round(se_ratio * block input width)`, 1x1 convolution to
  `width`; each convolution bias-free with BatchNorm, ReLU after the first two; a 1x1/stride
  projection + BatchNorm on the shortcut where the shape changes; ReLU after the addition;
- BatchNorm epsilon 1e-5 and PyTorch momentum 0.1 (Keras momentum 0.9); explicit zero padding
  before strided 3x3 convolutions so that they see the same pixels as in PyTorch;
- initialisation as torchvision: convolutions normal with std sqrt(2 / fan_out), the
  classifier normal with std 0.01.

Layer names are stable (`stem_conv`, `stage3_block5_b_conv`, `stage4_block1_se_reduce`,
`stage2_block1_proj_bn`, ...), so weight files load by name. The convolutions are
`blocks.GroupedConv2D`, a registered `Conv2D` that runs grouped convolutions as TensorFlow's
native op instead of Keras' per-op XLA path (about 18x faster training on this CPU; see its
docstring). Reloading a saved RegNet therefore needs that module imported, which
`import affectkit` does through the backbone registry.

Presets (`PRESETS`) are plain dicts of `regnet` arguments with torchvision's settings;
`DESIGN_PARAMETERS` holds the paper's design-space parameters they are derived from;
`build_preset` builds one, `feature_width` gives a configuration's output channels and
`count_params` counts its weights, both without building it.

Input normalisation (`NORMALIZATION`): every preset takes `"imagenet"` input (RGB in [0, 1]
minus the ImageNet mean, divided by its standard deviation), as torchvision's (and timm's)
ImageNet RegNet weights do; `normalization_layer("imagenet")` is the core layer for it.
"""

import math

import keras
import numpy as np

from affectkit.models.backbones.blocks import (
    check_pooling,
    conv_bn,
    global_pooling,
    squeeze_excitation,
)
from affectkit.models.backbones.presets import builder_arguments, preset_config
from affectkit.models.backbones.weights import load_weights_file

NORMALIZATION = "imagenet"
WIDTH_QUANTUM = 8  # block widths are multiples of 8 (paper section 3.3)

# Radosavovic et al. 2020, Appendix C (as in torchvision's model builders): design-space
# parameters from which `stages_from_design` derives each preset's depths and widths.
DESIGN_PARAMETERS = {
    "regnetx_400mf": {"w_0": 24, "w_a": 24.48, "w_m": 2.54, "depth": 22, "group_width": 16},
    "regnetx_800mf": {"w_0": 56, "w_a": 35.73, "w_m": 2.28, "depth": 16, "group_width": 16},
    "regnetx_1.6gf": {"w_0": 80, "w_a": 34.01, "w_m": 2.25, "depth": 18, "group_width": 24},
    "regnetx_3.2gf": {"w_0": 88, "w_a": 26.31, "w_m": 2.25, "depth": 25, "group_width": 48},
    "regnety_400mf": {"w_0": 48, "w_a": 27.89, "w_m": 2.09, "depth": 16, "group_width": 8},
    "regnety_800mf": {"w_0": 56, "w_a": 38.84, "w_m": 2.4, "depth": 14, "group_width": 16},
    "regnety_1.6gf": {"w_0": 48, "w_a": 20.71, "w_m": 2.65, "depth": 27, "group_width": 24},
    "regnety_3.2gf": {"w_0": 80, "w_a": 42.63, "w_m": 2.66, "depth": 21, "group_width": 24},
}

_X = {"bottleneck_ratio": 1.0, "se_ratio": None, "stem_width": 32}
_Y = {"bottleneck_ratio": 1.0, "se_ratio": 0.25, "stem_width": 32}

# Parameter counts in the comments: trainable weights with the 1000-class head, i.e. what
# torchvision reports (`num_params`); `count_params(name, trainable_only=True)` gives them.
PRESETS = {
    # 5,495,976 parameters. torchvision rounds the last width to 400 (pycls: 384).
    "regnetx_400mf": {**_X, "depths": (1, 2, 7, 12), "widths": (32, 64, 160, 400),
                      "group_width": 16},
    # 7,259,656 parameters.
    "regnetx_800mf": {**_X, "depths": (1, 3, 7, 5), "widths": (64, 128, 288, 672),
                      "group_width": 16},
    # 9,190,136 parameters.
    "regnetx_1.6gf": {**_X, "depths": (2, 4, 10, 2), "widths": (72, 168, 408, 912),
                      "group_width": 24},
    # 15,296,552 parameters.
    "regnetx_3.2gf": {**_X, "depths": (2, 6, 15, 2), "widths": (96, 192, 432, 1008),
                      "group_width": 48},
    # 4,344,144 parameters.
    "regnety_400mf": {**_Y, "depths": (1, 3, 6, 6), "widths": (48, 104, 208, 440),
                      "group_width": 8},
    # 6,432,512 parameters.
    "regnety_800mf": {**_Y, "depths": (1, 3, 8, 2), "widths": (64, 144, 320, 784),
                      "group_width": 16},
    # 11,202,430 parameters (11.2 M; Phan et al. 2022's backbone, 888-d feature).
    "regnety_1.6gf": {**_Y, "depths": (2, 6, 17, 2), "widths": (48, 120, 336, 888),
                      "group_width": 24},
    # 19,436,338 parameters.
    "regnety_3.2gf": {**_Y, "depths": (2, 5, 13, 1), "widths": (72, 216, 576, 1512),
                      "group_width": 24},
}


def _make_divisible(value, divisor):
    """Nearest multiple of `divisor`, not below `divisor` nor 10% below `value` (torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def stages_from_design(w_0, w_a, w_m, depth, group_width, bottleneck_ratio=1.0):
    """Per-stage depths and widths from RegNet design-space parameters.

    The paper's quantised linear rule (Radosavovic et al. 2020, eq. 2-4): block `j` of `depth`
    gets the width `u_j = w_0 + w_a * j`, which is snapped to `w_0 * w_m ** s_j` with
    `s_j = round(log(u_j / w_0) / log(w_m))` and rounded to a multiple of 8. Consecutive
    blocks of equal width form a stage. As in torchvision, each stage's bottleneck width is
    then made divisible by its group width (`min(group_width, bottleneck width)`).

    Args:
        w_0: initial width (> 0, a multiple of 8).
        w_a: width slope (>= 0).
        w_m: width multiplier between stages (> 1).
        depth: total number of blocks.
        group_width: channels per group of the 3x3 convolutions.
        bottleneck_ratio: bottleneck width / block width (1.0 in RegNetX/Y).

    Returns:
        A dict with `depths` and `widths`, tuples with one entry per stage.

    Example:

    ```python
    stages_from_design(w_0=48, w_a=20.71, w_m=2.65, depth=27, group_width=24)
    # {"depths": (2, 6, 17, 2), "widths": (48, 120, 336, 888)}  (RegNetY-1.6GF)
    ```
    """
    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % WIDTH_QUANTUM or depth < 1:
        raise ValueError(
            "stages_from_design: expected w_0 > 0 and a multiple of 8, w_a >= 0, w_m > 1 and "
            f"depth >= 1; got w_0={w_0}, w_a={w_a}, w_m={w_m}, depth={depth}."
        )
    linear = np.arange(depth) * w_a + w_0
    steps = np.round(np.log(linear / w_0) / math.log(w_m))  # round half to even, as torch
    block_widths = np.round(w_0 * np.power(w_m, steps) / WIDTH_QUANTUM) * WIDTH_QUANTUM
    widths, depths = [], []
    for width in block_widths.astype(int).tolist():
        if widths and widths[-1] == width:
            depths[-1] += 1
        else:
            widths.append(width)
            depths.append(1)
    adjusted = []
    for width in widths:
        bottleneck = int(width * bottleneck_ratio)
        bottleneck = _make_divisible(bottleneck, min(group_width, bottleneck))
        adjusted.append(int(bottleneck / bottleneck_ratio))
    return {"depths": tuple(depths), "widths": tuple(adjusted)}


def _conv_initializer():
    # torchvision: normal(0, sqrt(2 / fan_out)), fan_out = k * k * out_channels.
    return keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def _conv_bn(x, filters, kernel_size, name, strides=1, groups=1, activation=True):
    """`blocks.conv_bn` with RegNet's layer names (`{name}_pad`, `_conv`, `_bn`, `_relu`)
    and torchvision's initialisation."""
    return conv_bn(x, filters, kernel_size, name=f"{name}_conv", bn_name=f"{name}_bn",
                   relu_name=f"{name}_relu" if activation else None, pad_name=f"{name}_pad",
                   strides=strides, groups=groups, kernel_initializer=_conv_initializer())


def _bottleneck_width(width, bottleneck_ratio, group_width):
    """Bottleneck width and groups of a stage's 3x3 convolution (torchvision's rule)."""
    bottleneck = int(round(width * bottleneck_ratio))
    group_width = min(group_width, bottleneck)
    return bottleneck, bottleneck // group_width


def _squeeze_width(se_ratio, width_in):
    return int(round(se_ratio * width_in)) if se_ratio else 0


def _x_block(x, width, strides, group_width, bottleneck_ratio, se_ratio, name):
    """RegNet X/Y block: x + F(x), F = 1x1, 3x3 grouped [+ SE], 1x1; ReLU after the sum."""
    width_in = x.shape[-1]
    bottleneck, groups = _bottleneck_width(width, bottleneck_ratio, group_width)

    shortcut = x
    if strides != 1 or width_in != width:
        shortcut = _conv_bn(x, width, 1, strides=strides, activation=False, name=f"{name}_proj")

    y = _conv_bn(x, bottleneck, 1, name=f"{name}_a")
    y = _conv_bn(y, bottleneck, 3, strides=strides, groups=groups, name=f"{name}_b")
    if se_ratio:
        y = squeeze_excitation(y, _squeeze_width(se_ratio, width_in), name=f"{name}_se",
                               kernel_initializer=_conv_initializer())
    y = _conv_bn(y, width, 1, activation=False, name=f"{name}_c")

    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _resolve(depths, widths, group_width, bottleneck_ratio, pooling):
    """Validates the stage hyperparameters; returns `(depths, widths)` as int tuples."""
    depths, widths = tuple(int(d) for d in depths), tuple(int(w) for w in widths)
    if len(depths) != len(widths) or not depths:
        raise ValueError(
            "regnet: `depths` and `widths` need one entry per stage; "
            f"got depths={depths}, widths={widths}."
        )
    if any(d < 1 for d in depths) or any(w < 1 for w in widths):
        raise ValueError(f"regnet: depths and widths must be >= 1; got {depths}, {widths}.")
    if group_width < 1 or bottleneck_ratio <= 0:
        raise ValueError(f"regnet: need group_width >= 1 and bottleneck_ratio > 0; got "
                         f"group_width={group_width}, bottleneck_ratio={bottleneck_ratio}.")
    bad = []
    for width in widths:
        bottleneck = int(round(width * bottleneck_ratio))
        if bottleneck < 1 or bottleneck % min(group_width, bottleneck):
            bad.append(width)
    if bad:
        raise ValueError(
            f"regnet: the bottleneck widths of stages with widths {bad} (x bottleneck_ratio="
            f"{bottleneck_ratio}) are not divisible by group_width={group_width}; "
            "`stages_from_design` gives compatible widths."
        )
    check_pooling(pooling, "regnet")
    return depths, widths


def regnet(
    input_shape=(112, 112, 3),
    depths=(2, 6, 17, 2),
    widths=(48, 120, 336, 888),
    group_width=24,
    bottleneck_ratio=1.0,
    se_ratio=0.25,
    stem_width=32,
    include_top=False,
    num_classes=1000,
    pooling=None,
    classifier_activation="softmax",
    weights=None,
    name="regnety_1.6gf",
):
    """Builds a RegNetX / RegNetY network (Radosavovic et al. 2020) as a functional `keras.Model`.

    Stem: 3x3/2 convolution, BatchNorm, ReLU. Then one stage per entry of `depths` (named
    `stage1` ... `stage4`, torchvision's `block1` ... `block4`), each starting with a stride-2
    block, so the output stride is 32: at 112x112 input RegNetY-1.6GF (the default) returns a
    4x4x888 map, at 224x224 a 7x7x888 map. Blocks are X blocks (1x1, 3x3 grouped, 1x1
    bottleneck with a residual connection); `se_ratio` adds squeeze-and-excitation (RegNetY).

    Args:
        input_shape: `(height, width, channels)`; spatial sizes may be `None`.
        depths: number of blocks in each stage.
        widths: output channels of each stage (multiples of the group width when
            `bottleneck_ratio` is 1; `stages_from_design` derives both from the paper's
            design-space parameters).
        group_width: channels per group of the 3x3 convolutions (a stage narrower than this
            uses one group).
        bottleneck_ratio: bottleneck width / block width (1.0 for RegNetX/Y).
        se_ratio: squeeze width of the SE block as a fraction of the block's input width
            (0.25 for RegNetY); `None` or 0 gives RegNetX (no SE).
        stem_width: filters of the stem convolution (32).
        include_top: add global average pooling and a `num_classes` Dense classifier.
        num_classes: classifier size when `include_top`.
        pooling: when not `include_top`: `None` returns the final feature map
            `(batch, h, w, widths[-1])`, `"avg"` / `"max"` a pooled `widths[-1]` vector
            (Phan et al. 2022 use the 888-d average-pooled RegNetY-1.6GF feature).
        classifier_activation: activation of the classifier (`"softmax"` or `None`).
        weights: `None` (random initialisation) or the path of a local weights file: a
            Keras `.weights.h5` (or `.keras`) file saved from the same configuration, or a
            legacy Keras `.h5` file, loaded by layer name. Nothing is ever downloaded.
        name: model name.

    Returns:
        A functional `keras.Model`.

    Example:

    ```python
    backbone = regnet(input_shape=(112, 112, 3), pooling="avg")     # RegNetY-1.6GF
    backbone.output_shape                                            # (None, 888)
    tiny = regnet((32, 32, 3), depths=(1, 1, 1, 1), widths=(8, 16, 24, 32), group_width=8,
                  stem_width=8)
    ```
    """
    depths, widths = _resolve(depths, widths, group_width, bottleneck_ratio, pooling)

    # Functional graph.
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv_bn(inputs, stem_width, 3, strides=2, name="stem")
    for stage, (depth, width) in enumerate(zip(depths, widths), start=1):
        for block in range(1, depth + 1):
            x = _x_block(
                x, width, 2 if block == 1 else 1, group_width, bottleneck_ratio, se_ratio,
                name=f"stage{stage}_block{block}",
            )
    if include_top:
        x = global_pooling(x, "avg")
        x = keras.layers.Dense(
            num_classes, activation=classifier_activation,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="predictions",
        )(x)
    else:
        x = global_pooling(x, pooling)
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        load_weights_file(model, weights)
    return model


def build_preset(name, **overrides):
    """Builds a preset of `PRESETS` with any `regnet` argument overridden.

    Args:
        name: a key of `PRESETS`, e.g. `"regnety_1.6gf"` or `"regnetx_400mf"`.
        **overrides: arguments of `regnet` (`input_shape`, `pooling`, `include_top`,
            `weights`, ...). The model is named after the preset unless `model_name` is given.

    Example:

    ```python
    backbone = build_preset("regnety_1.6gf", input_shape=(112, 112, 3), pooling="avg")
    ```
    """
    return regnet(**preset_config(PRESETS, name, overrides))


def feature_width(preset, **overrides):
    """Channels of a configuration's output (map or pooled vector), without building it.

    `widths[-1]` (888 for RegNetY-1.6GF), or `num_classes` with `include_top=True`.

    Example:

    ```python
    feature_width("regnety_1.6gf")   # 888
    ```
    """
    config = builder_arguments(regnet, PRESETS, preset, overrides)
    if config["include_top"]:
        return int(config["num_classes"])
    return int(config["widths"][-1])


def count_params(preset, input_shape=(224, 224, 3), include_top=True, trainable_only=False,
                 **overrides):
    """Counts a configuration's weights from its hyperparameters, without building it.

    The count equals `model.count_params()` of the built model (which includes BatchNorm's
    moving mean and variance), or with `trainable_only=True` the sum of its trainable
    weights, which is what torchvision and the paper count.

    Args:
        preset: a name in `PRESETS` or a dict of `regnet` arguments.
        input_shape: model input shape (only the channels affect the count).
        include_top: count the `num_classes` classifier.
        trainable_only: leave out BatchNorm moving statistics.
        **overrides: further `regnet` arguments.

    Example:

    ```python
    count_params("regnety_1.6gf", trainable_only=True)  # 11202430
    ```
    """
    config = builder_arguments(regnet, PRESETS, preset, overrides)
    group_width, ratio = config["group_width"], config["bottleneck_ratio"]
    se_ratio = config["se_ratio"]
    depths, widths = _resolve(config["depths"], config["widths"], group_width, ratio,
                              config["pooling"])
    bn = 2 if trainable_only else 4

    def conv(cin, cout, k, groups=1):
        return k * k * (cin // groups) * cout

    stem = config["stem_width"]
    total = conv(int(input_shape[-1]), stem, 3) + bn * stem
    channels = stem
    for depth, width in zip(depths, widths):
        bottleneck, groups = _bottleneck_width(width, ratio, group_width)
        for block in range(depth):
            if block == 0 or channels != width:
                total += conv(channels, width, 1) + bn * width
            total += conv(channels, bottleneck, 1) + conv(bottleneck, bottleneck, 3, groups)
            total += conv(bottleneck, width, 1) + bn * (2 * bottleneck + width)
            squeeze = _squeeze_width(se_ratio, channels)
            if squeeze:
                total += 2 * bottleneck * squeeze + squeeze + bottleneck
            channels = width
    if include_top:
        total += channels * config["num_classes"] + config["num_classes"]
    return total

