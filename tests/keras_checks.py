"""Shared checks for custom Keras objects: config round trip, symbolic and eager call,
one `fit` step, and `.keras` save/load in a fresh process in default safe mode."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_layer(layer_cls, init_kwargs, input_data, expected_output_shape=None, fit=True):
    """Runs the standard layer checks; returns the eager output.

    `input_data` is one array or a list of arrays (batch first).
    """
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert key in config, f"{layer_cls.__name__}.get_config() lacks {key!r}"
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    multi = isinstance(input_data, (list, tuple))
    arrays = list(input_data) if multi else [input_data]
    inputs = [keras.Input(shape=a.shape[1:], dtype=str(a.dtype)) for a in arrays]
    outputs = layer(inputs if multi else inputs[0])
    model = keras.Model(inputs if multi else inputs[0], outputs)
    eager = layer(arrays if multi else arrays[0])
    eager = keras.ops.convert_to_numpy(eager) if not isinstance(eager, (list, tuple, dict)) else eager
    if expected_output_shape is not None:
        assert tuple(eager.shape) == tuple(expected_output_shape), eager.shape
        assert tuple(outputs.shape[1:]) == tuple(expected_output_shape[1:])
    if fit and not isinstance(eager, (list, tuple, dict)):
        model.compile(optimizer="sgd", loss="mse")
        model.fit(arrays if multi else arrays[0], np.zeros_like(eager), epochs=1, verbose=0)
    return eager


def assert_reloads_in_fresh_process(model, inputs, tmp_path, atol=1e-5):
    """Saves `model` to `.keras`, reloads it in a new Python process that imports only
    `affectkit` (default safe mode) and checks that its predictions equal this process's."""
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    arrays = inputs if isinstance(inputs, dict) else {"x": inputs}
    np.savez(os.path.join(str(tmp_path), "inputs.npz"), **arrays)
    expected = model.predict(inputs, verbose=0)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras, affectkit
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
