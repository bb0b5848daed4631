"""do2020_stat_temporal: the six Table I variants as model overrides, the eq. 4 loss against
NumPy, class-balanced sampling, the out-of-fold face outputs (no training video's cached
output from a face model that trained on it), and tiny runs (face models, cache, two
variants, their ensemble) checked through their run directories."""

import contextlib
import io
import json
import os
import warnings

import h5py
import keras
import numpy as np
import pandas as pd
import pytest

from affectkit import metrics, presets
from affectkit.data import affwild2
from affectkit.data.affwild2 import FrameIndex
from affectkit.evaluation import ensembles
from affectkit.features.cache import FeatureCache
from affectkit.features.extraction import extract_features
from affectkit.models.affect_model import label_schema
from affectkit.recipes import get_recipe
from affectkit.recipes.do2020_stat_temporal import (VARIANTS, StatTemporalRecipe,
                                                    balanced_expression_index,
                                                    face_model_plan, get_variant,
                                                    variant_name, weights_fingerprint)
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
    "face.folds": 2,
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


@pytest.fixture(scope="module")
def out_of_fold_face(demo_root, tmp_path_factory):
    """Phase (a) of the tiny preset, out of fold with 2 folds, on the demo data: `(face dir,
    printed output, {face model: the training videos its training was handed})`, shared by
    the tests of this module. `fold_1` trains for real; to keep the suite fast, `fold_2` is
    an untrained face model of its own seed, saved where the recipe keeps it (the slow
    cpu_demo test trains every fold's)."""
    face_dir = str(tmp_path_factory.mktemp("do2020") / "face")
    handed = {}
    train_for_real = StatTemporalRecipe.train_face_model

    def train_face_model(self, run_dir, path, train_index, val_index):
        name = os.path.basename(run_dir)
        handed[name] = sorted(train_index.videos)
        if name == "fold_1":
            return train_for_real(self, run_dir, path, train_index, val_index)
        keras.utils.set_random_seed(100)
        model = self.build_face_model()
        os.makedirs(run_dir, exist_ok=True)
        model.save(path)
        return model

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(StatTemporalRecipe, "train_face_model", train_face_model)
        recipe_of(tiny_config(edition="abaw3", face__dir=face_dir), demo_root,
                  str(tmp_path_factory.mktemp("do2020_run"))).prepare()
    return face_dir, printed.getvalue(), handed


def test_two_variants_share_the_face_model_and_cache_and_fuse(out_of_fold_face, demo_root,
                                                              tmp_path, capsys):
    """Phase (b) of model 6, then model 1, from one face dir (phase (a), out of fold), then
    their average: every annotated validation frame predicted, official files written,
    scored."""
    face_dir = out_of_fold_face[0]
    runs = {number: str(tmp_path / f"m{number}") for number in (6, 1)}
    reports = {}
    for number, out in runs.items():
        config = tiny_config(variant=number, edition="abaw3", face__dir=face_dir)
        reports[number] = recipe_of(config, demo_root, out).run()
    printed = capsys.readouterr().out
    # Both reused phase (a): the face models of the 2 folds.
    assert printed.count("[face] using the face model") == 4
    assert "[face] training" not in printed
    assert printed.count("Training inputs: out_of_fold, 2 folds") == 2
    assert "Table I model 1 (Emotion Image, s = 1)" in printed
    for name in ("face_model.keras", "model.keras", "metrics.json", "history.csv"):
        assert os.path.exists(os.path.join(face_dir, "fold_1", name)), name
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
        outputs = saved["face_training_outputs"]
        assert outputs["scheme"] == "out_of_fold" and outputs["folds"] == 2
        assert {"training_inputs", "in_sample"} <= set(outputs["train_frames_expr"])
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
    recipe = recipe_of(config, default_demo_root, str(tmp_path / "m6"))
    report = recipe.run()
    # Out of fold (3 folds): what each real face model's training run records it read.
    face_dir = recipe.face_paths()[0]
    plan = json.load(open(os.path.join(face_dir, "face_models.json")))["models"]
    assert sorted(plan) == ["fold_1", "fold_2", "fold_3"]
    _check_plan_has_no_leak(plan, recipe.index("train").videos, recipe.index("val").videos)
    for name, entry in plan.items():
        saved = json.load(open(os.path.join(face_dir, name, "metrics.json")))
        assert saved["trained_on"] == entry["trained_on"], name
    for task in ("va", "expr"):
        model = report["validation"][f"{task}_score"]
        chance = report["chance_baselines"][task]["score"]
        assert model > chance + 0.05, (task, model, chance)
        assert report["official"][task]["score"] > chance + 0.05, (task, report["official"])


def test_freezing_a_randomly_initialised_face_model_is_refused():
    config = presets.resolve(NAME, "paper")  # face.trainable_from set
    config["face"]["weights"] = None
    with pytest.raises(ValueError, match="face.weights is null"):
        recipe_of(config).build_face_model()


# Out-of-fold face outputs --------------------------------------------------------------


def _check_plan_has_no_leak(plan, train, other):
    """Every video's outputs come from exactly one face model, never one trained on it."""
    made = [video for entry in plan.values() for video in entry["outputs_for"]]
    assert sorted(made) == sorted(set(train) | set(other)) and len(made) == len(set(made))
    for name, entry in plan.items():
        assert not set(entry["trained_on"]) & set(entry["outputs_for"]), name
        assert set(entry["trained_on"]) <= set(train), name  # face models never see validation


def test_out_of_fold_plan_folds_are_disjoint_seeded_and_cover_the_training_videos():
    train = [f"t{i:02d}" for i in range(11)] + ["pair_left", "pair_right"]
    other = ["v0", "v1", "v2_left", "v2_right", "v3"]
    counts = {video: 50 + 13 * i for i, video in enumerate(train + other)}
    plan = face_model_plan("out_of_fold", train, other, folds=3, seed=4, frame_counts=counts)
    assert sorted(plan) == ["fold_1", "fold_2", "fold_3"]
    _check_plan_has_no_leak(plan, train, other)
    folds = [sorted(set(plan[f"fold_{k}"]["outputs_for"]) & set(train)) for k in (1, 2, 3)]
    shares = [sorted(set(plan[f"fold_{k}"]["outputs_for"]) - set(train)) for k in (1, 2, 3)]
    assert sorted(v for fold in folds for v in fold) == sorted(train) and all(folds)
    assert sorted(v for share in shares for v in share) == sorted(other) and all(shares)
    for k, held_out in enumerate(folds, start=1):  # fold k trains on the other folds
        assert plan[f"fold_{k}"]["trained_on"] == sorted(set(train) - set(held_out))
    for a, b in (("pair_left", "pair_right"), ("v2_left", "v2_right")):  # one source video
        assert [a in f for f in folds + shares] == [b in f for f in folds + shares]
    assert face_model_plan("out_of_fold", train[::-1], other, 3, 4, counts) == plan  # seeded
    by_seed = [face_model_plan("out_of_fold", train, other, 3, seed) for seed in range(4)]
    assert any(other_seed != by_seed[0] for other_seed in by_seed[1:])  # equal sizes: shuffled
    # Fewer other videos than folds: some shares stay empty.
    few = face_model_plan("out_of_fold", train, ["v0"], folds=3)
    _check_plan_has_no_leak(few, train, ["v0"])

    leaky = face_model_plan("in_sample", train, other)
    assert leaky == {"all": {"trained_on": sorted(train), "outputs_for": sorted(train + other)}}
    unseen = face_model_plan("pretrained", train, other)
    _check_plan_has_no_leak(unseen, train, other)
    assert unseen["pretrained"]["trained_on"] == []
    with pytest.raises(ValueError, match="at least 2 folds"):
        face_model_plan("out_of_fold", train, other, folds=1)
    with pytest.raises(ValueError, match="out_of_fold, pretrained, in_sample"):
        face_model_plan("stacked", train, other)


def test_the_shared_face_directory_is_named_by_the_training_outputs_and_folds(tmp_path):
    recipe = get_recipe(NAME)
    folder = str(tmp_path)
    dirs = {key: recipe.shared_preparation(tiny_config(**sets), folder)["face"]["dir"]
            for key, sets in {"oof2": {}, "oof3": {"face.folds": 3},
                              "in_sample": {"face.training_outputs": "in_sample"}}.items()}
    assert len(set(dirs.values())) == 3
    assert recipe.shared_preparation(tiny_config(), folder)["face"]["dir"] == dirs["oof2"]
    assert all(os.path.dirname(d) == folder for d in dirs.values())


def test_face_model_file_and_pretrained_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="face.training_outputs=pretrained"):
        recipe_of(tiny_config(face__model_file=str(tmp_path / "m.keras"))).training_outputs()
    with pytest.raises(ValueError, match="face.training_outputs 'bagged'"):
        recipe_of(tiny_config(face__training_outputs="bagged")).training_outputs()
    config = tiny_config(face__training_outputs="pretrained")
    with pytest.raises(ValueError, match="face.model_file and face.weights are null"):
        recipe_of(config).load_face_model("pretrained")
    # A whole face model trained elsewhere is used as it is; weights that leave layers (here
    # the softmax) at their initial values are refused.
    source = recipe_of(tiny_config()).build_face_model()  # random weights, another draw
    whole, partial = str(tmp_path / "whole.h5"), str(tmp_path / "backbone.h5")
    _write_keras2_weights(source, whole)
    _write_keras2_weights(source, partial, skip=("probabilities",))
    x = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype("float32")
    model = recipe_of(tiny_config(face__training_outputs="pretrained", face__weights=whole)
                      ).load_face_model("pretrained")
    np.testing.assert_allclose(model.predict(x, verbose=0)["probabilities"],
                               source.predict(x, verbose=0)["probabilities"], rtol=1e-5)
    config = tiny_config(face__training_outputs="pretrained", face__weights=partial)
    with warnings.catch_warnings(), pytest.raises(
            ValueError, match=r"\['probabilities'\].*every layer must come"):
        warnings.simplefilter("ignore")  # the loader's own note of the layer it left out
        recipe_of(config).load_face_model("pretrained")


def _write_keras2_weights(model, path, skip=()):
    """`model`'s weights as a legacy Keras 2 `.h5` (layer_names / weight_names), the layers
    of `skip` left out."""
    layers = [layer for layer in model.layers if layer.weights and layer.name not in skip]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        for layer in layers:
            group = f.create_group(layer.name)
            names = [f"{weight.name}:0" for weight in layer.weights]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name, data=keras.ops.convert_to_numpy(weight))


def test_no_training_video_gets_the_outputs_of_a_face_model_that_trained_on_it(
        out_of_fold_face, demo_root, tmp_path):
    """Phase (a) out of fold (2 folds): the plan, the training videos each face model's
    training was handed (and what the real one's run records), and each model's cached
    outputs recomputed from its file."""
    face_dir, printed, handed = out_of_fold_face
    assert printed.count("[face] training face model") == 2
    recipe = recipe_of(tiny_config(edition="abaw3", face__dir=face_dir), demo_root)
    indexes = {"train": recipe.index("train"), "val": recipe.index("val")}
    train, val = indexes["train"].videos, indexes["val"].videos
    record = json.load(open(os.path.join(face_dir, "face_models.json")))
    plan = record["models"]
    assert (record["training_outputs"], record["folds"]) == ("out_of_fold", 2)
    assert sorted(plan) == ["fold_1", "fold_2"]
    _check_plan_has_no_leak(plan, train, val)
    assert handed == {name: entry["trained_on"] for name, entry in plan.items()}
    saved = json.load(open(os.path.join(face_dir, "fold_1", "metrics.json")))
    assert saved["trained_on"] == plan["fold_1"]["trained_on"]  # what its training run read
    scores = record["train_frames_expr"]
    assert scores["frames"] > 0 and {"training_inputs", "in_sample"} <= set(scores)

    cache = FeatureCache(os.path.join(face_dir, "cache"))
    assert cache.videos == sorted(train + val)
    assert cache.manifest["model"]["weights_sha1"] == record["weights_sha1"]
    models = {}
    for name in plan:
        models[name] = keras.saving.load_model(os.path.join(face_dir, name, "face_model.keras"))
        assert weights_fingerprint(models[name]) == record["weights_sha1"][name]
    for name, entry in plan.items():
        # A training video's cached outputs are those of the model the plan names
        # (recomputed from its file), not those of the other fold's, which trained on it.
        video = sorted(set(entry["outputs_for"]) & set(train))[0]
        stored = cache.load(video)
        for other in plan:
            check = str(tmp_path / f"check_{name}_{other}")
            extract_features(models[other], indexes["train"].subset([video]), check,
                             normalization="unit", verbose=0)
            again = FeatureCache(check).load(video)
            np.testing.assert_array_equal(again["frames"], stored["frames"])
            same = all(np.allclose(again[key], stored[key], atol=1e-5)
                       for key in ("feature", "probabilities"))
            assert same == (other == name), (name, other)

    # A face directory planned otherwise is refused before anything trains.
    other = recipe_of(tiny_config(edition="abaw3", face__dir=face_dir, face__folds=3),
                      demo_root, str(tmp_path / "run3"))
    with pytest.raises(ValueError, match="planned with other folds, models"):
        other.prepare()
