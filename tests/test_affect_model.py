"""AffectModel and its paper presets: every preset builds at tiny size, trains a step and
reloads in a fresh process in safe mode with its label schema; the blocks it composes
against NumPy references."""

import json

import keras
import numpy as np
import pytest

from affectkit import losses, presets
from affectkit.models.affect_model import AffectModel, label_schema
from affectkit.models.layers.frames import FoldFrames, UnfoldFrames
from affectkit.models.layers.heads import MLPHead, PerTokenClassifier
from affectkit.models.layers.necks import AvgMaxNeck, RegionTokenNeck
from affectkit.models.layers.temporal import ConcatAttentionTransformer, StatBiLSTMFusion
from affectkit.training.multitask_model import MultiTaskModel
from tests.keras_checks import assert_reloads_in_fresh_process, check_layer, check_serialization

RNG = np.random.default_rng(0)
TINY_RESNET = {"depths": [1, 1], "stem_width": 8, "widths": [16, 32], "bottleneck_widths": [4, 8]}
TINY_REGNET = {"depths": [1, 1, 1, 1], "widths": [8, 16, 24, 32], "group_width": 8,
               "stem_width": 8}

# Every paper preset at tiny size (widths of a few channels, 32 px).
TINY = {
    "zhang2020_mtanet": dict(image_size=32, backbone=TINY_RESNET, neck={"width": 8}),
    "haider2022_mtl_ensemble": dict(
        image_size=32, backbone={"name": "resnet50", **TINY_RESNET},
        neck={"stem_channels": 8, "transformer_mlp_dim": 16}),
    "phan2022_regnet_transformer": dict(
        image_size=32, sequence_length=3, backbone=TINY_REGNET,
        temporal={"attention_head_dim": 4, "transformer_head_dim": 4, "transformer_mlp_dim": 8}),
    "do2020_stat_temporal": dict(
        feature_inputs={"feature": [16], "probabilities": [4, 7]}, temporal={"lstm_units": 4},
        heads={"expr": {"hidden_units": [8, 8]}, "va": {"hidden_units": [8]},
               "va_vector": {"hidden_units": [8]}}),
    "liu2023_multimodal_ensemble": dict(
        feature_inputs={"features": [5, 12]}, neck={"units": 8},
        temporal={"num_layers": 1, "num_heads": 2, "head_dim": 4, "mlp_dim": 8},
        heads={"expr": {"hidden_units": [8]}}),
}
LIU_LSTM = dict(TINY["liu2023_multimodal_ensemble"], temporal={"type": "segment_lstm", "units": 6})


def _inputs(model, batch=2):
    def sample(tensor):
        shape = [batch] + [5 if d is None else d for d in tensor.shape[1:]]
        if tensor.dtype == "bool":
            return np.ones(shape, bool)
        return RNG.random(shape, dtype=np.float32)

    if isinstance(model.input, dict):
        return {name: sample(t) for name, t in model.input.items()}
    return sample(model.input)


def _labels(model, batch=2):
    schema = model.schema
    labels = {}
    for task in model.tasks:
        shape = tuple(model.output[task].shape[1:-1])
        if task in ("va", "va_vector"):
            labels[task] = RNG.uniform(-1, 1, (batch, *shape, 2)).astype(np.float32)
        elif task == "expr":
            labels[task] = RNG.integers(0, schema.num_expressions, (batch, *shape)).astype(np.int32)
        else:
            labels[task] = RNG.integers(0, 2, (batch, *shape, schema.num_aus)).astype(np.float32)
    return labels


def _shapes(model):
    return {name: tuple(tensor.shape) for name, tensor in model.output.items()}


LOSSES = {"va": losses.MaskedCCCLoss, "expr": losses.MaskedCategoricalCrossentropy,
          "au": losses.MaskedBinaryCrossentropy, "va_vector": losses.VAVectorMSE}


@pytest.mark.parametrize("name, overrides", [*TINY.items(), ("liu2023_lstm", LIU_LSTM)])
def test_every_preset_builds_trains_and_reloads(name, overrides, tmp_path):
    preset = "liu2023_multimodal_ensemble" if name == "liu2023_lstm" else name
    model = AffectModel.from_preset(preset, **overrides)
    assert label_schema(model).edition == presets.model_preset(preset)["schema"]
    config = model.get_config()
    json.dumps(config)  # plain JSON
    assert AffectModel.from_config(config).get_config() == config
    assert keras.saving.get_registered_name(AffectModel) == "affectkit>AffectModel"

    x, y = _inputs(model), _labels(model)
    trainer = MultiTaskModel(model, {task: LOSSES[task]() for task in model.tasks})
    trainer.compile(optimizer="adam")
    history = trainer.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    assert_reloads_in_fresh_process(model, x, tmp_path)
    reloaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    assert isinstance(reloaded, AffectModel)
    assert label_schema(reloaded) == model.schema
    assert (reloaded.input_kind, reloaded.view) == (model.input_kind, model.view)


def test_schema_sets_head_sizes_and_the_reloaded_model_says_them(tmp_path):
    model = AffectModel.from_preset("zhang2020_mtanet", schema="abaw3", **TINY["zhang2020_mtanet"])
    assert _shapes(model)["expr"] == (None, 8) and _shapes(model)["au"] == (None, 12)
    path = str(tmp_path / "m.keras")
    model.save(path)
    schema = label_schema(keras.saving.load_model(path))
    assert schema.edition == "abaw3"
    assert schema.expressions[-1] == "Other" and schema.aus[0] == "AU1"


def test_label_schema_of_a_plain_model_is_a_clear_error():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="carries no label schema"):
        label_schema(plain)


def test_preset_overrides_merge_and_a_new_block_type_replaces():
    merged = presets.merge({"neck": {"type": "avg_max", "width": 512, "dropout": 0.5}},
                           {"neck": {"width": 64}})
    assert merged == {"neck": {"type": "avg_max", "width": 64, "dropout": 0.5}}
    replaced = presets.merge({"temporal": {"type": "segment_transformer", "num_layers": 4}},
                             {"temporal": {"type": "segment_lstm", "units": 8}})
    assert replaced == {"temporal": {"type": "segment_lstm", "units": 8}}
    backbone = presets.merge({"backbone": {"name": "inception_v3", "cut": "mixed7"}},
                             {"backbone": {"name": "resnet50"}})
    assert backbone == {"backbone": {"name": "resnet50"}}


def test_build_your_own_model_from_library_parts():
    # A model no paper has: a RegNet over clips, Do et al.'s BiLSTM-free STAT is not for
    # clips, so Liu et al.'s masked transformer over the frames, and all three tasks.
    model = AffectModel(
        schema="abaw3", tasks=("va", "expr", "au"), input_kind="clips", image_size=32,
        sequence_length=4, backbone={"name": "regnety_400mf", **TINY_REGNET},
        neck={"type": "avg"},
        temporal={"type": "segment_transformer", "num_layers": 1, "num_heads": 2,
                  "head_dim": 4, "mlp_dim": 8},
        heads={"expr": {"hidden_units": [8], "dropout": 0.1}},
    )
    assert sorted(model.input) == ["frames", "valid"]
    assert _shapes(model) == {"va": (None, 4, 2), "expr": (None, 4, 8), "au": (None, 4, 12)}


def test_segment_transformer_never_attends_to_padded_frames():
    model = AffectModel.from_preset("liu2023_multimodal_ensemble",
                                    **TINY["liu2023_multimodal_ensemble"])
    x = _inputs(model, batch=1)
    x["valid"] = np.array([[True, True, True, False, False]])
    changed = dict(x, features=x["features"].copy())
    changed["features"][0, 3:] = 100.0  # the padding
    a, b = model.predict(x, verbose=0)["expr"], model.predict(changed, verbose=0)["expr"]
    np.testing.assert_allclose(a[0, :3], b[0, :3], atol=1e-6)
    assert not np.allclose(a[0, 3:], b[0, 3:])


# ----------------------------------------------------------------------------- blocks


def test_avg_max_neck_against_numpy():
    x = RNG.normal(size=(2, 3, 3, 5)).astype(np.float32)
    out = check_layer(AvgMaxNeck, {"width": 4, "dropout": 0.0}, x, (2, 8))
    layer = AvgMaxNeck(width=4, dropout=0.0)
    got = keras.ops.convert_to_numpy(layer(x))
    parts = []
    for conv, pool in ((layer.avg_conv, np.mean), (layer.max_conv, np.max)):
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in conv.weights)
        y = x @ kernel[0, 0] + bias
        parts.append(pool(np.where(y > 0, y, 0.01 * y), axis=(1, 2)))
    np.testing.assert_allclose(got, np.concatenate(parts, -1), rtol=1e-5, atol=1e-6)
    assert out.shape == (2, 8)


def test_mlp_head_against_numpy():
    x = RNG.normal(size=(3, 6)).astype(np.float32)
    check_layer(MLPHead, {"units": 4, "activation": "softmax", "hidden_units": [5],
                          "dropout": 0.2, "input_dropout": 0.1}, x, (3, 4))
    head = MLPHead(4, activation="softmax", hidden_units=[5])
    got = keras.ops.convert_to_numpy(head(x))
    w1, b1 = (keras.ops.convert_to_numpy(w) for w in head.hidden[0].weights)
    w2, b2 = (keras.ops.convert_to_numpy(w) for w in head.output_dense.weights)
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert head.output_dense.compute_dtype == "float32"


def test_per_token_classifier_reads_token_k_for_output_k():
    tokens = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    check_layer(PerTokenClassifier, {"units": 4}, tokens, (2, 4))
    layer = PerTokenClassifier(4)
    got = keras.ops.convert_to_numpy(layer(tokens))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    logits = np.einsum("bkt,kt->bk", tokens[:, :4], kernel) + bias
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one token per output"):
        PerTokenClassifier(6)(tokens)


def test_region_token_neck_outputs():
    x = RNG.normal(size=(2, 4, 4, 6)).astype(np.float32)
    layer = RegionTokenNeck(num_regions=5, stem_channels=4, token_width=4, embed_channels=3,
                            transformer_heads=2, transformer_mlp_dim=8)
    out = layer(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "features": (2, 4), "tokens": (2, 5, 4), "attention": (2, 4, 4, 5)}
    attention = keras.ops.convert_to_numpy(out["attention"])
    assert attention.min() >= 0 and attention.max() <= 1
    check_serialization(layer)
    with pytest.raises(ValueError, match="not divisible"):
        RegionTokenNeck(token_width=6, transformer_heads=4)


def test_stat_bilstm_fusion_layout():
    feature = RNG.normal(size=(2, 5)).astype(np.float32)
    probabilities = RNG.random((2, 4, 3)).astype(np.float32)
    inputs = {"feature": feature, "probabilities": probabilities}
    stat_only = StatBiLSTMFusion(stat=True, lstm=False)
    got = keras.ops.convert_to_numpy(stat_only(inputs))
    expected = np.concatenate([probabilities.max(1), probabilities.min(1), probabilities.mean(1),
                               feature, probabilities[:, -1]], -1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    both = StatBiLSTMFusion(lstm_units=2)
    assert tuple(both(inputs).shape) == (2, 9 + 4 + 5 + 3)
    assert both.compute_output_shape({"feature": (None, 5), "probabilities": (None, 4, 3)}) == \
        (None, 21)
    check_serialization(both)


def test_concat_attention_transformer_keeps_the_features_first():
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    out = check_layer(ConcatAttentionTransformer,
                      {"attention_head_dim": 2, "transformer_head_dim": 2,
                       "transformer_mlp_dim": 8}, x, (2, 3, 12))
    np.testing.assert_allclose(out[..., :4], x, rtol=1e-6)


def test_fold_and_unfold_frames_round_trip():
    clips = RNG.normal(size=(2, 3, 4, 4, 1)).astype(np.float32)
    folded = keras.ops.convert_to_numpy(FoldFrames()(clips))
    np.testing.assert_array_equal(folded, clips.reshape(6, 4, 4, 1))
    back = keras.ops.convert_to_numpy(UnfoldFrames(3)(folded))
    np.testing.assert_array_equal(back, clips)
    check_serialization(FoldFrames())
    assert check_serialization(UnfoldFrames(3))["sequence_length"] == 3
