"""`affectkit recipes`, `train` (and `--config` to train a run's configuration again) and
`ensemble`, as a user runs them."""

import json
import os
import subprocess
import sys

import pandas as pd

from tests.keras_checks import REPO_ROOT

TINY = ["--set", "model.image_size=32", "--set", "data.batch_size=16", "--set",
        'model.backbone={"name": "senet50", "depths": [1, 1, 1, 1], "stem_width": 8, '
        '"widths": [16, 32, 64, 128]}', "--set", "model.neck.width=16"]


def affectkit(*args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, CI="1")
    return subprocess.run([sys.executable, "-m", "affectkit.cli", *args], env=env,
                          capture_output=True, text=True)


def test_recipes_lists_every_recipe_without_tensorflow():
    code = ("import sys; from affectkit.cli import main; main(['recipes']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 0, result.stderr
    for name in ("zhang2020_mtanet", "do2020_stat_temporal", "liu2023_multimodal_ensemble",
                 "haider2022_mtl_ensemble", "phan2022_regnet_transformer"):
        assert name in result.stdout
    assert "presets: paper, cpu_demo" in result.stdout


def test_train_again_from_config_and_ensemble(demo_root, tmp_path):
    first, second, combined = (str(tmp_path / name) for name in ("a", "b", "ensemble"))
    result = affectkit("train", "zhang2020_mtanet", "--data", demo_root, "--preset", "cpu_demo",
                       "--epochs", "1", *TINY, "--out", first)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "sum (MTL P for ABAW3+)" in result.stdout
    assert "oneDNN" not in result.stderr and "cpu_feature_guard" not in result.stderr

    result = affectkit("train", "zhang2020_mtanet", "--config", os.path.join(first, "config.json"),
                       "--set", "seed=1", "--out", second)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    a, b = (json.load(open(os.path.join(d, "config.json"))) for d in (first, second))
    assert b["config"] == dict(a["config"], seed=1)
    assert b["data"] == a["data"] and b["annotations_sha1"] == a["annotations_sha1"]
    assert b["preset"] == "cpu_demo"

    result = affectkit("ensemble", "--out", combined, first, second)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.load(open(os.path.join(combined, "metrics.json")))
    assert set(report["ensemble"]) == {"va", "expr", "au"}
    runs = [pd.read_csv(os.path.join(d, "predictions", "validation.csv")) for d in (first, second)]
    averaged = pd.read_csv(os.path.join(combined, "predictions", "validation.csv"))
    assert abs(averaged["valence"] - (runs[0]["valence"] + runs[1]["valence"]) / 2).max() < 1e-5


def test_train_bad_input_is_one_clear_line(tmp_path):
    result = affectkit("train", "zhang2020_mtanet", "--data", str(tmp_path / "missing"),
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "no such folder" in result.stderr and "Traceback" not in result.stderr
    result = affectkit("train", "zhang2020_mtanet", "--data", str(tmp_path), "--set", "nope=1",
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "no setting 'nope'" in result.stderr
