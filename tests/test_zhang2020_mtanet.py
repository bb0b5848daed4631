"""MTANet (zhang2020_mtanet): the recipe end to end at tiny size, resume after a kill, and
the cpu_demo preset against its chance baselines (slow)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pandas as pd
import pytest

from affectkit import presets
from affectkit.models import AffectModel, label_schema
from affectkit.recipes import get_recipe
from tests.keras_checks import REPO_ROOT, assert_reloads_in_fresh_process

TINY = ["model.image_size=32", "data.batch_size=16", "data.augment=false",
        "run.backup_every=2", 'model.backbone={"name": "senet50", "depths": [1, 1, 1, 1], '
        '"stem_width": 8, "widths": [16, 32, 64, 128]}', "model.neck.width=16"]


def tiny_config(epochs=1, sets=()):
    return presets.resolve("zhang2020_mtanet", "cpu_demo", sets=[*TINY, *sets], epochs=epochs)


def test_resnext_cbam_ablation_backbone_reloads(tmp_path):
    model = AffectModel.from_preset(
        "zhang2020_mtanet", image_size=32,
        backbone={"name": "resnext50_cbam", "depths": [1, 1, 1, 1], "stem_width": 8,
                  "widths": [16, 32, 64, 128], "bottleneck_widths": [8, 16, 32, 64],
                  "groups": 4})
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    outputs = model.predict(images, verbose=0)
    assert (outputs["va"].shape, outputs["expr"].shape, outputs["au"].shape) == \
        ((3, 2), (3, 7), (3, 8))
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)
    assert_reloads_in_fresh_process(model, images, tmp_path)


def test_recipe_end_to_end(demo_root, tmp_path):
    out = str(tmp_path / "run")
    report = get_recipe("zhang2020_mtanet")(tiny_config(), demo_root, out, preset="cpu_demo").run()
    for name in ("model.keras", "metrics.json", "config.json", "history.csv",
                 "learning_curves.png", "confusion_matrix.png", "au_f1.png", "va.png",
                 "predictions/validation.csv", "predictions/mtl_submission.txt"):
        assert os.path.exists(os.path.join(out, name)), name
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert list(history["stage"]) == ["stage1_sum", "stage2_uncertainty"]
    assert np.isfinite(history["loss"]).all()
    saved = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("va_valence", "va_arousal", "va_score", "expr_f1", "au_f1", "score"):
        assert key in saved["validation"]
    assert set(saved["chance_baselines"]) == {"va", "expr", "au", "mtl"}
    assert set(report["official"]) == {"va", "expr", "au"}
    weights = json.load(open(os.path.join(out, "state", "stage2_uncertainty.json")))
    assert set(weights["task_weights"]) == {"va", "expr", "au"}

    record = json.load(open(os.path.join(out, "config.json")))
    assert record["recipe"] == "zhang2020_mtanet" and record["preset"] == "cpu_demo"
    assert record["config"]["model"]["image_size"] == 32
    assert len(record["annotations_sha1"]) == 40 and record["versions"]["keras"]
    predictions = pd.read_csv(os.path.join(out, "predictions", "validation.csv"))
    from affectkit.data.affwild2 import FrameIndex

    annotated = FrameIndex.from_affwild2(demo_root, "abaw3", "val", fill_missing_images=True)
    assert len(predictions) == len(annotated)
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert label_schema(model).edition == "abaw3" and model.view == "aligned"


def kill_mid_epoch(demo_root, tmp_path):
    """Starts a tiny run and kills it in the middle of its second epoch or later; returns
    `(out, script, env, killed_at)` (the backup's training metadata when killed)."""
    out = str(tmp_path / "run")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO_ROOT!r})
        from affectkit.recipes import get_recipe
        from tests.test_zhang2020_mtanet import tiny_config
        config = tiny_config(sets=["stages.stage1_sum.epochs=4", "stages.stage2_uncertainty.epochs=1"],
                             epochs=None)
        get_recipe("zhang2020_mtanet")(config, {demo_root!r}, {out!r}).run()
    """))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2", CI="1")
    metadata = os.path.join(out, "state", "stage1_sum_backup", "training_metadata.json")
    first = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
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
    return out, script, env, killed_at


def test_killed_run_resumes_when_rerun(demo_root, tmp_path):
    """Kills training mid-epoch, reruns the same command, and checks it resumed."""
    out, script, env, killed_at = kill_mid_epoch(demo_root, tmp_path)
    rows_before = len(pd.read_csv(os.path.join(out, "history.csv")))

    second = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from its backup at epoch {killed_at['epoch'] + 1}" in second.stdout
    history = pd.read_csv(os.path.join(out, "history.csv"))
    stage1 = history[history["stage"] == "stage1_sum"]
    assert sorted(stage1["epoch"]) == [0, 1, 2, 3]  # no epoch of stage 1 ran twice
    assert rows_before >= 1


def test_backup_torn_by_a_kill_resumes_from_the_one_before(demo_root, tmp_path):
    """A kill while the backup is written leaves it unreadable; the previous backup, kept
    beside it, resumes the run."""
    out, script, env, _ = kill_mid_epoch(demo_root, tmp_path)
    latest = os.path.join(out, "state", "stage1_sum_backup", "latest.weights.h5")
    assert os.path.isfile(latest + ".bkp")
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    second = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert set(history[history["stage"] == "stage1_sum"]["epoch"]) == {0, 1, 2, 3}
    assert os.path.isfile(os.path.join(out, "model.keras"))


@pytest.mark.slow
def test_cpu_demo_beats_every_chance_baseline(default_demo_root, tmp_path):
    """`make demo`'s training (cpu_demo preset on the default demo data, minutes)."""
    config = presets.resolve("zhang2020_mtanet", "cpu_demo")
    report = get_recipe("zhang2020_mtanet")(config, default_demo_root, str(tmp_path / "run")).run()
    for task in ("va", "expr", "au"):
        model, chance = report["validation"][f"{task}_score"], report["chance_baselines"][task]["score"]
        assert model > chance + 0.05, (task, model, chance)
