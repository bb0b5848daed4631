"""`tools/bench_backbones.py`: its install hint without PyTorch, and a tiny side-by-side run."""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.keras_checks import REPO_ROOT

TOOL = os.path.join(REPO_ROOT, "tools", "bench_backbones.py")


def _load_tool():
    spec = importlib.util.spec_from_file_location("bench_backbones", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_torch_it_says_how_to_install_the_extra(monkeypatch, capsys):
    tool = _load_tool()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(tool.importlib.util, "find_spec",
                        lambda name: None if name == "torch" else real_find_spec(name))
    assert tool.main(["--families", "resnet50"]) == 2
    error = capsys.readouterr().err
    missing = error.split(" not installed", 1)[0]
    assert "torch" in missing.split("bench_backbones: ", 1)[-1].split(", ")
    assert "pip install -e .[bench]" in error


def _pytorch_side_loads():
    probe = subprocess.run([sys.executable, "-c", "import torch, torchvision, timm"],
                           capture_output=True, text=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_tiny_run_prints_both_sides_and_the_ratio():
    if not _pytorch_side_loads():
        pytest.skip("the bench extra (torch, torchvision, timm) is not installed or does not load")
    result = subprocess.run(
        [sys.executable, TOOL, "--image-size", "32", "--batch-size", "2", "--warmup-steps", "1",
         "--steps", "1", "--rounds", "1", "--families", "resnext50", "senet50"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    # Exit status 1 says a ratio is below the target, which a one-step run may well be.
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()
            if line.startswith(("  resnext50 ", "  senet50 "))]
    assert [row[0] for row in rows] == ["resnext50", "senet50"]
    assert rows[0][3:5] == ["torchvision", "resnext50_32x4d"]
    assert rows[1][3:5] == ["timm", "legacy_seresnet50"]
    for row in rows:  # name, params, img/s, library, model, params, img/s, ratio
        ours, theirs, ratio = float(row[2]), float(row[6]), float(row[7])
        assert ours > 0 and theirs > 0
        assert ratio == pytest.approx(ours / theirs, abs=0.01)
    assert "25,028,904" in result.stdout and "28,088,024" in result.stdout
