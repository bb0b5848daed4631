"""Bottleneck residual networks: ResNet, ResNeXt, SE-ResNet/SE-ResNeXt and CBAM variants.

One functional builder, `bottleneck_resnet`, covers the family that MTANet (Zhang & Gu,
ABAW 2020) compares: SENet-50 (its backbone), ResNeXt-50 (32x4d) and ResNeXt-50 + CBAM.

- He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (bottleneck block).
- Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017
  (ResNeXt: grouped 3x3 convolution, "cardinality").
- Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 (SE block on the residual branch).
- Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018 (channel, then spatial
  attention on the residual branch).

Layout and numerics follow the PyTorch code the papers used (torchvision ResNet, the SENet
and CBAM reference code): bias-free convolutions (`blocks.GroupedConv2D`, so ResNeXt's
grouped 3x3 convolutions run as TensorFlow's native op) each followed by BatchNorm (epsilon
1e-5, PyTorch momentum 0.1, i.e. Keras momentum 0.9), explicit zero padding so that strided
convolutions see the same pixels as in PyTorch, and a 1x1 projection shortcut at the first
block of every stage. Layer names are stable (`stem_conv`, `stage3_block2_conv2`,
`stage5_block1_se_reduce`, ...) so weight files load by name.

Presets (`PRESETS`) are plain dicts of `bottleneck_resnet` arguments; `build_preset` builds
one, `feature_width` gives a configuration's output channels and `count_params` counts its
weights, both without building it.

Input normalisation (`NORMALIZATION`): every preset takes `"imagenet"` input (RGB, ImageNet
mean and standard deviation on [0, 1]), as the PyTorch ImageNet weights these layouts come
from do: torchvision `resnet50` / `resnext50_32x4d`, timm `legacy_seresnet50` /
`seresnet50` (with `stride_in_1x1=True` for the legacy, Caffe-layout model) and the CBAM
authors' ImageNet models. The VGGFace2 SENet-50 (Caffe layout, `stride_in_1x1=True`)
expects `"vggface2"` input instead; see `affectkit.models.backbones.normalization`.
"""


import keras

from affectkit.models.backbones.blocks import (
    TORCH_BN_EPSILON,
    check_pooling,
    conv_bn,
    global_pooling,
    squeeze_excitation,
)
from affectkit.models.backbones.presets import builder_arguments, preset_config
from affectkit.models.backbones.weights import load_weights_file
from affectkit.models.layers.channel_pooling import ChannelPooling

ATTENTIONS = (None, "se", "cbam")
NORMALIZATION = "imagenet"

_STAGE50 = {
    "depths": (3, 4, 6, 3),
    "stem_width": 64,
    "widths": (256, 512, 1024, 2048),
}

PRESETS = {
    # He et al. 2016, Table 1 "50-layer": 25.6 M parameters.
    "resnet50": {**_STAGE50, "bottleneck_widths": (64, 128, 256, 512), "groups": 1,
                 "attention": None},
    # Hu et al. 2018, Table 1/2 SE-ResNet-50 (reduction 16): 28.1 M parameters.
    "senet50": {**_STAGE50, "bottleneck_widths": (64, 128, 256, 512), "groups": 1,
                "attention": "se", "se_ratio": 16},
    # Xie et al. 2017, Table 1 ResNeXt-50 (32x4d): 25.0 M parameters.
    "resnext50": {**_STAGE50, "bottleneck_widths": (128, 256, 512, 1024), "groups": 32,
                  "attention": None},
    # Woo et al. 2018, Table 4 ResNeXt50 (32x4d) + CBAM: 27.56 M parameters.
    "resnext50_cbam": {**_STAGE50, "bottleneck_widths": (128, 256, 512, 1024), "groups": 32,
                       "attention": "cbam", "se_ratio": 16, "spatial_kernel_size": 7},
}


def _attention_hidden(channels, ratio):
    return max(1, channels // ratio)


def convolutional_block_attention(x, ratio, kernel_size, name):
    """CBAM (Woo et al. 2018, Fig. 1-2): channel attention, then spatial attention.

    Channel attention: a shared MLP (Dense(C // ratio) + ReLU, Dense(C)) on the globally
    average- and max-pooled descriptors, summed, sigmoid, channel-wise rescaling.
    Spatial attention: the per-pixel channel max and mean (`ChannelPooling`, stacked max
    first as in the authors' code), a bias-free `kernel_size` convolution to one map,
    BatchNorm (as in the authors' code), sigmoid, pixel-wise rescaling.

    Args:
        x: symbolic tensor `(batch, height, width, C)`.
        ratio: reduction ratio of the channel MLP (16 in the paper).
        kernel_size: spatial attention kernel size (7 in the paper).
        name: prefix for the layer names (`{name}_channel_*`, `{name}_spatial_*`).

    Example:

    ```python
    inputs = keras.Input((14, 14, 256))
    outputs = convolutional_block_attention(inputs, ratio=16, kernel_size=7, name="cbam")
    ```
    """
    channels = x.shape[-1]
    reduce = keras.layers.Dense(_attention_hidden(channels, ratio), activation="relu",
                                name=f"{name}_channel_reduce")
    expand = keras.layers.Dense(channels, name=f"{name}_channel_expand")
    avg = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_channel_avg_pool")(x)
    mx = keras.layers.GlobalMaxPooling2D(keepdims=True, name=f"{name}_channel_max_pool")(x)
    gate = keras.layers.Add(name=f"{name}_channel_add")([expand(reduce(avg)), expand(reduce(mx))])
    gate = keras.layers.Activation("sigmoid", name=f"{name}_channel_sigmoid")(gate)
    x = keras.layers.Multiply(name=f"{name}_channel_scale")([x, gate])

    s = ChannelPooling(statistics=("max", "mean"), name=f"{name}_spatial_pool")(x)
    s = conv_bn(s, 1, kernel_size, name=f"{name}_spatial_conv", bn_name=f"{name}_spatial_bn")
    s = keras.layers.Activation("sigmoid", name=f"{name}_spatial_sigmoid")(s)
    return keras.layers.Multiply(name=f"{name}_spatial_scale")([x, s])


def _bottleneck_block(x, width, bottleneck_width, strides, groups, attention, se_ratio,
                      spatial_kernel_size, stride_in_1x1, layout, name):
    """1x1 -> 3x3 (grouped) -> 1x1 bottleneck with optional attention before the addition;
    `layout`: `conv_bn`'s padding and BatchNorm epsilon."""
    stride1, stride2 = (strides, 1) if stride_in_1x1 else (1, strides)

    shortcut = x
    if strides != 1 or x.shape[-1] != width:
        shortcut = conv_bn(x, width, 1, strides=strides, name=f"{name}_shortcut_conv",
                           bn_name=f"{name}_shortcut_bn", **layout)

    y = conv_bn(x, bottleneck_width, 1, strides=stride1, name=f"{name}_conv1",
                bn_name=f"{name}_bn1", relu_name=f"{name}_relu1", **layout)
    y = conv_bn(y, bottleneck_width, 3, strides=stride2, groups=groups, name=f"{name}_conv2",
                bn_name=f"{name}_bn2", relu_name=f"{name}_relu2", pad_name=f"{name}_pad2",
                **layout)
    y = conv_bn(y, width, 1, name=f"{name}_conv3", bn_name=f"{name}_bn3", **layout)

    if attention == "se":
        y = squeeze_excitation(y, _attention_hidden(width, se_ratio), name=f"{name}_se")
    elif attention == "cbam":
        y = convolutional_block_attention(y, se_ratio, spatial_kernel_size, name=f"{name}_cbam")

    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _resolve(depths, widths, bottleneck_widths, groups, attention, pooling):
    """Validates the stage hyperparameters; returns `(depths, widths, bottleneck_widths)`."""
    depths, widths = tuple(int(d) for d in depths), tuple(int(w) for w in widths)
    if bottleneck_widths is None:
        bottleneck_widths = tuple(w // 4 for w in widths)
    bottleneck_widths = tuple(int(w) for w in bottleneck_widths)
    if not (len(depths) == len(widths) == len(bottleneck_widths)) or not depths:
        raise ValueError(
            "bottleneck_resnet: `depths`, `widths` and `bottleneck_widths` need one entry per "
            f"stage; got depths={depths}, widths={widths}, bottleneck_widths={bottleneck_widths}."
        )
    if any(d < 1 for d in depths):
        raise ValueError(f"bottleneck_resnet: every depth must be >= 1; got {depths}.")
    bad = [w for w in bottleneck_widths if w % groups]
    if bad:
        raise ValueError(
            f"bottleneck_resnet: bottleneck widths {bad} are not divisible by groups={groups}."
        )
    if attention not in ATTENTIONS:
        raise ValueError(f"bottleneck_resnet: `attention` must be one of {ATTENTIONS}; "
                         f"got {attention!r}.")
    check_pooling(pooling, "bottleneck_resnet")
    return depths, widths, bottleneck_widths


def bottleneck_resnet(
    input_shape=(112, 112, 3),
    depths=(3, 4, 6, 3),
    stem_width=64,
    widths=(256, 512, 1024, 2048),
    bottleneck_widths=None,
    groups=1,
    attention="se",
    se_ratio=16,
    spatial_kernel_size=7,
    stride_in_1x1=False,
    stem_pool="torch",
    padding="torch",
    bn_epsilon=TORCH_BN_EPSILON,
    include_top=False,
    num_classes=1000,
    pooling=None,
    classifier_activation="softmax",
    weights=None,
    name="senet50",
):
    """Builds a bottleneck ResNet / ResNeXt / SE / CBAM network as a functional `keras.Model`.

    Stem: 7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pooling (He et al. 2016). Then one
    stage per entry of `depths` (named `stage2`, `stage3`, ... after the paper's conv2_x,
    conv3_x, ...), the first at stride 1 and the others at stride 2. Each block is a
    bottleneck 1x1 -> 3x3 -> 1x1 (He et al. 2016) whose 3x3 convolution may be grouped
    (ResNeXt, Xie et al. 2017), with squeeze-and-excitation (Hu et al. 2018) or CBAM (Woo
    et al. 2018) on the residual branch before the addition. At 112x112 input the default
    (SENet-50) returns a 4x4x2048 map, the MTANet backbone output.

    Args:
        input_shape: `(height, width, channels)`; spatial sizes may be `None`.
        depths: number of blocks in each stage.
        stem_width: filters of the 7x7 stem convolution.
        widths: output channels of each stage (4x the bottleneck width in ResNet-50).
        bottleneck_widths: channels of the 1x1 and 3x3 convolutions inside each stage's
            blocks; `None` gives `width // 4` (ResNet). ResNeXt-50 32x4d uses
            `(128, 256, 512, 1024)` (32 groups of 4 channels at the first stage).
        groups: groups ("cardinality") of the 3x3 convolutions; 32 for ResNeXt-50 32x4d.
        attention: `None`, `"se"` or `"cbam"`.
        se_ratio: reduction ratio of the attention MLP, for SE and for CBAM's channel
            attention (16 in both papers).
        spatial_kernel_size: kernel size of CBAM's spatial attention convolution (7).
        stride_in_1x1: put the stride on the first 1x1 convolution (Caffe / original SENet
            and VGGFace2 SENet-50 layout) instead of the 3x3 (torchvision layout, default).
        stem_pool: the stem's 3x3/2 max pooling: `"torch"` (padding 1, torchvision) or
            `"ceil"` (no padding, the last window cut by the border: PyTorch's
            `ceil_mode=True` of the Caffe SENet and timm's `legacy_seresnet50`; for stem
            maps of even side, e.g. 224 or 112 input) or `"valid"` (no padding, the last
            incomplete window dropped: keras-vggface's Keras port of the Caffe models).
        padding: `"torch"` (PyTorch's symmetric zero padding before strided
            convolutions) or `"same"` (Keras' padding everywhere: keras-vggface).
        bn_epsilon: BatchNorm epsilon: PyTorch's 1e-5; keras-vggface's SENet-50 uses 1e-4
            and its ResNet-50 Keras' 1e-3.
        include_top: add global average pooling and a `num_classes` Dense classifier.
        num_classes: classifier size when `include_top` (1000 for ImageNet, 8631 for the
            VGGFace2 SENet-50).
        pooling: when not `include_top`: `None` returns the final feature map
            `(batch, h, w, widths[-1])`, `"avg"` / `"max"` a pooled vector.
        classifier_activation: activation of the classifier (`"softmax"` or `None`).
        weights: `None` (random initialisation) or the path of a local weights file: a
            Keras `.weights.h5` (or `.keras`) file saved from the same configuration, or a
            legacy Keras `.h5` file, loaded by layer name. Nothing is ever downloaded.
        name: model name.

    Returns:
        A functional `keras.Model`.

    Example:

    ```python
    backbone = bottleneck_resnet(input_shape=(112, 112, 3))         # SENet-50
    backbone.output_shape                                            # (None, 4, 4, 2048)
    tiny = bottleneck_resnet((32, 32, 3), depths=(1, 1, 1, 1), stem_width=8,
                             widths=(16, 32, 64, 128), attention="cbam", groups=2)
    ```
    """
    depths, widths, bottleneck_widths = _resolve(
        depths, widths, bottleneck_widths, groups, attention, pooling
    )

    # Functional graph.
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    layout = dict(padding=padding, bn_epsilon=float(bn_epsilon))
    x = conv_bn(inputs, stem_width, 7, strides=2, name="stem_conv", bn_name="stem_bn",
                relu_name="stem_relu", pad_name="stem_pad", **layout)
    if stem_pool == "torch":
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    elif stem_pool == "ceil":
        # No padding, the last window cut by the border (PyTorch's ceil_mode=True): for an
        # even side, TensorFlow's "same" rule pads exactly that one pixel at the end.
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    elif stem_pool == "valid":
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    else:
        raise ValueError(f"stem_pool {stem_pool!r}: expected 'torch', 'ceil' or 'valid'.")
    for stage, (depth, width, bottleneck_width) in enumerate(
        zip(depths, widths, bottleneck_widths), start=2
    ):
        for block in range(1, depth + 1):
            strides = 2 if (block == 1 and stage > 2) else 1
            x = _bottleneck_block(
                x, width, bottleneck_width, strides, groups, attention, se_ratio,
                spatial_kernel_size, stride_in_1x1, layout, name=f"stage{stage}_block{block}",
            )
    if include_top:
        x = global_pooling(x, "avg")
        x = keras.layers.Dense(num_classes, activation=classifier_activation,
                               name="predictions")(x)
    else:
        x = global_pooling(x, pooling)
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        load_weights_file(model, weights)
    return model


def build_preset(name, **overrides):
    """Builds a preset of `PRESETS` with any `bottleneck_resnet` argument overridden.

    Args:
        name: `"resnet50"`, `"senet50"`, `"resnext50"` or `"resnext50_cbam"`.
        **overrides: arguments of `bottleneck_resnet` (`input_shape`, `include_top`,
            `weights`, `depths`, ...). The model is named after the preset unless `name`
            is overridden via `model_name`.

    Example:

    ```python
    backbone = build_preset("senet50", input_shape=(112, 112, 3))
    classifier = build_preset("resnext50", input_shape=(224, 224, 3), include_top=True)
    ```
    """
    return bottleneck_resnet(**preset_config(PRESETS, name, overrides))


def feature_width(preset, **overrides):
    """Channels of a configuration's output (map or pooled vector), without building it.

    `widths[-1]` (2048 for every preset), or `num_classes` with `include_top=True`.

    Example:

    ```python
    feature_width("resnext50")                        # 2048
    feature_width("senet50", widths=(16, 32, 64, 128))  # 128
    ```
    """
    config = builder_arguments(bottleneck_resnet, PRESETS, preset, overrides)
    if config["include_top"]:
        return int(config["num_classes"])
    return int(config["widths"][-1])


def count_params(preset, input_shape=(224, 224, 3), include_top=True, trainable_only=False,
                 **overrides):
    """Counts a configuration's weights from its hyperparameters, without building it.

    The count equals `model.count_params()` of the built model (which includes BatchNorm's
    moving mean and variance), or with `trainable_only=True` the sum of its trainable
    weights, which is what PyTorch and the papers count.

    Args:
        preset: a name in `PRESETS` or a dict of `bottleneck_resnet` arguments.
        input_shape: model input shape (only the channels affect the count).
        include_top: count the `num_classes` classifier.
        trainable_only: leave out BatchNorm moving statistics.
        **overrides: further `bottleneck_resnet` arguments.

    Example:

    ```python
    count_params("senet50", trainable_only=True)  # 28088024
    ```
    """
    config = {**builder_arguments(bottleneck_resnet, PRESETS, preset, overrides),
              "input_shape": input_shape, "include_top": include_top}
    groups, attention = config["groups"], config["attention"]
    ratio, kernel = config["se_ratio"], config["spatial_kernel_size"]
    depths, widths, bottleneck_widths = _resolve(
        config["depths"], config["widths"], config["bottleneck_widths"], groups, attention,
        config["pooling"],
    )
    bn = 2 if trainable_only else 4

    def conv(cin, cout, k, g=1):
        return k * k * (cin // g) * cout

    def dense(cin, cout):
        return cin * cout + cout

    channels = int(input_shape[-1])
    total = conv(channels, config["stem_width"], 7) + bn * config["stem_width"]
    channels = config["stem_width"]
    for stage, (depth, width, bw) in enumerate(zip(depths, widths, bottleneck_widths)):
        for block in range(depth):
            strides = 2 if (block == 0 and stage > 0) else 1
            if strides != 1 or channels != width:
                total += conv(channels, width, 1) + bn * width
            total += conv(channels, bw, 1) + conv(bw, bw, 3, groups) + conv(bw, width, 1)
            total += bn * (2 * bw + width)
            if attention in ("se", "cbam"):
                hidden = _attention_hidden(width, ratio)
                total += dense(width, hidden) + dense(hidden, width)
            if attention == "cbam":
                total += conv(2, 1, kernel) + bn
            channels = width
    if include_top:
        total += dense(channels, config["num_classes"])
    return total

