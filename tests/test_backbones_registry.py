"""The backbone registry: presets by name, their input normalisation and feature widths, and
the shared convolution blocks (`GroupedConv2D` everywhere, PyTorch numerics)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from affectkit.models import backbones
from affectkit.models.backbones import blocks, inception, senet
from tests.keras_checks import check_layer
from tests.test_backbones_regnet_inception import _np_conv as numpy_grouped_conv

# Tiny stand-ins for each family's presets (the preset's other hyperparameters stay).
TINY = {
    "senet": {"depths": (1, 1, 1, 1), "stem_width": 8, "widths": (16, 32, 64, 128),
              "bottleneck_widths": (8, 16, 32, 64)},
    "regnet": {"depths": (1, 1, 1, 1), "widths": (8, 16, 24, 32), "group_width": 8,
               "stem_width": 8},
    "resnet_vggface2": {"depths": (1, 1, 1, 1), "widths": (16, 32, 64, 128), "stem_width": 8},
    "inception": {},
}
SIZES = {"senet": 32, "regnet": 32, "resnet_vggface2": 32, "inception": 75}
EXPECTED_NORMALIZATION = {
    "resnet50": "imagenet", "senet50": "imagenet", "resnext50": "imagenet",
    "resnext50_cbam": "imagenet", "vggface2_resnet50": "vggface2", "inception_v3": "inception",
    **{name: "imagenet" for name in backbones.available_backbones() if name.startswith("regnet")},
}


def _family(name):
    return backbones.BACKBONES[name].__name__.rsplit(".", 1)[-1]


def _tiny(name, **overrides):
    family = _family(name)
    config = dict(TINY[family])
    if name.startswith("resnext"):
        config["groups"] = 4
    return (SIZES[family], SIZES[family], 3), {**config, **overrides}


def _images(size, n=2, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")


# ------------------------------------------------------------------ names and normalisation


def test_every_preset_has_its_documented_normalization():
    assert set(backbones.available_backbones()) == set(EXPECTED_NORMALIZATION)
    for name, kind in EXPECTED_NORMALIZATION.items():
        assert backbones.backbone_normalization(name) == kind, name
    with pytest.raises(ValueError, match="Unknown backbone 'senet101'"):
        backbones.backbone_normalization("senet101")
    with pytest.raises(ValueError, match="Unknown backbone"):
        backbones.build_backbone("senet101", (32, 32, 3))


def test_normalization_layers_match_numpy():
    x = _images(4, seed=1)
    rgb_mean, rgb_std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = {
        "imagenet": (x - rgb_mean) / rgb_std,
        "inception": 2.0 * x - 1.0,
        "vggface2": x[..., ::-1] * 255.0 - np.array([91.4953, 103.8827, 131.0912]),
    }
    names = {"imagenet": "imagenet_normalization", "inception": "inception_rescaling",
             "vggface2": "vggface2_preprocessing"}
    for kind, reference in expected.items():
        layer = backbones.normalization_layer(kind)
        assert layer.name == names[kind]
        out = keras.ops.convert_to_numpy(layer(x))
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-4)
    assert backbones.normalization_layer("imagenet", name="norm").name == "norm"
    assert backbones.normalization_layer(None) is None
    with pytest.raises(ValueError, match="kind"):
        backbones.normalization_layer("caffe")


def test_normalized_backbone_reloads_without_custom_code(tmp_path):
    """A model with each normalisation layer in front of a backbone saves and loads."""
    inputs = keras.Input((32, 32, 3))
    x = backbones.normalization_layer("vggface2")(inputs)
    x = backbones.build_backbone("vggface2_resnet50", (32, 32, 3), pooling="avg",
                                 **TINY["resnet_vggface2"])(x)
    model = keras.Model(inputs, x)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _images(32, seed=2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), atol=1e-5)


# --------------------------------------------------------------------------- feature widths


@pytest.mark.parametrize("name", [n for n in backbones.available_backbones()
                                  if n != "inception_v3"])
def test_feature_width_equals_built_output_width(name):
    input_shape, config = _tiny(name)
    width = backbones.backbone_feature_width(name, **config)
    feature_map = backbones.build_backbone(name, input_shape, **config)
    assert len(feature_map.output_shape) == 4
    assert feature_map.output_shape[-1] == width
    assert feature_map.name == name
    classifier = backbones.build_backbone(name, input_shape, include_top=True, num_classes=5,
                                          **config)
    assert backbones.backbone_feature_width(name, include_top=True, num_classes=5, **config) \
        == classifier.output_shape[-1] == 5


def test_full_size_feature_widths():
    assert backbones.backbone_feature_width("regnety_1.6gf") == 888
    assert backbones.backbone_feature_width("inception_v3") == 768
    for name in ("resnet50", "senet50", "resnext50", "resnext50_cbam", "vggface2_resnet50"):
        assert backbones.backbone_feature_width(name) == 2048


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("name", ["resnext50_cbam", "regnety_1.6gf", "vggface2_resnet50"])
def test_pooling_gives_a_vector_of_the_feature_width(name, pooling):
    input_shape, config = _tiny(name)
    model = backbones.build_backbone(name, input_shape, pooling=pooling, **config)
    assert model.output_shape == (None, backbones.backbone_feature_width(name, **config))
    feature_map = backbones.build_backbone(name, input_shape, **config)
    feature_map.set_weights(model.get_weights())
    x = _images(input_shape[0], seed=3)
    reduce = np.mean if pooling == "avg" else np.max
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),
                               reduce(keras.ops.convert_to_numpy(feature_map(x)), axis=(1, 2)),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        backbones.build_backbone(name, input_shape, pooling="sum", **config)


def test_inception_widths_at_every_block_and_pooling():
    """One InceptionV3 build at 75x75: `BLOCK_WIDTHS` against every mixed block's output, and
    the preset with `pooling`."""
    base = keras.applications.InceptionV3(include_top=False, weights=None,
                                          input_shape=(75, 75, 3))
    for cut in [f"mixed{i}" for i in range(11)]:
        assert backbones.backbone_feature_width("inception_v3", cut=cut) == \
            base.get_layer(cut).output.shape[-1], cut
    assert backbones.backbone_feature_width("inception_v3", cut=None) == base.output_shape[-1]
    with pytest.raises(ValueError, match="inception blocks"):
        backbones.backbone_feature_width("inception_v3", cut="conv2d_5")

    model = backbones.build_backbone("inception_v3", (75, 75, 3), pooling="avg")
    assert model.name == "inception_v3_mixed7"
    assert model.output_shape == (None, 768)
    assert model.layers[-2].name == "mixed7" and model.layers[-1].name == "avg_pool"


def test_inception_pooled_model_loads_keras3_weights_of_the_cut(tmp_path):
    cut = inception.inception_v3_features((75, 75, 3))
    path = str(tmp_path / "mixed7.weights.h5")
    cut.save_weights(path)
    pooled = inception.inception_v3_features((75, 75, 3), weights=path, pooling="max")
    x = 2.0 * _images(75, seed=4) - 1.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled(x)),
                               keras.ops.convert_to_numpy(cut(x)).max(axis=(1, 2)),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- convolutions everywhere


@pytest.mark.parametrize("name", ["resnet50", "senet50", "resnext50", "resnext50_cbam",
                                  "regnety_1.6gf", "regnetx_400mf", "vggface2_resnet50"])
def test_every_convolution_is_a_grouped_conv2d(name):
    input_shape, config = _tiny(name)
    model = backbones.build_backbone(name, input_shape, **config)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions
    assert all(type(layer) is blocks.GroupedConv2D for layer in convolutions)
    assert not any(layer.use_bias for layer in convolutions)


def test_resnext_grouped_convolutions_run_natively():
    """ResNeXt's grouped 3x3 convolutions are `GroupedConv2D`: TensorFlow's own Conv2D op,
    not Keras' XLA-compiled call (which took 0.7 img/s for ResNeXt-50 on this CPU)."""
    input_shape, config = _tiny("resnext50")
    model = backbones.build_backbone("resnext50", input_shape, **config)
    grouped = [layer for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    assert [layer.name for layer in grouped] == [f"stage{s}_block1_conv2" for s in range(2, 6)]
    assert all(type(layer) is blocks.GroupedConv2D and layer.groups == 4 for layer in grouped)

    def traced_ops(layer, x):
        graph = tf.function(layer).get_concrete_function(x).graph
        return [(op.type, "_XlaMustCompile" in op.node_def.attr
                 and op.get_attr("_XlaMustCompile")) for op in graph.get_operations()]

    x = tf.zeros((1, 8, 8, 16))
    kwargs = {"filters": 16, "kernel_size": 3, "groups": 4, "padding": "same"}
    ours, keras_conv = blocks.GroupedConv2D(**kwargs), keras.layers.Conv2D(**kwargs)
    ours(x), keras_conv(x)
    assert ("Conv2D", False) in traced_ops(ours, x)
    assert not any(xla for _, xla in traced_ops(ours, x))
    assert any(xla for _, xla in traced_ops(keras_conv, x))  # what the test guards against


def test_resnext_grouped_conv_matches_numpy_grouped_convolution():
    # Odd input (13x13): the strided grouped conv of stage 3 must see PyTorch's pixels.
    input_shape, config = _tiny("resnext50", groups=8)
    model = backbones.build_backbone("resnext50", (13, 13, 3), **config)
    conv = model.get_layer("stage3_block1_conv2")
    assert conv.groups == 8 and conv.strides == (2, 2)
    pad = model.get_layer("stage3_block1_pad2")
    block = keras.Model(pad.input, conv.output)
    x = np.random.default_rng(5).normal(size=(2, *pad.input.shape[1:])).astype("float32")
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype("float64")
    assert kernel.shape == (3, 3, 16 // 8, 16)
    expected = numpy_grouped_conv(x.astype("float64"), kernel, stride=2, pad=1, groups=8)
    out = keras.ops.convert_to_numpy(block(x))
    assert out.shape == expected.shape == (2, 2, 2, 16)  # 4x4 -> pad 6x6 -> 2x2 at stride 2
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_grouped_conv2d_keeps_its_registered_name_for_saved_files():
    assert keras.saving.get_registered_name(blocks.GroupedConv2D) == "affectkit>GroupedConv2D"
    layer = blocks.GroupedConv2D(8, 3, groups=2, use_bias=False, name="conv")
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    config["module"] = "affectkit.models.backbones.regnet"  # where files saved before name it
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is blocks.GroupedConv2D and clone.get_config() == layer.get_config()


def test_conv_bn_padding_and_settings():
    inputs = keras.Input((9, 9, 4))
    torch_style = blocks.conv_bn(inputs, 6, 3, strides=2, name="c", bn_name="c_bn",
                                 relu_name="c_relu")
    keras_style = blocks.conv_bn(inputs, 6, 3, strides=2, name="k", bn_name="k_bn",
                                 padding="same", bn_epsilon=1e-3, bn_momentum=0.99)
    model = keras.Model(inputs, [torch_style, keras_style])
    assert model.get_layer("c_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("c").padding == "valid" and model.get_layer("k").padding == "same"
    assert model.get_layer("c_bn").epsilon == pytest.approx(1e-5)
    assert model.get_layer("c_bn").momentum == pytest.approx(0.9)
    assert model.get_layer("k_bn").epsilon == pytest.approx(1e-3)
    assert "k_pad" not in [layer.name for layer in model.layers]
    assert model.output_shape == [(None, 5, 5, 6), (None, 5, 5, 6)]
    with pytest.raises(ValueError, match="padding"):
        blocks.convolution(4, 3, name="x", padding="reflect")


def test_senet_attention_widths_follow_the_paper():
    """SE-ResNet squeezes C // 16 channels; the shared block takes the width directly."""
    model = senet.build_preset("senet50", input_shape=(32, 32, 3), **TINY["senet"])
    assert model.get_layer("stage5_block1_se_reduce").kernel.shape == (128, 128 // 16)


# ----------------------------------------------------------------------- fused BatchNorm


def _numpy_batch_norm_training(x, gamma, beta, dy, epsilon):
    """Training-mode BatchNorm over (batch, h, w) and its gradients (Ioffe & Szegedy 2015)."""
    axes, n = (0, 1, 2), x.shape[0] * x.shape[1] * x.shape[2]
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + epsilon)
    x_hat = (x - mean) * inv_std
    y = x_hat * gamma + beta
    dgamma, dbeta = (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
    dx = gamma * inv_std / n * (n * dy - dbeta - x_hat * dgamma)
    return y, dx, dgamma, dbeta, mean, var * n / (n - 1)


def test_fused_batch_norm_training_matches_numpy_and_pytorch_running_stats():
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, size=(4, 5, 6, 8))
    dy = rng.normal(size=x.shape)
    layer = blocks.FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
    layer.build(x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, 8), rng.normal(size=8)
    old_mean, old_var = rng.normal(size=8), rng.uniform(0.5, 1.5, 8)
    layer.set_weights([gamma, beta, old_mean, old_var])

    x_tf = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        y = layer(x_tf, training=True)
        loss = tf.reduce_sum(y * tf.constant(dy, tf.float32))
    dx, dgamma, dbeta = tape.gradient(loss, [x_tf, layer.gamma, layer.beta])

    ref_y, ref_dx, ref_dgamma, ref_dbeta, mean, unbiased_var = _numpy_batch_norm_training(
        x, gamma, beta, dy, 1e-5)
    for ours, ref in [(y, ref_y), (dx, ref_dx), (dgamma, ref_dgamma), (dbeta, ref_dbeta)]:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), ref, rtol=1e-4, atol=1e-4)
    # PyTorch's rule: running_var <- 0.9 running_var + 0.1 * unbiased batch variance.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean),
                               0.9 * old_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance),
                               0.9 * old_var + 0.1 * unbiased_var, rtol=1e-5, atol=1e-6)
    # Inference uses the moving statistics.
    moving_mean = keras.ops.convert_to_numpy(layer.moving_mean)
    moving_var = keras.ops.convert_to_numpy(layer.moving_variance)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x_tf, training=False)),
        (x - moving_mean) / np.sqrt(moving_var + 1e-5) * gamma + beta, rtol=1e-4, atol=1e-4)


def test_fused_batch_norm_layer_checks():
    x = np.random.default_rng(7).normal(size=(2, 3, 4, 5)).astype("float32")
    check_layer(blocks.FusedBatchNormalization, {"epsilon": 1e-5, "momentum": 0.9}, x,
                expected_output_shape=x.shape)


def test_frozen_fused_batch_norm_keeps_its_statistics():
    layer = blocks.FusedBatchNormalization()
    x = np.random.default_rng(8).normal(3.0, 2.0, size=(4, 3, 3, 6)).astype("float32")
    layer(x, training=True)
    layer.trainable = False
    before = keras.ops.convert_to_numpy(layer.moving_mean).copy()
    layer(x + 5.0, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), before)
