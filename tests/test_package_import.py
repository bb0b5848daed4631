"""`import affectkit` loads neither TensorFlow nor Keras, yet saved models reload with only
`import affectkit`, whether Keras is imported before or after it (the losses and metrics of a
compiled model: test_losses.py)."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

from affectkit.models.layers import StatPooling
from tests.keras_checks import REPO_ROOT, assert_reloads_in_fresh_process


def run_python(script):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True)


def test_import_affectkit_loads_neither_tensorflow_nor_keras():
    result = run_python(
        """
        import sys
        import affectkit, affectkit.metrics, affectkit.evaluation.scoring, affectkit.cli
        loaded = [name for name in ("tensorflow", "keras") if name in sys.modules]
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_saved_model_reloads_when_affectkit_is_imported_before_keras(tmp_path):
    """(`import keras, affectkit` is the order of every other reload test.)"""
    inputs = keras.Input((5, 3))
    pooled = StatPooling(name="stat_pooling")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(pooled))
    x = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    assert_reloads_in_fresh_process(model, x, tmp_path, imports="affectkit, keras")


def test_registration_waits_for_the_outermost_import_and_reports_failures():
    """`import affectkit.models.backbones` imports Keras half-way through: the registering
    modules are imported only once backbones (and TensorFlow) have finished executing. A
    registering module that fails to import is a warning; Keras still imports."""
    result = run_python(
        """
        import sys, warnings
        import affectkit

        seen = []
        register = affectkit._register_custom_objects

        def spy():
            backbones = sys.modules.get("affectkit.models.backbones")
            seen.append((hasattr(backbones, "build_backbone"),
                         hasattr(sys.modules.get("tensorflow"), "__all__")))
            register()

        affectkit._register_custom_objects = spy
        affectkit.REGISTERING_MODULES += ("affectkit.no_such_module",)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import affectkit.models.backbones
        import keras

        assert seen == [(True, True)], seen  # once, after backbones and TensorFlow finished
        registered = keras.saving.get_custom_objects()
        for name in ("MaskedCCCLoss", "ConcordanceCorrelation", "StatPooling"):
            assert f"affectkit>{name}" in registered, name
        messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert len(messages) == 1 and "affectkit.no_such_module" in messages[0], messages
        assert not any(type(f).__module__ == "affectkit" for f in sys.meta_path)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
