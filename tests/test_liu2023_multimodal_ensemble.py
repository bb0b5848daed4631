"""Liu et al. 2023 (liu2023_multimodal_ensemble): the paper's sizes, config errors, R-Drop
against NumPy, the LSTM state carried over segments (in prediction and in training), the
transformer blind to padding, the vote, and tiny runs: one per encoder, a cross-validation
fold, and the vote ensemble that leaves the folds trained on validation videos out."""

import json
import os
import shutil

import keras
import numpy as np
import pandas as pd
import pytest

from affectkit import presets
from affectkit.data.affwild2 import FrameIndex
from affectkit.data.sequences import segment_indices, stream_order
from affectkit.evaluation import ensembles
from affectkit.evaluation.predictions import VALIDATION_FILE, read_predictions
from affectkit.labels import get_schema
from affectkit.models.affect_model import AffectModel, label_schema
from affectkit.recipes import get_recipe
from affectkit.recipes import liu2023_multimodal_ensemble as module

NAME = "liu2023_multimodal_ensemble"
Recipe = get_recipe(NAME)
TINY_REGNET = {"depths": [1, 1, 1, 1], "widths": [8, 16, 24, 32], "group_width": 8,
               "stem_width": 8}
# A 32-d tiny RegNet at 32 px + 80-d log-mel; width 16, one transformer layer, LSTM 8.
TINY = ["features.visual.image_size=32",
        "features.visual.hyperparameters=" + json.dumps(TINY_REGNET),
        'model.feature_inputs={"features": [null, 112]}', "model.neck.units=16",
        'model.temporal={"num_layers": 1, "num_heads": 2, "head_dim": 8, "mlp_dim": 16}',
        'model.heads={"expr": {"hidden_units": [8]}}', "lstm.units=8",
        "data.segment_length=8", "data.batch_size=3", "run.backup_every=4"]


def tiny_config(*sets):
    return presets.resolve(NAME, "cpu_demo", sets=TINY + list(sets), epochs=1)


def tiny_recipe(tmp_path, *sets, data="unused", width=12, seed=0):
    """A recipe of the tiny config over `width`-d features, its network built (the
    standardisation adapted to random features)."""
    config = tiny_config(f'model.feature_inputs={{"features": [null, {width}]}}', *sets)
    recipe = Recipe(config, data, str(tmp_path / "run"))
    recipe.train_features = np.random.default_rng(seed).normal(2.0, 3.0, (64, width))
    network = recipe.build_model()
    recipe.adapt_model(network)
    return recipe, network


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Demo data with enough videos for four training folds: 9 training and 3 validation
    face tracks of 16 frames (7 and 2 annotated for expressions), 32 px faces."""
    from affectkit.data.synthetic import write_demo_dataset

    root = str(tmp_path_factory.mktemp("liu") / "data")
    write_demo_dataset(root, edition="abaw3", videos=12, frames=16, seed=3, image_size=32)
    return root


@pytest.fixture(scope="module")
def train_index(data):
    return FrameIndex.from_affwild2(data, "abaw5", "train", tasks=("expr",),
                                    fill_missing_images=True)


# ------------------------------------------------------------------------- presets, errors


def test_paper_preset_has_the_papers_sizes(tmp_path):
    config = presets.resolve(NAME, "paper")
    model = AffectModel.from_preset(NAME)
    encoder = model.get_layer("temporal")
    assert (encoder.num_layers, encoder.num_heads, encoder.head_dim) == (4, 4, 256)
    assert encoder.dropout == 0.3 and model.get_layer("neck").units == 1024
    assert model.input["features"].shape[-1] == 768 + 512 + 342 + 512 + 512 + 1024
    assert sorted(model.input) == ["features", "valid"]
    assert [layer.units for layer in model.get_layer("expr").hidden
            if hasattr(layer, "units")] == [512, 256]
    assert model.output["expr"].shape[-1] == 8 and label_schema(model).edition == "abaw5"
    assert config["data"]["segment_length"] == 128 and config["losses"]["rdrop_alpha"] == 5.0
    assert config["losses"]["rdrop_kl_reduction"] == "sum"  # the reference R-Drop code's
    assert config["stages"]["rdrop"]["optimizer"] == {"name": "adam", "learning_rate": 1e-4}
    assert config["stages"]["rdrop"]["epochs"] == 25 and config["fold"] == 5
    lstm = Recipe(dict(config, encoder="lstm"), "unused", str(tmp_path))
    assert lstm.model_config["temporal"] == {"type": "segment_lstm", "units": 1024,
                                             "dropout": 0.3}
    demo = presets.resolve(NAME, "cpu_demo")
    assert demo["model"]["feature_inputs"] == {"features": [None, 400 + 80]}


def test_config_errors_say_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="expected one of"):
        Recipe(tiny_config("encoder=gru"), "unused", str(tmp_path))
    with pytest.raises(ValueError, match="expected 1..5 or 'all'"):
        Recipe(tiny_config("fold=6"), "unused", str(tmp_path))
    with pytest.raises(ValueError, match="expected 'segment_transformer'"):
        Recipe(tiny_config('model.temporal={"type": "segment_lstm", "units": 4}'), "unused",
               str(tmp_path))
    with pytest.raises(ValueError, match="features.caches is null and features.visual"):
        Recipe(tiny_config("features.visual=null"), "unused", str(tmp_path)).prepare()


def test_standardisation_adapts_chunk_by_chunk_to_the_numpy_moments(tmp_path):
    """The training features stream through `Normalization.adapt` in chunks (never one
    matrix): the mean and variance are those of NumPy over every row."""
    features = np.random.default_rng(4).normal(2.0, 3.0, (101, 5)).astype(np.float32)
    layer = keras.layers.Normalization(axis=-1)
    layer.adapt(module.feature_chunks(features, rows=16))  # 7 chunks, the last of 5 rows
    np.testing.assert_allclose(np.ravel(layer.mean), features.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.ravel(layer.variance), features.var(0), rtol=1e-4)
    recipe, network = tiny_recipe(tmp_path, width=5)  # the recipe's own adapt_model
    moments = network.get_layer("feature_normalization")
    np.testing.assert_allclose(np.ravel(moments.mean), recipe_matrix(5).mean(0), rtol=1e-5)


def recipe_matrix(width, seed=0):
    """The features `tiny_recipe` adapts to."""
    return np.random.default_rng(seed).normal(2.0, 3.0, (64, width))


# ------------------------------------------------------------------------- R-Drop


def _rdrop_numpy(labels, p1, p2, alpha, kl_reduction="mean"):
    """Eq. 4: mean CE of the two passes + alpha * their symmetric KL over the labelled
    frames, averaged, or summed as the reference R-Drop code does (`kl_reduction="sum"`)."""
    labels = labels.reshape(-1)
    p1 = np.clip(p1.reshape(len(labels), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    p2 = np.clip(p2.reshape(len(labels), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    rows = np.flatnonzero(labels >= 0)
    ce = -0.5 * (np.log(p1[rows, labels[rows]]) + np.log(p2[rows, labels[rows]]))
    kl_12 = np.sum(p1 * (np.log(p1) - np.log(p2)), axis=-1)[rows]
    kl_21 = np.sum(p2 * (np.log(p2) - np.log(p1)), axis=-1)[rows]
    kl = 0.5 * (kl_12 + kl_21)
    return float(np.mean(ce) + alpha * (np.sum(kl) if kl_reduction == "sum" else np.mean(kl)))


@pytest.mark.parametrize("encoder", module.ENCODERS)
def test_rdrop_loss_of_two_dropout_passes_equals_numpy(encoder, tmp_path):
    recipe, network = tiny_recipe(tmp_path, f"encoder={encoder}", "lstm.dropout=0.5",
                                  "model.heads.expr.dropout=0.5")
    stream = recipe.training_model(network)
    rng = np.random.default_rng(2)
    x = {"features": rng.normal(size=(3, 8, 12)).astype("float32")}
    x.update({"starts_video": np.ones(3, bool)} if encoder == "lstm"
             else {"valid": np.ones((3, 8), bool)})
    labels = rng.integers(0, 8, size=(3, 8)).astype("int32")
    labels[0, :3] = -1
    labels[2, -2:] = -1
    pair = keras.ops.convert_to_numpy(stream(x, training=True)["expr"])
    assert pair.shape == (3, 8, 2, 8)
    assert np.abs(pair[..., 0, :] - pair[..., 1, :]).max() > 1e-3  # two dropout masks
    # The presets sum the KL over the labelled frames, as the reference R-Drop code.
    assert recipe.config["losses"]["rdrop_kl_reduction"] == "sum"
    loss = float(recipe.build_losses("rdrop", None)["expr"](labels, pair))
    np.testing.assert_allclose(
        loss, _rdrop_numpy(labels, pair[..., 0, :], pair[..., 1, :], 5.0, kl_reduction="sum"),
        rtol=1e-5)
    recipe.config["losses"]["rdrop_kl_reduction"] = "mean"
    loss = float(recipe.build_losses("rdrop", None)["expr"](labels, pair))
    np.testing.assert_allclose(loss, _rdrop_numpy(labels, pair[..., 0, :], pair[..., 1, :], 5.0),
                               rtol=1e-5)


# ------------------------------------------------------------------------- segments


def _chained_lstm(network, features, videos, frames, length):
    """The saved network run segment by segment over each run of consecutive frames, each
    segment's final state fed to the next (Liu et al. 2023, eq. 2), by hand."""
    expected = np.zeros((len(features), 8), np.float32)
    breaks = np.flatnonzero((videos[1:] != videos[:-1]) | (np.diff(frames) != 1)) + 1
    for run in np.split(np.arange(len(features)), breaks):
        state = [np.zeros((1, network.input["state_h"].shape[-1]), "float32")] * 2
        for start in range(0, len(run), length):
            rows = run[start:start + length]
            out = network({"features": features[None, rows], "state_h": state[0],
                           "state_c": state[1]}, training=False)
            expected[rows] = keras.ops.convert_to_numpy(out["expr"])[0]
            state = [keras.ops.convert_to_numpy(out[key]) for key in ("state_h", "state_c")]
    return expected


def test_lstm_state_carries_over_segments_and_resets_at_a_new_run(train_index, tmp_path):
    """Prediction (whole runs from a zero state) and training (the stream wrapper over
    parallel streams of 4-frame segments, state in variables) both equal the saved network
    chained segment by segment by hand, restarting at each video and after a gap."""
    frames = train_index.frames
    gap = frames.index[(frames["video"] == frames["video"].iloc[0]) & frames["frame"].between(6, 8)]
    index = FrameIndex(frames.drop(gap).reset_index(drop=True), train_index.schema)
    recipe, network = tiny_recipe(tmp_path, "encoder=lstm", "lstm.dropout=0",
                                  "model.heads.expr.dropout=0", "losses.rdrop=false",
                                  "data.segment_length=4", "data.batch_size=3")
    features = np.random.default_rng(4).normal(size=(len(index.frames), 12)).astype("float32")
    videos, numbers = index.frames["video"].to_numpy(), index.frames["frame"].to_numpy()
    expected = _chained_lstm(network, features, videos, numbers, 4)

    predicted = recipe.predict_segments(network, index, features)["expr"]
    np.testing.assert_allclose(predicted, expected, atol=1e-5)

    stream = recipe.training_model(network)
    dataset, _ = recipe.segment_dataset(index, features, training=True)
    slots = np.concatenate([keras.ops.convert_to_numpy(stream(x, training=True)["expr"])
                            for x, _ in dataset])
    segments = segment_indices(videos, numbers, 4)
    order = stream_order(segments, 3)
    trained = np.zeros_like(expected)
    real = np.flatnonzero(order >= 0)
    chosen = segments.take(order[real])
    trained[chosen.rows[chosen.valid]] = slots[real][chosen.valid]
    np.testing.assert_allclose(trained, expected, atol=1e-5)
    assert segments.starts_video.sum() > 3  # more runs than streams: slots take turns


def test_transformer_frames_are_blind_to_the_padding(train_index, tmp_path):
    """Videos of 16 frames in 64-frame segments: each frame's prediction equals the model on
    the unpadded video, whatever the padding holds (issue 10: `valid` reaches the encoder)."""
    keras.utils.set_random_seed(0)  # the same network whatever ran before
    recipe, network = tiny_recipe(tmp_path, "data.segment_length=64")
    index = train_index
    features = np.random.default_rng(5).normal(size=(len(index.frames), 12)).astype("float32")
    predicted = recipe.predict_segments(network, index, features)["expr"]
    videos = index.frames["video"].to_numpy()
    for video in index.videos:
        rows = np.flatnonzero(videos == video)
        alone = network({"features": features[None, rows],
                         "valid": np.ones((1, len(rows)), bool)}, training=False)["expr"][0]
        np.testing.assert_allclose(predicted[rows], alone, atol=1e-5)

    dataset, _ = recipe.segment_dataset(index, features)
    x, _ = next(iter(dataset))
    x = {key: value.numpy() for key, value in x.items()}
    assert x["valid"].sum() < x["valid"].size  # padded
    changed = dict(x, features=np.where(x["valid"][..., None], x["features"], 100.0))
    a, b = (network.predict(inputs, verbose=0)["expr"] for inputs in (x, changed))
    np.testing.assert_allclose(a[x["valid"]], b[x["valid"]], atol=1e-5)
    unmasked = network.predict(dict(changed, valid=np.ones_like(x["valid"])), verbose=0)["expr"]
    assert not np.allclose(unmasked[x["valid"]], a[x["valid"]], atol=1e-3)


@pytest.mark.parametrize("encoder", module.ENCODERS)
def test_validation_labels_follow_the_dataset_order(encoder, train_index, tmp_path):
    """The labels the epoch validation scores against are the dataset's, segment for
    segment: the index's expression labels on real steps, -1 on padding."""
    recipe, _ = tiny_recipe(tmp_path, f"encoder={encoder}")
    features = np.zeros((len(train_index.frames), 12), "float32")
    _, val_ds, labels = recipe.segment_datasets(train_index, train_index, features)
    from_dataset = np.concatenate([y["expr"].numpy() for _, y in val_ds])
    np.testing.assert_array_equal(labels["expr"], from_dataset)
    _, segments = recipe.segment_dataset(train_index, features)
    expr = train_index.frames["expr"].to_numpy()
    np.testing.assert_array_equal(from_dataset, np.where(segments.valid, expr[segments.rows], -1))


def test_vote_is_the_hand_computed_majority_with_ties_to_the_summed_probability():
    """The paper's per-frame vote (section 3.5), `affectkit.evaluation.ensembles.vote`."""
    probabilities = np.array([
        # frame 0: votes 2, 2, 0 -> 2.  frame 1: votes 1, 0, 0 -> 0.
        # frame 2: votes 0, 1, 2 (a three-way tie): summed 0.9, 1.0, 1.1 -> 2.
        # frame 3: votes 1, 1, 1 -> 1.
        [[0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1]],
        [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.3, 0.4, 0.3]],
        [[0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.1, 0.4, 0.5], [0.2, 0.5, 0.3]],
    ])
    np.testing.assert_array_equal(ensembles.vote(probabilities), [2, 0, 2, 1])
    # Two models that disagree: the tie goes to the larger summed probability (0.9 vs 0.8).
    np.testing.assert_array_equal(ensembles.vote(np.array([[[0.6, 0.4]], [[0.3, 0.7]]])), [1])
    with pytest.raises(ValueError, match="models, frames, classes"):
        ensembles.vote(np.zeros((3, 4)))


# ------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def transformer_run(data, tmp_path_factory):
    """One epoch of the transformer on fold 5 (the official split), building its caches."""
    out = str(tmp_path_factory.mktemp("liu_runs") / "transformer")
    report = Recipe(tiny_config(), data, out, preset="cpu_demo").run()
    return out, report


def test_transformer_run_directory(data, transformer_run):
    out, report = transformer_run
    schema = get_schema("abaw5")
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert isinstance(model, AffectModel) and label_schema(model).edition == "abaw5"
    assert sorted(model.input) == ["features", "valid"]
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert np.isfinite(saved["validation"]["expr_f1"])
    assert set(saved["chance_baselines"]) == {"expr"} and set(saved["official"]) == {"expr"}
    assert saved["fold"] == 5 and saved["trained_on_official_validation"] is False
    caches = saved["feature_caches"]
    assert [os.path.basename(path) for path in caches][1] == "audio_logmel"
    assert sum(sum(dims.values()) for dims in caches.values()) == 32 + 80
    # The official files score as the streamed validation of the best epoch.
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert list(history["stage"]) == ["rdrop"]
    assert saved["official"]["expr"]["f1"] == pytest.approx(saved["validation"]["expr_f1"])
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["recipe"] == NAME and config["config"]["encoder"] == "transformer"
    val = FrameIndex.from_affwild2(data, schema, "val", tasks=("expr",),
                                   fill_missing_images=True)
    frames, outputs = read_predictions(os.path.join(out, VALIDATION_FILE), schema)
    assert len(frames) == len(val.frames) and outputs["expr"].shape == (len(val.frames), 8)
    assert os.path.exists(os.path.join(out, "confusion_matrix.png"))


def test_cache_width_must_match_the_preset(data, transformer_run, tmp_path):
    caches = list(json.load(open(os.path.join(transformer_run[0], "metrics.json")))
                  ["feature_caches"])
    config = tiny_config("features.caches=" + json.dumps(caches),
                         'model.feature_inputs={"features": [null, 99]}')
    with pytest.raises(ValueError, match=r"112-d frames .*audio_logmel \(80\).*"
                                         r"model.feature_inputs.features is \[None, 99\]"):
        Recipe(config, data, str(tmp_path / "run")).prepare()


def test_lstm_fold_run_and_the_ensemble_of_a_cross_validation_folder(
        data, transformer_run, tmp_path):
    """Fold 1 (LSTM) holds out training videos and trains on the validation videos: its
    metrics.json says so, and an ensemble over a cross-validation folder leaves it out."""
    tf_out, tf_report = transformer_run
    caches = list(json.load(open(os.path.join(tf_out, "metrics.json")))["feature_caches"])
    cv = tmp_path / "cv"
    fold_1 = str(cv / "fold_1")
    config = tiny_config("encoder=lstm", "fold=1", "features.caches=" + json.dumps(caches))
    report = Recipe(config, data, fold_1, preset="cpu_demo").run()
    shutil.copytree(tf_out, cv / "fold_5")  # the official split's run of the same folder

    saved = json.load(open(os.path.join(fold_1, "metrics.json")))
    assert saved["trained_on_official_validation"] is True and saved["fold"] == 1
    official_val = ["demo_val_000", "demo_val_001_right"]
    assert set(official_val) <= set(saved["train_videos"])
    assert set(saved["held_out_videos"]) == set(saved["folds"]["1"])
    assert not set(saved["held_out_videos"]) & set(saved["train_videos"] + official_val)
    assert saved["folds"]["5"] == official_val and np.isfinite(report["validation"]["expr_f1"])
    model = keras.saving.load_model(os.path.join(fold_1, "model.keras"))
    assert sorted(model.input) == ["features", "state_c", "state_h"]

    with pytest.raises(ValueError, match="at least 2 runs not trained on the validation"):
        ensembles.ensemble([str(cv)], str(tmp_path / "vote_cv"), method="vote")
    result = ensembles.ensemble([str(cv), tf_out], str(tmp_path / "vote"), method="vote")
    assert result["left_out"] == [os.path.abspath(fold_1)]
    assert len(result["runs"]) == 2
    # Two copies of one run vote for its own classes.
    assert result["ensemble"]["expr"]["f1"] == pytest.approx(tf_report["official"]["expr"]["f1"])


@pytest.mark.slow
def test_every_fold_and_their_summary(data, transformer_run, tmp_path):
    """`fold: "all"`: five runs in `out/fold_k` on caches built once, the summary, and an
    ensemble of the folder with another run (folds 1-4 left out)."""
    out = str(tmp_path / "cv")
    summary = Recipe(tiny_config("fold=\"all\""), data, out, preset="cpu_demo").run()
    assert sorted(summary) == ["1", "2", "3", "4", "5", "average"]
    assert json.load(open(os.path.join(out, "cross_validation.json"))) == summary
    tag = module.visual_cache_tag({"model": "regnetx_400mf", "hyperparameters": TINY_REGNET})
    assert sorted(os.listdir(os.path.join(out, "features"))) == ["audio_logmel",
                                                                 f"visual_{tag}_32px"]
    assert not os.path.exists(os.path.join(out, "fold_1", "features"))  # built once
    result = ensembles.ensemble([out, transformer_run[0]], str(tmp_path / "vote"),
                                method="vote")
    assert sorted(result["left_out"]) == [os.path.abspath(os.path.join(out, f"fold_{k}"))
                                          for k in (1, 2, 3, 4)]


@pytest.mark.slow
def test_cpu_demo_lstm_beats_the_majority_class(default_demo_root, tmp_path):
    """The cpu_demo preset (its own visual and log-mel caches) on the default demo data."""
    config = presets.resolve(NAME, "cpu_demo", sets=["encoder=lstm"])
    report = Recipe(config, default_demo_root, str(tmp_path / "lstm"), preset="cpu_demo").run()
    model, chance = report["validation"]["expr_score"], report["chance_baselines"]["expr"]["score"]
    assert model > chance + 0.05, (model, chance)
