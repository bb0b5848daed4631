"""phan2022_regnet_transformer: the paper's network from its preset, the configured loss (the
authors' focal + KL form, or Keras' focal form) against NumPy, the plateau schedule, the
frozen backbone and the frozen stem and first stage, and runs of the recipe (a tiny one end
to end; the cpu_demo preset against the chance baseline, slow)."""

import glob
import json
import os

import keras
import numpy as np
import pandas as pd
import pytest

from affectkit import losses, presets
from affectkit.data.affwild2 import annotation_dir
from affectkit.labels import get_schema
from affectkit.models.affect_model import AffectModel, label_schema
from affectkit.models.backbones import regnet
from affectkit.models.layers.temporal import ConcatAttentionTransformer
from affectkit.recipes import get_recipe

NAME = "phan2022_regnet_transformer"
SCHEMA = get_schema("abaw3")
# A tiny network over 8-frame clips of 32 px: 1 epoch on the demo data in seconds.
TINY = [
    "model.image_size=32", "model.sequence_length=8",
    'model.backbone={"name": "regnety_1.6gf", "depths": [1, 1, 1, 1], '
    '"widths": [8, 16, 24, 32], "group_width": 8, "stem_width": 8}',
    "model.temporal.attention_head_dim=8", "model.temporal.transformer_head_dim=8",
    "model.temporal.transformer_mlp_dim=16", "data.batch_size=4", "run.backup_every=2",
]


def recipe(sets=(), preset="cpu_demo", data="unused", out="unused"):
    config = presets.resolve(NAME, preset, sets=list(sets))
    return get_recipe(NAME)(config, data, out, preset=preset)


def test_paper_preset_builds_regnety_16gf_over_64_frame_clips():
    model = AffectModel.from_preset(NAME)
    assert model.input_shape == (None, 64, 112, 112, 3)
    assert model.backbone.output_shape == (None, 4, 4, 888)
    temporal = model.get_layer("temporal")
    assert isinstance(temporal, ConcatAttentionTransformer)
    assert (temporal.attention_heads, temporal.attention_head_dim) == (2, 64)
    assert (temporal.transformer_layers, temporal.transformer_heads,
            temporal.transformer_head_dim, temporal.transformer_mlp_dim) == (1, 2, 64, 512)
    assert temporal.output.shape == (None, 64, 3 * 888)
    assert set(model.output) == {"expr"} and model.output["expr"].shape == (None, 64, 8)
    assert model.get_layer("expr").input_dropout_layer.rate == 0.5
    backbone_weights = sum(int(np.prod(w.shape)) for w in model.backbone.trainable_weights)
    assert backbone_weights == regnet.count_params("regnety_1.6gf", include_top=False,
                                                   trainable_only=True)
    # 11.2 M with the ImageNet head (REFERENCE section 5).
    assert backbone_weights + 888 * 1000 + 1000 == 11_202_430

    config = presets.resolve(NAME, "paper")
    assert config["losses"] == {"form": "authors", "focal_alpha": 0.9, "focal_gamma": 2.0,
                                "label_smoothing": 0.1, "focal_weight": 0.8, "kl_weight": 0.2}
    assert config["train_backbone"] is True
    assert config["trainable_from"] == "stage2_block1_a_conv"
    assert config["data"]["batch_size"] == 16
    assert config["stages"]["train"]["epochs"] == 30
    assert config["stages"]["train"]["optimizer"] == {"name": "adamw", "learning_rate": 1e-3,
                                                      "weight_decay": 5e-5}


def test_configured_focal_loss_equals_numpy():
    """The paper preset's loss is the authors' code's (`CEFocalLoss` with
    `distillation_loss=True`); `losses.form=keras` is Keras' focal cross-entropy."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 5, 8))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 8, size=(3, 5))
    labels[0, 3:] = -1  # padded steps
    labels[2, 1] = -1  # an unlabelled frame
    valid = labels.reshape(-1) != -1
    one_hot = np.eye(8)[labels.reshape(-1)[valid]]
    t = one_hot * 0.9 + 0.1 / 8
    p = np.clip(probabilities.reshape(-1, 8)[valid], 1e-7, 1 - 1e-7)

    for preset in ("paper", "cpu_demo"):
        loss = recipe(preset=preset).build_losses("train", None)["expr"]
        assert isinstance(loss, losses.MaskedFocalKLLoss)
        value = float(loss(labels, probabilities.astype("float32")))
        ce = -(t * np.log(p)).sum(-1)
        focal = 0.9 * (1 - (p * one_hot).sum(-1)) ** 2 * ce
        kl = (t * (np.log(t) - np.log(p))).sum(-1)
        assert value == pytest.approx(0.8 * focal.mean() + 0.2 * kl.mean(), rel=1e-5)

    loss = recipe(["losses.form=keras"], preset="paper").build_losses("train", None)["expr"]
    assert isinstance(loss, losses.MaskedFocalLoss)
    value = float(loss(labels, probabilities.astype("float32")))
    expected = np.mean(-(0.9 * (1 - p) ** 2 * t * np.log(p)).sum(-1))
    assert value == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="expected one of"):
        recipe(["losses.form=torch"]).build_losses("train", None)


def test_plateau_of_the_validation_score_reduces_the_learning_rate():
    (plateau,) = recipe(preset="paper").stage_callbacks("train")
    assert isinstance(plateau, keras.callbacks.ReduceLROnPlateau)
    assert (plateau.monitor, plateau.mode, plateau.factor, plateau.patience) == (
        "val_score", "max", 0.1, 10)
    assert recipe().stage_callbacks("train")[0].patience == 3
    assert recipe(['stages.train.plateau=null']).stage_callbacks("train") == []


def test_frozen_backbone_trains_only_the_clip_blocks_and_the_head():
    trained = recipe(TINY).build_model()
    frozen = recipe(TINY + ["train_backbone=false"]).build_model()
    assert not frozen.backbone.trainable and trained.backbone.trainable
    backbone = {id(w) for w in frozen.backbone.weights}
    assert not backbone & {id(w) for w in frozen.trainable_weights}
    outside = [w for w in trained.trainable_weights
               if id(w) not in {id(v) for v in trained.backbone.weights}]
    assert len(frozen.trainable_weights) == len(outside) > 0


def test_trainable_from_freezes_exactly_the_stem_and_the_first_stage():
    """The paper's `trainable_from` on a tiny RegNet (two blocks per stage): every weight of
    the stem and stage 1 is frozen, every other one trains; frozen BatchNorm runs in
    inference mode (its moving statistics stay), the others still update theirs."""
    sets = [s for s in TINY if not s.startswith("model.backbone=")] + [
        'model.backbone={"name": "regnety_1.6gf", "depths": [2, 2, 1, 1], '
        '"widths": [8, 16, 24, 32], "group_width": 8, "stem_width": 8}']
    run = recipe(sets + ["trainable_from=stage2_block1_a_conv"])
    model = run.build_model()
    with pytest.raises(ValueError, match="would stay randomly initialised"):
        run.check_frozen_layers(model)  # `run` refuses frozen random layers
    backbone = model.backbone
    frozen_part = {id(w) for layer in backbone.layers
                   if layer.name.startswith(("stem_", "stage1_")) for w in layer.weights}
    assert frozen_part
    trainable = {id(w) for w in backbone.trainable_weights}
    frozen = {id(w) for w in backbone.non_trainable_weights} - {
        id(w) for layer in backbone.layers for w in layer.non_trainable_weights
        if not layer.name.startswith(("stem_", "stage1_"))}  # other BatchNorm's moving stats
    assert frozen == frozen_part and not trainable & frozen_part
    later = {id(w) for layer in backbone.layers if layer.name.startswith(("stage2", "stage3",
                                                                           "stage4"))
             for w in layer.trainable_weights if layer.trainable}
    assert later == trainable
    # The whole network: the clip blocks and the head train too.
    assert {id(w) for w in model.trainable_weights} & later == later

    stem_bn, stage2_bn = backbone.get_layer("stem_bn"), backbone.get_layer("stage2_block1_a_bn")
    before = [np.array(bn.moving_mean) for bn in (stem_bn, stage2_bn)]
    frames = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32")
    backbone(frames, training=True)
    np.testing.assert_array_equal(np.array(stem_bn.moving_mean), before[0])
    assert np.abs(np.array(stage2_bn.moving_mean) - before[1]).max() > 0
    maps = np.random.default_rng(1).normal(2.0, 3.0, (4, 8, 8, 8)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stem_bn(maps, training=True)),
                               keras.ops.convert_to_numpy(stem_bn(maps, training=False)))

    with pytest.raises(ValueError, match="trainable_from=null with train_backbone=false"):
        recipe(TINY + ["train_backbone=false", "trainable_from=stage2_block1_a_conv"]).build_model()
    with pytest.raises(ValueError, match="no layer named"):
        recipe(TINY + ["trainable_from=stage9_block1_a_conv"]).build_model()


def test_recipe_runs_end_to_end(demo_root, tmp_path):
    out = str(tmp_path / "run")
    report = recipe(TINY + ["stages.train.epochs=1"], data=demo_root, out=out).run()

    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert label_schema(model).edition == "abaw3"
    assert model.input_shape == (None, 8, 32, 32, 3)
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert 0.0 <= saved["validation"]["expr_f1"] <= 1.0
    assert "score" in saved["chance_baselines"]["expr"]
    assert 0.0 <= saved["official"]["expr"]["score"] <= 1.0
    assert saved["official"] == report["official"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["recipe"] == NAME and config["config"]["model"]["sequence_length"] == 8
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert len(history) == 1 and np.isfinite(history["loss"]).all()

    # One row per annotated validation frame (every line of the EXPR validation files).
    folder = os.path.join(demo_root, annotation_dir(SCHEMA, "expr", "val"))
    annotated = sum(len(open(path).read().splitlines()) - 1
                    for path in glob.glob(os.path.join(folder, "*.txt")))
    predictions = pd.read_csv(os.path.join(out, "predictions", "validation.csv"))
    assert len(predictions) == annotated
    assert not predictions.duplicated(["video", "frame"]).any()
    np.testing.assert_allclose(predictions[list(SCHEMA.expressions)].sum(axis=1), 1.0,
                               atol=1e-4)


@pytest.mark.slow
def test_cpu_demo_beats_the_majority_class(default_demo_root, tmp_path):
    """The cpu_demo preset on the default demo data (minutes)."""
    report = recipe(data=default_demo_root, out=str(tmp_path / "run")).run()
    assert report["validation"]["expr_f1"] > report["chance_baselines"]["expr"]["score"]
