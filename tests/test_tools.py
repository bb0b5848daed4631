"""Smoke runs of the benchmark scripts in `tools/` at tiny sizes (they must keep working)."""

import os
import subprocess
import sys

import pytest

from tests.keras_checks import REPO_ROOT

pytestmark = pytest.mark.slow


def run_tool(name, *args, exit_codes=(0,)):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", name), *args],
                            capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode in exit_codes, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_bench_pipeline_prints_both_ratios():
    # Exit status 1 says a target was missed, which a 256-frame run may well do.
    out = run_tool("bench_pipeline.py", "--frames", "256", "--epochs", "1", "--aug-epochs", "1",
                   exit_codes=(0, 1))
    assert "pipeline/raw decode" in out and "pipeline/per-item" in out


def test_bench_temporal_prints_the_cache_ratio():
    out = run_tool("bench_temporal.py", "--image-size", "32", "--batch-size", "2", "--steps", "1",
                   "--rounds", "1", "--window", "4")
    assert "ratio" in out and "windows/s" in out


def test_bench_models_prints_every_mode():
    out = run_tool("bench_models.py", "--image-scale", "0.3", "--haider-batch", "2", "--steps", "1",
                   "--rounds", "1", "--modes", "eager", "graph")
    for name in ("haider2022", "phan2022"):
        assert f"  {name} eager:" in out and f"  {name} graph:" in out
        assert f"  {name}  " in out.split("One training step")[1]  # its row of the table


def test_bench_models_runs_the_other_paper_presets():
    # Full names are accepted too; the feature recipes keep their paper sizes.
    out = run_tool("bench_models.py", "--recipes", "zhang2020", "do2020_stat_temporal",
                   "liu2023", "--image-scale", "0.3", "--zhang-batch", "2", "--do-batch", "2",
                   "--liu-segments", "1", "--steps", "1", "--rounds", "1", "--modes", "graph")
    table = out.split("One training step")[1]
    assert "34x34, batch 2 images" in table
    assert "features 2048 + 16x7, batch 2 windows" in table
    assert "features 128x3670, batch 1 segments" in table


def test_bench_tuning_prints_the_overhead():
    # Exit status 1 says the overhead target was missed, which a tiny run may well do.
    out = run_tool("bench_tuning.py", "--epochs", "1", "--rounds", "1", "--set",
                   "model.image_size=32", "--set", "model.neck.width=16", exit_codes=(0, 1))
    assert "ratio tune/train" in out and "tuner overhead" in out


def test_bench_predict_prints_every_method_against_the_naive_loop():
    out = run_tool("bench_predict.py", "--frames", "20", "--naive-frames", "3", "--every", "1", "5")
    assert "affectkit (BlazeFace, every 5" in out and "naive (MTCNN" in out
    assert out.count("x naive)") == 3


def test_bench_predict_memory_prints_the_ratio():
    out = run_tool("bench_predict_memory.py", "--minutes", "0.05", "0.1")
    assert "ratio long / short" in out


def test_bench_scale_prints_the_frameindex_and_the_mapped_windows():
    out = run_tool("bench_scale.py", "--frames", "30000", "--videos", "12")
    assert "FrameIndex (train, 30000 frames, 12 videos)" in out
    assert "memory-mapped" in out and "windows/s" in out
