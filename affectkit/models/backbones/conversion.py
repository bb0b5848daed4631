"""Checkpoints of other frameworks onto affectkit backbones: `convert_weights`.

A source checkpoint is read as a flat dict of NumPy arrays (torch is only needed to read
`.pth` files; `.safetensors` files are read with the `safetensors` package's NumPy API),
every weight of the affectkit backbone is paired with its source tensor by name, and the
filled backbone is saved as a Keras `.weights.h5` file, beside a `.json` that says which
backbone configuration it fills and the input normalisation its weights expect.

Sources (`SOURCES`) and the backbones they fill:

    torchvision  resnet50, resnext50 (torchvision `resnext50_32x4d`), regnety_1.6gf (and
                 every other regnety_* preset): torchvision state dicts, stride on the 3x3
    timm         senet50 from timm's `legacy_seresnet50` (the Caffe SE-ResNet-50: stride on
                 the first 1x1, ceil-mode stem pooling)
    keras        inception_v3 (`keras.applications.InceptionV3`, cut at the preset's block)
                 and resnet50 (`keras.applications.ResNet50`: stride on the first 1x1, conv
                 biases folded into the BatchNorm that follows)
    keras-vggface  senet50 and resnet50 from keras-vggface's legacy Keras `.h5` files
                 (`rcmalli_vggface_tf_[notop_]senet50.h5`, `..._resnet50.h5`: the VGGFace2
                 models of Cao et al. 2018), matched by layer name (`conv2_1_1x1_reduce`,
                 ...): stride on the first 1x1, Keras 'same' padding, unpadded stem pooling,
                 BatchNorm epsilon 1e-4 (SENet) or 1e-3 (ResNet); and vggface2_resnet50,
                 the keras-vggface network itself, whose layers keep those names

Pairing is strict: a source tensor that no backbone weight takes (besides a classifier the
backbone does not have), a backbone weight the source lacks, or a shape that differs, is a
`ValueError` that lists every one of them.
"""

import json
import os
import re

import numpy as np

from affectkit.training.run_directory import write_atomic, write_json

SOURCES = ("torchvision", "timm", "keras", "keras-vggface")
# What each source's weights expect as input: `affectkit.models.backbones.normalization`.
NORMALIZATIONS = {"torchvision": "imagenet", "timm": "imagenet",
                  "keras/inception_v3": "inception",
                  "keras/resnet50": "imagenet_caffe",
                  "keras-vggface": "vggface2"}
# The layout of keras-vggface's Keras port of the Caffe models (`bottleneck_resnet`).
KERAS_VGGFACE_LAYOUT = {"stride_in_1x1": True, "stem_pool": "valid", "padding": "same"}
KERAS_VGGFACE_BN_EPSILON = {"senet50": 1e-4, "resnet50": 1e-3}
CLASSIFIERS = ("fc.", "classifier.", "classifier/", "predictions/", "head.fc.",
               "last_linear.")


def read_record(weights):
    """The conversion record (`.json` beside a converted `.weights.h5`), or None."""
    path = str(weights)
    if not path.endswith(".weights.h5"):
        return None
    path = path[: -len(".weights.h5")] + ".json"
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            record = json.load(f)
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); expected the record "
                             "`affectkit convert-weights` writes beside its weights.") from None
    if not isinstance(record, dict) or "backbone" not in record:
        raise ValueError(f"{path}: expected a conversion record with 'backbone' and "
                         "'normalization'.")
    return record


class ConversionError(ValueError):
    """A checkpoint that does not fit the backbone; the message lists every mismatch."""


# ------------------------------------------------------------------------ reading sources


def read_torch_state_dict(path):
    """`{name: array}` of a PyTorch checkpoint: a `.safetensors` file (NumPy, no torch) or a
    `.pth`/`.pt`/`.bin` state dict (or a dict holding one under `state_dict` / `model`),
    read with torch when it is installed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    if path.lower().endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading a PyTorch .pth file needs torch (pip install "
                         "torch), or convert it to .safetensors first.") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got "
                         f"{type(state).__name__}.")
    return {re.sub(r"^module\.", "", k): v.detach().cpu().numpy() for k, v in state.items()
            if hasattr(v, "detach")}


def read_keras_application(path, family, input_shape):
    """`{layer/weight: array}` of a keras.applications weights file for `family`
    (`inception_v3` or `resnet50`), loaded into that application built with `weights=None`."""
    import keras

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file.")
    builders = {"inception_v3": keras.applications.InceptionV3,
                "resnet50": keras.applications.ResNet50}
    if family not in builders:
        raise ValueError(f"--source keras fills {sorted(builders)}; got --backbone {family!r}.")
    top = _has_classifier(path)
    model = builders[family](weights=None, include_top=top,
                             input_shape=(299, 299, 3) if top and family == "inception_v3"
                             else (224, 224, 3) if top else input_shape)
    try:
        model.load_weights(path)
    except Exception as error:
        raise ConversionError(f"{path}: not a keras.applications {family} weights file "
                              f"({error}).") from None
    return model, {f"{layer.name}/{i}": np.asarray(w) for layer in model.layers
                   for i, w in enumerate(layer.get_weights())}


def read_legacy_h5(path):
    """`{layer/weight: array}` of a legacy (Keras 2) `.h5` weights or model file, e.g.
    `{"conv1/7x7_s2/bn/gamma": ...}` for keras-vggface's."""
    import h5py

    from affectkit.models.backbones.weights import legacy_weight_layers

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file.")
    try:
        with h5py.File(path, "r") as f:
            group, layers = legacy_weight_layers(f, path, "keras-vggface")
            return {f"{layer}/{weight.rsplit('/', 1)[-1].split(':', 1)[0]}":
                    np.asarray(group[layer][weight])
                    for layer, weights in layers for weight in weights}
    except OSError as error:
        raise ConversionError(f"{path}: not an HDF5 file ({error}); expected a keras-vggface "
                              ".h5 weights file.") from None


def _has_classifier(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = []
            f.visit(names.append)
    except OSError as error:
        raise ConversionError(f"{path}: not an HDF5 weights file ({error}); expected a "
                              "keras.applications .h5 / .weights.h5 file.") from None
    return any("predictions" in name for name in names)


# ------------------------------------------------------------------------ name mappings


# affectkit's layer names: bottleneck ResNet blocks, and squeeze-excitation in any family.
RESNET_LAYER = re.compile(r"stage(\d)_block(\d+)_(conv|bn|shortcut_conv|shortcut_bn)(\d?)")
SE_LAYER = re.compile(r"stage(\d)_block(\d+)_se_(reduce|expand)")
SE_FC = {"reduce": "fc1", "expand": "fc2"}  # torchvision's and timm's SE layer names


def _se_module(layer_name, block_prefix):
    """`<block prefix>.fc1|fc2` of an SE layer (`block_prefix(stage, block)` names its
    block in the source), or None for other layers."""
    match = SE_LAYER.fullmatch(layer_name)
    if not match:
        return None
    stage, block, part = match.groups()
    return f"{block_prefix(int(stage), int(block))}.{SE_FC[part]}"


def timm_name(family, layer_name):
    """The timm module of an affectkit backbone layer (None: no counterpart); timm's
    `legacy_seresnet50` is the Caffe SE-ResNet-50 (`senet50` with the stride on the first
    1x1 and a ceil-mode stem pooling)."""
    if family != "senet50":
        raise ValueError(f"--source timm fills senet50 (timm legacy_seresnet50); got "
                         f"--backbone {family!r}.")
    if layer_name in ("stem_conv", "stem_bn"):
        return {"stem_conv": "layer0.conv1", "stem_bn": "layer0.bn1"}[layer_name]
    se = _se_module(layer_name, lambda stage, block: f"layer{stage - 1}.{block - 1}.se_module")
    if se:
        return se
    if layer_name == "predictions":
        return "last_linear"
    return torchvision_name("resnet50", layer_name)


def torchvision_name(family, layer_name):
    """The torchvision module of an affectkit backbone layer (None: no counterpart)."""
    if family in ("resnet50", "resnext50"):
        if layer_name in ("stem_conv", "stem_bn"):
            return {"stem_conv": "conv1", "stem_bn": "bn1"}[layer_name]
        match = RESNET_LAYER.fullmatch(layer_name)
        if match:
            stage, block, kind, index = match.groups()
            prefix = f"layer{int(stage) - 1}.{int(block) - 1}"
            part = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}.get(
                kind, f"{kind}{index}")
            return f"{prefix}.{part}"
    if family.startswith("regnet"):
        if layer_name in ("stem_conv", "stem_bn"):
            return {"stem_conv": "stem.0", "stem_bn": "stem.1"}[layer_name]
        match = re.fullmatch(r"stage(\d)_block(\d+)_(a|b|c|proj)_(conv|bn)", layer_name)
        if match:
            stage, block, part, kind = match.groups()
            prefix = f"trunk_output.block{stage}.block{stage}-{int(block) - 1}"
            index = "0" if kind == "conv" else "1"
            return f"{prefix}.proj.{index}" if part == "proj" else f"{prefix}.f.{part}.{index}"
        se = _se_module(layer_name, lambda stage, block:
                        f"trunk_output.block{stage}.block{stage}-{block - 1}.f.se")
        if se:
            return se
    if layer_name == "predictions":
        return "fc"
    return None


KERAS_VGGFACE_PARTS = {"conv1": "1x1_reduce", "conv2": "3x3", "conv3": "1x1_increase",
                       "shortcut_conv": "1x1_proj"}


def keras_vggface_name(layer_name):
    """The keras-vggface layer of an affectkit `bottleneck_resnet` layer (None: no
    counterpart): `stage3_block2_conv1` -> `conv3_2_1x1_reduce`, `..._bn1` ->
    `conv3_2_1x1_reduce/bn`, `..._se_reduce` -> `conv3_2_1x1_down`."""
    if layer_name in ("stem_conv", "stem_bn"):
        return {"stem_conv": "conv1/7x7_s2", "stem_bn": "conv1/7x7_s2/bn"}[layer_name]
    match = SE_LAYER.fullmatch(layer_name)
    if match:
        stage, block, part = match.groups()
        return f"conv{stage}_{block}_1x1_{'down' if part == 'reduce' else 'up'}"
    match = RESNET_LAYER.fullmatch(layer_name)
    if not match:
        return None
    stage, block, kind, index = match.groups()
    part = "shortcut_conv" if kind.startswith("shortcut") else f"conv{index}"
    name = f"conv{stage}_{block}_{KERAS_VGGFACE_PARTS[part]}"
    return name + "/bn" if kind.endswith("bn") else name


def _keras_layer_arrays(layer, tensors, prefix):
    """The weights of one layer from a legacy Keras file's `{prefix}/{weight}` arrays (a 1x1
    convolution on a pooled map, as keras-vggface's SE blocks, fills a Dense layer); the
    names it read."""
    short = [v.name for v in layer.weights]
    names = [f"{prefix}/{n}" for n in short]
    arrays = [tensors.get(n) for n in names]
    if type(layer).__name__ == "Dense" and arrays[0] is not None:
        arrays[0] = arrays[0].reshape(-1, arrays[0].shape[-1])
    return arrays, names


def _torch_layer_arrays(layer, tensors, prefix):
    """The Keras weights of one layer from the torch tensors under `prefix`; the names it
    read."""
    kind = type(layer).__name__
    if "BatchNormalization" in kind:
        names = [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        return [tensors.get(n) for n in names], names
    if "Conv" in kind:
        names = [f"{prefix}.weight"] + ([f"{prefix}.bias"] if layer.use_bias else [])
        arrays = [tensors.get(names[0])]
        if arrays[0] is not None:
            arrays[0] = np.transpose(arrays[0], (2, 3, 1, 0))  # (O, I, h, w) -> (h, w, I, O)
        return arrays + [tensors.get(n) for n in names[1:]], names
    if kind == "Dense":
        names = [f"{prefix}.weight", f"{prefix}.bias"]
        weight = tensors.get(names[0])
        if weight is not None:
            weight = weight.reshape(weight.shape[0], -1).T  # Linear or 1x1 conv -> (I, O)
        return [weight, tensors.get(names[1])], names
    raise ConversionError(f"layer {layer.name!r} ({kind}) has no torch counterpart rule.")


def _keras_resnet50_arrays(layer, tensors, epsilon):
    """keras.applications ResNet50 -> an affectkit resnet50 with the stride on the 1x1: the
    same names but for the stem; conv biases folded into the BatchNorm after them."""
    name = {"stem_conv": "conv1_conv", "stem_bn": "conv1_bn"}.get(layer.name)
    if name is None:
        match = RESNET_LAYER.fullmatch(layer.name)
        if not match:
            return None, []
        stage, block, kind, index = match.groups()
        index = "0" if kind.startswith("shortcut") else index
        name = f"conv{stage}_block{block}_{index}_{kind.split('_')[-1]}"
    if "BatchNormalization" in type(layer).__name__:
        conv = name[: -len("bn")] + "conv"
        names = [f"{name}/{i}" for i in range(4)] + [f"{conv}/1"]
        gamma, beta, mean, var, bias = (tensors.get(n) for n in names)
        if any(v is None for v in (gamma, beta, mean, var, bias)):
            return [None], names
        # BN(conv(x) + b) with moving mean m is BN(conv(x)) with moving mean m - b; and
        # keras.applications' epsilon 1.001e-5 goes into the variance.
        return [gamma, beta, mean - bias, var + (1.001e-5 - epsilon)], names
    names = [f"{name}/0"]
    return [tensors.get(names[0])], names + [f"{name}/1"]


# ------------------------------------------------------------------------ conversion


def backbone_for(source, backbone, input_shape, **hyperparameters):
    """The affectkit backbone (`build_backbone`) a source's weights fill: the layout and
    hyperparameters the source network has."""
    from affectkit.models.backbones import build_backbone

    extra = {}
    if source == "keras" and backbone == "resnet50":
        extra = {"stride_in_1x1": True}
    if source == "timm":
        extra = {"stride_in_1x1": True, "stem_pool": "ceil"}
    if source == "keras-vggface" and backbone in KERAS_VGGFACE_BN_EPSILON:
        extra = {**KERAS_VGGFACE_LAYOUT, "bn_epsilon": KERAS_VGGFACE_BN_EPSILON[backbone]}
    elif source == "keras-vggface" and backbone != "vggface2_resnet50":
        raise ValueError(f"--source keras-vggface fills senet50, resnet50 and "
                         f"vggface2_resnet50; got --backbone {backbone!r}.")
    return build_backbone(backbone, input_shape=input_shape, **extra, **hyperparameters), extra


def convert_weights(source, backbone, path, out, input_shape=(224, 224, 3), **hyperparameters):
    """Converts a checkpoint onto an affectkit backbone and saves it as `out`
    (`.weights.h5`) plus `out` with `.json` (the backbone's configuration and the input
    normalisation the weights expect). Returns that record.

    Args:
        source: one of `SOURCES`.
        backbone: the affectkit backbone name (`available_backbones()`).
        path: the checkpoint (`.pth` / `.safetensors` for torchvision and timm; a
            keras.applications `.h5` / `.weights.h5` for keras; a keras-vggface `.h5`).
        out: the `.weights.h5` file to write.
        input_shape: the backbone's input (any size: the weights do not depend on it).
        **hyperparameters: backbone hyperparameters (e.g. tiny widths for tests).

    Example:

    ```python
    convert_weights("torchvision", "regnety_1.6gf", "regnet_y_1_6gf.pth",
                    "regnety_1.6gf_imagenet.weights.h5")
    ```
    """
    if source not in SOURCES:
        raise ValueError(f"--source {source!r}: expected one of {SOURCES}.")
    if not str(out).endswith(".weights.h5"):
        raise ValueError(f"--out {out!r}: expected a .weights.h5 file name.")
    model, extra = backbone_for(source, backbone, input_shape, **hyperparameters)
    if source in ("torchvision", "timm"):
        tensors = {k: v for k, v in read_torch_state_dict(path).items()
                   if not k.endswith("num_batches_tracked")}
        module_name = torchvision_name if source == "torchvision" else timm_name

        def arrays_of(layer):
            prefix = module_name(_family(backbone), layer.name)
            return _torch_layer_arrays(layer, tensors, prefix) if prefix else (None, [])

        pairs = _pairs(model, arrays_of)
        normalization = NORMALIZATIONS[source]
    elif source == "keras-vggface":
        from affectkit.models.backbones.resnet_vggface2 import keras_layer_name

        tensors = read_legacy_h5(path)
        # vggface2_resnet50 keeps keras-vggface's names, each '/' written '_'.
        legacy = {keras_layer_name(n.rsplit("/", 1)[0]): n.rsplit("/", 1)[0] for n in tensors}
        layer_name = (legacy.get if backbone == "vggface2_resnet50" else keras_vggface_name)

        def arrays_of(layer):
            prefix = layer_name(layer.name)
            return _keras_layer_arrays(layer, tensors, prefix) if prefix else (None, [])

        pairs = _pairs(model, arrays_of)
        normalization = NORMALIZATIONS[source]
    else:
        source_model, tensors = read_keras_application(path, backbone, input_shape)
        if backbone == "inception_v3":
            pairs = _inception_pairs(model, source_model, tensors)
        else:
            epsilon = float(model.get_layer("stem_bn").epsilon)
            pairs = _pairs(model, lambda layer: _keras_resnet50_arrays(
                layer, tensors, epsilon))
        normalization = NORMALIZATIONS[f"keras/{backbone}"]
    _check_and_assign(model, pairs, tensors, path)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    record = {"backbone": {"name": backbone, **extra, **hyperparameters},
              "normalization": normalization, "source": source,
              "checkpoint": os.path.abspath(path)}
    # The record first: weights without their record would load in the wrong layout.
    write_json(out[: -len(".weights.h5")] + ".json", record)
    write_atomic(out, model.save_weights)
    return record


def convert_pretrained(name, path):
    """`convert_weights` of a checkpoint into the named weights `name`
    (`affectkit.models.backbones.pretrained.PRETRAINED`: its source and backbone, the file
    in the weights folder). Returns the record."""
    from affectkit.models.backbones.pretrained import PRETRAINED, pretrained_path

    out = pretrained_path(name)
    info = PRETRAINED[name]
    return convert_weights(info["source"], info["backbone"], path, out)


def _family(backbone):
    return "regnet" if backbone.startswith("regnet") else backbone


def _pairs(model, arrays_of):
    """`[(layer, arrays, source names)]` for every weighted layer of `model`."""
    pairs = []
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays, names = arrays_of(layer)
        pairs.append((layer, arrays, names))
    return pairs


def _inception_pairs(model, source_model, tensors):
    """The cut InceptionV3's layers are the first layers of keras.applications' network in
    the same order: each takes its counterpart's weights."""
    source_layers = [layer for layer in source_model.layers if layer.weights]
    pairs = []
    for i, layer in enumerate(layer for layer in model.layers if layer.weights):
        if i >= len(source_layers):
            pairs.append((layer, None, []))
            continue
        source = source_layers[i]
        names = [f"{source.name}/{k}" for k in range(len(source.weights))]
        pairs.append((layer, [tensors[n] for n in names], names))
    # The layers after the cut are the source's, not the backbone's.
    used = {n for _, _, names in pairs for n in names}
    beyond = {f"{layer.name}/{k}" for layer in source_layers[len(pairs):]
              for k in range(len(layer.weights))}
    for name in beyond - used:
        tensors.pop(name, None)
    return pairs


def _check_and_assign(model, pairs, tensors, path):
    missing, wrong, used = [], [], set()
    for layer, arrays, names in pairs:
        if arrays is None or any(a is None for a in arrays):
            missing.append(f"{layer.name} (expected {', '.join(names) or 'no counterpart'})")
            continue
        used.update(names)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(np.shape(a)) for a in arrays]
        if expected != got:
            wrong.append(f"{layer.name}: {', '.join(names)} has shapes {got}, expected "
                         f"{expected}")
    unexpected = sorted(n for n in tensors if n not in used and not n.startswith(CLASSIFIERS))
    if missing or wrong or unexpected:
        lines = [f"{path}: the checkpoint does not fit {model.name}:"]
        for title, items in (("missing", missing), ("wrongly shaped", wrong),
                             ("unexpected", unexpected)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:20])
                             + (f"; ... {len(items) - 20} more" if len(items) > 20 else ""))
        raise ConversionError("\n".join(lines))
    for layer, arrays, _ in pairs:
        layer.set_weights([np.asarray(a, dtype=w.dtype) for a, w in zip(arrays, layer.weights)])

