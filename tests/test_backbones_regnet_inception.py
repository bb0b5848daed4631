"""RegNet (X/Y) and InceptionV3-cut backbones."""

import h5py
import keras
import numpy as np
import pytest

from affectkit.models.backbones import blocks, inception, normalization_layer, regnet
from tests.keras_checks import assert_reloads_in_fresh_process, check_layer

# torchvision's published `num_params` (trainable weights, 1000-class head, 224x224).
TORCHVISION_PARAMS = {
    "regnetx_400mf": 5_495_976, "regnetx_800mf": 7_259_656, "regnetx_1.6gf": 9_190_136,
    "regnetx_3.2gf": 15_296_552, "regnety_400mf": 4_344_144, "regnety_800mf": 6_432_512,
    "regnety_1.6gf": 11_202_430, "regnety_3.2gf": 19_436_338,
}
TINY = {"depths": (1, 1, 1, 1), "widths": (8, 16, 24, 32), "group_width": 8,
        "stem_width": 8, "se_ratio": 0.25}


def _run(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _images(size, n=2, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")


# ---------------------------------------------------------------- RegNet: sizes and design rule


def test_regnety_1_6gf_parameter_count_matches_paper_and_torchvision():
    total = regnet.count_params("regnety_1.6gf")  # with the 1000-class head, 224x224
    assert abs(total - 11.2e6) / 11.2e6 < 0.01  # REFERENCE section 5
    assert regnet.count_params("regnety_1.6gf", trainable_only=True) == 11_202_430


@pytest.mark.parametrize("name", sorted(regnet.PRESETS))
def test_every_preset_matches_torchvision_count_and_design_rule(name):
    assert regnet.count_params(name, trainable_only=True) == TORCHVISION_PARAMS[name]
    derived = regnet.stages_from_design(**regnet.DESIGN_PARAMETERS[name])
    assert derived["depths"] == regnet.PRESETS[name]["depths"]
    assert derived["widths"] == regnet.PRESETS[name]["widths"]


def test_design_rule_reproduces_regnety_1_6gf():
    stages = regnet.stages_from_design(w_0=48, w_a=20.71, w_m=2.65, depth=27, group_width=24)
    assert stages == {"depths": (2, 6, 17, 2), "widths": (48, 120, 336, 888)}
    with pytest.raises(ValueError, match="multiple of 8"):
        regnet.stages_from_design(w_0=50, w_a=20.0, w_m=2.5, depth=10, group_width=8)


def test_full_regnety_1_6gf_at_112_gives_888_channel_map():
    model = regnet.build_preset("regnety_1.6gf", input_shape=(112, 112, 3))
    assert model.name == "regnety_1.6gf"
    assert model.output_shape == (None, 4, 4, 888)
    assert model.count_params() == regnet.count_params("regnety_1.6gf", include_top=False)
    assert model.get_layer("stage3_block17_b_conv").groups == 336 // 24


@pytest.mark.parametrize("include_top", [False, True])
@pytest.mark.parametrize("se_ratio", [None, 0.25])
def test_count_params_equals_real_build(include_top, se_ratio):
    config = {**TINY, "se_ratio": se_ratio, "depths": (1, 2, 1, 2)}
    model = regnet.regnet((32, 32, 3), include_top=include_top, num_classes=7, **config)
    assert model.count_params() == regnet.count_params(config, include_top=include_top,
                                                       num_classes=7)


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="not divisible by group_width"):
        regnet.regnet((32, 32, 3), **{**TINY, "widths": (8, 16, 20, 32)})
    with pytest.raises(ValueError, match="one entry per stage"):
        regnet.regnet((32, 32, 3), **{**TINY, "depths": (1, 1)})
    with pytest.raises(ValueError, match="pooling"):
        regnet.regnet((32, 32, 3), pooling="mean", **TINY)
    with pytest.raises(ValueError, match="Unknown preset .regnety_2gf"):
        regnet.build_preset("regnety_2gf")


# ------------------------------------------------------------------ RegNet: numerics and Keras


def _np_conv(x, kernel, stride=1, pad=0, groups=1):
    """Grouped 2D convolution with PyTorch padding semantics, NHWC / HWIO, in float64."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, cin_g, cout = kernel.shape
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, cout))
    cout_g = cout // groups
    for g in range(groups):
        xs = x[..., g * cin_g:(g + 1) * cin_g]
        ks = kernel[..., g * cout_g:(g + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
                out[..., g * cout_g:(g + 1) * cout_g] += patch @ ks[i, j]
    return out


def _numpy_regnet(model, x, depths, widths, group_width, stem_width, se_ratio):
    """Independent forward pass of torchvision's RegNet (inference-mode BatchNorm)."""
    def w(name):
        return [np.asarray(v, dtype="float64") for v in model.get_layer(name).get_weights()]

    def bn(y, name):
        gamma, beta, mean, var = w(name)
        return (y - mean) / np.sqrt(var + 1e-5) * gamma + beta

    def relu(y):
        return np.maximum(y, 0.0)

    y = relu(bn(_np_conv(x, w("stem_conv")[0], stride=2, pad=1), "stem_bn"))
    width_in = stem_width
    for s, (depth, width) in enumerate(zip(depths, widths), start=1):
        for b in range(1, depth + 1):
            n, stride = f"stage{s}_block{b}", 2 if b == 1 else 1
            if stride != 1 or width_in != width:
                shortcut = bn(_np_conv(y, w(f"{n}_proj_conv")[0], stride), f"{n}_proj_bn")
            else:
                shortcut = y
            h = relu(bn(_np_conv(y, w(f"{n}_a_conv")[0]), f"{n}_a_bn"))
            h = relu(bn(_np_conv(h, w(f"{n}_b_conv")[0], stride, 1, width // group_width),
                        f"{n}_b_bn"))
            k1, b1 = w(f"{n}_se_reduce")
            k2, b2 = w(f"{n}_se_expand")
            assert k1.shape == (width, round(se_ratio * width_in))  # squeeze from block input
            gate = relu(h.mean(axis=(1, 2)) @ k1 + b1) @ k2 + b2
            h = h / (1.0 + np.exp(-gate))[:, None, None, :]
            h = bn(_np_conv(h, w(f"{n}_c_conv")[0]), f"{n}_c_bn")
            y = relu(shortcut + h)
            width_in = width
    return y


def test_regnet_matches_numpy_reference_of_torchvision_layout():
    # Odd input size: strided convolutions must see PyTorch's pixels (9 -> 5 -> 3 -> 2).
    config = {"depths": (1, 2), "widths": (8, 16), "group_width": 4, "stem_width": 8,
              "se_ratio": 0.25}
    model = regnet.regnet((9, 9, 3), **config)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                               rng.normal(0, 0.2, c), rng.uniform(0.5, 1.5, c)])
    x = _images(9, n=3, seed=2)
    out = _run(model, x)
    assert out.shape == (3, 2, 2, 16)
    expected = _numpy_regnet(model, x.astype("float64"), **config)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_grouped_conv_layer_checks_and_matches_keras_conv():
    x = np.random.default_rng(3).normal(size=(2, 7, 7, 12)).astype("float32")
    kwargs = {"filters": 6, "kernel_size": 3, "strides": 2, "groups": 3, "use_bias": False}
    check_layer(blocks.GroupedConv2D, kwargs, x, expected_output_shape=(2, 3, 3, 6))
    ours, reference = blocks.GroupedConv2D(**kwargs), keras.layers.Conv2D(**kwargs)
    ours.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    np.testing.assert_allclose(_run(ours, x), _run(reference, x), atol=1e-5)


def test_tiny_regnet_forward_fit_and_pooling():
    model = regnet.regnet((32, 32, 3), name="tiny_regnet", **TINY)
    x = _images(32, n=4)
    assert tuple(model(x).shape) == (4, 1, 1, 32)  # 32 -> 16 -> 8, 4, 2, 1
    pooled = regnet.regnet((32, 32, 3), pooling="avg", **TINY)
    assert pooled.output_shape == (None, 32)
    classifier = regnet.regnet((32, 32, 3), include_top=True, num_classes=5, **TINY)
    classifier.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = [np.array(v) for v in classifier.trainable_weights]
    classifier.fit(x, np.arange(4) % 5, epochs=1, batch_size=4, verbose=0)
    assert any(not np.allclose(a, np.array(b))
               for a, b in zip(before, classifier.trainable_weights))
    names = {layer.name for layer in classifier.layers}
    assert {"stem_conv", "stage1_block1_proj_conv", "stage2_block1_b_conv",
            "stage3_block1_se_reduce", "stage4_block1_c_bn", "predictions"} <= names


def test_tiny_regnet_reloads_in_fresh_process(tmp_path):
    model = regnet.regnet((32, 32, 3), pooling="avg", **TINY)
    assert_reloads_in_fresh_process(model, _images(32, seed=4), tmp_path)


def test_weights_file_round_trip_and_missing_file(tmp_path):
    source = regnet.regnet((32, 32, 3), **TINY)
    path = tmp_path / "tiny_regnet.weights.h5"
    source.save_weights(path)
    loaded = regnet.regnet((32, 32, 3), weights=str(path), **TINY)
    fresh = regnet.regnet((32, 32, 3), **TINY)
    x = _images(32, seed=5)
    np.testing.assert_allclose(_run(loaded, x), _run(source, x), atol=1e-6)
    assert not np.allclose(_run(fresh, x), _run(source, x), atol=1e-3)
    with pytest.raises(FileNotFoundError, match="missing.weights.h5.*does not exist"):
        regnet.regnet((32, 32, 3), weights=str(tmp_path / "missing.weights.h5"), **TINY)


def test_imagenet_normalization_matches_torchvision_constants():
    layer = normalization_layer("imagenet")
    assert type(layer) is keras.layers.Normalization and layer.name == "imagenet_normalization"
    x = _images(4, seed=6)
    expected = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(_run(layer, x), expected, atol=1e-5)


# ------------------------------------------------------------------------------ InceptionV3


def test_inception_v3_parameter_count():
    total = inception.count_params()  # whole network with the 1000-class head
    assert total == 23_851_784  # keras.applications.InceptionV3
    assert abs(total - 23.8e6) / 23.8e6 < 0.01  # REFERENCE section 5
    with pytest.raises(ValueError, match="include_top=False"):
        inception.count_params(cut="mixed7")


def test_mixed7_map_shape_at_299():
    model = inception.inception_v3_features((299, 299, 3))
    assert model.name == "inception_v3_mixed7"
    assert model.output_shape == (None, 17, 17, 768)
    assert model.layers[0].name == "image" and model.layers[-1].name == "mixed7"
    with pytest.raises(ValueError, match="mixed11"):
        inception.inception_v3_features((75, 75, 3), cut="mixed11")


def test_inception_normalization_maps_unit_range_to_symmetric():
    layer = normalization_layer("inception")
    assert type(layer) is keras.layers.Rescaling and layer.name == "inception_rescaling"
    x = _images(3, seed=7)
    np.testing.assert_allclose(_run(layer, x), 2.0 * x - 1.0, atol=1e-6)


def _write_keras2_weights_h5(model, path, prefix="k2_"):
    """Writes `model`'s weights as a Keras 2 weights-only `.h5` file (keras-applications
    layout), with layer names that differ from the model's."""
    with h5py.File(path, "w") as f:
        names = [f"{prefix}{i}" for i in range(len(model.layers))]
        f.attrs["layer_names"] = [n.encode("utf8") for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.0"
        for layer, name in zip(model.layers, names):
            group = f.create_group(name)
            variables = layer.trainable_weights + layer.non_trainable_weights
            weight_names = [f"{name}/w{i}:0".encode("utf8") for i in range(len(variables))]
            group.attrs["weight_names"] = weight_names
            for weight_name, variable in zip(weight_names, variables):
                group.create_dataset(weight_name.decode("utf8"), data=np.asarray(variable))


def test_keras_applications_h5_with_top_loads_before_the_cut(tmp_path):
    source = keras.applications.InceptionV3(include_top=True, weights=None,
                                            input_shape=(75, 75, 3))
    path = tmp_path / "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
    _write_keras2_weights_h5(source, path)
    model = inception.inception_v3_features((75, 75, 3), weights=str(path))
    reference = keras.Model(source.input, source.get_layer("mixed7").output)
    x = 2.0 * _images(75, seed=8) - 1.0
    np.testing.assert_allclose(_run(model, x), _run(reference, x), atol=1e-5)


def test_keras3_weights_of_full_network_and_of_cut_model_load(tmp_path):
    source = keras.applications.InceptionV3(include_top=False, weights=None,
                                            input_shape=(75, 75, 3))
    full_path = tmp_path / "inception_v3_notop.weights.h5"
    source.save_weights(full_path)
    model = inception.inception_v3_features((75, 75, 3), weights=str(full_path))
    reference = keras.Model(source.input, source.get_layer("mixed7").output)
    x = 2.0 * _images(75, seed=9) - 1.0
    np.testing.assert_allclose(_run(model, x), _run(reference, x), atol=1e-5)

    cut_path = tmp_path / "mixed7.weights.h5"
    model.save_weights(cut_path)
    again = inception.inception_v3_features((75, 75, 3), weights=str(cut_path))
    np.testing.assert_allclose(_run(again, x), _run(reference, x), atol=1e-5)


def test_inception_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5.*does not exist"):
        inception.inception_v3_features((75, 75, 3), weights=str(tmp_path / "nope.h5"))
    small = regnet.regnet((32, 32, 3), **TINY)
    path = tmp_path / "other_network.h5"
    _write_keras2_weights_h5(small, path)
    with pytest.raises(ValueError, match="other_network.h5.*weights for"):
        inception.inception_v3_features((75, 75, 3), weights=str(path))
