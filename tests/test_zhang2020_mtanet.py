"""MTANet (zhang2020_mtanet): tiny model build, safe-mode reload, end-to-end recipe, resume."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from affectkit.models.builders import mtanet
from recipes import zhang2020_mtanet
from tests.keras_checks import REPO_ROOT, assert_reloads_in_fresh_process

TINY_BACKBONE = {"depths": (1, 1, 1, 1), "stem_width": 8, "widths": (16, 32, 64, 128)}


def tiny_config(recipe, **overrides):
    config = copy.deepcopy(recipe.PRESETS["cpu_demo"])
    config.update(image_size=32, backbone_config=TINY_BACKBONE, neck_width=16,
                  batch_size=16, stage1_epochs=1, stage2_epochs=1, augment=False,
                  backup_every=2)
    config.update(overrides)
    return config


@pytest.mark.parametrize("backbone", ["senet50", "resnext50_cbam"])
def test_tiny_mtanet_outputs_and_fresh_process_reload(backbone, tmp_path):
    overrides = dict(TINY_BACKBONE)
    if backbone == "resnext50_cbam":
        overrides.update(groups=4, bottleneck_widths=(8, 16, 32, 64))
    model = mtanet("abaw1", input_shape=(32, 32, 3), backbone=backbone,
                   backbone_config=overrides, neck_width=16)
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    outputs = model.predict(images, verbose=0)
    assert outputs["va"].shape == (3, 2)
    assert outputs["expr"].shape == (3, 7)
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)
    assert outputs["au"].shape == (3, 8)
    assert_reloads_in_fresh_process(model, images, tmp_path)


def test_recipe_end_to_end(demo_root, tmp_path):
    recipe = zhang2020_mtanet
    out = str(tmp_path / "run")
    report = recipe.train(tiny_config(recipe), demo_root, out)
    for name in ("model.keras", "metrics.json", "history.csv", "learning_curves.png",
                 "confusion_matrix.png", "au_f1.png", "va.png"):
        assert os.path.exists(os.path.join(out, name)), name
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert list(history["stage"]) == ["stage1_sum", "stage2_uncertainty"]
    assert np.isfinite(history["loss"]).all()
    saved = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("va_valence", "va_arousal", "va_score", "expr_f1", "au_f1", "score"):
        assert key in saved["validation"]
    # The official files written from the best model score exactly as the in-memory scores:
    # the same frames (those with images) are predicted, the others from their nearest frame.
    assert set(report["official"]) == {"va", "expr", "au"}
    assert os.path.exists(os.path.join(out, "predictions", "mtl_submission.txt"))
    weights = json.load(open(os.path.join(out, "state", "stage2_uncertainty.json")))
    assert set(weights["task_weights"]) == {"va", "expr", "au"}


def test_killed_run_resumes_when_rerun(demo_root, tmp_path):
    """Kills training mid-epoch, reruns the same command, and checks it resumed."""
    out = str(tmp_path / "run")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO_ROOT!r})
        from recipes import zhang2020_mtanet as recipe
        from tests.test_zhang2020_mtanet import tiny_config
        recipe.train(tiny_config(recipe, stage1_epochs=4, stage2_epochs=1), {demo_root!r}, {out!r})
    """))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2", CI="1")
    metadata = os.path.join(out, "state", "stage1_sum_backup", "training_metadata.json")
    first = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and first.poll() is None:
        try:
            state = json.load(open(metadata))
        except (OSError, ValueError):
            state = None
        if state and state["epoch"] >= 1 and state["batch"] > 0:  # mid-epoch 2 or later
            os.killpg(first.pid, signal.SIGKILL)
            killed_at = state
            break
        time.sleep(0.05)
    first.wait()
    assert killed_at is not None, "training ended before it could be killed mid-epoch"
    rows_before = len(pd.read_csv(os.path.join(out, "history.csv")))

    second = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from its backup at epoch {killed_at['epoch'] + 1}" in second.stdout
    history = pd.read_csv(os.path.join(out, "history.csv"))
    stage1 = history[history["stage"] == "stage1_sum"]
    # No epoch of stage 1 ran twice: epochs 0..3 each appear once.
    assert sorted(stage1["epoch"]) == [0, 1, 2, 3]
    assert rows_before >= 1


@pytest.mark.slow
def test_cpu_demo_beats_every_chance_baseline(default_demo_root, tmp_path):
    """`make demo`'s training (cpu_demo preset on the default demo data, minutes)."""
    recipe = zhang2020_mtanet
    report = recipe.train(copy.deepcopy(recipe.PRESETS["cpu_demo"]), default_demo_root,
                          str(tmp_path / "run"))
    for task in ("va", "expr", "au"):
        model, chance = report["validation"][f"{task}_score"], report["chance_baselines"][task]["score"]
        assert model > chance + 0.05, (task, model, chance)
