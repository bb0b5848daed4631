"""Bottleneck ResNet family (ResNet-50, SENet-50, ResNeXt-50, ResNeXt-50 + CBAM)."""

import keras
import numpy as np
import pytest

from affectkit.models.backbones import blocks, senet
from affectkit.models.layers.channel_pooling import ChannelPooling
from tests.keras_checks import assert_reloads_in_fresh_process, check_layer

# Tiny stand-ins for every preset: one block per stage, a few channels, 32x32 input.
TINY = {"depths": (1, 1, 1, 1), "stem_width": 8, "widths": (16, 32, 64, 128),
        "bottleneck_widths": (8, 16, 32, 64)}
TINY_GROUPS = {"resnet50": 1, "senet50": 1, "resnext50": 4, "resnext50_cbam": 4}

# Parameters with the 1000-class head at 224x224, as published (REFERENCE.md section 5;
# Woo et al. 2018 Table 4 for ResNeXt-50 + CBAM).
PAPER_PARAMS = {"resnet50": 25.6e6, "senet50": 28.1e6, "resnext50": 25.0e6,
                "resnext50_cbam": 27.56e6}


def _tiny(name, **overrides):
    return {**TINY, "groups": TINY_GROUPS[name], **overrides}


def _run(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name", sorted(senet.PRESETS))
def test_tiny_preset_shapes_and_fit(name):
    model = senet.build_preset(name, input_shape=(48, 48, 3), **_tiny(name))
    assert model.name == name
    # 48 -> stem 24 -> pool 12 -> stages 12, 6, 3, 2
    assert model.output_shape == (None, 2, 2, 128)
    x = np.random.default_rng(0).normal(size=(4, 48, 48, 3)).astype("float32")
    assert tuple(model(x).shape) == (4, 2, 2, 128)

    classifier = senet.build_preset(name, input_shape=(48, 48, 3), include_top=True,
                                    num_classes=5, **_tiny(name))
    assert classifier.output_shape == (None, 5)
    classifier.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = classifier.fit(x, np.arange(4) % 5, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    probs = keras.ops.convert_to_numpy(classifier(x))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling_gives_vector(pooling):
    model = senet.build_preset("senet50", input_shape=(32, 32, 3), pooling=pooling,
                               **_tiny("senet50"))
    assert model.output_shape == (None, 128)


@pytest.mark.parametrize("name", sorted(senet.PRESETS))
@pytest.mark.parametrize("include_top", [False, True])
def test_count_params_equals_real_build(name, include_top):
    config = _tiny(name, num_classes=7)
    model = senet.build_preset(name, input_shape=(32, 32, 3), include_top=include_top, **config)
    assert senet.count_params(name, input_shape=(32, 32, 3), include_top=include_top,
                              **config) == model.count_params()
    assert senet.count_params(name, input_shape=(32, 32, 3), include_top=include_top,
                              trainable_only=True, **config) == _trainable(model)


@pytest.mark.parametrize("name", sorted(senet.PRESETS))
def test_full_size_param_counts_match_papers(name):
    counted = senet.count_params(name, input_shape=(224, 224, 3), include_top=True,
                                 trainable_only=True)
    assert abs(counted / PAPER_PARAMS[name] - 1) < 0.01, counted


def test_full_size_senet50_build_matches_count_and_mtanet_map():
    model = senet.build_preset("senet50", input_shape=(224, 224, 3), include_top=True)
    assert _trainable(model) == senet.count_params("senet50", trainable_only=True) == 28088024
    assert model.count_params() == senet.count_params("senet50")
    # MTANet: 112x112 aligned faces -> 4x4x2048 (REFERENCE.md section 4).
    backbone = senet.bottleneck_resnet(input_shape=(112, 112, 3))
    assert backbone.output_shape == (None, 4, 4, 2048)


def test_stride_in_1x1_keeps_shapes_and_moves_stride():
    default = senet.build_preset("senet50", input_shape=(32, 32, 3), **_tiny("senet50"))
    caffe = senet.build_preset("senet50", input_shape=(32, 32, 3), stride_in_1x1=True,
                               **_tiny("senet50"))
    assert caffe.output_shape == default.output_shape
    assert default.get_layer("stage3_block1_conv2").strides == (2, 2)
    assert caffe.get_layer("stage3_block1_conv1").strides == (2, 2)
    assert caffe.get_layer("stage3_block1_conv2").strides == (1, 1)


def test_stable_layer_names():
    model = senet.build_preset("resnext50_cbam", input_shape=(32, 32, 3),
                               **_tiny("resnext50_cbam"))
    names = {layer.name for layer in model.layers}
    for expected in ["stem_conv", "stem_bn", "stage2_block1_conv1", "stage2_block1_conv2",
                     "stage5_block1_shortcut_conv", "stage4_block1_cbam_channel_reduce",
                     "stage4_block1_cbam_spatial_conv", "stage5_block1_out"]:
        assert expected in names
    assert model.get_layer("stage2_block1_conv2").groups == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [({"groups": 3}, "divisible"), ({"attention": "eca"}, "attention"),
     ({"pooling": "sum"}, "pooling"), ({"depths": (1, 1)}, "one entry per stage")],
)
def test_bad_hyperparameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        senet.bottleneck_resnet(input_shape=(32, 32, 3), **{**TINY, **kwargs})
    with pytest.raises(ValueError, match="Unknown preset"):
        senet.build_preset("senet101")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_squeeze_excitation_matches_numpy():
    inputs = keras.Input((5, 6, 32))
    model = keras.Model(inputs, blocks.squeeze_excitation(inputs, squeeze_channels=4, name="se"))
    x = np.random.default_rng(1).normal(size=(2, 5, 6, 32)).astype("float32")
    w1, b1 = model.get_layer("se_reduce").get_weights()
    w2, b2 = model.get_layer("se_expand").get_weights()
    assert w1.shape == (32, 4)
    s = x.mean(axis=(1, 2))
    s = _sigmoid(np.maximum(s @ w1 + b1, 0) @ w2 + b2)
    np.testing.assert_allclose(_run(model, x), x * s[:, None, None, :],
                               rtol=1e-4, atol=1e-5)


def test_cbam_matches_numpy():
    inputs = keras.Input((6, 7, 32))
    model = keras.Model(
        inputs, senet.convolutional_block_attention(inputs, ratio=16, kernel_size=3, name="cbam")
    )
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 7, 32)).astype("float32")
    bn = model.get_layer("cbam_spatial_bn")
    gamma, beta, mean, var = [rng.uniform(0.5, 1.5, size=(1,)).astype("float32")
                              for _ in range(4)]
    bn.set_weights([gamma, beta, mean, var])
    w1, b1 = model.get_layer("cbam_channel_reduce").get_weights()
    w2, b2 = model.get_layer("cbam_channel_expand").get_weights()
    (kernel,) = model.get_layer("cbam_spatial_conv").get_weights()

    def mlp(v):
        return np.maximum(v @ w1 + b1, 0) @ w2 + b2

    channel = _sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    y = x * channel[:, None, None, :]
    descriptor = np.stack([y.max(axis=-1), y.mean(axis=-1)], axis=-1)  # authors' order
    padded = np.pad(descriptor, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros(y.shape[:3])
    for di in range(3):
        for dj in range(3):
            conv += padded[:, di:di + 6, dj:dj + 7, :] @ kernel[di, dj, :, 0]
    spatial = _sigmoid(gamma * (conv - mean) / np.sqrt(var + 1e-5) + beta)
    np.testing.assert_allclose(_run(model, x), y * spatial[..., None],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
@pytest.mark.parametrize("statistics", [("mean", "max"), ("max", "mean"), ("max",)])
def test_channel_pooling_layer(statistics):
    x = np.random.default_rng(3).normal(size=(2, 4, 5, 6)).astype("float32")
    out = check_layer(ChannelPooling, {"statistics": statistics}, x,
                      expected_output_shape=(2, 4, 5, len(statistics)))
    reference = {"mean": x.mean(axis=-1), "max": x.max(axis=-1)}
    np.testing.assert_allclose(out, np.stack([reference[s] for s in statistics], axis=-1),
                               rtol=1e-6, atol=1e-6)


def test_channel_pooling_rejects_unknown_statistic():
    with pytest.raises(ValueError, match="statistics"):
        ChannelPooling(statistics=("median",))


def test_tiny_cbam_model_reloads_in_fresh_process(tmp_path):
    model = senet.build_preset("resnext50_cbam", input_shape=(32, 32, 3), include_top=True,
                               num_classes=3, **_tiny("resnext50_cbam"))
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    assert_reloads_in_fresh_process(model, x, tmp_path)


def _pair(**kwargs):
    """Two independently initialised tiny SE models of the same configuration."""
    config = {"input_shape": (32, 32, 3), **_tiny("senet50"), **kwargs}
    return senet.build_preset("senet50", **config), config


def test_weights_file_loads_into_new_instance(tmp_path):
    source, config = _pair()
    path = tmp_path / "senet.weights.h5"
    source.save_weights(path)
    loaded = senet.build_preset("senet50", weights=str(path), **config)
    fresh = senet.build_preset("senet50", **config)
    x = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype("float32")
    expected = _run(source, x)
    np.testing.assert_allclose(_run(loaded, x), expected, atol=1e-6)
    assert not np.allclose(_run(fresh, x), expected, atol=1e-3)


def test_legacy_h5_loads_by_layer_name(tmp_path):
    source, config = _pair(include_top=True, num_classes=4)
    path = tmp_path / "legacy.h5"
    source.save(path)  # legacy HDF5 format (Keras logs a warning)
    # A backbone without the classifier takes the shared layers by name, and the output
    # of the shared layers matches.
    backbone = senet.build_preset("senet50", weights=str(path), **_tiny("senet50"),
                                  input_shape=(32, 32, 3), pooling="avg")
    x = np.random.default_rng(6).normal(size=(2, 32, 32, 3)).astype("float32")
    features = keras.Model(source.input, source.get_layer("avg_pool").output)
    np.testing.assert_allclose(_run(backbone, x),
                               _run(features, x), atol=1e-6)


def test_missing_or_unsupported_weights_file_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.weights.h5.*does not exist"):
        senet.build_preset("senet50", weights=str(tmp_path / "nope.weights.h5"),
                           input_shape=(32, 32, 3), **_tiny("senet50"))
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\0")
    with pytest.raises(ValueError, match="weights.pt"):
        senet.build_preset("senet50", weights=str(bad), input_shape=(32, 32, 3),
                           **_tiny("senet50"))
