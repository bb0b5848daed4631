"""VGGFace2 ResNet-50 (Cao et al. 2018) and the face feature model of Do et al. (ABAW 2020).

- Cao, Shen, Xie, Parkhi, Zisserman, "VGGFace2: A dataset for recognising faces across pose
  and age", FG 2018: a ResNet-50 trained on VGGFace2's 8631 identities.
- He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (bottleneck block).
- Do et al., "Affective Expression Analysis in-the-wild using Multi-Task Temporal Statistical
  Deep Learning Model", FG 2020 (ABAW 1): the VGGFace2 ResNet-50, fine-tuned on facial
  expressions from its 4th stage on, gives every frame a 2048-d feature and 7 probabilities.

The network follows the Keras port most VGGFace2 users have, keras-vggface (R. C. Malli,
`keras_vggface/models.py`, `RESNET50`), which follows the original Caffe model:

- a bias-free 7x7/2 stem convolution with Keras' 'same' padding, BatchNorm, ReLU and a 3x3/2
  max pooling without padding (224 -> 112 -> 55); every convolution is a
  `blocks.GroupedConv2D` (a plain convolution here: no groups) with Keras' 'same' padding;
- bottleneck blocks 1x1 -> 3x3 -> 1x1, all convolutions bias-free, each followed by
  BatchNorm; the stride of a stage sits on the first 1x1 convolution and on the projection
  shortcut (Caffe layout, not torchvision's stride on the 3x3);
- the first block of every stage (stage 2 included, at stride 1) has a 1x1 projection
  shortcut;
- BatchNorm with Keras' defaults (epsilon 1e-3, momentum 0.99), as keras-vggface builds it,
  so its converted weights give its outputs (`bn_epsilon` can be set to Caffe's 1e-5).

Layer names. keras-vggface names layers after the Caffe model: `conv1/7x7_s2`,
`conv1/7x7_s2/bn`, `conv2_1_1x1_reduce`, `conv2_1_1x1_reduce/bn`, `conv2_1_3x3`, ...,
`conv5_3_1x1_increase/bn`, `classifier`. Keras 3 rejects '/' in layer names, so here every
'/' is written '_' (`keras_layer_name`): `conv1_7x7_s2`, `conv1_7x7_s2_bn`,
`conv2_1_1x1_reduce_bn`, ...; names without '/' (`conv2_1_1x1_reduce`, `conv4_1_1x1_proj`,
`classifier`, `avg_pool`) are unchanged. `load_vggface2_weights` applies the same mapping to
the layer names of a legacy (Keras 2) `.h5` file, so the `.h5` weight files of keras-vggface
(`rcmalli_vggface_tf_resnet50.h5`, `..._notop_resnet50.h5`) and models fine-tuned with it
load by name. Layers without weights get stable names too (`conv2_1_1x1_reduce_relu`,
`conv2_1_add`, `conv2_1_relu`, `pool1_3x3_s2`).

One difference: keras-vggface ends with `AveragePooling2D((7, 7), name="avg_pool")`, which
needs 224x224 input. Here `avg_pool` is a global average pooling: the same numbers at 224,
and any input size works.

Input normalisation (`NORMALIZATION = "vggface2"`; keras-vggface
`utils.preprocess_input(x, version=2)`): RGB -> BGR on 0-255, minus the VGGFace2 mean
(B, G, R) = (91.4953, 103.8827, 131.0912), what the VGGFace2 weights (keras-vggface's
`rcmalli_vggface_tf_*resnet50.h5`) expect. `normalization.VGGFace2Preprocessing` does this
inside a model whose input is RGB in [0, 1], as every affectkit model's is.

Presets (`PRESETS`): `"vggface2_resnet50"`, the network above; `build_preset` builds it and
`feature_width` gives its output channels without building it.
"""


import keras

from affectkit.models.backbones.blocks import check_pooling, conv_bn, global_pooling
from affectkit.models.backbones.normalization import VGGFace2Preprocessing
from affectkit.models.backbones.presets import builder_arguments, preset_config
from affectkit.models.backbones.weights import freeze_layers_before, load_weights_file

BN_EPSILON = 1e-3  # keras-vggface: Keras' default (the Caffe model used 1e-5)
BN_MOMENTUM = 0.99  # keras-vggface: Keras' default
LEGACY_SEPARATOR = "/"
NORMALIZATION = "vggface2"
PRESETS = {
    # Cao et al. 2018: ResNet-50 (25.6 M parameters with a 1000-class head; 8631 VGGFace2
    # identities in the published classifier).
    "vggface2_resnet50": {},
}


def keras_layer_name(legacy_name):
    """Maps a keras-vggface (Caffe) layer name to this module's Keras 3 layer name.

    Keras 3 does not allow '/' in layer names; every '/' becomes '_'.

    Example:

    ```python
    keras_layer_name("conv1/7x7_s2/bn")        # "conv1_7x7_s2_bn"
    keras_layer_name("conv4_1_1x1_reduce")     # "conv4_1_1x1_reduce"
    ```
    """
    return str(legacy_name).replace(LEGACY_SEPARATOR, "_")


def _conv_bn(x, filters, kernel_size, name, bn_epsilon, strides=1, relu_name=None):
    """`blocks.conv_bn` as keras-vggface builds it: 'same' padding, `{name}_bn`, Keras' BN
    momentum."""
    return conv_bn(x, filters, kernel_size, name=name, bn_name=f"{name}_bn",
                   relu_name=relu_name, strides=strides, padding="same",
                   bn_epsilon=bn_epsilon, bn_momentum=BN_MOMENTUM)


def _bottleneck_block(x, width, strides, projection, bn_epsilon, name):
    """keras-vggface `resnet_conv_block` (projection) / `resnet_identity_block`."""
    bottleneck = width // 4
    y = _conv_bn(x, bottleneck, 1, f"{name}_1x1_reduce", bn_epsilon, strides=strides,
                 relu_name=f"{name}_1x1_reduce_relu")
    y = _conv_bn(y, bottleneck, 3, f"{name}_3x3", bn_epsilon, relu_name=f"{name}_3x3_relu")
    y = _conv_bn(y, width, 1, f"{name}_1x1_increase", bn_epsilon)

    shortcut = x
    if projection:
        shortcut = _conv_bn(x, width, 1, f"{name}_1x1_proj", bn_epsilon, strides=strides)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def _check_stages(depths, widths, pooling):
    depths, widths = tuple(int(d) for d in depths), tuple(int(w) for w in widths)
    if len(depths) != len(widths) or not depths:
        raise ValueError(
            "vggface2_resnet50: `depths` and `widths` need one entry per stage; got "
            f"depths={depths}, widths={widths}."
        )
    if any(d < 1 for d in depths):
        raise ValueError(f"vggface2_resnet50: every depth must be >= 1; got {depths}.")
    if any(w < 4 or w % 4 for w in widths):
        raise ValueError(
            f"vggface2_resnet50: every width must be a multiple of 4 (bottleneck = width / 4); "
            f"got {widths}."
        )
    check_pooling(pooling, "vggface2_resnet50")
    return depths, widths


def _trunk(x, depths, widths, stem_width, bn_epsilon):
    """Stem and residual stages on the (preprocessed) image tensor `x`; returns the map."""
    x = _conv_bn(x, stem_width, 7, keras_layer_name("conv1/7x7_s2"), bn_epsilon, strides=2,
                 relu_name="conv1_relu_7x7_s2")
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_3x3_s2")(x)
    for stage, (depth, width) in enumerate(zip(depths, widths), start=2):
        for block in range(1, depth + 1):
            strides = 2 if (block == 1 and stage > 2) else 1
            x = _bottleneck_block(x, width, strides, projection=block == 1,
                                  bn_epsilon=bn_epsilon, name=f"conv{stage}_{block}")
    return x


def vggface2_resnet50(
    input_shape=(224, 224, 3),
    include_top=False,
    num_classes=8631,
    pooling=None,
    classifier_activation="softmax",
    weights=None,
    depths=(3, 4, 6, 3),
    widths=(256, 512, 1024, 2048),
    stem_width=64,
    bn_epsilon=BN_EPSILON,
    include_preprocessing=False,
    name="vggface2_resnet50",
):
    """Builds the VGGFace2 ResNet-50 (Cao et al. 2018) as a functional `keras.Model`.

    The layout and layer names of keras-vggface's `RESNET50` (see the module docstring; '/'
    in its names is '_' here). Stage s (2..5) has `depths[s-2]` bottleneck blocks named
    `conv{s}_{b}` with `conv{s}_{b}_1x1_reduce`, `_3x3`, `_1x1_increase`, their `_bn`, and
    `conv{s}_{1}_1x1_proj(_bn)`. At 224x224 the default returns a 7x7x2048 map.

    Args:
        input_shape: `(height, width, 3)`; spatial sizes may be `None` (at least 32).
        include_top: add `avg_pool` (global average) and the `classifier` Dense layer.
        num_classes: classifier size (8631 VGGFace2 identities).
        pooling: when not `include_top`: `None` returns the final feature map, `"avg"` /
            `"max"` a pooled `(batch, widths[-1])` vector.
        classifier_activation: activation of the classifier (`"softmax"` or `None`).
        weights: `None` (random initialisation) or a local weights file, loaded with
            `load_vggface2_weights`: a keras-vggface (Keras 2) `.h5` file by layer name, or
            a Keras 3 `.weights.h5` / `.keras` file of the same configuration.
        depths: blocks per stage ((3, 4, 6, 3) for ResNet-50).
        widths: output channels per stage; each block's bottleneck is `width // 4`.
        stem_width: filters of the 7x7 stem convolution.
        bn_epsilon: BatchNorm epsilon (1e-3 as in keras-vggface; 1e-5 in Caffe).
        include_preprocessing: when True the input is RGB in [0, 1] and the model starts
            with `VGGFace2Preprocessing`; when False (keras-vggface's convention) the input
            is already BGR on 0-255 minus the VGGFace2 mean.
        name: model name.

    Returns:
        A functional `keras.Model`.

    Example:

    ```python
    backbone = vggface2_resnet50(pooling="avg", weights="rcmalli_vggface_tf_notop_resnet50.h5")
    tiny = vggface2_resnet50((32, 32, 3), depths=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                             stem_width=8)
    ```
    """
    depths, widths = _check_stages(depths, widths, pooling)

    # Functional graph.
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if include_preprocessing:
        x = VGGFace2Preprocessing(name="vggface2_preprocessing")(x)
    x = _trunk(x, depths, widths, int(stem_width), float(bn_epsilon))
    if include_top:
        x = global_pooling(x, "avg")
        x = keras.layers.Dense(num_classes, activation=classifier_activation,
                               name="classifier")(x)
    else:
        x = global_pooling(x, pooling)
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        load_vggface2_weights(model, weights)
    return model


def do2020_face_model(
    input_shape=(224, 224, 3),
    num_classes=7,
    weights=None,
    trainable_from="conv4_1_1x1_reduce",
    backbone=None,
    name="do2020_face_model",
    **backbone_kwargs,
):
    """The per-frame face model of Do et al. (ABAW 2020): VGGFace2 ResNet-50 + softmax.

    RGB in [0, 1] -> `VGGFace2Preprocessing` -> VGGFace2 ResNet-50 -> global average pooling
    (`feature`, 2048-d) -> Dense(`num_classes`, softmax) (`probabilities`). As in the
    authors' code, every layer before `trainable_from` is frozen (`trainable = False`; frozen
    BatchNorm layers run in inference mode) and the layers from it on are trained.

    Args:
        input_shape: `(height, width, 3)` of the [0, 1] RGB input (224 in the paper).
        num_classes: expression classes (7).
        weights: `None` or a local weights file for the whole model (`load_vggface2_weights`):
            a keras-vggface `.h5` file (the pretrained backbone; `probabilities` keeps its
            initial values, with a warning), or the `.weights.h5` / `.keras` of a
            `do2020_face_model` of the same configuration.
        trainable_from: name of the first trainable layer, in `model.layers` order;
            `None` trains every layer.
        backbone: `None` or `"vggface2_resnet50"` builds the VGGFace2 ResNet-50 layers
            directly into this model (one flat graph, layer names as in
            `vggface2_resnet50`); or a `keras.Model` that takes VGGFace2-preprocessed images
            (BGR minus mean) and returns a feature map or vector, nested as one layer
            (`trainable_from` then names a layer inside it).
        name: model name.
        **backbone_kwargs: `vggface2_resnet50` hyperparameters (`depths`, `widths`,
            `stem_width`, `bn_epsilon`), e.g. for a tiny test model.

    Returns:
        A functional `keras.Model` with outputs `{"feature": (batch, widths[-1]),
        "probabilities": (batch, num_classes)}`.

    Example:

    ```python
    face_model = do2020_face_model(weights="rcmalli_vggface_tf_notop_resnet50.h5")
    out = face_model(frames)  # frames: (batch, 224, 224, 3) RGB in [0, 1]
    out["feature"].shape, out["probabilities"].shape  # (batch, 2048), (batch, 7)
    ```
    """
    nested = isinstance(backbone, keras.Model)
    if not nested and backbone not in (None, "vggface2_resnet50"):
        raise ValueError(
            f"do2020_face_model: `backbone` must be None, 'vggface2_resnet50' or a "
            f"keras.Model; got {backbone!r}."
        )
    if nested and backbone_kwargs:
        raise ValueError(
            f"do2020_face_model: {sorted(backbone_kwargs)} configure the built-in VGGFace2 "
            "ResNet-50 and cannot be combined with a `backbone` model."
        )
    allowed = {"depths", "widths", "stem_width", "bn_epsilon"}
    unknown = sorted(set(backbone_kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"do2020_face_model: unknown arguments {unknown}; backbone arguments are "
            f"{sorted(allowed)}."
        )
    depths, widths = _check_stages(backbone_kwargs.get("depths", (3, 4, 6, 3)),
                                   backbone_kwargs.get("widths", (256, 512, 1024, 2048)), None)

    # Functional graph.
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = VGGFace2Preprocessing(name="vggface2_preprocessing")(inputs)
    if nested:
        x = backbone(x)
    else:
        x = _trunk(x, depths, widths, int(backbone_kwargs.get("stem_width", 64)),
                   float(backbone_kwargs.get("bn_epsilon", BN_EPSILON)))
    if len(x.shape) == 4:
        feature = keras.layers.GlobalAveragePooling2D(name="feature")(x)
    elif len(x.shape) == 2:
        feature = keras.layers.Identity(name="feature")(x)
    else:
        raise ValueError(
            f"do2020_face_model: the backbone must return a (batch, h, w, c) map or a "
            f"(batch, c) vector; got shape {tuple(x.shape)}."
        )
    probabilities = keras.layers.Dense(num_classes, activation="softmax",
                                       name="probabilities")(feature)
    model = keras.Model(inputs, {"feature": feature, "probabilities": probabilities},
                        name=name)

    if weights is not None:
        load_vggface2_weights(model, weights)
    if trainable_from is not None:
        freeze_layers_before(backbone if nested else model, trainable_from)
        if nested:
            model.get_layer("vggface2_preprocessing").trainable = False
    return model


def load_vggface2_weights(model, path):
    """Loads a local weights file into a VGGFace2 ResNet model; clear errors when it cannot.

    Legacy Keras 2 `.h5` / `.hdf5` files (keras-vggface's weights, `save_weights` files and
    full-model files) load by layer name, each file layer name mapped with
    `keras_layer_name` ('/' -> '_'), so `conv1/7x7_s2/bn` fills `conv1_7x7_s2_bn`; Keras 3
    `.weights.h5` and `.keras` files load by structure. See
    `affectkit.models.backbones.weights.load_weights_file`.

    Args:
        model: the `keras.Model` to fill.
        path: path of the weights file.

    Example:

    ```python
    load_vggface2_weights(vggface2_resnet50(include_top=True), "rcmalli_vggface_tf_resnet50.h5")
    ```
    """
    from affectkit.models.backbones.conversion import read_record

    record = read_record(path)
    if record is None:
        load_weights_file(model, path, legacy_name=keras_layer_name)
        return
    # Converted `vggface2_resnet50` weights: a backbone whose layers share the names.
    spec = dict(record["backbone"])
    if spec.pop("name") != "vggface2_resnet50":
        raise ValueError(f"{path}: weights of a {record['backbone']['name']} backbone; "
                         f"{model.name} takes vggface2_resnet50 weights.")
    source = vggface2_resnet50(input_shape=tuple(model.input_shape[1:]), **spec)
    load_weights_file(source, path)
    for layer in source.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def build_preset(name, **overrides):
    """Builds a preset of `PRESETS` (`"vggface2_resnet50"`) with `vggface2_resnet50`
    arguments overridden.

    Example:

    ```python
    backbone = build_preset("vggface2_resnet50", input_shape=(112, 112, 3), pooling="avg")
    ```
    """
    return vggface2_resnet50(**preset_config(PRESETS, name, overrides))


def feature_width(preset, **overrides):
    """Channels of the output (map or pooled vector), without building the model:
    `widths[-1]` (2048), or `num_classes` with `include_top=True`.

    Example:

    ```python
    feature_width("vggface2_resnet50")   # 2048
    ```
    """
    config = builder_arguments(vggface2_resnet50, PRESETS, preset, overrides)
    if config["include_top"]:
        return int(config["num_classes"])
    return int(config["widths"][-1])
