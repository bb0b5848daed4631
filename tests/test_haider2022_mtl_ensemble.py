"""Haider et al. 2022 (haider2022_mtl_ensemble): the preset's network, attention maps, loss
weights against NumPy, a model file as the backbone, two one-epoch runs (one per view)
and their two-view ensemble."""

import json
import os
import shutil

import keras
import numpy as np
import pandas as pd
import pytest

from affectkit import losses, metrics, plots, presets
from affectkit.data.affwild2 import FrameIndex
from affectkit.data.pipeline import label_arrays
from affectkit.evaluation import ensembles
from affectkit.evaluation.predictions import VALIDATION_FILE, read_predictions
from affectkit.labels import get_schema
from affectkit.models.affect_model import AffectModel, label_schema
from affectkit.recipes import get_recipe
from affectkit.recipes import haider2022_mtl_ensemble as module

NAME = "haider2022_mtl_ensemble"
Recipe = get_recipe(NAME)
# 32 px, a 2-stage bottleneck ResNet (4x4x32 map), the paper's region attention and
# transformer widths with a small feed-forward layer.
TINY_BACKBONE = {"name": "resnet50", "depths": [1, 1], "stem_width": 8, "widths": [16, 32],
                 "bottleneck_widths": [4, 8]}
TINY = ["model.image_size=32", "model.backbone=" + json.dumps(TINY_BACKBONE),
        "model.neck.transformer_mlp_dim=32", "data.batch_size=16", "data.augment=false",
        "run.backup_every=4"]


def tiny_config(*sets):
    return presets.resolve(NAME, "cpu_demo", sets=TINY + list(sets), epochs=1)


def tiny_model(schema="abaw3"):
    return AffectModel.from_preset(NAME, schema=schema, image_size=32, normalization="imagenet",
                                   backbone=TINY_BACKBONE, neck={"transformer_mlp_dim": 32})


def random_images(count, size=32, seed=0):
    return np.random.default_rng(seed).random((count, size, size, 3)).astype("float32")


def test_tiny_model_outputs():
    model = tiny_model()
    outputs = model.predict(random_images(3), verbose=0)
    assert outputs["va"].shape == (3, 2)
    assert outputs["expr"].shape == (3, 8)
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)
    assert outputs["au"].shape == (3, 12)
    assert ((outputs["au"] >= 0) & (outputs["au"] <= 1)).all()
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    # The paper's shapes: 17 regions of 16-wide tokens, one encoder layer of 8 heads.
    neck = model.get_layer("neck")
    shapes = neck.compute_output_shape(neck.input.shape)
    assert tuple(shapes["tokens"][1:]) == (17, 16) and tuple(shapes["attention"][1:]) == (4, 4, 17)
    transformer = neck.transformer
    assert (transformer.num_layers, transformer.num_heads, transformer.head_dim) == (1, 8, 2)
    assert transformer.activation == "gelu" and transformer.positional_encoding
    assert transformer.positional_dropout == 0.3
    # One classifier (weight vector and bias) per labelled AU token.
    assert tuple(model.get_layer("au").kernel.shape) == (12, 16)


def test_paper_preset():
    """The paper's run settings, and InceptionV3 cut at mixed7 giving the 17x17x768 map at
    299 (built, not run)."""
    paper = presets.run_presets(NAME)["paper"]
    assert paper["edition"] == "abaw4" and paper["data"]["batch_size"] == 24
    assert paper["data"]["annotations"] == "auto"
    assert paper["losses"] == {"au_pos_weights": "auto", "expr_class_weights": "auto"}
    (stage,) = paper["stages"].values()
    assert stage["epochs"] == 50
    # CosineAnnealingLR(T_max=1e4) stepped every batch (the base code's).
    assert stage["optimizer"] == {"name": "sgd", "learning_rate": 1e-3, "momentum": 0.9,
                                  "schedule": {"name": "cosine_annealing", "t_max": 10000}}
    # The VA loss is the sum of 1 - CCC over valence and arousal (2 x MaskedCCCLoss's mean).
    assert stage["loss_weights"] == {"va": 2.0, "expr": 1.0, "au": 1.0}
    demo = presets.run_presets(NAME)["cpu_demo"]
    assert demo["stages"]["mtl"]["optimizer"]["name"] == "adam"
    assert demo["stages"]["mtl"]["epochs"] == 12

    model = AffectModel.from_preset(NAME)
    assert model.get_layer("normalization").__class__ is keras.layers.Rescaling  # [-1, 1]
    assert tuple(model.backbone.output.shape[1:]) == (17, 17, 768)
    neck = model.get_layer("neck")
    assert tuple(neck.compute_output_shape(neck.input.shape)["attention"][1:]) == (17, 17, 17)
    assert model.view == "aligned" and model.schema.edition == "abaw4"


def test_attention_maps_in_unit_range(tmp_path):
    schema = get_schema("abaw3")
    model = tiny_model()
    maps = module.attention_model(model).predict(random_images(4, seed=1), verbose=0)
    assert maps.shape == (4, 4, 4, 17)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    names = module.region_names(schema, 17)
    assert names[:12] == list(schema.aus) and names[12:] == ["AU5", "AU9", "AU14", "AU16", "AU17"]
    path = plots.plot_attention_maps(random_images(4, seed=1), maps, names,
                                     str(tmp_path / "maps.png"))
    assert os.path.getsize(path) > 0
    with pytest.raises(ValueError, match="3 names for 17 maps"):
        plots.plot_attention_maps(random_images(4), maps, names[:3], str(tmp_path / "bad.png"))
    other = AffectModel(schema="abaw3", image_size=32, normalization=None, backbone=TINY_BACKBONE,
                        neck={"type": "avg"})
    with pytest.raises(ValueError, match="RegionTokenNeck"):
        module.attention_model(other)


def test_loss_weights_match_numpy(demo_root, tmp_path):
    schema = get_schema("abaw3")
    labels = label_arrays(FrameIndex.from_mtl(demo_root, schema, "train"), ("va", "expr", "au"))
    # Hand computation: negatives / positives per AU; largest count / count per class.
    expected_pos = []
    for column in labels["au"].T:
        positives, negatives = np.sum(column == 1), np.sum(column == 0)
        expected_pos.append(negatives / positives if positives and negatives else 1.0)
    counts = np.array([np.sum(labels["expr"] == c) for c in range(8)], dtype=float)
    expected_class = [counts.max() / c if c else 1.0 for c in counts]

    recipe = Recipe(tiny_config(), demo_root, str(tmp_path / "run"))
    built = recipe.build_losses("mtl", labels)
    np.testing.assert_allclose(built["au"].pos_weights, expected_pos, rtol=1e-12)
    np.testing.assert_allclose(built["expr"].class_weights, expected_class, rtol=1e-12)
    assert min(built["expr"].class_weights) == 1.0
    assert isinstance(built["va"], losses.MaskedCCCLoss)

    assert losses.au_positive_weights([[1, 0], [0, -1], [0, 1], [-1, 1]]) == [2.0, 0.5]
    assert losses.expr_class_weights([0, 0, 0, 1, -1, 2, 2], 4) == [1.0, 3.0, 1.5, 1.0]
    plain = Recipe(tiny_config("losses.au_pos_weights=null", "losses.expr_class_weights=null"),
                   demo_root, str(tmp_path / "plain")).build_losses("mtl", labels)
    assert plain["au"].pos_weights is None and plain["expr"].class_weights is None
    with pytest.raises(ValueError, match="expected 12"):
        Recipe(tiny_config("losses.au_pos_weights=[1.0]"), demo_root,
               str(tmp_path / "bad")).build_losses("mtl", labels)


def test_view_names(demo_root, tmp_path):
    """`cropped_aligned` (the Aff-Wild2 folder, the old script's name) is the `aligned` view."""
    for given, view in (("cropped_aligned", "aligned"), ("aligned", "aligned"),
                        ("cropped", "cropped")):
        recipe = Recipe(tiny_config(f"model.view={given}"), demo_root, str(tmp_path))
        assert recipe.model_config["view"] == view


def test_model_file_backbone(demo_root, tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    classifier = keras.Model(inputs, keras.layers.Dense(7, name="logits")(x), name="face_net")
    path = str(tmp_path / "face_net.keras")
    classifier.save(path)

    sets = [f"backbone_file={path}", "backbone_layer=features", "model.normalization=null"]
    model = Recipe(tiny_config(*sets), demo_root, str(tmp_path / "run")).build_model()
    outputs = model.predict(random_images(2, seed=4), verbose=0)
    assert outputs["au"].shape == (2, 12) and outputs["expr"].shape == (2, 8)
    assert tuple(module.attention_model(model).output.shape[1:]) == (8, 8, 17)
    np.testing.assert_array_equal(model.backbone.get_layer("features").get_weights()[0],
                                  classifier.get_layer("features").get_weights()[0])
    # The cut model travels inside model.keras (its config and weights), not as a path.
    model.save(str(tmp_path / "model.keras"))
    os.remove(path)
    reloaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    images = random_images(2, seed=5)
    for task, value in model.predict(images, verbose=0).items():
        np.testing.assert_allclose(reloaded.predict(images, verbose=0)[task], value, atol=1e-6)
    classifier.save(path)

    with pytest.raises(ValueError, match="one feature map"):
        Recipe(tiny_config(*sets[:1], "backbone_layer=pool", "model.normalization=null"),
               demo_root, str(tmp_path / "pool")).build_model()
    with pytest.raises(ValueError, match="model.normalization"):
        Recipe(tiny_config(*sets[:2], "model.normalization=backbone"), demo_root,
               str(tmp_path / "norm")).build_model()


def test_two_views_and_their_ensemble(demo_root, tmp_path):
    """One epoch per view (the cropped view missing some images of its own), then
    `ensembles.ensemble` of the two runs, scored on the official MTL file."""
    schema = get_schema("abaw3")
    data = str(tmp_path / "data")
    shutil.copytree(demo_root, data)
    val = FrameIndex.from_mtl(data, schema, "val")
    folder = os.path.join(data, "cropped", val.frames["video"].iloc[0])
    for file_name in sorted(os.listdir(folder))[2:5]:
        os.remove(os.path.join(folder, file_name))

    runs = {}
    for view, maps in (("aligned", 3), ("cropped", 0)):
        out = str(tmp_path / view)
        report = Recipe(tiny_config(f"model.view={view}", f"attention_maps={maps}"), data, out,
                        preset="cpu_demo").run()
        runs[view] = out
        model = keras.saving.load_model(os.path.join(out, "model.keras"))
        assert label_schema(model).edition == "abaw3" and model.view == view
        saved = json.load(open(os.path.join(out, "metrics.json")))
        for key in ("va_score", "expr_f1", "au_f1", "score"):
            assert np.isfinite(saved["validation"][key])
        assert set(saved["chance_baselines"]) == {"va", "expr", "au", "mtl"}
        assert set(saved["official"]) == {"mtl"} and saved["official"] == report["official"]
        assert len(saved["loss_weights"]["au_pos_weights"]) == 12
        config = json.load(open(os.path.join(out, "config.json")))
        assert config["config"]["model"]["view"] == view
        frames, _ = read_predictions(os.path.join(out, VALIDATION_FILE), schema)
        assert len(frames) == len(val.frames)  # every annotated frame, images or not
        history = pd.read_csv(os.path.join(out, "history.csv"))
        assert list(history["stage"]) == ["mtl"]
        assert os.path.exists(os.path.join(out, "predictions", "mtl_submission.txt"))
    assert os.path.getsize(os.path.join(runs["aligned"], "attention_maps.png")) > 0
    assert not os.path.exists(os.path.join(runs["cropped"], "attention_maps.png"))

    out = str(tmp_path / "ensemble")
    report = ensembles.ensemble([runs["aligned"], runs["cropped"]], out, method="average")
    assert os.path.exists(os.path.join(out, "predictions", "mtl_submission.txt"))
    # Hand computation: the two runs' validation outputs averaged, scored by the ABAW metrics.
    members = [read_predictions(os.path.join(runs[v], VALIDATION_FILE), schema)[1]
               for v in ("aligned", "cropped")]
    averaged = {t: (np.asarray(members[0][t], np.float64) + members[1][t]) / 2
                for t in ("va", "expr", "au")}
    every_frame = FrameIndex.from_mtl(data, schema, "val", fill_missing_images=True)
    labels = label_arrays(every_frame, ("va", "expr", "au"), missing_images="fill")
    expected = metrics.abaw_scores("mtl", schema, labels, averaged)
    np.testing.assert_allclose(report["ensemble"]["mtl"]["score"], expected["score"], atol=1e-4)


@pytest.mark.slow
def test_cpu_demo_beats_every_chance_baseline(default_demo_root, tmp_path):
    """The cpu_demo preset, aligned view, on the default demo data (minutes)."""
    config = presets.resolve(NAME, "cpu_demo", sets=["attention_maps=0"])
    report = Recipe(config, default_demo_root, str(tmp_path / "run"), preset="cpu_demo").run()
    for task in ("va", "expr", "au"):
        model, chance = report["validation"][f"{task}_score"], report["chance_baselines"][task]["score"]
        assert model > chance + 0.05, (task, model, chance)
