"""Any saved Keras model as a backbone: load a `.keras` / legacy `.h5` file, cut it at a layer.

Users often have a face model trained elsewhere (a fine-tuned expression network, a
keras-vggface or EmotiEffLib Keras model) saved as a whole model. `model_file_backbone`
loads it offline, in Keras' default safe mode, and returns a functional model from its
input(s) to the output of one of its layers, ready to be composed with affectkit's necks,
temporal blocks and heads.

Layers inside nested models are addressed with '/': `layer="resnet50/conv4_block6_out"`
is the layer `conv4_block6_out` of the sub-model `resnet50` (Keras 3 layer names cannot
contain '/', so the path is unambiguous; deeper nesting works the same way,
`"outer/inner/layer"`). The nested part up to that layer stays one nested layer of the
returned model, named like the sub-model.
"""

import difflib
import os

import keras

MODEL_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")
PATH_SEPARATOR = "/"


def model_file_backbone(path, layer=None, input_shape=None, trainable=True, name=None):
    """Loads a saved Keras model and returns it cut at `layer`, as a functional model.

    Args:
        path: a Keras 3 `.keras` file, or a legacy Keras `.h5` / `.hdf5` full-model file
            (both read by `keras.saving.load_model` in safe mode, without compiling).
            Custom layers must be registered first (`import affectkit` registers
            affectkit's). Weights-only files (`.weights.h5`) hold no architecture: build the
            model and load them instead.
        layer: name of the layer whose output the backbone returns; `"sub/layer"` for a
            layer inside a nested model `sub`. `None`: the model's own output(s).
        input_shape: `None` keeps the saved input shape; `(height, width, channels)`
            rebuilds the cut model for another input size (same weights). Only for one
            input, and only where every layer accepts the new size (nested models keep
            their saved input shape).
        trainable: sets `trainable` on the returned model (all its layers).
        name: name of the returned model; default `"{model name}_{layer}"` (the model's
            own name when `layer` is None).

    Returns:
        A functional `keras.Model` (or, for a subclassed model with `layer=None`, the
        loaded model itself).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file type is not a Keras model file, `layer` is not in the model
            (the message lists layer names that exist), or `input_shape` cannot be applied.

    Example:

    ```python
    backbone = model_file_backbone("expr_net.keras", layer="conv4_block6_out",
                                   trainable=False)
    features = backbone(frames)
    ```
    """
    model = load_model_file(path)
    if layer is None:
        if not _has_graph(model):
            model.trainable = bool(trainable)
            return model
        outputs = _graph_outputs(model)
        default_name = model.name
    else:
        if not _has_graph(model):
            raise ValueError(
                f"{path}: {model.name!r} is a subclassed model ({type(model).__name__}) "
                f"without a layer graph, so it cannot be cut at layer {layer!r}; only "
                "functional and Sequential models can (layer=None returns the model)."
            )
        outputs = _layer_output(model, str(layer).split(PATH_SEPARATOR), path, str(layer))
        default_name = f"{model.name}_{str(layer).replace(PATH_SEPARATOR, '_')}"

    backbone = keras.Model(_graph_inputs(model), outputs, name=name or default_name)
    if input_shape is not None:
        backbone = _with_input_shape(backbone, tuple(input_shape), path)
    backbone.trainable = bool(trainable)
    return backbone


def load_model_file(path):
    """A Keras model file (`.keras`, legacy `.h5`) loaded in safe mode; errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model file {path!r} does not exist (expected a '.keras' or legacy '.h5' Keras "
            "model file on this machine; affectkit never downloads models)."
        )
    lowered = path.lower()
    if lowered.endswith(".weights.h5") or not lowered.endswith(MODEL_FILE_SUFFIXES):
        raise ValueError(
            f"{path}: not a Keras model file; expected a '.keras' file or a legacy '.h5' / "
            "'.hdf5' full-model file ('.weights.h5' files hold weights only: build the "
            "model, then call `model.load_weights(path)`)."
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # name the file in whatever went wrong
        raise ValueError(
            f"{path}: could not load the model ({type(error).__name__}: {error}). Custom "
            "layers must be registered (e.g. `import affectkit`) before loading."
        ) from error


def _has_graph(model):
    try:
        model.inputs  # noqa: B018 - raises for models without a graph
    except (AttributeError, ValueError):
        return False
    return bool(getattr(model, "inputs", None))


def _graph_inputs(model):
    """The model's own symbolic inputs, keeping a functional model's structure (dicts).

    `Sequential.input` would name the tensors of a call site, so Sequential models use
    their internal graph's `inputs`.
    """
    if isinstance(model, keras.Sequential):
        return model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return model.input


def _graph_outputs(model):
    if isinstance(model, keras.Sequential):
        return model.outputs[0] if len(model.outputs) == 1 else model.outputs
    return model.output


def _layer_output(model, parts, path, full_name):
    """The symbolic output of layer `parts` (a nested path) in `model`'s own graph."""
    head, rest = parts[0], parts[1:]
    found = _find_layer(model, head, path, full_name)
    if not rest:
        return found.output
    if not isinstance(found, keras.Model) or not _has_graph(found):
        raise ValueError(
            f"{path}: layer {head!r} of {model.name!r} is not a functional or Sequential "
            f"sub-model, so {full_name!r} cannot name a layer inside it."
        )
    nodes = found._inbound_nodes
    if len(nodes) != 1:
        raise ValueError(
            f"{path}: sub-model {head!r} is called {len(nodes)} times in {model.name!r}; "
            f"{full_name!r} is ambiguous (only sub-models used once can be cut)."
        )
    inner = keras.Model(_graph_inputs(found), _layer_output(found, rest, path, full_name),
                        name=found.name)
    feed = nodes[0].input_tensors
    return inner(feed[0] if len(feed) == 1 else feed)


def _find_layer(model, name, path, full_name):
    names = [layer.name for layer in model.layers]
    if name in names:
        return model.get_layer(name)
    close = difflib.get_close_matches(name, names, n=5)
    nested = [n for n, layer in zip(names, model.layers) if isinstance(layer, keras.Model)]
    hint = f" Closest names: {close}." if close else ""
    if nested:
        hint += (f" Nested models (address their layers as 'model/layer'): {nested}.")
    shown = names if len(names) <= 12 else names[:6] + ["..."] + names[-5:]
    raise ValueError(
        f"{path}: model {model.name!r} has no layer {name!r} (asked for {full_name!r}). "
        f"It has {len(names)} layers: {shown}.{hint}"
    )


def _with_input_shape(model, input_shape, path):
    """Rebuilds `model` (one input) for `input_shape` from its config, same weights."""
    if len(model.inputs) != 1:
        raise ValueError(
            f"{path}: `input_shape` applies to single-input models; this one has "
            f"{len(model.inputs)} inputs."
        )
    if tuple(model.inputs[0].shape[1:]) == input_shape:
        return model
    config = model.get_config()
    for layer_config in config["layers"]:
        if layer_config["class_name"] == "InputLayer":
            layer_config["config"]["batch_shape"] = [None, *input_shape]
    try:
        rebuilt = model.__class__.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as error:
        raise ValueError(
            f"{path}: the model cut at its layer cannot take input shape {input_shape} "
            f"(saved with {tuple(model.inputs[0].shape[1:])}): {type(error).__name__}: "
            f"{error}"
        ) from error
    return rebuilt
