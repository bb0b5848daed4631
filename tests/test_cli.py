"""The README's command chain: demo-data -> index -> evaluate (ground truth against itself)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from affectkit.data.affwild2 import annotation_dir, mtl_file_name, read_annotation_folder
from affectkit.labels import get_schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def affectkit(*args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "affectkit.cli", *args], env=env,
                          capture_output=True, text=True)


def test_index_prints_every_task(demo_root):
    result = affectkit("index", "--root", demo_root, "--edition", "abaw3", "--split", "train")
    assert result.returncode == 0, result.stderr
    for task in ("va", "expr", "au"):
        assert task in result.stdout
    assert "frames_without_image" in result.stdout


@pytest.mark.parametrize("task", ["va", "expr", "au"])
def test_evaluate_ground_truth_against_itself(demo_root, task, tmp_path):
    gt = os.path.join(demo_root, annotation_dir("abaw3", task, "val"))
    out = tmp_path / "scores.json"
    result = affectkit("evaluate", "--edition", "abaw3", "--task", task, "--gt", gt,
                       "--pred", gt, "--json", str(out))
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())
    if task == "va":
        assert scores["valence"] == pytest.approx(1.0) and scores["arousal"] == pytest.approx(1.0)
        assert scores["score"] == pytest.approx(1.0)
        return
    # Every class (AU) that occurs scores F1 1. One that never occurs in this tiny
    # validation set scores 0, as in sklearn's f1_score(zero_division=0) of the official
    # scripts, and still counts in the mean over 8 classes (12 AUs).
    labels = np.concatenate(list(read_annotation_folder(gt, task, get_schema("abaw3")).values()))
    if task == "expr":
        present = np.isin(np.arange(8), labels)
        per_class = scores["f1_per_class"]
    else:
        present = (labels == 1).any(axis=0)
        per_class = scores["f1_per_au"]
    assert scores["accuracy"] == pytest.approx(1.0)
    assert per_class == pytest.approx(present.astype(float))
    assert scores["score"] == pytest.approx(present.mean())


def test_evaluate_mtl_submission_of_ground_truth(demo_root, tmp_path):
    from affectkit.data.affwild2 import read_mtl_file, write_mtl_file

    gt = os.path.join(demo_root, mtl_file_name("abaw3", "val"))
    frames = read_mtl_file(gt, "abaw3")
    # A submission may not contain missing markers: fill them with valid values.
    va = frames[["valence", "arousal"]].to_numpy().clip(-1, 1)
    expr = frames["expr"].to_numpy().clip(0, None)
    au = frames[list(get_schema("abaw3").aus)].to_numpy().clip(0, None)
    images = [f"{v}/{f:05d}.jpg" for v, f in zip(frames["video"], frames["frame"])]
    pred = tmp_path / "submission.txt"
    write_mtl_file(str(pred), images, va, expr, au, "abaw3", submission=True)
    out = tmp_path / "scores.json"
    result = affectkit("evaluate", "--edition", "abaw3", "--task", "mtl", "--gt", gt,
                       "--pred", str(pred), "--json", str(out))
    assert result.returncode == 0, result.stderr
    # Every labelled entry is predicted exactly: P = CCC 1 + F1 of the classes present
    # + F1 of the AUs present (1 each; absent ones 0, as in the per-task test above).
    expr_present = np.isin(np.arange(8), frames["expr"].to_numpy()).mean()
    au_present = (frames[list(get_schema("abaw3").aus)].to_numpy() == 1).any(axis=0).mean()
    score = json.loads(out.read_text())["score"]
    assert score == pytest.approx(1.0 + expr_present + au_present)


def test_evaluate_reports_missing_prediction_file(demo_root, tmp_path):
    gt = os.path.join(demo_root, annotation_dir("abaw3", "expr", "val"))
    (tmp_path / "pred").mkdir()
    result = affectkit("evaluate", "--edition", "abaw3", "--task", "expr", "--gt", gt,
                       "--pred", str(tmp_path / "pred"))
    assert result.returncode == 2
    assert "no prediction file" in result.stderr


def test_commands_without_a_model_never_import_tensorflow(demo_root, tmp_path):
    gt = os.path.join(demo_root, annotation_dir("abaw3", "expr", "val"))
    script = f"""
import sys
from affectkit.cli import main
try:
    main(["--help"])
except SystemExit as stop:
    assert stop.code == 0, stop.code
assert main(["index", "--root", {demo_root!r}, "--edition", "abaw3", "--split", "val"]) == 0
assert main(["evaluate", "--edition", "abaw3", "--task", "expr", "--gt", {gt!r},
             "--pred", {gt!r}]) == 0
assert main(["demo-data", "--out", {str(tmp_path / "demo")!r}, "--videos", "4",
             "--frames", "4"]) == 0
loaded = [name for name in ("tensorflow", "keras") if name in sys.modules]
assert not loaded, loaded
"""
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Wrote a synthetic Aff-Wild2 layout" in result.stdout


def test_verbose_goes_before_or_after_the_subcommand():
    from affectkit.cli import build_parser

    base = ["--edition", "abaw3", "--task", "va", "--gt", "g", "--pred", "p"]
    parser = build_parser()
    assert not parser.parse_args(["evaluate", *base]).verbose
    assert parser.parse_args(["--verbose", "evaluate", *base]).verbose
    assert parser.parse_args(["evaluate", *base, "--verbose"]).verbose


@pytest.mark.parametrize("task, gt", [("expr", "no_such_folder"), ("mtl", "no_such_file.txt")])
def test_missing_input_is_one_message_and_exit_2(tmp_path, task, gt):
    missing = str(tmp_path / gt)
    result = affectkit("evaluate", "--edition", "abaw3", "--task", task, "--gt", missing,
                       "--pred", missing)
    assert result.returncode == 2
    assert missing in result.stderr and "Traceback" not in result.stderr
