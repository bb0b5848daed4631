"""liu2023_multimodal_ensemble: tiny LSTM / transformer builds, safe-mode reload, R-Drop loss
against NumPy, the state carried over segments, folds, the vote, and end-to-end runs."""

import copy
import json
import os

import keras
import numpy as np
import pandas as pd
import pytest

from affectkit.data.affwild2 import FrameIndex
from recipes import liu2023_multimodal_ensemble as liu
from tests.keras_checks import assert_reloads_in_fresh_process



TINY_EXTRACTOR = {"model": "regnetx_400mf", "image_size": 32, "weights": None, "layer": None,
                  "overrides": {"depths": (1, 1, 1, 1), "widths": (8, 16, 24, 32),
                                "group_width": 8, "stem_width": 8}}


def tiny_config(encoder, **overrides):
    config = copy.deepcopy(liu.PRESETS["cpu_demo"])
    config.update(encoder=encoder, input_dim=12, width=16, num_layers=1, num_heads=2, mlp_dim=16,
                  lstm_units=8, head_units=(8,), segment_length=8, batch_size=2, epochs=1,
                  visual_extractor=TINY_EXTRACTOR, backup_every=4)
    config.update(overrides)
    return config


def all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def network_inputs(network, batch, time, dim, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"features": rng.normal(size=(batch, time, dim)).astype("float32")}
    if liu.is_stateful(network):
        units = network.input["state_h"].shape[-1]
        inputs["state_h"] = rng.normal(size=(batch, units)).astype("float32")
        inputs["state_c"] = rng.normal(size=(batch, units)).astype("float32")
    return inputs


# ------------------------------------------------------------------------- models


@pytest.mark.parametrize("encoder", liu.ENCODERS)
def test_tiny_networks_give_per_frame_probabilities(encoder):
    config = tiny_config(encoder)
    network = liu.build_model(config, "abaw5")
    inputs = network_inputs(network, 3, 8, 12)
    outputs = network.predict(inputs, verbose=0)
    assert outputs["expr"].shape == (3, 8, 8)
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)
    if encoder == "lstm":
        assert set(outputs) == {"expr", "state_h", "state_c"}
        assert outputs["state_h"].shape == outputs["state_c"].shape == (3, 8)
    else:
        assert set(outputs) == {"expr"}
        # Segments of any length up to the position table run through the same network.
        longer = network.predict({"features": np.zeros((1, 20, 12), "float32")}, verbose=0)
        assert longer["expr"].shape == (1, 20, 8)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in all_layers(network))


def test_paper_transformer_has_the_papers_sizes():
    config = dict(liu.PRESETS["paper"], input_dim=768 + 512 + 1024)
    network = liu.build_model(config, "abaw5")
    encoder = network.get_layer("transformer")
    assert (encoder.num_layers, encoder.num_heads, encoder.head_dim) == (4, 4, 256)
    assert encoder.dropout == 0.3
    assert network.get_layer("fusion").units == 1024
    assert [network.get_layer(f"head_dense_{i}").units for i in range(2)] == [512, 256]
    assert network.get_layer("expr").units == 8
    assert config["segment_length"] == 128 and config["rdrop_alpha"] == 5.0
    assert config["learning_rate"] == 1e-4 and config["epochs"] == 25


def test_missing_input_dim_and_bad_encoder_are_clear_errors():
    with pytest.raises(ValueError, match="input_dim"):
        liu.build_model(tiny_config("lstm", input_dim=None), "abaw5")
    with pytest.raises(ValueError, match="expected one of"):
        liu.build_model(tiny_config("gru"), "abaw5")


@pytest.mark.parametrize("encoder", liu.ENCODERS)
def test_network_reloads_in_a_fresh_process(encoder, tmp_path):
    network = liu.build_model(tiny_config(encoder), "abaw5")
    normalization = network.get_layer("feature_normalization")
    normalization.adapt(np.random.default_rng(1).normal(3.0, 2.0, (50, 1, 12)))
    assert_reloads_in_fresh_process(network, network_inputs(network, 2, 8, 12), tmp_path)


# ------------------------------------------------------------------------- R-Drop


def _rdrop_numpy(labels, p1, p2, alpha):
    labels = labels.reshape(-1)
    p1 = np.clip(p1.reshape(len(labels), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    p2 = np.clip(p2.reshape(len(labels), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    valid = labels >= 0
    rows = np.flatnonzero(valid)
    ce = -0.5 * (np.log(p1[rows, labels[rows]]) + np.log(p2[rows, labels[rows]]))
    kl_12 = np.sum(p1 * (np.log(p1) - np.log(p2)), axis=-1)[rows]
    kl_21 = np.sum(p2 * (np.log(p2) - np.log(p1)), axis=-1)[rows]
    return float(np.mean(ce + alpha * 0.5 * (kl_12 + kl_21)))


@pytest.mark.parametrize("encoder", liu.ENCODERS)
def test_rdrop_loss_of_two_dropout_passes_equals_numpy(encoder):
    config = tiny_config(encoder, dropout=0.5, head_dropout=0.5)
    network = liu.build_model(config, "abaw5")
    stream = liu.SegmentStream(network, batch_size=3, rdrop=config["rdrop"])
    x = {"features": np.random.default_rng(2).normal(size=(3, 8, 12)).astype("float32"),
         "starts_video": np.array([True, True, True])}
    labels = np.random.default_rng(3).integers(0, 8, size=(3, 8)).astype("int32")
    labels[0, :3] = -1
    labels[2, -2:] = -1
    pair = keras.ops.convert_to_numpy(stream(x, training=True)["expr"])
    assert pair.shape == (3, 8, 2, 8)
    assert np.abs(pair[..., 0, :] - pair[..., 1, :]).max() > 1e-3  # two dropout masks
    loss = float(liu.build_losses(config)["expr"](labels, pair))
    expected = _rdrop_numpy(labels, pair[..., 0, :], pair[..., 1, :], alpha=5.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # In inference the stream runs the network once, deterministically.
    once = keras.ops.convert_to_numpy(stream(x, training=False)["expr"])
    assert once.shape == (3, 8, 8)


# ------------------------------------------------------------------------- segments


@pytest.fixture(scope="module")
def train_index(demo_root):
    return FrameIndex.from_affwild2(demo_root, "abaw5", "train", fill_missing_images=True)


def test_lstm_state_carries_within_a_video_and_resets_at_its_start(train_index):
    """predict_frames (parallel streams, state in variables) equals running the saved network
    video by video, segment by segment, feeding each segment's final state to the next."""
    config = tiny_config("lstm", batch_size=3, segment_length=8)
    network = liu.build_model(config, "abaw5")
    index = train_index
    features = np.random.default_rng(4).normal(size=(len(index), 12)).astype("float32")
    predicted = liu.predict_frames(network, index, [features], config)

    videos = index.frames["video"].to_numpy()
    expected = np.zeros_like(predicted)
    for video in index.videos:
        rows = np.flatnonzero(videos == video)
        state = [np.zeros((1, 8), "float32")] * 2
        for start in range(0, len(rows), 8):
            chunk = rows[start:start + 8]
            out = network.predict({"features": features[None, chunk], "state_h": state[0],
                                   "state_c": state[1]}, verbose=0)
            expected[chunk] = out["expr"][0]
            state = [out["state_h"], out["state_c"]]
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
    assert len(index.videos) > config["batch_size"]  # some slots hold two videos in turn


def test_slot_labels_follow_the_dataset_order(train_index):
    for encoder in liu.ENCODERS:
        config = tiny_config(encoder, segment_length=8, batch_size=3)
        features = np.zeros((len(train_index), 3), "float32")
        dataset = liu.make_dataset(train_index, [features], config)
        from_dataset = np.concatenate([y["expr"].numpy() for _, y in dataset])
        np.testing.assert_array_equal(liu.slot_labels(train_index, config), from_dataset)


# ------------------------------------------------------------------------- folds, vote


def test_four_folds_partition_the_training_videos_and_the_fifth_is_validation():
    train = [f"t{i:02d}" for i in range(13)] + ["pair_left", "pair_right", "p2_left", "p2_right"]
    val = ["v0", "v1", "v2_left", "v2_right"]
    counts = {video: 100 + 7 * i for i, video in enumerate(train)}
    folds = liu.cross_validation_folds(train, val, counts, seed=3)
    assert sorted(folds) == [1, 2, 3, 4, 5]
    training_folds = [folds[k] for k in (1, 2, 3, 4)]
    flat = [video for fold in training_folds for video in fold]
    assert sorted(flat) == sorted(train)  # every training video ...
    assert len(flat) == len(set(flat))  # ... in exactly one fold
    assert all(fold for fold in training_folds)
    assert folds[5] == sorted(val)
    for a, b in (("pair_left", "pair_right"), ("p2_left", "p2_right")):  # shared audio
        assert [a in fold for fold in training_folds] == [b in fold for fold in training_folds]
    sizes = [sum(counts[v] for v in fold) for fold in training_folds]
    assert max(sizes) - min(sizes) <= max(counts.values()) * 2  # balanced by frames
    assert liu.cross_validation_folds(train, val, counts, seed=3) == folds  # seeded
    for k in range(1, 6):
        trained, held_out = liu.fold_split(folds, k)
        assert set(trained).isdisjoint(held_out)
        assert sorted(trained + held_out) == sorted(train + val)
        assert held_out == folds[k]


def test_fold_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="at least 4"):
        liu.assign_folds(["a", "b", "c_left", "c_right"], num_folds=4)
    with pytest.raises(ValueError, match="both the training and the validation"):
        liu.cross_validation_folds(["a", "b", "c", "d"], ["d"])
    with pytest.raises(ValueError, match="expected one of"):
        liu.fold_split({1: ["a"], 5: ["b"]}, 3)


def test_vote_is_the_hand_computed_majority_with_ties_to_the_summed_probability():
    probabilities = np.array([
        # frame 0: votes 2, 2, 0 -> 2.  frame 1: votes 1, 0, 0 -> 0.
        # frame 2: votes 0, 1, 2 (a three-way tie): summed 0.9, 1.0, 1.1 -> 2.
        # frame 3: votes 1, 1, 1 -> 1.
        [[0.1, 0.2, 0.7], [0.2, 0.5, 0.3], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1]],
        [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.3, 0.4, 0.3]],
        [[0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.1, 0.4, 0.5], [0.2, 0.5, 0.3]],
    ])
    np.testing.assert_array_equal(liu.vote(probabilities), [2, 0, 2, 1])
    # Two models that disagree: the tie goes to the larger summed probability (0.9 vs 0.8).
    two = np.array([[[0.6, 0.4]], [[0.3, 0.7]]])
    np.testing.assert_array_equal(liu.vote(two), [1])
    with pytest.raises(ValueError, match="models, frames, classes"):
        liu.vote(np.zeros((3, 4)))


def test_help_runs():
    with pytest.raises(SystemExit) as exit_info:
        liu.main(["--help"])
    assert exit_info.value.code == 0


# ------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def demo_caches(demo_root, tmp_path_factory):
    config = tiny_config("transformer")
    return liu.prepare_features(config, demo_root, str(tmp_path_factory.mktemp("caches")),
                                verbose=0)


def _check_run(report, out):
    for name in ("model.keras", "metrics.json", "history.csv", "learning_curves.png",
                 "confusion_matrix.png", liu.OFFICIAL_PREDICTIONS):
        assert os.path.exists(os.path.join(out, name)), name
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert saved["fold"] == 5 and not saved["trained_on_official_validation"]
    # The official prediction files score exactly as the in-memory predictions, and the
    # best epoch's validation score (streamed by the Trainer) is the final one.
    assert report["official_validation"]["f1"] == pytest.approx(report["validation"]["f1"])
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert history["val_expr_f1"].max() == pytest.approx(
        report["validation"]["f1"], abs=1e-6)
    assert report["chance_baselines"]["expr"]["f1"] >= 0.0


def test_transformer_end_to_end_on_demo_data(demo_root, demo_caches, tmp_path):
    config = tiny_config("transformer", features=demo_caches, epochs=2)
    out = str(tmp_path / "run")
    report = liu.train(config, demo_root, out)
    _check_run(report, out)
    assert report["config"]["input_dim"] == 32 + 80  # tiny RegNet + log-mel


@pytest.mark.slow
def test_lstm_run_and_a_vote_ensemble_of_two_runs(demo_root, demo_caches, tmp_path):
    runs = {}
    for encoder in liu.ENCODERS:
        out = str(tmp_path / encoder)
        report = liu.train(tiny_config(encoder, features=demo_caches, epochs=2), demo_root, out)
        _check_run(report, out)
        runs[encoder] = out
    result = liu.ensemble(list(runs.values()), str(tmp_path / "vote"), data=demo_root)
    stored = [np.load(os.path.join(run, liu.OFFICIAL_PREDICTIONS)) for run in runs.values()]
    voted = liu.vote(np.stack([s["probabilities"] for s in stored]))
    labels = stored[0]["labels"]
    from affectkit import metrics

    assert result["ensemble"]["f1"] == pytest.approx(metrics.expr_metrics(labels, voted, 8)["f1"])
    assert result["official"]["f1"] == pytest.approx(result["ensemble"]["f1"])
    assert len(result["members"]) == 2


@pytest.mark.slow
def test_cpu_demo_lstm_beats_the_majority_class(default_demo_root, tmp_path):
    """The cpu_demo preset (its own visual and log-mel caches) on the default demo data."""
    config = dict(copy.deepcopy(liu.PRESETS["cpu_demo"]), encoder="lstm")
    config["features"] = liu.prepare_features(config, default_demo_root, str(tmp_path / "features"),
                                              verbose=0)
    report = liu.train(config, default_demo_root, str(tmp_path / "lstm"))
    assert report["validation"]["score"] > report["chance_baselines"]["expr"]["score"] + 0.05
