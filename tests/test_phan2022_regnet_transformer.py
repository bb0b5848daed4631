"""phan2022_regnet_transformer: model structure and shapes, sequence chunking against a hand
computation, the configured focal loss against NumPy, sequence-shaped validation scores
against scikit-learn, fresh-process safe-mode reload and an end-to-end recipe run."""

import copy
import json
import os
import zipfile

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from affectkit import metrics
from affectkit.data.affwild2 import FrameIndex, annotation_dir, write_annotation_file
from affectkit.labels import get_schema
from affectkit.models.backbones import regnet
from affectkit.models.layers import SelfAttentionBlock, TransformerEncoder
from recipes import phan2022_regnet_transformer as recipe
from tests.keras_checks import assert_reloads_in_fresh_process

SCHEMA = get_schema("abaw3")
TINY_BACKBONE = {"depths": (1, 1, 1, 1), "widths": (8, 16, 24, 32), "group_width": 8,
                 "stem_width": 8}


def tiny_config(**overrides):
    config = copy.deepcopy(recipe.PRESETS["cpu_demo"])
    config.update(image_size=32, sequence_length=4, backbone_config=TINY_BACKBONE,
                  transformer_mlp_dim=32, batch_size=4, epochs=1, backup_every=2)
    config.update(overrides)
    return config


# ------------------------------------------------------------------------------ model


def test_tiny_model_shapes_and_paper_blocks():
    config = tiny_config()
    model = recipe.build_model(config, SCHEMA)
    assert model.input_shape == (None, 4, 32, 32, 3)
    frames = np.random.default_rng(0).random((3, 4, 32, 32, 3)).astype("float32")
    outputs = model.predict(frames, verbose=0)
    assert set(outputs) == {"expr"}
    assert outputs["expr"].shape == (3, 4, 8)
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)

    attention = model.get_layer("attention")
    assert isinstance(attention, SelfAttentionBlock)
    assert (attention.num_heads, attention.head_dim, attention.output_dim) == (2, 64, None)
    transformer = model.get_layer("transformer_encoder")
    assert isinstance(transformer, TransformerEncoder)
    assert transformer.norm_first and not transformer.positional_encoding
    assert (transformer.num_layers, transformer.num_heads, transformer.head_dim) == (1, 2, 64)
    assert transformer.dropout == 0.0
    assert model.get_layer("dropout").rate == 0.5
    width = TINY_BACKBONE["widths"][-1]
    assert model.get_layer("representation").output.shape == (None, 4, 3 * width)
    # No residual around the attention branch: its output is concatenated as it is.
    assert model.get_layer("representation").input[1] is attention.output


def test_paper_preset_builds_regnety_16gf_over_64_frame_sequences():
    config = recipe.PRESETS["paper"]
    model = recipe.build_model(config, "abaw3")
    assert model.input_shape == (None, 64, 112, 112, 3)
    encoder = model.get_layer("regnety_1.6gf")
    assert encoder.output_shape == (None, 888)
    assert model.get_layer("representation").output.shape == (None, 64, 3 * 888)
    assert model.get_layer("expr").output.shape == (None, 64, 8)
    backbone_weights = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
    assert backbone_weights == regnet.count_params("regnety_1.6gf", include_top=False,
                                                   trainable_only=True)
    # 11.2 M with the ImageNet head (REFERENCE section 5).
    assert backbone_weights + 888 * 1000 + 1000 == 11_202_430
    assert config["focal_alpha"] == 0.9 and config["focal_gamma"] == 2.0
    assert config["label_smoothing"] == 0.1 and config["batch_size"] == 16
    assert config["epochs"] == 30 and config["learning_rate"] == 1e-3
    assert config["weight_decay"] == 5e-5


def test_model_file_backbone_and_config_errors(tmp_path):
    path = str(tmp_path / "face_net.keras")
    regnet.regnet((32, 32, 3), name="face_net", **TINY_BACKBONE).save(path)
    model = recipe.build_model(
        tiny_config(backbone_file=path, backbone_layer="stage3_block1_out",
                    backbone_normalization=None), SCHEMA)
    assert model.get_layer("representation").output.shape == (None, 4, 3 * 24)
    assert "imagenet_normalization" not in [layer.name for layer in model.layers]
    with pytest.raises(ValueError, match="needs a `backbone_file`"):
        recipe.build_model(tiny_config(backbone_layer="stage3_block1_out"), SCHEMA)
    with pytest.raises(ValueError, match="sequence_length"):
        recipe.build_model(tiny_config(sequence_length=0), SCHEMA)


def test_saved_model_reloads_in_fresh_process_without_lambda(tmp_path):
    model = recipe.build_model(tiny_config(), SCHEMA)
    frames = np.random.default_rng(1).random((2, 4, 32, 32, 3)).astype("float32")
    assert_reloads_in_fresh_process(model, frames, tmp_path)
    with zipfile.ZipFile(os.path.join(str(tmp_path), "model.keras")) as archive:
        config = archive.read("config.json").decode()
    assert '"Lambda"' not in config


# ------------------------------------------------------------------------------ losses, metrics


def test_configured_focal_loss_equals_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 5, 8))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 8, size=(3, 5))
    labels[0, 3:] = -1  # padded steps
    labels[2, 1] = -1  # an unlabelled frame
    loss = recipe.build_losses(recipe.PRESETS["paper"])["expr"]
    value = float(loss(labels, probabilities.astype("float32")))

    valid = labels.reshape(-1) != -1
    t = np.eye(8)[labels.reshape(-1)[valid]] * 0.9 + 0.1 / 8
    p = np.clip(probabilities.reshape(-1, 8)[valid], 1e-7, 1 - 1e-7)
    expected = np.mean(-(0.9 * (1 - p) ** 2 * t * np.log(p)).sum(-1))
    assert value == pytest.approx(expected, rel=1e-5)


def test_sequence_validation_scores_flatten_and_mask_padding():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, size=(6, 16))
    labels[-1, 10:] = -1
    labels[1, ::5] = -1
    probabilities = rng.random((6, 16, 8))
    scores = metrics.abaw_scores("expr", SCHEMA, labels, probabilities)
    valid = labels != -1
    expected = f1_score(labels[valid], probabilities.argmax(-1)[valid], average="macro",
                        labels=list(range(8)), zero_division=0)
    assert scores["score"] == pytest.approx(expected)


# ------------------------------------------------------------------------------ sequences


def write_tiny_layout(root):
    """Two videos: `a` (7 frames, frame 2 unlabelled, frame 3 without image), `b` (3 frames,
    frame 3 unlabelled). Frame k of `a` is grey 20 k, of `b` 200 + 10 k."""
    folder = os.path.join(root, annotation_dir(SCHEMA, "expr", "train"))
    os.makedirs(folder)
    write_annotation_file(os.path.join(folder, "a.txt"), "expr",
                          np.array([0, -1, 2, 3, 4, 5, 6]), SCHEMA)
    write_annotation_file(os.path.join(folder, "b.txt"), "expr", np.array([7, 1, -1]), SCHEMA)
    for video, frames, grey in (("a", (1, 2, 4, 5, 6, 7), lambda k: 20 * k),
                                ("b", (1, 2, 3), lambda k: 200 + 10 * k)):
        os.makedirs(os.path.join(root, "cropped_aligned", video))
        for k in frames:
            image = np.full((16, 16, 3), grey(k), np.uint8)
            cv2.imwrite(os.path.join(root, "cropped_aligned", video, f"{k:05d}.jpg"), image)


def grey_levels(images):
    return np.rint(np.asarray(images).mean(axis=(-3, -2, -1)) * 255).astype(int)


def test_training_chunks_match_hand_computation(tmp_path):
    root = str(tmp_path / "data")
    write_tiny_layout(root)
    index = FrameIndex.from_affwild2(root, SCHEMA, "train", tasks=("expr",))
    kept, segments = recipe.sequence_segments(index, length=3)
    # Frames with a label and an image: a1 a4 a5 a6 a7 | b1 b2; chunks of 3, the last chunk
    # of each video padded with its last frame.
    kept_frames = list(zip(kept.frames["video"], kept.frames["frame"]))
    assert kept_frames == [("a", 1), ("a", 4), ("a", 5), ("a", 6), ("a", 7), ("b", 1), ("b", 2)]
    assert segments.rows.tolist() == [[0, 1, 2], [3, 4, 4], [5, 6, 6]]
    assert segments.valid.tolist() == [[True] * 3, [True, True, False], [True, True, False]]
    labels = recipe.sequence_labels(kept, segments)
    assert labels.tolist() == [[0, 3, 4], [5, 6, -1], [7, 1, -1]]

    ds = recipe.sequence_dataset(kept, segments, image_size=16, batch_size=2)
    batches = list(ds)
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.shape == (3, 3, 16, 16, 3) and images.dtype == np.float32
    assert grey_levels(images).tolist() == [[20, 80, 100], [120, 140, 140], [210, 220, 220]]
    yielded = np.concatenate([b[1]["expr"].numpy() for b in batches])
    assert yielded.tolist() == labels.tolist()

    # Training shuffles whole chunks, labels travelling with their frames.
    shuffled = list(recipe.sequence_dataset(kept, segments, image_size=16, batch_size=3,
                                            training=True, shuffle_seed=5, cache=True))[0]
    by_first_grey = {row[0]: row for row in grey_levels(shuffled[0]).tolist()}
    assert sorted(by_first_grey) == [20, 120, 210]
    first_labels = {grey_levels(shuffled[0])[i, 0]: shuffled[1]["expr"].numpy()[i].tolist()
                    for i in range(3)}
    assert first_labels == {20: [0, 3, 4], 120: [5, 6, -1], 210: [7, 1, -1]}

    # Resized to another size, the same frames.
    small = next(iter(recipe.sequence_dataset(kept, segments, image_size=8, batch_size=3)))
    assert small[0].shape == (3, 3, 8, 8, 3)
    assert grey_levels(small[0]).tolist()[0] == [20, 80, 100]


def test_predict_frames_covers_every_frame_once(tmp_path):
    root = str(tmp_path / "data")
    write_tiny_layout(root)
    index = FrameIndex.from_affwild2(root, SCHEMA, "train", tasks=("expr",),
                                     fill_missing_images=True)
    model = recipe.build_model(tiny_config(image_size=16, sequence_length=3), SCHEMA)
    kept, outputs = recipe.predict_frames(model, index, batch_size=2)
    assert list(zip(kept.frames["video"], kept.frames["frame"])) == (
        [("a", k) for k in range(1, 8)] + [("b", k) for k in range(1, 4)])
    # By hand: a3 has no image and takes a2's (nearest, the earlier on a tie).
    grey = {("a", k): 20 * k for k in (1, 2, 4, 5, 6, 7)}
    grey[("a", 3)] = 40
    grey.update({("b", k): 200 + 10 * k for k in (1, 2, 3)})
    chunks = [[("a", 1), ("a", 2), ("a", 3)], [("a", 4), ("a", 5), ("a", 6)],
              [("a", 7)] * 3, [("b", 1), ("b", 2), ("b", 3)]]
    frames = np.stack([[np.full((16, 16, 3), grey[f] / 255.0, np.float32) for f in chunk]
                       for chunk in chunks])
    direct = model.predict(frames, verbose=0)["expr"]
    expected = np.concatenate([direct[0], direct[1], direct[2][:1], direct[3]])
    np.testing.assert_allclose(outputs["expr"], expected, atol=2e-3)
    with pytest.raises(ValueError, match="frames="):
        recipe.sequence_segments(index, 3, frames="everything")


# ------------------------------------------------------------------------------ recipe


def test_recipe_end_to_end(demo_root, tmp_path):
    out = str(tmp_path / "run")
    config = tiny_config(sequence_length=8, epochs=2)
    report = recipe.train(config, demo_root, out)
    for name in ("model.keras", "metrics.json", "history.csv", "learning_curves.png",
                 "confusion_matrix.png"):
        assert os.path.exists(os.path.join(out, name)), name
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert len(history) == 2 and np.isfinite(history["loss"]).all()
    assert "val_expr_f1" in history.columns
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert "expr_f1" in saved["validation"]
    assert saved["chance_baselines"]["expr"]["score"] == report["chance_baselines"]["expr"]["score"]
    assert saved["config"]["sequence_length"] == 8
    assert os.listdir(os.path.join(out, "predictions", "expr"))
    assert 0.0 <= report["official"]["expr"]["score"] <= 1.0
    reloaded = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert reloaded.input_shape == (None, 8, 32, 32, 3)


def test_cli_help_lists_the_recipe_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--edition", "--out", "--preset", "--epochs", "--batch-size",
                 "--sequence-length", "--image-size", "--backbone-file", "--backbone-layer",
                 "--weights"):
        assert flag in text


@pytest.mark.slow
def test_cpu_demo_beats_the_majority_class(default_demo_root, tmp_path):
    """The cpu_demo preset on the default demo data (minutes)."""
    report = recipe.train(copy.deepcopy(recipe.PRESETS["cpu_demo"]), default_demo_root,
                          str(tmp_path / "run"))
    assert report["validation"]["expr_f1"] > report["chance_baselines"]["expr"]["score"]
