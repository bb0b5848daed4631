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
