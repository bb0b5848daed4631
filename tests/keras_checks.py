"""Shared checks for custom Keras objects, the keras-hub way.

- `check_layer`: config round trip, JSON round trip through the registered name, symbolic
  and eager call, mixed precision, one `fit` step (multi-output layers too).
- `check_loss` / `check_metric`: config and JSON round trips, the value against an
  independent reference, a `fit` step with the loss, streaming over uneven batches.
- `assert_reloads_in_fresh_process`: `.keras` save, reload in a new Python process that
  imports only `affectkit` (default safe mode), equal predictions.
"""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import keras
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_serialization(obj):
    """`get_config` round trip, and a JSON round trip through the registered name."""
    cls = type(obj)
    registered = keras.saving.get_registered_name(cls)
    assert registered.startswith("affectkit>"), f"{cls.__name__} is not registered: {registered}"
    config = obj.get_config()
    assert cls.from_config(config).get_config() == config
    text = json.dumps(keras.saving.serialize_keras_object(obj))
    clone = keras.saving.deserialize_keras_object(json.loads(text))
    assert type(clone) is cls and clone.get_config() == config
    return config


def _flat(outputs):
    if isinstance(outputs, dict):
        return [outputs[k] for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def _structure(outputs):
    """NumPy copy of a layer's (possibly nested) outputs."""
    if isinstance(outputs, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(keras.ops.convert_to_numpy(v) for v in outputs)
    return keras.ops.convert_to_numpy(outputs)


def check_layer(layer_cls, init_kwargs, input_data, expected_output_shape=None, fit=True,
                mixed_precision=True):
    """Runs the standard layer checks; returns the eager output (NumPy, same structure).

    `input_data` is one array or a list of arrays (batch first). For layers with several
    outputs (a list, tuple or dict), `fit` trains on the sum of the outputs' squares.
    """
    layer = layer_cls(**init_kwargs)
    config = check_serialization(layer)
    for key in init_kwargs:
        assert key in config, f"{layer_cls.__name__}.get_config() lacks {key!r}"

    multi = isinstance(input_data, (list, tuple))
    arrays = list(input_data) if multi else [input_data]
    inputs = [keras.Input(shape=a.shape[1:], dtype=str(a.dtype)) for a in arrays]
    outputs = layer(inputs if multi else inputs[0])
    model = keras.Model(inputs if multi else inputs[0], outputs)
    eager = _structure(layer(arrays if multi else arrays[0]))
    if expected_output_shape is not None:
        first = _flat(eager)[0]
        assert tuple(first.shape) == tuple(expected_output_shape), first.shape
        assert tuple(_flat(outputs)[0].shape[1:]) == tuple(expected_output_shape[1:])

    if mixed_precision:  # as the Trainer runs it: the global policy, float16 compute
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            half = layer_cls(**init_kwargs)
            for value in _flat(half(arrays if multi else arrays[0])):
                value = keras.ops.convert_to_numpy(value)
                assert np.all(np.isfinite(value)), f"{layer_cls.__name__}: non-finite in float16"
        finally:
            keras.config.set_dtype_policy(previous)

    if fit:
        flat = _flat(outputs)
        if len(flat) == 1:
            model.compile(optimizer="sgd", loss="mse")
            model.fit(arrays if multi else arrays[0], np.zeros_like(_flat(eager)[0]), epochs=1,
                      verbose=0)
        else:
            trainable = SumOfSquaresModel(model)
            trainable.compile(optimizer="sgd")
            trainable.fit(arrays if multi else arrays[0], epochs=1, batch_size=len(arrays[0]),
                          verbose=0)
    return eager


class SumOfSquaresModel(keras.Model):
    """Trains a multi-output model on the sum of its outputs' mean squares."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return sum(keras.ops.mean(keras.ops.square(keras.ops.cast(t, "float32")))
                   for t in _flat(y_pred) if t.dtype != "bool")


def check_loss(loss, y_true, y_pred, expected, atol=1e-5):
    """Config/JSON round trips, the value against an independent `expected`, and a `fit`
    step of a linear model with the loss (finite)."""
    check_serialization(loss)
    value = float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))
    assert abs(value - expected) <= atol, (value, expected)
    y_pred = np.asarray(y_pred, np.float32)
    inputs = keras.Input(y_pred.shape[1:])
    model = keras.Model(inputs, keras.layers.Dense(y_pred.shape[-1], activation=None)(inputs))
    model.compile(optimizer="sgd", loss=loss)
    history = model.fit(y_pred, y_true, epochs=1, batch_size=len(y_pred), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    return value


def check_metric(metric, y_true, y_pred, expected, batches=(1, 3), atol=1e-6):
    """Config/JSON round trips; the streamed value over uneven batches (sizes cycling
    through `batches`) equals `expected`; `reset_state` starts over."""
    check_serialization(metric)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    for _ in range(2):  # the second pass checks reset_state
        metric.reset_state()
        start, i = 0, 0
        while start < len(y_true):
            stop = start + batches[i % len(batches)]
            metric.update_state(y_true[start:stop], y_pred[start:stop])
            start, i = stop, i + 1
        value = keras.ops.convert_to_numpy(metric.result())
        np.testing.assert_allclose(value, expected, atol=atol)
    return value


def assert_reloads_in_fresh_process(model, inputs, tmp_path, atol=1e-5,
                                    imports="keras, affectkit"):
    """Saves `model` to `.keras`, reloads it in a new Python process that imports only
    `affectkit` (default safe mode) and checks that its predictions equal this process's.

    `imports`: the modules of the script's import statement, in order (`"affectkit, keras"`
    imports affectkit before Keras)."""
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    arrays = inputs if isinstance(inputs, dict) else {"x": inputs}
    np.savez(os.path.join(str(tmp_path), "inputs.npz"), **arrays)
    expected = model.predict(inputs, verbose=0)
    script = textwrap.dedent(
        f"""
        import numpy as np, {imports}
        data = dict(np.load({os.path.join(str(tmp_path), "inputs.npz")!r}))
        inputs = data if {isinstance(inputs, dict)!r} else data["x"]
        model = keras.saving.load_model({path!r})
        out = model.predict(inputs, verbose=0)
        if not isinstance(out, dict):
            out = {{"out": out}} if not isinstance(out, (list, tuple)) else {{str(i): o for i, o in enumerate(out)}}
        np.savez({os.path.join(str(tmp_path), "reloaded.npz")!r}, **out)
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = dict(np.load(os.path.join(str(tmp_path), "reloaded.npz")))
    if not isinstance(expected, dict):
        expected = {"out": expected} if not isinstance(expected, (list, tuple)) else {str(i): o for i, o in enumerate(expected)}
    assert set(reloaded) == set(expected), (set(reloaded), set(expected))
    for key in expected:
        np.testing.assert_allclose(reloaded[key], expected[key], atol=atol, err_msg=key)


# ------------------------------------------------------------ legacy Keras 2 files


def keras_vggface_legacy_name(keras_name):
    """A Keras 3 layer name in keras-vggface's naming ('/' written '_') -> keras-vggface's
    own: `conv1_7x7_s2_bn` -> `conv1/7x7_s2/bn` (the tests' own inverse mapping)."""
    if keras_name.startswith("conv1_7x7_s2"):
        keras_name = "conv1/7x7_s2" + keras_name[len("conv1_7x7_s2"):]
    if keras_name.endswith("_bn"):
        keras_name = keras_name[:-3] + "/bn"
    return keras_name


_KERAS2_ORDER = {
    keras.layers.Conv2D: ["kernel", "bias"],
    keras.layers.BatchNormalization: ["gamma", "beta", "moving_mean", "moving_variance"],
    keras.layers.Dense: ["kernel", "bias"],
}


def _keras2_order(layer):
    return next((order for cls, order in _KERAS2_ORDER.items() if isinstance(layer, cls)), [])


def write_keras2_h5(model, path, full_model=False):
    """Writes `model`'s weights as Keras 2 `save_weights` would, with keras-vggface names
    (`keras_vggface_legacy_name`):
    root attr `layer_names`, one group per layer (h5py nests 'conv1/7x7_s2' as groups),
    attr `weight_names` and one dataset per weight ('conv1/7x7_s2/bn/gamma:0')."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
        layer_names = []
        for layer in model.layers:
            legacy = keras_vggface_legacy_name(layer.name)
            layer_names.append(legacy.encode("utf8"))
            group = root.create_group(legacy) if legacy not in root else root[legacy]
            values = {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}
            order = [n for n in _keras2_order(layer) if n in values]
            assert len(order) == len(values), (layer.name, list(values))
            weight_names = [f"{legacy}/{n}:0" for n in order]
            group.attrs["weight_names"] = [w.encode("utf8") for w in weight_names]
            for weight_name, n in zip(weight_names, order):
                group.create_dataset(weight_name, data=values[n])
        root.attrs["layer_names"] = layer_names


def keras_vggface_senet50(input_shape=(224, 224, 3), depths=(3, 4, 6, 3),
                          widths=(256, 512, 1024, 2048), stem_width=64):
    """keras-vggface's `SENET50` (keras_vggface/models.py), written out here with plain
    Keras layers and its layer names ('/' written '_'): a source network for tests.
    Stride on the first 1x1 and the projection, 'same' padding, an unpadded 3x3/2 stem
    pooling, BatchNorm epsilon 1e-4, SE as 1x1 convolutions with bias on the pooled map."""
    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(stem_width, 7, strides=2, padding="same", use_bias=False,
                 name="conv1_7x7_s2")(inputs)
    x = L.Activation("relu")(L.BatchNormalization(epsilon=1e-4, name="conv1_7x7_s2_bn")(x))
    x = L.MaxPooling2D(3, strides=2)(x)

    def conv_bn(x, filters, kernel, name, strides=1, relu=True):
        x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                     name=name)(x)
        x = L.BatchNormalization(epsilon=1e-4, name=name + "_bn")(x)
        return L.Activation("relu")(x) if relu else x

    for stage, (depth, width) in enumerate(zip(depths, widths), start=2):
        for block in range(1, depth + 1):
            name, strides = f"conv{stage}_{block}", (2 if stage > 2 and block == 1 else 1)
            y = conv_bn(x, width // 4, 1, f"{name}_1x1_reduce", strides)
            y = conv_bn(y, width // 4, 3, f"{name}_3x3")
            y = conv_bn(y, width, 1, f"{name}_1x1_increase", relu=False)
            se = L.Reshape((1, 1, width))(L.GlobalAveragePooling2D()(y))
            se = L.Conv2D(width // 16, 1, activation="relu", name=f"{name}_1x1_down")(se)
            se = L.Conv2D(width, 1, activation="sigmoid", name=f"{name}_1x1_up")(se)
            y = L.Multiply()([y, se])
            shortcut = (conv_bn(x, width, 1, f"{name}_1x1_proj", strides, relu=False)
                        if block == 1 else x)
            x = L.Activation("relu")(L.Add()([y, shortcut]))
    return keras.Model(inputs, x)
