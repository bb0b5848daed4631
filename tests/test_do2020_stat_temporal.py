"""do2020_stat_temporal: the six Table I variants, safe-mode reload, the eq. 4 loss against
NumPy, class-balanced sampling, and a tiny end-to-end run (face model, cache, temporal
model, fusion)."""

import copy
import json
import os

import keras
import numpy as np
import pytest

from affectkit import metrics
from affectkit.data.affwild2 import FrameIndex
from affectkit.models.layers import StackedBiLSTM, StatPooling
from affectkit.training.multitask_model import MultiTaskModel
from tests.keras_checks import assert_reloads_in_fresh_process
from recipes import do2020_stat_temporal as recipe


TINY_FACE = {"depths": (1, 1, 1, 1), "stem_width": 8, "widths": (16, 32, 64, 128)}


def tiny_config(**overrides):
    config = copy.deepcopy(recipe.PRESETS["cpu_demo"])
    config.update(edition="abaw1", image_size=32, face_config=TINY_FACE, face_epochs=1,
                  face_batch_size=16, lstm_units=4, head_units=(8, 8), window=4, epochs=1,
                  batch_size=16, augment=False, feature_dim=16)
    config.update(overrides)
    return config


def random_inputs(config, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    window = recipe.window_size(config)
    logits = rng.normal(size=(batch, window, 7))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {"feature": rng.normal(size=(batch, config["feature_dim"])).astype("float32"),
            "probabilities": probabilities.astype("float32")}


@pytest.mark.parametrize("name", list(recipe.VARIANTS))
def test_each_table_i_variant_builds_with_its_modules_and_outputs(name):
    variant = recipe.VARIANTS[name]
    config = tiny_config(variant=name)
    model = recipe.build_model(config, "abaw1")
    window = 4 if variant.temporal else 1
    assert model.input["probabilities"].shape == (None, window, 7)
    layer_types = {type(layer) for layer in model.layers}
    assert (StatPooling in layer_types) == variant.stat
    assert (StackedBiLSTM in layer_types) == variant.lstm

    outputs = model.predict(random_inputs(config), verbose=0)
    expected = {"expr", "va", "va_vector"} if variant.va else {"expr"}
    assert set(outputs) == expected
    assert outputs["expr"].shape == (3, 7)
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)
    if variant.va:
        assert outputs["va"].shape == (3, 2)
        assert outputs["va_vector"].shape == (3, 5)
        assert np.all(np.abs(outputs["va"]) <= 1.0)
        assert np.all(np.abs(outputs["va_vector"]) <= 1.0)
        # `va` is (valence, arousal) from the two tanh units of the paper.
        valence = model.get_layer("valence").output
        arousal = model.get_layer("arousal").output
        probe = keras.Model(model.input, [valence, arousal])
        v, a = probe.predict(random_inputs(config), verbose=0)
        np.testing.assert_allclose(outputs["va"], np.concatenate([v, a], -1), atol=1e-6)


def test_variant_names_numbers_and_errors():
    assert recipe.get_variant("6") == recipe.VARIANTS["emotion_va_frame_lstm"]
    assert recipe.variant_name(2) == "emotion_va_image"
    with pytest.raises(ValueError, match="Table I model number"):
        recipe.get_variant("lstm_only")


def test_stat_lstm_model_reloads_in_a_fresh_process(tmp_path):
    config = tiny_config(variant="emotion_va_frame_lstm", lstm_layers=2)
    model = recipe.build_model(config, "abaw1")
    assert_reloads_in_fresh_process(model, random_inputs(config, batch=4), tmp_path)


def _numpy_ccc(t, p):
    mt, mp = t.mean(), p.mean()
    cov = ((t - mt) * (p - mp)).mean()
    return 2 * cov / (t.var() + p.var() + (mt - mp) ** 2)


def test_combined_loss_is_eq_4_with_missing_labels_masked():
    config = tiny_config(variant="emotion_va_frame")
    network = recipe.build_model(config, "abaw1")
    model = MultiTaskModel(network, recipe.build_losses(config),
                           loss_weights=recipe.build_loss_weights(config))
    rng = np.random.default_rng(1)
    n = 8
    logits = rng.normal(size=(n, 7))
    expr_pred = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")
    expr_true = np.array([0, 3, -1, 6, 2, -1, 4, 1], np.int32)
    va_true = rng.uniform(-1, 1, size=(n, 2)).astype("float32")
    va_true[1, 0] = -5.0  # valence missing only
    va_true[4] = -5.0  # both missing
    va_true[6, 1] = -5.0  # arousal missing only
    va_pred = rng.uniform(-0.9, 0.9, size=(n, 2)).astype("float32")
    vector_pred = rng.uniform(-0.9, 0.9, size=(n, 5)).astype("float32")
    y = {"expr": expr_true, "va": va_true, "va_vector": va_true}
    y_pred = {"expr": expr_pred, "va": va_pred, "va_vector": vector_pred}
    loss = float(model.compute_loss(y=y, y_pred=y_pred))

    labelled = expr_true >= 0
    ce = -np.log(expr_pred[labelled, expr_true[labelled]]).mean()
    v_rows, a_rows = va_true[:, 0] != -5, va_true[:, 1] != -5
    ccc_v = _numpy_ccc(va_true[v_rows, 0], va_pred[v_rows, 0])
    ccc_a = _numpy_ccc(va_true[a_rows, 1], va_pred[a_rows, 1])
    both = v_rows & a_rows
    v, a = va_true[both, 0], va_true[both, 1]
    m = (a + v) / 2
    target = np.stack([a, v, m, np.abs(a - m), np.abs(v - m)], -1)
    mse = ((target - vector_pred[both]) ** 2).mean()
    expected = 1.0 * ce + 0.4 * (1 - ccc_a) + 0.4 * (1 - ccc_v) + 0.2 * mse
    np.testing.assert_allclose(loss, expected, rtol=1e-5)

    # Expression-only variants train on the cross-entropy alone.
    expr_only = tiny_config(variant="emotion_frame")
    assert set(recipe.build_losses(expr_only)) == {"expr"}
    assert recipe.build_loss_weights(expr_only) == {"expr": 1.0}


def test_balanced_sampling_draws_classes_equally(demo_root):
    index = FrameIndex.from_affwild2(demo_root, "abaw3", "train", tasks=("va", "expr"))
    drawn = recipe.balanced_expression_index(index, seed=0)
    labels = drawn.frames["expr"].to_numpy()
    assert (labels >= 0).all() and drawn.frames["has_image"].all()
    present = np.unique(index.frames["expr"].to_numpy()[index.frames["expr"].to_numpy() >= 0])
    counts = np.bincount(labels, minlength=8)[present]
    assert len(drawn.frames) == int(((index.frames["expr"] >= 0) & index.frames["has_image"]).sum())
    # Equal expected counts: each within 4 binomial standard deviations of n / C.
    expected = len(labels) / len(present)
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 1), counts


def test_end_to_end_cache_two_variants_and_fusion(demo_root, tmp_path, capsys):
    """Phase (b) from a given face model file: cache extraction, two variants, fusion."""
    base = tiny_config(edition="abaw3", feature_dim=None)
    face_path = str(tmp_path / "face" / "face_model.keras")
    os.makedirs(os.path.dirname(face_path))
    recipe.build_face_model(base, "abaw3").save(face_path)
    base["face_model"] = face_path
    image_run, lstm_run = str(tmp_path / "m2"), str(tmp_path / "m5")
    image = recipe.train(dict(base, variant="emotion_va_image"), demo_root, image_run)
    lstm = recipe.train(dict(base, variant="emotion_frame_lstm"), demo_root, lstm_run)

    for run in (image_run, lstm_run):
        for name in ("model.keras", "metrics.json", "history.csv", recipe.PREDICTIONS_FILE):
            assert os.path.exists(os.path.join(run, name)), (run, name)
    cache_dir = os.path.join(str(tmp_path), "face", "cache")  # beside the face model file
    manifest = json.load(open(os.path.join(cache_dir, "manifest.json")))
    assert manifest["outputs"] == {"feature": 128, "probabilities": 8}
    assert "2 already done" in capsys.readouterr().out  # the second run reused the cache
    saved = json.load(open(os.path.join(image_run, "metrics.json")))
    assert {"va_score", "expr_score", "expr_f1"} <= set(saved["validation"])
    assert set(saved["chance_baselines"]) == {"va", "expr"}
    assert "va_score" not in lstm["validation"] and image["window"] == 1 and lstm["window"] == 4

    fusion_dir = str(tmp_path / "fusion")
    assert recipe.main(["--out", fusion_dir, "--fuse", image_run, lstm_run]) == 0
    fused = json.load(open(os.path.join(fusion_dir, "metrics.json")))
    runs = [np.load(os.path.join(r, recipe.PREDICTIONS_FILE)) for r in (image_run, lstm_run)]
    average = (runs[0]["expr"] + runs[1]["expr"]) / 2
    expected = metrics.abaw_scores("expr", "abaw3", runs[0]["label_expr"], average)
    np.testing.assert_allclose(fused["validation"]["expr_score"], expected["score"])
    va = metrics.abaw_scores("va", "abaw3", runs[0]["label_va"], runs[0]["va"])  # VA: model 2 only
    np.testing.assert_allclose(fused["validation"]["va_score"], va["score"])
    assert "average fusion of 2 runs" in capsys.readouterr().out

    with pytest.raises(ValueError, match="at least two"):
        recipe.fuse([image_run], fusion_dir)


@pytest.mark.slow
def test_phase_a_trains_the_face_model_once_for_variants_sharing_a_face_dir(demo_root, tmp_path,
                                                                           capsys):
    face_dir = str(tmp_path / "face")
    base = tiny_config(edition="abaw3", face_dir=face_dir, feature_dim=None)
    recipe.train(dict(base, variant="emotion_image"), demo_root, str(tmp_path / "m1"))
    assert "[face] using the face model" not in capsys.readouterr().out
    for name in ("face_model.keras", "model.keras", "metrics.json", "history.csv"):
        assert os.path.exists(os.path.join(face_dir, name)), name
    face = keras.saving.load_model(os.path.join(face_dir, "face_model.keras"))
    assert set(face.output) == {"feature", "probabilities"}
    recipe.train(dict(base, variant="emotion_frame"), demo_root, str(tmp_path / "m3"))
    assert "[face] using the face model" in capsys.readouterr().out
    assert os.path.exists(os.path.join(str(tmp_path / "m3"), "model.keras"))


def test_help_lists_the_variants(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in recipe.VARIANTS:
        assert name in text


@pytest.mark.slow
def test_cpu_demo_temporal_variant_beats_chance(default_demo_root, tmp_path):
    """Model 6 (STAT + LSTM) of the cpu_demo preset on the default demo data (minutes)."""
    config = dict(copy.deepcopy(recipe.PRESETS["cpu_demo"]), edition="abaw3",
                  variant="emotion_va_frame_lstm")
    report = recipe.train(config, default_demo_root, str(tmp_path / "m6"))
    for task in ("va", "expr"):
        model, chance = report["validation"][f"{task}_score"], report["chance_baselines"][task]["score"]
        assert model > chance + 0.05, (task, model, chance)
