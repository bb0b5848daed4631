"""`tools/bench_paper_presets.py`: a tiny CPU run gives real step times in its table and its
JSON, and a failed setting is reported in its row while the others go on."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.keras_checks import REPO_ROOT

TOOL = os.path.join(REPO_ROOT, "tools", "bench_paper_presets.py")
SETTINGS = ("fp32", "fp32_xla", "mixed_fp16", "mixed_fp16_xla")


def _load_tool():
    spec = importlib.util.spec_from_file_location("bench_paper_presets", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, TOOL, "--tiny", "--out", str(out), *args],
                            capture_output=True, text=True, timeout=1800,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


def _table_rows(stdout):
    """name -> setting -> (step ms, frames/s, labelled/s, ratio) from the printed table."""
    table = stdout.split("One training step", 1)[1].splitlines()[2:]
    rows = {}
    for line in table:
        parts = line.split()
        settings = [p for p in parts if p in SETTINGS]
        if not line.startswith("  ") or not settings or "error:" in line:
            continue
        numbers = [float(p) for p in parts[parts.index(settings[0]) + 1:][:4]]
        rows.setdefault(parts[0], {})[settings[0]] = numbers
    return rows


def _check(stdout, report, expected):
    """Every (network, setting) of `expected` has positive figures in the table and in the
    JSON, which agree."""
    assert ("no GPU: running on CPU" in stdout) or ("GPU: " in stdout)
    table = _table_rows(stdout)
    got = {(row["network"], row["setting"]): row for row in report["rows"]}
    assert set(got) == set(expected)
    for (name, setting), row in got.items():
        assert "error" not in row, row
        assert row["step_ms"] > 0 and row["frames_per_s"] > 0 and row["labelled_per_s"] > 0
        assert len(row["step_ms_all"]) == row["steps"]
        assert row["frames_per_s"] == pytest.approx(
            row["frames_per_step"] / (row["step_ms"] / 1000), rel=1e-6)
        step_ms, frames, labelled, ratio = table[name][setting]
        assert step_ms == pytest.approx(row["step_ms"], abs=0.06)
        assert frames == pytest.approx(row["frames_per_s"], abs=0.06)
        assert labelled == pytest.approx(row["labelled_per_s"], abs=0.06)
        reference = got.get((name, "fp32"))
        if reference:
            assert ratio == pytest.approx(row["frames_per_s"] / reference["frames_per_s"],
                                          abs=0.006)
    assert report["device"]["tensorflow"] and report["device"]["keras"]


def test_tiny_run_of_one_network_gives_real_numbers(tmp_path):
    stdout, report = _run(tmp_path, "--recipes", "do2020_face", "--settings", "fp32",
                          "--steps", "1")
    _check(stdout, report, {("do2020_face", "fp32")})
    row = report["rows"][0]
    assert row["unit"] == "images" and row["frames_per_step"] == row["batch"] == 2
    assert row["policy"] == "float32" and row["jit_compile"] is False


def test_a_failed_setting_is_reported_in_its_row_and_the_others_go_on(monkeypatch, capsys):
    tool = _load_tool()
    good = {"network": "zhang2020", "setting": "fp32", "input": "64x64, 2 images",
            "unit": "images", "step_ms": 100.0, "frames_per_s": 20.0, "labelled_per_s": 20.0,
            "first_step_s": 3.0, "jit_compile": False, "device": "CPU", "policy": "float32",
            "optimizer": "Adam"}

    def fake_worker(name, setting, args, env, on_machine):
        if setting == "fp32":
            return dict(good)
        return {"network": name, "setting": setting, "error": "ResourceExhaustedError: OOM"}

    monkeypatch.setattr(tool, "_run_worker", fake_worker)
    assert tool.main(["--recipes", "zhang2020", "--settings", "fp32", "mixed_fp16_xla"]) == 0
    out = capsys.readouterr().out
    table = out.split("One training step", 1)[1]
    assert "mixed_fp16_xla  error: ResourceExhaustedError: OOM" in table
    assert "fp32                100.0       20.0       20.0    1.00" in table

    monkeypatch.setattr(tool, "_run_worker", lambda name, setting, *rest: {
        "network": name, "setting": setting, "error": "boom"})
    assert tool.main(["--recipes", "zhang2020", "--settings", "fp32"]) == 1


def test_recipe_names_select_networks():
    tool = _load_tool()
    assert tool._select(["do2020"]) == ["do2020_face", "do2020_temporal"]
    assert tool._select(["phan2022_regnet_transformer", "do2020_temporal", "zhang2020"]) == [
        "zhang2020", "do2020_temporal", "phan2022"]
    with pytest.raises(SystemExit, match="unknown recipe"):
        tool._select(["resnet"])


@pytest.mark.slow
def test_tiny_run_of_every_network(tmp_path):
    # Every network in fp32, and one of them in the three other settings too.
    stdout, report = _run(tmp_path, "--settings", "fp32")
    _check(stdout, report, {(name, "fp32") for name in _load_tool().NETWORKS})
    units = {row["network"]: row["unit"] for row in report["rows"]}
    assert units == {"zhang2020": "images", "do2020_face": "images",
                     "do2020_temporal": "window frames", "haider2022": "images",
                     "phan2022": "clip frames", "liu2023": "segment frames"}
    window = next(row for row in report["rows"] if row["network"] == "do2020_temporal")
    assert window["frames_per_step"] == 16 * window["labelled_per_step"] == 16 * 2
    stdout, report = _run(tmp_path, "--recipes", "liu2023")
    _check(stdout, report, {("liu2023", setting) for setting in SETTINGS})
    mixed = {row["setting"]: row for row in report["rows"]}
    assert mixed["mixed_fp16"]["policy"] == "mixed_float16"
    assert mixed["mixed_fp16"]["optimizer"] == "LossScaleOptimizer"
    assert mixed["fp32_xla"]["jit_compile"] is True
