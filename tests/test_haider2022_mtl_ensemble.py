"""Haider et al. 2022 (haider2022_mtl_ensemble): tiny model, attention maps, safe-mode reload,
loss weights, ensemble averaging, end-to-end recipe run, model-file backbone."""

import copy
import json
import os

import keras
import numpy as np
import pytest

from affectkit import losses as affect_losses
from affectkit import metrics
from affectkit.data.pipeline import label_arrays
from affectkit.labels import get_schema
from tests.keras_checks import assert_reloads_in_fresh_process
from recipes import haider2022_mtl_ensemble

TINY_BACKBONE = {"depths": (1, 1), "stem_width": 8, "widths": (16, 32),
                 "bottleneck_widths": (4, 8)}


@pytest.fixture(scope="module")
def recipe():
    return haider2022_mtl_ensemble


def tiny_config(recipe, **overrides):
    """32 px, a 2-stage bottleneck ResNet (4x4x32 map), the paper's region attention and
    transformer widths with a small feed-forward layer."""
    config = copy.deepcopy(recipe.PRESETS["cpu_demo"])
    config.update(image_size=32, backbone_config=TINY_BACKBONE, transformer_mlp_dim=32,
                  batch_size=16, epochs=1, augment=False, attention_maps=3, backup_every=4)
    config.update(overrides)
    return config


def random_images(count, size=32, seed=0):
    return np.random.default_rng(seed).random((count, size, size, 3)).astype("float32")


def test_tiny_model_outputs(recipe):
    schema = get_schema("abaw3")
    model = recipe.build_model(tiny_config(recipe), schema)
    outputs = model.predict(random_images(3), verbose=0)
    assert set(outputs) == {"va", "expr", "au"}
    assert outputs["va"].shape == (3, 2)
    assert outputs["expr"].shape == (3, 8)
    np.testing.assert_allclose(outputs["expr"].sum(-1), 1.0, rtol=1e-5)
    assert outputs["au"].shape == (3, 12)
    assert ((outputs["au"] >= 0) & (outputs["au"] <= 1)).all()
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    # The paper's shapes: 17 regions of 16-wide tokens, one encoder layer of 8 heads.
    tokens, maps = model.get_layer("region_attention").output
    assert tuple(tokens.shape[1:]) == (17, 16)
    assert tuple(maps.shape[1:]) == (4, 4, 17)
    transformer = model.get_layer("region_transformer")
    assert (transformer.num_layers, transformer.num_heads, transformer.head_dim) == (1, 8, 2)
    assert transformer.activation == "gelu" and transformer.positional_encoding
    assert transformer.positional_dropout == 0.3
    # One classifier (weight vector and bias) per labelled AU token.
    assert tuple(model.get_layer("au").kernel.shape) == (12, 16)


def test_paper_preset_shapes(recipe):
    """InceptionV3 cut at mixed7 gives the 17x17x768 map at 299 (built, not run)."""
    config = recipe.PRESETS["paper"]
    assert (config["image_size"], config["batch_size"], config["epochs"]) == (299, 24, 50)
    assert (config["learning_rate"], config["momentum"]) == (1e-3, 0.9)
    model = recipe.build_model(config, "abaw4")
    backbone = model.get_layer("inception_v3_mixed7")
    assert tuple(backbone.output.shape[1:]) == (17, 17, 768)
    assert tuple(model.get_layer("region_attention").output[1].shape[1:]) == (17, 17, 17)


def test_attention_maps_in_unit_range(recipe, tmp_path):
    schema = get_schema("abaw3")
    model = recipe.build_model(tiny_config(recipe), schema)
    images = random_images(4, seed=1)
    maps = recipe.attention_model(model).predict(images, verbose=0)
    assert maps.shape == (4, 4, 4, 17)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    names = recipe.region_names(schema, 17)
    assert names[:12] == list(schema.aus) and names[12:] == ["AU5", "AU9", "AU14", "AU16", "AU17"]
    path = recipe.plot_attention_maps(images, maps, names, str(tmp_path / "maps.png"))
    assert os.path.getsize(path) > 0


def test_fresh_process_safe_mode_reload(recipe, tmp_path):
    model = recipe.build_model(tiny_config(recipe), "abaw3")
    assert_reloads_in_fresh_process(model, random_images(3, seed=2), tmp_path)


def test_loss_weights_match_numpy(recipe, demo_root):
    schema = get_schema("abaw3")
    index = recipe.load_index(demo_root, schema, "train")
    labels = label_arrays(index, ("va", "expr", "au"))
    # Hand computation: negatives / positives per AU; largest count / count per class.
    expected_pos = []
    for column in labels["au"].T:
        positives, negatives = np.sum(column == 1), np.sum(column == 0)
        expected_pos.append(negatives / positives if positives and negatives else 1.0)
    counts = np.array([np.sum(labels["expr"] == c) for c in range(8)], dtype=float)
    expected_class = [counts.max() / c if c else 1.0 for c in counts]

    weights = affect_losses.resolve_loss_weights(recipe.PRESETS["paper"], labels, schema)
    np.testing.assert_allclose(weights["au_pos_weights"], expected_pos, rtol=1e-12)
    np.testing.assert_allclose(weights["expr_class_weights"], expected_class, rtol=1e-12)
    assert min(weights["expr_class_weights"]) == 1.0

    assert affect_losses.au_positive_weights([[1, 0], [0, -1], [0, 1], [-1, 1]]) == [2.0, 0.5]
    assert affect_losses.expr_class_weights([0, 0, 0, 1, -1, 2, 2], 4) == [1.0, 3.0, 1.5, 1.0]
    unweighted = affect_losses.resolve_loss_weights(
        dict(recipe.PRESETS["paper"], au_pos_weights=None, expr_class_weights=None), labels, schema)
    assert unweighted == {"au_pos_weights": None, "expr_class_weights": None}
    with pytest.raises(ValueError, match="expected 12"):
        affect_losses.resolve_loss_weights(dict(recipe.PRESETS["paper"], au_pos_weights=[1.0]),
                                    labels, schema)

    losses = recipe.build_losses(**weights)
    assert losses["au"].pos_weights == weights["au_pos_weights"]
    assert losses["expr"].class_weights == weights["expr_class_weights"]
    # The VA loss is the sum of 1 - CCC over valence and arousal (2 x the mean).
    assert recipe.LOSS_WEIGHTS["va"] == 2.0


def test_ensemble_average_matches_hand_computation(recipe):
    rng = np.random.default_rng(3)
    first = {"va": rng.uniform(-1, 1, (5, 2)), "expr": rng.dirichlet(np.ones(8), 5),
             "au": rng.random((5, 12))}
    second = {"va": rng.uniform(-1, 1, (5, 2)), "expr": rng.dirichlet(np.ones(8), 5),
              "au": rng.random((5, 12))}
    averaged = recipe.ensemble_outputs([first, second])
    for task in ("va", "expr", "au"):
        np.testing.assert_allclose(averaged[task], (first[task] + second[task]) / 2)
    with pytest.raises(ValueError, match="same frames"):
        recipe.ensemble_outputs([first, {**second, "au": second["au"][:3]}])


def test_recipe_end_to_end_and_two_view_ensemble(recipe, demo_root, tmp_path):
    schema = get_schema("abaw3")
    out = str(tmp_path / "aligned")
    report = recipe.train(tiny_config(recipe, view="cropped_aligned"), demo_root, out)
    for name in ("model.keras", "metrics.json", "history.csv", "learning_curves.png",
                 "confusion_matrix.png", "au_f1.png", "va.png", "attention_maps.png"):
        assert os.path.exists(os.path.join(out, name)), name
    saved = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("va_valence", "va_arousal", "va_score", "expr_f1", "au_f1", "score"):
        assert key in saved["validation"]
    assert saved["config"]["view"] == "cropped_aligned"
    assert set(saved["chance_baselines"]) == {"va", "expr", "au", "mtl"}
    # The demo data has MTL files: the official MTL submission file is written and scored,
    # and scores as the in-memory validation (same frames, those with images).
    assert os.path.exists(os.path.join(out, "predictions", "mtl_submission.txt"))
    np.testing.assert_allclose(report["official"]["mtl"]["score"],
                               report["validation"]["score"], atol=1e-3)

    # A second "run" of the same model on the other view, then the two-view ensemble.
    other = tmp_path / "cropped"
    other.mkdir()
    os.link(os.path.join(out, "model.keras"), other / "model.keras")
    saved["config"]["view"] = "cropped"
    json.dump(saved, open(other / "metrics.json", "w"))
    ensemble_dir = str(tmp_path / "ensemble")
    ensemble = recipe.evaluate_ensemble([out, str(other)], demo_root, ensemble_dir)

    model, config = recipe.load_run(out)
    index = recipe.load_index(demo_root, schema, "val")
    labels = label_arrays(index, ("va", "expr", "au"))
    by_view = [model.predict(recipe._dataset(index, dict(config, view=view)), verbose=0)
               for view in ("cropped_aligned", "cropped")]
    hand = {t: (np.asarray(by_view[0][t], np.float64) + by_view[1][t]) / 2
            for t in ("va", "expr", "au")}
    expected = metrics.abaw_scores("mtl", schema, labels, hand)
    np.testing.assert_allclose(ensemble["ensemble"]["score"], expected["score"], atol=1e-6)
    assert ensemble["members"][out]["view"] == "cropped_aligned"
    assert os.path.exists(os.path.join(ensemble_dir, "metrics.json"))
    assert os.path.exists(os.path.join(ensemble_dir, "predictions", "mtl_submission.txt"))


def test_model_file_backbone(recipe, tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    classifier = keras.Model(inputs, keras.layers.Dense(7, name="logits")(x), name="face_net")
    path = str(tmp_path / "face_net.keras")
    classifier.save(path)

    config = tiny_config(recipe, backbone_file=path, backbone_layer="features",
                         input_normalization="unit")
    model = recipe.build_model(config, "abaw3")
    outputs = model.predict(random_images(2, seed=4), verbose=0)
    assert outputs["au"].shape == (2, 12) and outputs["expr"].shape == (2, 8)
    assert tuple(model.get_layer("region_attention").output[1].shape[1:]) == (8, 8, 17)
    backbone = model.get_layer("face_net_features")
    np.testing.assert_array_equal(backbone.get_layer("features").get_weights()[0],
                                  classifier.get_layer("features").get_weights()[0])

    with pytest.raises(ValueError, match="one feature map"):
        recipe.build_model(dict(config, backbone_layer="pool"), "abaw3")


def test_help_and_bad_view(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--help"])
    assert exit_info.value.code == 0
    assert "--ensemble" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cropped_aligned"):
        recipe._view({"view": "aligned"})


@pytest.mark.slow
def test_cpu_demo_beats_every_chance_baseline(default_demo_root, tmp_path):
    """The cpu_demo preset, aligned view, on the default demo data (minutes)."""
    recipe = haider2022_mtl_ensemble
    config = dict(copy.deepcopy(recipe.PRESETS["cpu_demo"]), view="cropped_aligned",
                  attention_maps=0)
    report = recipe.train(config, default_demo_root, str(tmp_path / "run"))
    for task in ("va", "expr", "au"):
        model, chance = report["validation"][f"{task}_score"], report["chance_baselines"][task]["score"]
        assert model > chance + 0.05, (task, model, chance)
