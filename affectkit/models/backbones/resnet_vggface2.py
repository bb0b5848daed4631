"""VGGFace2 ResNet-50 (Cao et al. 2018) and the face feature model of Do et al. (ABAW 2020).

- Cao, Shen, Xie, Parkhi, Zisserman, "VGGFace2: A dataset for recognising faces across pose
  and age", FG 2018: a ResNet-50 trained on VGGFace2's 8631 identities.
- He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (bottleneck block).
- Do et al., "Affective Expression Analysis in-the-wild using Multi-Task Temporal Statistical
  Deep Learning Model", FG 2020 (ABAW 1): the VGGFace2 ResNet-50, fine-tuned on facial
  expressions from its 4th stage on, gives every frame a 2048-d feature and 7 probabilities.

The network follows the Keras port most VGGFace2 users have, keras-vggface (R. C. Malli,
`keras_vggface/models.py`, `RESNET50`), which follows the original Caffe model:

- a bias-free 7x7/2 stem convolution with 'same' padding, BatchNorm, ReLU and a 3x3/2 max
  pooling without padding (224 -> 112 -> 55);
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

Preprocessing (keras-vggface `utils.preprocess_input(x, version=2)`): RGB -> BGR on 0-255,
minus the VGGFace2 mean (B, G, R) = (91.4953, 103.8827, 131.0912). `VGGFace2Preprocessing`
does this inside a model whose input is RGB in [0, 1], as every affectkit model's is.
"""

import os
import warnings

import keras

from affectkit.models.backbones.senet import load_weights_file

BN_EPSILON = 1e-3  # keras-vggface: Keras' default (the Caffe model used 1e-5)
BN_MOMENTUM = 0.99  # keras-vggface: Keras' default
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)
POOLINGS = (None, "avg", "max")
LEGACY_SEPARATOR = "/"


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


@keras.saving.register_keras_serializable(package="affectkit")
class VGGFace2Preprocessing(keras.layers.Layer):
    """VGGFace2 input normalisation inside the model: RGB in [0, 1] -> BGR minus mean.

    Computes `x[..., ::-1] * scale - mean_bgr`, i.e. keras-vggface's
    `preprocess_input(x * 255, version=2)` (Cao et al. 2018 mean of VGGFace2, in BGR order).

    Args:
        scale: factor from the input range to 0-255 (255 for [0, 1] input, 1 for 0-255).
        mean_bgr: the per-channel mean subtracted after the flip, blue first.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    ```python
    inputs = keras.Input((224, 224, 3))           # RGB in [0, 1]
    x = VGGFace2Preprocessing()(inputs)            # BGR, 0-255, minus the VGGFace2 mean
    features = vggface2_resnet50(pooling="avg")(x)
    ```
    """

    def __init__(self, scale=255.0, mean_bgr=VGGFACE2_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        # Layer arguments.
        self.scale = float(scale)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)
        if len(self.mean_bgr) != 3:
            raise ValueError(
                f"VGGFace2Preprocessing: `mean_bgr` needs 3 values (blue, green, red); "
                f"got {mean_bgr!r}."
            )

    def build(self, input_shape):
        if input_shape[-1] != 3:
            raise ValueError(
                f"VGGFace2Preprocessing expects RGB images with 3 channels last; got input "
                f"shape {tuple(input_shape)}."
            )

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        x = keras.ops.flip(x, axis=-1) * self.scale
        mean = keras.ops.convert_to_tensor(self.mean_bgr, dtype=self.compute_dtype)
        return x - mean

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "mean_bgr": list(self.mean_bgr)})
        return config


def _batch_norm(name, epsilon):
    return keras.layers.BatchNormalization(epsilon=epsilon, momentum=BN_MOMENTUM, name=name)


def _conv(filters, kernel_size, name, strides=1):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=name,
    )


def _bottleneck_block(x, width, strides, projection, bn_epsilon, name):
    """keras-vggface `resnet_conv_block` (projection) / `resnet_identity_block`."""
    bottleneck = width // 4
    y = _conv(bottleneck, 1, strides=strides, name=f"{name}_1x1_reduce")(x)
    y = _batch_norm(f"{name}_1x1_reduce_bn", bn_epsilon)(y)
    y = keras.layers.ReLU(name=f"{name}_1x1_reduce_relu")(y)
    y = _conv(bottleneck, 3, name=f"{name}_3x3")(y)
    y = _batch_norm(f"{name}_3x3_bn", bn_epsilon)(y)
    y = keras.layers.ReLU(name=f"{name}_3x3_relu")(y)
    y = _conv(width, 1, name=f"{name}_1x1_increase")(y)
    y = _batch_norm(f"{name}_1x1_increase_bn", bn_epsilon)(y)

    shortcut = x
    if projection:
        shortcut = _conv(width, 1, strides=strides, name=f"{name}_1x1_proj")(x)
        shortcut = _batch_norm(f"{name}_1x1_proj_bn", bn_epsilon)(shortcut)
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
    if pooling not in POOLINGS:
        raise ValueError(f"vggface2_resnet50: `pooling` must be one of {POOLINGS}; "
                         f"got {pooling!r}.")
    return depths, widths


def _trunk(x, depths, widths, stem_width, bn_epsilon):
    """Stem and residual stages on the (preprocessed) image tensor `x`; returns the map."""
    x = _conv(stem_width, 7, strides=2, name=keras_layer_name("conv1/7x7_s2"))(x)
    x = _batch_norm(keras_layer_name("conv1/7x7_s2/bn"), bn_epsilon)(x)
    x = keras.layers.ReLU(name="conv1_relu_7x7_s2")(x)
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
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(num_classes, activation=classifier_activation,
                               name="classifier")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
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


def freeze_layers_before(model, layer_name):
    """Sets `trainable = False` on every layer of `model` before `layer_name`.

    "Before" is the order of `model.layers` (topological, as Keras lists them), the rule of
    the usual Keras fine-tuning code `for layer in model.layers[:index]`. The named layer
    and all later ones are set trainable.

    Args:
        model: a functional `keras.Model`.
        layer_name: the first layer to train, e.g. `"conv4_1_1x1_reduce"`.

    Returns:
        The names of the frozen layers.

    Example:

    ```python
    frozen = freeze_layers_before(vggface2_resnet50(), "conv5_1_1x1_reduce")
    ```
    """
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise ValueError(
            f"{model.name}: no layer named {layer_name!r} to train from; the model's "
            f"weighted layers include {[l.name for l in model.layers if l.weights][:8]} ..."
        )
    index = names.index(layer_name)
    for i, layer in enumerate(model.layers):
        layer.trainable = i >= index
    return names[:index]


def load_vggface2_weights(model, path):
    """Loads a local weights file into a VGGFace2 ResNet model; clear errors when it cannot.

    Legacy Keras 2 `.h5` / `.hdf5` files (keras-vggface's weights, `save_weights` files and
    full-model files) load by layer name, each file layer name mapped with
    `keras_layer_name` ('/' -> '_'), so `conv1/7x7_s2/bn` fills `conv1_7x7_s2_bn`. Weights
    inside a layer are matched by their names (`kernel`, `gamma`, `moving_mean`, ...) when
    they all match, else by order, and their shapes are checked. File layers the model
    lacks are skipped (e.g. `classifier` for a model without top); the model's weighted
    layers the file lacks keep their values, with a warning. Keras 3 `.weights.h5` and
    `.keras` files go to `affectkit.models.backbones.senet.load_weights_file`.

    Args:
        model: the `keras.Model` to fill.
        path: path of the weights file.

    Example:

    ```python
    load_vggface2_weights(vggface2_resnet50(include_top=True), "rcmalli_vggface_tf_resnet50.h5")
    ```
    """
    path = os.fspath(path)
    lowered = path.lower()
    legacy = lowered.endswith((".h5", ".hdf5")) and not lowered.endswith(".weights.h5")
    if not legacy or not os.path.isfile(path):
        load_weights_file(model, path)  # Keras 3 formats, and its missing-file error
        return
    _load_legacy_h5_mapped(model, path)


def _h5_attribute(group, name):
    """A string-list attribute of a legacy Keras h5 group (possibly split in chunks)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _load_legacy_h5_mapped(model, path):
    import h5py
    import numpy as np

    layers = {}
    for layer in model.layers:
        if layer.weights:
            layers[layer.name] = layer
    loaded = set()
    with h5py.File(path, "r") as f:
        group = f
        if "layer_names" not in f.attrs and "layer_names0" not in f.attrs \
                and "model_weights" in f:
            group = f["model_weights"]
        file_layers = _h5_attribute(group, "layer_names")
        if not file_layers:
            raise ValueError(
                f"{model.name}: {path!r} is not a legacy Keras weights file (no 'layer_names' "
                "attribute at its root or in 'model_weights'); save Keras 3 weights as "
                "'.weights.h5'."
            )
        for file_name in file_layers:
            target = layers.get(file_name) or layers.get(keras_layer_name(file_name))
            layer_group = group[file_name]
            weight_names = _h5_attribute(layer_group, "weight_names")
            if target is None or not weight_names:
                continue
            values = [np.asarray(layer_group[w]) for w in weight_names]
            variables = target.weights
            if len(values) != len(variables):
                raise ValueError(
                    f"{model.name}: layer {file_name!r} in {path!r} has {len(values)} "
                    f"weights, but the model's layer {target.name!r} expects "
                    f"{len(variables)} ({[v.name for v in variables]})."
                )
            short = [w.rsplit("/", 1)[-1].split(":", 1)[0] for w in weight_names]
            if sorted(short) == sorted(v.name for v in variables) and len(set(short)) == len(short):
                by_name = dict(zip(short, values))
                values = [by_name[v.name] for v in variables]
            for variable, value, weight_name in zip(variables, values, weight_names):
                if tuple(variable.shape) != value.shape:
                    raise ValueError(
                        f"{model.name}: weight {weight_name!r} of layer {file_name!r} in "
                        f"{path!r} has shape {value.shape}; the model's {variable.path!r} "
                        f"expects {tuple(variable.shape)}. Build the model with the file's "
                        "configuration (depths, widths, num_classes)."
                    )
            target.set_weights(values)
            loaded.add(target.name)
    if not loaded:
        raise ValueError(
            f"{model.name}: no layer of the model is named in {path!r}, even after mapping "
            f"'/' to '_' (the model has e.g. {list(layers)[:3]}, the file {file_layers[:3]})."
        )
    missing = [n for n in layers if n not in loaded]
    if missing:
        warnings.warn(
            f"{model.name}: {path!r} has no weights for {len(missing)} layers, which keep "
            f"their initial values: {missing[:10]}{' ...' if len(missing) > 10 else ''}",
            stacklevel=3,
        )
