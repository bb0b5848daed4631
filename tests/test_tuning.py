"""`affectkit tune`: search spaces as data, the recipe HyperModel, results, resume, and
KerasTuner's chief/worker scheme."""

import json
import os
import re
import socket
import subprocess
import sys

import keras_tuner as kt
import pandas as pd
import pytest

from affectkit import presets
from affectkit.models.affect_model import AffectModel
from affectkit.tuning import spaces
from affectkit.tuning.hypermodel import RecipeHyperModel, budget_stages, component_names
from affectkit.tuning.search import run_search
from tests.keras_checks import REPO_ROOT

# Tiny networks of every recipe (every choice of its space stays small).
TINY_RESNET = {"depths": [1, 1, 1, 1], "stem_width": 8, "widths": [16, 32, 64, 128],
               "bottleneck_widths": [8, 16, 32, 64], "groups": 4}
TINY = {
    "zhang2020_mtanet": [
        "model.image_size=32", "data.batch_size=16", "data.augment=false",
        "model.backbone=" + json.dumps({"name": "senet50", **TINY_RESNET}),
        "model.neck.width=16"],
    "do2020_stat_temporal": [
        "face.image_size=32", "face.epochs=1", "face.batch_size=16", "face.augment=false",
        "face.backbone=" + json.dumps({k: TINY_RESNET[k] for k in ("depths", "stem_width",
                                                                    "widths")}),
        'model.feature_inputs.feature=[128]', "model.temporal.lstm_units=4",
        "model.heads=" + json.dumps({t: {"hidden_units": [8]} for t in
                                     ("expr", "va", "va_vector")}),
        "data.batch_size=16"],
    "liu2023_multimodal_ensemble": [
        "features.visual.image_size=32",
        "features.visual.hyperparameters=" + json.dumps(
            {"depths": [1, 1, 1, 1], "widths": [8, 16, 24, 32], "group_width": 8,
             "stem_width": 8}),
        'model.feature_inputs={"features": [null, 112]}',
        'model.temporal={"num_layers": 1, "num_heads": 2, "head_dim": 8, "mlp_dim": 16}',
        'model.heads={"expr": {"hidden_units": [8]}}', "data.batch_size=3"],
    "haider2022_mtl_ensemble": [
        "model.image_size=32", "data.batch_size=16", "data.augment=false",
        "model.neck.transformer_mlp_dim=32", "attention_maps=0",
        'model.backbone={"name": "resnet50", "depths": [1, 1], "stem_width": 8, '
        '"widths": [16, 32], "bottleneck_widths": [8, 16]}'],
    "phan2022_regnet_transformer": [
        "model.image_size=32", "data.batch_size=4",
        'model.backbone={"name": "regnety_1.6gf", "depths": [1, 1, 1, 1], '
        '"widths": [8, 16, 24, 32], "group_width": 8, "stem_width": 8}',
        "model.temporal.attention_head_dim=8", "model.temporal.transformer_head_dim=8",
        "model.temporal.transformer_mlp_dim=16"],
}
ZHANG = TINY["zhang2020_mtanet"]


def affectkit(*args, env=None):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, CI="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "affectkit.cli", *args], env=env,
                          capture_output=True, text=True)


# ----------------------------------------------------------------------- spaces as data


def test_apply_values_sets_labels_list_indexes_and_drops_groups():
    config = presets.resolve("do2020_stat_temporal", "cpu_demo")
    space = presets.search_space("do2020_stat_temporal", "cpu_demo")
    out = spaces.apply_values(config, space, {"window": 32, "lstm_layers": 2,
                                              "va_branches": "off", "ccc_weight": 0.7})
    assert out["model"]["feature_inputs"]["probabilities"] == [32, 7]
    assert out["model"]["temporal"]["lstm_layers"] == 2
    assert out["variant"] == "emotion_frame_lstm"
    assert out["loss_weights"]["ccc"] == 0.7
    assert config["variant"] == "emotion_va_frame_lstm"  # unchanged

    zhang = presets.resolve("zhang2020_mtanet", "cpu_demo")
    space = presets.search_space("zhang2020_mtanet")
    off = spaces.apply_values(zhang, space, {"stage2": "off", "stage2_lr": 0.01})
    assert list(off["stages"]) == ["stage1_sum"]
    on = spaces.apply_values(zhang, space, {"stage2": "on", "stage2_lr": 0.01})
    assert on["stages"]["stage2_uncertainty"]["optimizer"]["learning_rate"] == 0.01


def test_defaults_are_the_presets_values_and_every_space_applies():
    for name in presets.available():
        for preset in presets.run_presets(name):
            config = presets.resolve(name, preset)
            space = presets.search_space(name, preset)
            spaces.check_keys(config, space)
            hp = spaces.declare(kt.HyperParameters(), space, config)
            assert set(hp.values) == set(space)
            # The defaults reproduce the preset (a dropped-or-kept group kept).
            assert spaces.apply_values(config, space, hp.values) == config, (name, preset)


def test_space_files_override_entries_and_bad_ones_name_the_file(tmp_path):
    base = presets.search_space("zhang2020_mtanet")
    path = tmp_path / "space.yaml"
    path.write_text("backbone: null\nstage1_lr: {min: 0.001, max: 0.1, sampling: log}\n"
                    "batch: {choices: [8, 16], keys: [data.batch_size]}\n")
    space = spaces.load_space(str(path), base=base)
    assert "backbone" not in space and space["stage1_lr"]["max"] == 0.1
    assert space["batch"]["keys"] == ["data.batch_size"]

    bad = tmp_path / "bad.json"
    for text, expected in (('{"lr": {"min": 1, "max": 0}}', "min < max"),
                           ('{"lr": {"choices": []}}', "non-empty"),
                           ('{"lr": {"min": 0, "max": 1, "sampling": "log"}}', "min > 0"),
                           ('{"lr": {"choices": [[1, 2]]}}', "mapping of labels"),
                           ("{not json", "not a valid search space file")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=expected) as error:
            spaces.load_space(str(bad))
        assert str(bad) in str(error.value)
    config = presets.resolve("zhang2020_mtanet", "cpu_demo")
    with pytest.raises(ValueError, match="no setting 'lr'"):
        spaces.check_keys(config, {"x": {"choices": [1, 2], "keys": ["stages.stage1_sum.lr"]}})


def test_show_space_prints_without_tensorflow(tmp_path):
    code = ("import sys; from affectkit.cli import main; "
            "main(['tune', 'liu2023_multimodal_ensemble', '--preset', 'cpu_demo', "
            "'--show-space']); assert 'tensorflow' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 0, result.stderr
    assert "segment_length  one of 16, 32, 48" in result.stdout
    assert "sets model.neck.units, lstm.units; preset: 64" in result.stdout
    bad = tmp_path / "space.json"
    bad.write_text('{"lr": {"choices": [1, 2], "keys": ["stages.nope.lr"]}}')
    result = affectkit("tune", "zhang2020_mtanet", "--show-space", "--space", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "'stages.nope'" in result.stderr


def test_budget_stages_keeps_each_stage_share():
    stages = {"a": {"epochs": 12, "lr": 1}, "b": {"epochs": 2}}
    assert budget_stages(stages, 14) == stages
    assert budget_stages(stages, 7) == {"a": {"epochs": 6, "lr": 1}, "b": {"epochs": 1}}
    assert budget_stages(stages, 1) == {"a": {"epochs": 1, "lr": 1}}
    # Hyperband continues a trial from epoch 3 of a budget of 7: the rest of both stages.
    assert budget_stages(stages, 7, initial_epoch=3) == {"a": {"epochs": 3, "lr": 1},
                                                          "b": {"epochs": 1}}
    assert budget_stages(stages, 7, initial_epoch=6) == {"b": {"epochs": 1}}


def test_component_names_are_the_trainers():
    assert component_names("abaw3", ("expr",)) == ["score", "expr_f1", "expr_accuracy",
                                                    "expr_score"]
    names = component_names("abaw3", ("va", "expr", "au"))
    assert {"va_valence", "va_arousal", "au_f1"} <= set(names)


# ----------------------------------------------------------------------- the HyperModel


@pytest.mark.parametrize("recipe", presets.available())
def test_hypermodel_builds_tiny_models_for_sampled_values(recipe, tmp_path):
    hypermodel = RecipeHyperModel(recipe, "unused", str(tmp_path), preset="cpu_demo",
                                  sets=TINY[recipe])
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    seen = set()
    for seed in range(3):
        values = {p.name: p.random_sample(seed) for p in hp.space}
        hp.values.update(values)
        model = hypermodel.build(hp)
        assert isinstance(model, AffectModel)
        config = hypermodel.trial_config(hp)
        assert set(model.output) >= set(hypermodel.build_recipe(hp, str(tmp_path)).tasks)
        seen.add(json.dumps(values, sort_keys=True))
        if recipe == "phan2022_regnet_transformer":
            assert model.input_shape[1] == config["model"]["sequence_length"]
        if recipe == "do2020_stat_temporal":
            assert config["face"]["dir"].startswith(os.path.join(str(tmp_path), "shared"))
    assert len(seen) > 1


# ----------------------------------------------------------------------- searches


def test_random_search_writes_results_and_resumes_without_redoing(demo_root, tmp_path):
    out = str(tmp_path / "search")
    table = run_search("zhang2020_mtanet", demo_root, out, preset="cpu_demo", sets=ZHANG,
                       epochs=1, max_trials=2, seed=1)
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(results) == 2 and (results["status"] == "COMPLETED").all()
    assert results["score"].notna().all() and len(table) == 2
    for column in ("backbone", "stage2", "stage1_lr", "stage2_lr", "va_valence", "expr_f1",
                   "au_f1", "seconds", "run_seconds"):
        assert column in results, column
    # Every component adds up to the score, as metrics.json says.
    for _, row in results.iterrows():
        assert row["score"] == pytest.approx(row["va_score"] + row["expr_score"] + row["au_score"],
                                             abs=1e-5)
        run = os.path.join(out, row["run_dir"])
        report = json.load(open(os.path.join(run, "metrics.json")))
        assert report["validation"]["score"] == pytest.approx(row["score"], abs=1e-5)
        assert {"model.keras", "history.csv", "log.txt"} <= set(os.listdir(run))
    for name in ("results.md", "score_per_trial.png", "score_vs_hyperparameters.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    ranked = open(os.path.join(out, "results.md")).read().splitlines()
    best = results.loc[results["score"].idxmax()]
    assert ranked[4].startswith(f"| {best['trial']} |")

    # best_config.json: the best values at the preset's full length, trainable as a config.
    record = json.load(open(os.path.join(out, "best_config.json")))
    assert record["recipe"] == "zhang2020_mtanet"
    assert record["search"]["trial"] == str(best["trial"])
    config = record["config"]
    assert config["model"]["backbone"]["name"] == best["backbone"]
    assert config["stages"]["stage1_sum"]["epochs"] == 12
    assert config["stages"]["stage1_sum"]["optimizer"]["learning_rate"] == pytest.approx(
        best["stage1_lr"], rel=1e-5)

    # The same command again adds no trial and trains nothing.
    before = {row["run_dir"]: os.path.getmtime(os.path.join(out, row["run_dir"], "model.keras"))
              for _, row in results.iterrows()}
    run_search("zhang2020_mtanet", demo_root, out, preset="cpu_demo", sets=ZHANG, epochs=1,
               max_trials=2, seed=1)
    assert len(pd.read_csv(os.path.join(out, "results.csv"))) == 2
    # More trials: the finished ones are kept, one more runs.
    run_search("zhang2020_mtanet", demo_root, out, preset="cpu_demo", sets=ZHANG, epochs=1,
               max_trials=3, seed=1)
    again = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(again) == 3
    assert {run: os.path.getmtime(os.path.join(out, run, "model.keras"))
            for run in before} == before
    with pytest.raises(ValueError, match="holds another search"):
        run_search("zhang2020_mtanet", demo_root, out, preset="cpu_demo", sets=ZHANG,
                   epochs=2, max_trials=3, seed=1)


def test_hyperband_passes_its_epoch_budget_to_the_stages(demo_root, tmp_path):
    out = str(tmp_path / "hyperband")
    space = {"stage1_lr": presets.search_space("zhang2020_mtanet")["stage1_lr"]}
    run_search("zhang2020_mtanet", demo_root, out, preset="cpu_demo", space=space,
               sets=ZHANG + ["stages.stage1_sum.epochs=2", "stages.stage2_uncertainty.epochs=1"],
               tuner="hyperband", max_trials=3, seed=0)
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(results) == 3
    for _, row in results.iterrows():
        history = pd.read_csv(os.path.join(out, row["run_dir"], "history.csv"))
        assert len(history) == row["budget_epochs"] - row["budget_initial_epoch"]


def test_trials_on_cached_features_share_one_cache(demo_root, tmp_path):
    out = str(tmp_path / "search")
    space = {"lstm_layers": {"choices": [1, 2], "keys": ["model.temporal.lstm_layers"]}}
    run_search("do2020_stat_temporal", demo_root, out, preset="cpu_demo", space=space,
               sets=TINY["do2020_stat_temporal"] + ["edition=abaw3"], epochs=1, max_trials=2)
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(results) == 2 and results["score"].notna().all()
    shared = os.path.join(out, "shared")
    faces = [d for d in os.listdir(shared) if d.startswith("face_") and not d.endswith(".lock")]
    assert len(faces) == 1
    logs = [open(os.path.join(out, run, "log.txt")).read() for run in results["run_dir"]]
    trained = ["[face] using the face model" not in log for log in logs]
    assert trained == [True, False]
    # The first trial extracted every video (each from its out-of-fold face model); the
    # second found them all in the cache: nothing extracted.
    extracted = [[int(n) for n in re.findall(r"Extracting features of (\d+) videos", log)]
                 for log in logs]
    assert extracted[0] and min(extracted[0]) > 0
    assert not any(extracted[1])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_finish_three_trials(demo_root, tmp_path):
    out = str(tmp_path / "distributed")
    args = ["tune", "zhang2020_mtanet", "--data", demo_root, "--preset", "cpu_demo",
            "--epochs", "1", "--max-trials", "3", "--out", out]
    for item in ZHANG:
        args += ["--set", item]
    port = str(_free_port())
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, CI="1", KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=port)
    command = [sys.executable, "-m", "affectkit.cli", *args]
    chief = subprocess.Popen(command, env=dict(env, KERASTUNER_TUNER_ID="chief"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [subprocess.Popen(command, env=dict(env, KERASTUNER_TUNER_ID=f"tuner{i}"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in workers]
    chief_out = chief.communicate(timeout=120)
    for process, (stdout, stderr) in zip([*workers, chief], [*outputs, chief_out]):
        assert process.returncode == 0, stdout[-2000:] + stderr[-2000:]
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(results) == 3 and (results["status"] == "COMPLETED").all()
    ran = [stdout.count("trial ") for stdout, _ in outputs]
    assert sum(ran) >= 3 and all(count >= 1 for count in ran), ran
    assert "Best: trial" in chief_out[0]
    assert os.path.isfile(os.path.join(out, "best_config.json"))


def test_shared_preparation_names_folders_by_what_decides_them(tmp_path):
    from affectkit.recipes import get_recipe

    for name, section, key in (("do2020_stat_temporal", "face", "dir"),
                               ("liu2023_multimodal_ensemble", "features", "cache_dir")):
        recipe = get_recipe(name)
        config = presets.resolve(name, "cpu_demo")
        shared = recipe.shared_preparation(config, str(tmp_path))
        again = recipe.shared_preparation(presets.resolve(name, "cpu_demo"), str(tmp_path))
        other_seed = recipe.shared_preparation(presets.resolve(name, "cpu_demo", ["seed=1"]),
                                               str(tmp_path))
        # Keys outside what decides the prepared work (the temporal model) change nothing.
        other_model = recipe.shared_preparation(
            presets.resolve(name, "cpu_demo", ["data.batch_size=7"]), str(tmp_path))
        folder = shared[section][key]
        assert os.path.dirname(folder) == str(tmp_path) and config[section][key] is None
        assert again[section][key] == other_model[section][key] == folder
        assert other_seed[section][key] != folder
        own = presets.resolve(name, "cpu_demo", [f"{section}.{key}=mine"])
        assert recipe.shared_preparation(own, str(tmp_path)) == own


def test_set_key_indexes_lists_and_names_the_bad_index():
    config = presets.resolve("do2020_stat_temporal", "cpu_demo",
                             ["model.feature_inputs.probabilities.0=32"])
    assert config["model"]["feature_inputs"]["probabilities"] == [32, 7]
    with pytest.raises(ValueError, match="a list of 2; expected an index 0..1, got '2'"):
        presets.resolve("do2020_stat_temporal", "cpu_demo",
                        ["model.feature_inputs.probabilities.2=1"])


@pytest.mark.slow
def test_killed_search_resumes_its_trial_and_keeps_the_finished_one(demo_root, tmp_path):
    """Kills `affectkit tune` in the middle of its second trial and runs the same command
    again: the first trial is kept as it was, the second resumes from its backup."""
    import signal
    import time

    out = str(tmp_path / "search")
    args = ["tune", "zhang2020_mtanet", "--data", demo_root, "--preset", "cpu_demo",
            "--epochs", "3", "--max-trials", "2", "--out", out, "--set", "run.backup_every=2"]
    for item in ZHANG:
        args += ["--set", item]
    command = [sys.executable, "-m", "affectkit.cli", *args]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, CI="1")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    metadata = os.path.join(out, "trials", "trial_1", "state", "stage1_sum_backup",
                            "training_metadata.json")
    deadline, killed = time.time() + 600, False
    while time.time() < deadline and first.poll() is None:
        try:
            state = json.load(open(metadata))
        except (OSError, ValueError):
            state = None
        if state and state["epoch"] >= 1 and state["batch"] > 0:
            os.killpg(first.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    first.wait()
    assert killed, "the search ended before its second trial could be killed"
    kept = os.path.getmtime(os.path.join(out, "trials", "trial_0", "model.keras"))

    second = affectkit(*args)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert list(results["status"]) == ["COMPLETED", "COMPLETED"]
    assert os.path.getmtime(os.path.join(out, "trials", "trial_0", "model.keras")) == kept
    log = open(os.path.join(out, "trials", "trial_1", "log.txt")).read()
    assert "[stage1_sum] resuming from its backup" in log
    history = pd.read_csv(os.path.join(out, "trials", "trial_1", "history.csv"))
    assert sorted(history[history["stage"] == "stage1_sum"]["epoch"]) == [0, 1, 2]
