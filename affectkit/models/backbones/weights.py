"""Backbone weights: loading local weight files, and freezing layers for fine-tuning.

Nothing is ever downloaded: `weights` is the path of a file on this machine.

- Keras 3 `.weights.h5` / `.keras` files load by the model's structure (`model.load_weights`).
- Legacy Keras 2 `.h5` / `.hdf5` files (weights-only or full-model files, such as
  keras-vggface's) load by layer name, each file layer name optionally mapped to the model's
  naming first (`legacy_name`, e.g. keras-vggface's '/' -> '_'). Weights inside a layer are
  paired by name when all names match, else by order, and shapes are checked. File layers the
  model lacks are skipped (a classifier the backbone has not); the model's weighted layers
  the file lacks keep their values, with a warning.
"""

import os
import warnings

KERAS3_SUFFIXES = (".weights.h5", ".weights.json", ".keras")
LEGACY_SUFFIXES = (".h5", ".hdf5")


def is_legacy_weights_file(path):
    """True for a legacy Keras 2 `.h5` / `.hdf5` path (not a Keras 3 `.weights.h5`)."""
    lowered = os.fspath(path).lower()
    return lowered.endswith(LEGACY_SUFFIXES) and not lowered.endswith(KERAS3_SUFFIXES)


def check_weights_file(path, model_name):
    """Returns `path` as a string; raises `FileNotFoundError` when there is no such file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{model_name}: weights file {path!r} does not exist. `weights` must be None or "
            "the path of a local '.weights.h5' (Keras 3) or legacy '.h5' file; affectkit "
            "never downloads weights."
        )
    return path


def load_weights_file(model, path, legacy_name=None):
    """Loads a local weights file into `model`; raises a clear error when it cannot.

    Args:
        model: the `keras.Model` to fill.
        path: a Keras 3 `.weights.h5` / `.keras` file (loaded by structure) or a legacy
            `.h5` / `.hdf5` file (loaded by layer name, see the module docstring).
        legacy_name: `None`, or a function mapping a legacy file's layer name to the model's
            (tried when the name itself is not in the model).

    Example:

    ```python
    load_weights_file(bottleneck_resnet(), "senet50_vggface2.weights.h5")
    ```
    """
    path = check_weights_file(path, model.name)
    lowered = path.lower()
    if lowered.endswith(KERAS3_SUFFIXES):
        model.load_weights(path)
    elif lowered.endswith(LEGACY_SUFFIXES):
        _load_legacy_h5_by_name(model, path, legacy_name or (lambda name: name))
    else:
        raise ValueError(
            f"{model.name}: cannot read weights file {path!r}: expected a Keras '.weights.h5' "
            "or '.keras' file, or a legacy Keras '.h5' / '.hdf5' file."
        )


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


def legacy_weight_layers(h5_file, path, model_name):
    """`(group, [(layer name, weight names), ...])` of an open legacy Keras h5 file, in the
    file's layer order; layers without weights are left out."""
    group = h5_file
    if "layer_names" not in h5_file.attrs and "layer_names0" not in h5_file.attrs \
            and "model_weights" in h5_file:
        group = h5_file["model_weights"]
    names = _h5_attribute(group, "layer_names")
    if not names:
        raise ValueError(
            f"{model_name}: {path!r} is not a legacy Keras weights file (no 'layer_names' "
            "attribute at its root or in 'model_weights'); save Keras 3 weights as "
            "'.weights.h5'."
        )
    layers = []
    for name in names:
        weight_names = _h5_attribute(group[name], "weight_names")
        if weight_names:
            layers.append((name, weight_names))
    return group, layers


def _load_legacy_h5_by_name(model, path, legacy_name):
    import h5py
    import numpy as np

    layers = {layer.name: layer for layer in model.layers if layer.weights}
    loaded, file_layers = set(), []
    with h5py.File(path, "r") as f:
        group, file_layers = legacy_weight_layers(f, path, model.name)
        for file_name, weight_names in file_layers:
            target = layers.get(file_name) or layers.get(legacy_name(file_name))
            if target is None:
                continue
            values = [np.asarray(group[file_name][w]) for w in weight_names]
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
            f"{model.name}: no layer of the model is named in {path!r} (the model has e.g. "
            f"{list(layers)[:3]}, the file {[n for n, _ in file_layers][:3]})."
        )
    missing = [n for n in layers if n not in loaded]
    if missing:
        warnings.warn(
            f"{model.name}: {path!r} has no weights for {len(missing)} layers, which keep "
            f"their initial values: {missing[:10]}{' ...' if len(missing) > 10 else ''}",
            stacklevel=3,
        )


def freeze_layers_before(model, layer_name):
    """Sets `trainable = False` on every layer of `model` before `layer_name`.

    "Before" is the order of `model.layers` (topological, as Keras lists them), the rule of
    the usual Keras fine-tuning code `for layer in model.layers[:index]`. The named layer
    and all later ones are set trainable. Frozen BatchNorm layers run in inference mode.

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
