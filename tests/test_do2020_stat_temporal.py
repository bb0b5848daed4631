"""do2020_stat_temporal: the six Table I variants as model overrides, the eq. 4 loss against
NumPy, class-balanced sampling, and tiny runs (face model, cache, two variants, their
ensemble) checked through their run directories."""

import json
import os

import keras
import numpy as np
import pandas as pd
import pytest

from affectkit import metrics, presets
from affectkit.data import affwild2
from affectkit.data.affwild2 import FrameIndex
from affectkit.evaluation import ensembles
from affectkit.features.cache import FeatureCache
from affectkit.models.affect_model import label_schema
from affectkit.recipes import get_recipe
from affectkit.recipes.do2020_stat_temporal import (VARIANTS, balanced_expression_index,
                                                    get_variant, variant_name)
from affectkit.training.multitask_model import MultiTaskModel

NAME = "do2020_stat_temporal"
TINY = {
    "face.image_size": 32,
    "face.backbone": {"depths": [1, 1, 1, 1], "stem_width": 8, "widths": [16, 32, 64, 128]},
    "face.batch_size": 16,
    "face.augment": False,
    "model.feature_inputs": {"feature": [128], "probabilities": [4, 7]},
    "model.temporal.lstm_units": 4,
    "model.heads": {task: {"hidden_units": [8, 8]} for task in ("expr", "va", "va_vector")},
    "data.batch_size": 16,
}


def tiny_config(**sets):
    """The cpu_demo preset at tiny size, 1 epoch per stage; `sets` as dotted keys
    (`face__dir` for `face.dir`)."""
    config = presets.resolve(NAME, "cpu_demo", epochs=1)
    config["face"]["epochs"] = 1
    for key, value in {**TINY, **{k.replace("__", "."): v for k, v in sets.items()}}.items():
        presets.set_key(config, key, value)
    return config


def recipe_of(config, data=None, out="unused"):
    return get_recipe(NAME)(config, data, out, preset="cpu_demo")


def random_inputs(model, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = model.input["probabilities"].shape[1:]
    logits = rng.normal(size=(batch, *shape))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {"feature": rng.normal(size=(batch, model.input["feature"].shape[-1])).astype("float32"),
            "probabilities": probabilities.astype("float32")}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_table_i_variant_builds_with_its_modules_and_outputs(name):
    variant = VARIANTS[name]
    model = recipe_of(tiny_config(variant=name, edition="abaw1")).build_model()
    window = 4 if variant.temporal else 1
    assert model.input["probabilities"].shape == (None, window, 7)
    temporal = model.get_layer("temporal")
    assert (temporal.stat_pooling is not None) == variant.stat
    assert (temporal.bilstm is not None) == variant.lstm

    x = random_inputs(model)
    outputs = model.predict(x, verbose=0)
    assert set(outputs) == ({"expr", "va", "va_vector"} if variant.va else {"expr"})
    assert outputs["expr"].shape == (3, 7)
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)
    if variant.va:
        assert outputs["va"].shape == (3, 2) and outputs["va_vector"].shape == (3, 5)
        assert np.all(np.abs(outputs["va"]) <= 1.0) and np.all(np.abs(outputs["va_vector"]) <= 1.0)
        # `va` is (valence, arousal), each from its own tanh branch as in the paper.
        probe = keras.Model(model.input, [model.get_layer("valence").output,
                                          model.get_layer("arousal").output])
        v, a = probe.predict(x, verbose=0)
        np.testing.assert_allclose(outputs["va"], np.concatenate([v, a], -1), atol=1e-6)


def test_variant_names_numbers_and_errors():
    assert get_variant("6") == VARIANTS["emotion_va_frame_lstm"]
    assert variant_name(2) == "emotion_va_image"
    with pytest.raises(ValueError, match="Table I model number"):
        get_variant("lstm_only")
    recipe = recipe_of(tiny_config(variant=3))
    assert recipe.config["variant"] == "emotion_frame" and recipe.tasks == ("expr",)


def _numpy_ccc(t, p):
    mt, mp = t.mean(), p.mean()
    cov = ((t - mt) * (p - mp)).mean()
    return 2 * cov / (t.var() + p.var() + (mt - mp) ** 2)


def test_combined_loss_is_eq_4_with_missing_labels_masked():
    recipe = recipe_of(tiny_config(variant="emotion_va_frame", edition="abaw1"))
    model = MultiTaskModel(recipe.build_model(), recipe.build_losses("temporal", None),
                           loss_weights=recipe.config["stages"]["temporal"]["loss_weights"])
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
    expr_only = recipe_of(tiny_config(variant="emotion_frame"))
    assert set(expr_only.build_losses("temporal", None)) == {"expr"}
    assert expr_only.config["stages"]["temporal"]["loss_weights"] == {"expr": 1.0}


def test_balanced_sampling_draws_classes_equally(demo_root):
    index = FrameIndex.from_affwild2(demo_root, "abaw3", "train", tasks=("va", "expr"))
    drawn = balanced_expression_index(index, seed=0)
    labels = drawn.frames["expr"].to_numpy()
    assert (labels >= 0).all() and drawn.frames["has_image"].all()
    present = np.unique(index.frames["expr"].to_numpy()[index.frames["expr"].to_numpy() >= 0])
    counts = np.bincount(labels, minlength=8)[present]
    assert len(drawn.frames) == int(((index.frames["expr"] >= 0) & index.frames["has_image"]).sum())
    # Equal expected counts: each within 4 binomial standard deviations of n / C.
    expected = len(labels) / len(present)
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 1), counts


def test_the_face_models_feature_width_comes_from_the_preset():
    recipe = recipe_of(tiny_config(**{"model.feature_inputs": {"feature": [99]}}))
    with pytest.raises(ValueError, match="model.feature_inputs.feature"):
        recipe.build_face_model()


def _annotated_frames(root, schema, tasks):
    """(video, frame) of every line of the validation annotation files of `tasks`."""
    rows = set()
    for task in tasks:
        folder = os.path.join(root, affwild2.annotation_dir(schema, task, "val"))
        for name in os.listdir(folder):
            with open(os.path.join(folder, name)) as f:
                count = len(f.read().strip().splitlines()) - 1  # minus the header
            rows.update((name[:-4], k) for k in range(1, count + 1))
    return rows


def test_two_variants_share_the_face_model_and_cache_and_fuse(demo_root, tmp_path, capsys):
    """Phase (a) and (b) of model 6, then model 1 from the same face dir, then their
    average: every annotated validation frame predicted, official files written, scored."""
    face_dir = str(tmp_path / "face")
    runs = {number: str(tmp_path / f"m{number}") for number in (6, 1)}
    reports = {}
    for number, out in runs.items():
        config = tiny_config(variant=number, edition="abaw3", face__dir=face_dir)
        reports[number] = recipe_of(config, demo_root, out).run()
    printed = capsys.readouterr().out
    assert printed.count("[face] using the face model") == 1  # model 1 reused phase (a)
    assert "Table I model 1 (Emotion Image, s = 1)" in printed
    for name in ("face_model.keras", "model.keras", "metrics.json", "history.csv"):
        assert os.path.exists(os.path.join(face_dir, name)), name
    manifest = json.load(open(os.path.join(face_dir, "cache", "manifest.json")))
    assert manifest["outputs"] == {"feature": 128, "probabilities": 8}

    annotated = _annotated_frames(demo_root, "abaw3", ("va", "expr"))
    for number, out in runs.items():
        tasks = ("va", "expr") if number == 6 else ("expr",)
        model = keras.saving.load_model(os.path.join(out, "model.keras"))
        assert label_schema(model).edition == "abaw3"
        assert model.input["probabilities"].shape[1] == (4 if number == 6 else 1)
        saved = json.load(open(os.path.join(out, "metrics.json")))
        assert {f"{t}_score" for t in tasks} <= set(saved["validation"])
        assert set(saved["chance_baselines"]) == set(tasks) == set(saved["official"])
        assert saved["table_i_model"] == number and "score" in saved["face_model_softmax"]["expr"]
        record = json.load(open(os.path.join(out, "config.json")))
        assert record["recipe"] == NAME and record["config"]["variant"] == variant_name(number)
        table = pd.read_csv(os.path.join(out, "predictions", "validation.csv"))
        assert len(table) == len(annotated)
        assert set(zip(table["video"], table["frame"])) == annotated
        assert np.isfinite(table.drop(columns=["video", "frame"]).to_numpy()).all()

    # Model 1 reads the current frame only: a frame without an image is predicted exactly
    # as its nearest frame with one (whose cached features it takes).
    index = FrameIndex.from_affwild2(demo_root, "abaw3", "val", tasks=("va", "expr"),
                                     fill_missing_images=True)
    frames = index.frames
    filled = frames[~frames["has_image"] & (frames["image_frame"] >= 0)]
    assert len(filled), "the demo data should have frames without an image"
    table = pd.read_csv(os.path.join(runs[1], "predictions", "validation.csv")).set_index(
        ["video", "frame"])
    for video, frame, source in filled[["video", "frame", "image_frame"]].itertuples(index=False):
        np.testing.assert_array_equal(table.loc[(video, frame)], table.loc[(video, source)])

    # The cache disagreeing with the model's feature width is a clear error.
    wrong = recipe_of(tiny_config(edition="abaw3", **{"model.feature_inputs": {"feature": [64]}}),
                      demo_root)
    wrong.cache = FeatureCache(os.path.join(face_dir, "cache"))
    with pytest.raises(ValueError, match="'feature' is 128-d"):
        wrong.datasets(wrong.index("train"), wrong.index("val"))

    # The paper's fusion: the average of the two runs (EXPR, the task both predict).
    fusion = str(tmp_path / "fusion")
    report = ensembles.ensemble(list(runs.values()), fusion, method="average")
    assert set(report["ensemble"]) == {"expr"}
    tables = [pd.read_csv(os.path.join(out, "predictions", "validation.csv"))
              for out in runs.values()]
    classes = list(index.schema.expressions)
    average = (tables[0][classes].to_numpy() + tables[1][classes].to_numpy()) / 2
    labelled = FrameIndex.from_affwild2(demo_root, "abaw3", "val", tasks=("expr",)).frames
    merged = tables[0][["video", "frame"]].assign(row=np.arange(len(average))).merge(
        labelled[["video", "frame", "expr"]], on=["video", "frame"])
    expected = metrics.abaw_scores("expr", "abaw3", merged["expr"].to_numpy(),
                                   np.argmax(average[merged["row"].to_numpy()], axis=-1))
    np.testing.assert_allclose(report["ensemble"]["expr"]["score"], expected["score"], rtol=1e-6)
    assert os.path.isdir(os.path.join(fusion, "predictions", "expr"))
    assert json.load(open(os.path.join(fusion, "metrics.json")))["method"] == "average"


@pytest.mark.slow
def test_cpu_demo_temporal_variant_beats_chance(default_demo_root, tmp_path):
    """Model 6 (STAT + LSTM) of the cpu_demo preset on the default demo data (minutes)."""
    config = presets.resolve(NAME, "cpu_demo", sets=["edition=abaw3", "variant=6"])
    report = recipe_of(config, default_demo_root, str(tmp_path / "m6")).run()
    for task in ("va", "expr"):
        model = report["validation"][f"{task}_score"]
        chance = report["chance_baselines"][task]["score"]
        assert model > chance + 0.05, (task, model, chance)
        assert report["official"][task]["score"] > chance + 0.05, (task, report["official"])


def test_freezing_a_randomly_initialised_face_model_is_refused():
    config = presets.resolve(NAME, "paper")  # face.trainable_from set, face.weights null
    with pytest.raises(ValueError, match="face.weights is null"):
        recipe_of(config).build_face_model()
