"""InceptionV3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
CVPR 2016) cut after an inception block, as a feature backbone.

Haider et al. (ABAW 2022), after the ABAW3 winner, use InceptionV3 cut after `mixed7` in
Keras naming: a 17x17x768 map at 299x299 input, which feeds their region attention.
`inception_v3_features` builds `keras.applications.InceptionV3` (no download: always
`weights=None` there) and returns a functional model whose output is the chosen block.

Input normalisation (`NORMALIZATION = "inception"`): keras-applications' InceptionV3 weights
expect RGB scaled to [-1, 1]. affectkit models take RGB in [0, 1] and normalise inside the
model; `normalization_layer("inception")` is the core layer that does it
(`Rescaling(2, offset=-1)`), so a saved model needs no custom object for it. (torchvision's
`inception_v3` weights take ImageNet mean and standard deviation instead.)

Presets (`PRESETS`): `"inception_v3"`, cut at `mixed7`; `build_preset` builds it and
`feature_width` gives the output channels of a cut at any inception block without building
the network. Convolutions here are keras-applications' own (plain `Conv2D`; InceptionV3 has
no grouped convolution).

Weights (`weights=` a local file, nothing is downloaded):

- a legacy Keras `.h5` file of the full InceptionV3, with or without the classifier, such as
  keras-applications' `inception_v3_weights_tf_dim_ordering_tf_kernels[_notop].h5`: loaded
  into the full network in topological order, exactly as `keras.applications` loads it,
  before the cut. The layer names of `keras.applications` models are generated (`conv2d_57`)
  and depend on how many layers the process created before, and the published files use
  Keras 2's numbering, so loading by name would pair the wrong layers;
- a legacy `.h5` file of the cut model (same topological loading);
- a Keras 3 `.weights.h5` / `.keras` file saved from the cut model, or from the full
  InceptionV3 with or without the classifier. Keras 3 files address layers by their order
  and type, and the cut model's layers are the first layers of the full network in the same
  order (checked when loading), so the full network's file fills the cut model directly.
"""

import math

import keras

from affectkit.models.backbones.blocks import check_pooling, global_pooling
from affectkit.models.backbones.presets import preset_config
from affectkit.models.backbones.weights import (
    check_weights_file,
    is_legacy_weights_file,
    legacy_weight_layers,
    load_weights_file,
)

DEFAULT_CUT = "mixed7"
NORMALIZATION = "inception"
PRESETS = {
    # Haider et al. 2022: 17x17x768 at 299x299.
    "inception_v3": {"cut": DEFAULT_CUT},
}
# Output channels of keras.applications' InceptionV3 blocks (None: the whole network).
BLOCK_WIDTHS = {
    "mixed0": 256, "mixed1": 288, "mixed2": 288, "mixed3": 768, "mixed4": 768, "mixed5": 768,
    "mixed6": 768, "mixed7": 768, "mixed8": 1280, "mixed9": 2048, "mixed10": 2048, None: 2048,
}


def _inception_v3(input_shape, include_top):
    image = keras.Input(shape=tuple(input_shape), name="image")
    return keras.applications.InceptionV3(
        include_top=include_top, weights=None, input_tensor=image, classes=1000,
    )


def _cut(base, cut, name):
    try:
        output = base.get_layer(cut or "mixed10").output
    except ValueError:
        blocks = [layer.name for layer in base.layers if layer.name.startswith("mixed")]
        raise ValueError(
            f"inception_v3_features: no layer named {cut!r} in InceptionV3; `cut` must be one "
            f"of its layer names, e.g. the inception blocks {blocks}."
        ) from None
    return keras.Model(base.inputs[0], output, name=name)


def inception_v3_features(input_shape=(299, 299, 3), weights=None, cut=DEFAULT_CUT,
                          pooling=None, name=None):
    """Builds InceptionV3 cut after the layer `cut` as a functional `keras.Model`.

    Args:
        input_shape: `(height, width, channels)`, at least 75x75; spatial sizes may be `None`.
            The input layer is named `image`.
        weights: `None` (random initialisation) or the path of a local weights file: full
            InceptionV3 weights (legacy `.h5` as published by keras-applications, with or
            without the classifier, or Keras 3 `.weights.h5`) or weights saved from the cut
            model. See the module docstring for how each is matched. Nothing is downloaded.
        cut: name of the last layer kept: `"mixed7"` (default; 17x17x768 at 299x299), any
            other layer name of Keras' InceptionV3 (`"mixed0"` ... `"mixed10"`), or `None` for
            the whole convolutional network (8x8x2048 at 299x299).
        pooling: `None` returns the feature map of `cut`, `"avg"` / `"max"` its global
            average / maximum (layer `avg_pool` / `max_pool`).
        name: model name; default `"inception_v3_<cut>"`.

    Returns:
        A functional `keras.Model` from RGB in [-1, 1] (`normalization_layer("inception")`)
        to the feature map of `cut` (or its pooled vector).

    Example:

    ```python
    backbone = inception_v3_features((299, 299, 3))        # output (None, 17, 17, 768)
    backbone = inception_v3_features((299, 299, 3), weights="inception_v3_notop.h5")
    ```
    """
    name = name or f"inception_v3_{cut or 'mixed10'}"
    check_pooling(pooling, "inception_v3_features")
    if weights is not None:
        weights = check_weights_file(weights, name)
    legacy = weights is not None and is_legacy_weights_file(weights)
    layer_counts = _legacy_weighted_layer_count(weights) if legacy else None

    # Functional graph: the full network (with the classifier when a legacy file has it),
    # then the model up to `cut`.
    base = _inception_v3(input_shape, include_top=False)
    with_top_count = _weighted_layer_count(base) + 1
    if layer_counts == with_top_count:
        base = _inception_v3(input_shape, include_top=True)
    model = _cut(base, cut, name)

    if weights is not None and legacy:
        _load_legacy_topological(base, model, weights, layer_counts)
    elif weights is not None:
        _check_prefix(base, model)
        load_weights_file(model, weights)
    if pooling is None:
        return model
    return keras.Model(model.inputs[0], global_pooling(model.outputs[0], pooling), name=name)


def _weighted_layer_count(model):
    return sum(1 for layer in model.layers if layer.weights)


def _legacy_weighted_layer_count(path):
    import h5py

    with h5py.File(path, "r") as f:
        return len(legacy_weight_layers(f, path, "inception_v3_features")[1])


def _load_legacy_topological(base, model, path, file_count):
    """Loads a legacy `.h5` file by layer order into the full network or the cut model."""
    for target in (base, model):
        if _weighted_layer_count(target) == file_count:
            target.load_weights(path)  # legacy `.h5`: topological order, as keras.applications
            return
    raise ValueError(
        f"{model.name}: {path!r} holds weights for {file_count} layers, but InceptionV3 has "
        f"{_weighted_layer_count(base)} weighted layers ({_weighted_layer_count(base) + 1} "
        f"with the classifier) and the model cut after {model.layers[-1].name!r} has "
        f"{_weighted_layer_count(model)}. Expected keras-applications InceptionV3 weights "
        "(with or without top) or weights saved from this cut model."
    )


def _check_prefix(base, model):
    """Keras 3 files address layers by type and order: the cut model's layers must be the
    first layers of the full network, in the same order, for a full network's file to fit."""
    names = [layer.name for layer in model.layers]
    if names != [layer.name for layer in base.layers[: len(names)]]:
        raise AssertionError(
            f"{model.name}: the cut model's layers are not the first layers of InceptionV3 in "
            "order; Keras 3 weights of the full network would not load correctly."
        )


def count_params(cut=None, include_top=True, input_shape=(299, 299, 3), trainable_only=False):
    """Counts the weights of InceptionV3 (whole, or cut after `cut`) by building it (~1 s).

    `model.count_params()` includes BatchNorm's moving means and variances;
    `trainable_only=True` leaves them out, which is what PyTorch counts.

    Args:
        cut: `None` for the whole network, or a layer name (then `include_top` must be False).
        include_top: count the 1000-class classifier (only with `cut=None`).
        input_shape: model input shape (only the channels affect the count).
        trainable_only: leave out BatchNorm moving statistics.

    Example:

    ```python
    count_params()                                   # 23851784 (Keras applications)
    count_params(cut="mixed7", include_top=False)    # the Haider et al. backbone
    ```
    """
    if cut is not None and include_top:
        raise ValueError("count_params: a cut InceptionV3 has no classifier; pass "
                         "include_top=False with `cut`.")
    base = _inception_v3(input_shape, include_top=include_top)
    model = base if cut is None else _cut(base, cut, f"inception_v3_{cut}")
    if trainable_only:
        return sum(math.prod(w.shape) for w in model.trainable_weights)
    return model.count_params()


def build_preset(name, **overrides):
    """Builds a preset of `PRESETS` (`"inception_v3"`: cut at `mixed7`) with any
    `inception_v3_features` argument overridden.

    Example:

    ```python
    backbone = build_preset("inception_v3", input_shape=(299, 299, 3))   # 17x17x768
    ```
    """
    config = preset_config(PRESETS, name, overrides)
    if config["name"] == name:  # keep inception_v3_features' naming after the cut
        config["name"] = None
    return inception_v3_features(**config)


def feature_width(preset, **overrides):
    """Output channels of InceptionV3 cut at an inception block, without building it.

    Args:
        preset: `"inception_v3"` or a dict of `inception_v3_features` arguments.
        **overrides: `cut` (`"mixed0"` ... `"mixed10"` or `None`), ...

    Example:

    ```python
    feature_width("inception_v3")                 # 768 (mixed7)
    feature_width("inception_v3", cut="mixed8")   # 1280
    ```
    """
    config = preset_config(PRESETS, preset, overrides) if isinstance(preset, str) \
        else {"cut": DEFAULT_CUT, **preset, **overrides}
    cut = config["cut"]
    if cut not in BLOCK_WIDTHS:
        raise ValueError(
            f"inception_v3: the feature width is known for cuts at the inception blocks "
            f"({', '.join(k for k in BLOCK_WIDTHS if k)}) or None; got cut={cut!r}. Build the "
            "model and read `model.output_shape[-1]` for other layers."
        )
    return BLOCK_WIDTHS[cut]
