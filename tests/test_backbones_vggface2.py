"""VGGFace2 ResNet-50 (keras-vggface layout), its preprocessing, do2020's face model, and
saved Keras models as backbones."""

import h5py
import keras
import numpy as np
import pytest

from affectkit.models.backbones.model_file import model_file_backbone
from affectkit.models.backbones.normalization import VGGFace2Preprocessing
from affectkit.models.backbones.resnet_vggface2 import (
    do2020_face_model,
    keras_layer_name,
    load_vggface2_weights,
    vggface2_resnet50,
)
from tests.keras_checks import assert_reloads_in_fresh_process, check_layer, write_keras2_h5

TINY = {"input_shape": (32, 32, 3), "depths": (1, 2, 1, 1), "widths": (16, 32, 64, 128),
        "stem_width": 8}
MEAN_BGR = np.array([91.4953, 103.8827, 131.0912])


def _keras_vggface_names(depths):
    """The weighted layer names of keras-vggface's RESNET50 (models.py), '/' kept."""
    names = ["conv1/7x7_s2", "conv1/7x7_s2/bn"]
    for stage, depth in enumerate(depths, start=2):
        for block in range(1, depth + 1):
            parts = ["1x1_reduce", "3x3", "1x1_increase"] + (["1x1_proj"] if block == 1 else [])
            for part in parts:
                names += [f"conv{stage}_{block}_{part}", f"conv{stage}_{block}_{part}/bn"]
    return names


def _randomise(model, seed=0):
    """Random weights everywhere, including BatchNorm moving statistics (variance > 0)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = rng.normal(0.0, 0.2, w.shape)
        if w.name == "moving_variance":
            value = rng.uniform(0.5, 1.5, w.shape)
        w.assign(value.astype("float32"))


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype("float32")


def _run(model, x):
    """Eager inference (faster than `predict` for tiny models); NumPy out."""
    out = model(x, training=False)
    if isinstance(out, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
    return keras.ops.convert_to_numpy(out)


def _preprocess(x01):
    return (x01[..., ::-1] * 255.0 - MEAN_BGR).astype("float32")


# VGGFace2 ResNet-50 ----------------------------------------------------------------------


def test_layer_names_follow_keras_vggface():
    model = vggface2_resnet50(**TINY, include_top=True, num_classes=10)
    weighted = [layer.name for layer in model.layers if layer.weights]
    expected = [keras_layer_name(n) for n in _keras_vggface_names(TINY["depths"])] + ["classifier"]
    assert sorted(weighted) == sorted(expected)
    for name in ["conv1_7x7_s2", "conv1_7x7_s2_bn", "conv2_1_1x1_reduce",
                 "conv2_1_1x1_reduce_bn", "conv2_1_3x3", "conv2_1_1x1_increase",
                 "conv2_1_1x1_proj", "conv3_2_1x1_increase_bn", "conv5_1_1x1_proj_bn",
                 "avg_pool", "classifier"]:
        model.get_layer(name)
    assert "conv3_2_1x1_proj" not in [layer.name for layer in model.layers]
    assert keras_layer_name("conv1/7x7_s2/bn") == "conv1_7x7_s2_bn"
    # Caffe layout: stride on the first 1x1 and the projection, bias-free convolutions.
    assert model.get_layer("conv3_1_1x1_reduce").strides == (2, 2)
    assert model.get_layer("conv3_1_3x3").strides == (1, 1)
    assert model.get_layer("conv3_1_1x1_proj").strides == (2, 2)
    assert model.get_layer("conv2_1_1x1_reduce").strides == (1, 1)
    assert not any(getattr(layer, "use_bias", False) for layer in model.layers
                   if isinstance(layer, keras.layers.Conv2D))
    assert model.get_layer("conv1_7x7_s2_bn").epsilon == pytest.approx(1e-3)
    assert model.get_layer("conv3_1_3x3").kernel.shape == (3, 3, 8, 8)


def test_forward_shapes():
    x = _images(2, 32)
    feature_map = vggface2_resnet50(**TINY)
    assert feature_map.output_shape == (None, 1, 1, 128)
    assert feature_map.get_layer("pool1_3x3_s2").output.shape == (None, 7, 7, 8)  # 32->16->7
    assert feature_map(x).shape == (2, 1, 1, 128)
    assert vggface2_resnet50(**TINY, pooling="avg")(x).shape == (2, 128)
    probs = keras.ops.convert_to_numpy(
        vggface2_resnet50(**TINY, include_top=True, num_classes=10)(x))
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    with_pre = vggface2_resnet50(**TINY, pooling="avg", include_preprocessing=True)
    assert with_pre.layers[1].name == "vggface2_preprocessing"


@pytest.mark.parametrize("full_model", [False, True])
def test_keras_vggface_h5_loads_by_mapped_name(tmp_path, full_model):
    source = vggface2_resnet50(**TINY, include_top=True, num_classes=10)
    _randomise(source)
    path = str(tmp_path / "keras_vggface_tiny.h5")
    write_keras2_h5(source, path, full_model=full_model)
    with h5py.File(path, "r") as f:  # the Keras 2 layout, '/' nesting included
        root = f["model_weights"] if full_model else f
        assert "conv1/7x7_s2/bn" in root
        assert "conv1/7x7_s2/bn/gamma:0" in root["conv1/7x7_s2/bn"]

    x = _preprocess(_images(3, 32, seed=1))
    target = vggface2_resnet50(**TINY, include_top=True, num_classes=10, weights=path)
    np.testing.assert_allclose(_run(target, x), _run(source, x),
                               rtol=1e-5, atol=1e-6)
    # Without top, 'classifier' in the file is skipped; the feature maps agree.
    notop = vggface2_resnet50(**TINY, pooling="avg", weights=path)
    source_features = keras.Model(source.input, source.get_layer("avg_pool").output)
    np.testing.assert_allclose(_run(notop, x),
                               _run(source_features, x), rtol=1e-5, atol=1e-5)


def test_h5_loading_errors(tmp_path):
    source = vggface2_resnet50(**TINY)
    path = str(tmp_path / "tiny.h5")
    write_keras2_h5(source, path)
    wider = {**TINY, "widths": (32, 64, 128, 256)}
    with pytest.raises(ValueError, match="conv2_1_1x1_reduce.*shape"):
        vggface2_resnet50(**wider, weights=path)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_vggface2_weights(source, str(tmp_path / "missing.h5"))
    with h5py.File(str(tmp_path / "other.h5"), "w") as f:
        f.attrs["layer_names"] = [b"dense_7"]
        f.create_group("dense_7").attrs["weight_names"] = []
    with pytest.raises(ValueError, match="no layer of the model"):
        load_vggface2_weights(source, str(tmp_path / "other.h5"))


def test_keras3_weights_file_round_trip(tmp_path):
    source = vggface2_resnet50(**TINY)
    _randomise(source, seed=3)
    path = str(tmp_path / "tiny.weights.h5")
    source.save_weights(path)
    x = _preprocess(_images(2, 32))
    target = vggface2_resnet50(**TINY, weights=path)
    np.testing.assert_allclose(_run(target, x), _run(source, x),
                               rtol=1e-5, atol=1e-6)


def test_full_size_param_count_matches_resnet50():
    model = vggface2_resnet50(include_top=True, num_classes=1000)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 25_557_032  # torchvision resnet50 (bias-free convs)
    assert abs(trainable - 25.6e6) / 25.6e6 < 0.01
    assert abs(model.count_params() - 25.6e6) / 25.6e6 < 0.01  # + BN moving statistics
    assert model.get_layer("conv5_3_relu").output.shape == (None, 7, 7, 2048)
    # The VGGFace2 head (8631 identities) instead of ImageNet's 1000 classes.
    assert trainable - 2049 * 1000 + 2049 * 8631 == 41_192_951


# Preprocessing ---------------------------------------------------------------------------


def test_preprocessing_matches_numpy():
    x = _images(2, 5, seed=4)
    out = check_layer(VGGFace2Preprocessing, {"scale": 255.0, "mean_bgr": tuple(MEAN_BGR)},
                      x, expected_output_shape=x.shape, fit=False)
    np.testing.assert_allclose(out, _preprocess(x), rtol=1e-5, atol=1e-3)
    # Default arguments: [0, 1] RGB in; a pure-red pixel becomes BGR (0, 0, 255) - mean.
    red = np.zeros((1, 1, 1, 3), "float32")
    red[..., 0] = 1.0
    out = keras.ops.convert_to_numpy(VGGFace2Preprocessing()(red))
    np.testing.assert_allclose(out[0, 0, 0], np.array([0, 0, 255.0]) - MEAN_BGR, rtol=1e-6)


# do2020 face model -----------------------------------------------------------------------

DO_TINY = {"input_shape": (32, 32, 3), "depths": (2, 2, 2, 2), "widths": (16, 32, 64, 128),
           "stem_width": 8}


def test_do2020_face_model_outputs_and_freezing():
    model = do2020_face_model(num_classes=7, **DO_TINY)
    out = model(_images(2, 32))
    assert set(out) == {"feature", "probabilities"}
    assert out["feature"].shape == (2, 128)
    assert out["probabilities"].shape == (2, 7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["probabilities"]).sum(-1), 1.0,
                               rtol=1e-5)
    assert model.layers[1].name == "vggface2_preprocessing"

    weighted = [layer for layer in model.layers if layer.weights]
    frozen = [layer.name for layer in weighted if not layer.trainable]
    trainable = [layer.name for layer in weighted if layer.trainable]
    # stem conv + bn, and stages 2-3: 2 blocks x 6 layers + projection conv + bn each.
    assert len(frozen) == 2 + 2 * (2 * 6 + 2)
    assert len(trainable) == 2 * (2 * 6 + 2) + 1
    assert all(name.startswith(("conv1_", "conv2_", "conv3_")) for name in frozen)
    assert all(name.startswith(("conv4_", "conv5_", "probabilities")) for name in trainable)
    assert "conv4_1_1x1_reduce" in trainable and "conv4_1_1x1_proj" in trainable
    # conv4/conv5: per block 4 (or 3) kernels + BN gamma/beta; dense kernel + bias.
    assert len(model.trainable_weights) == 2 * (4 * 3 + 3 * 3) + 2

    everything = do2020_face_model(num_classes=7, trainable_from=None, **DO_TINY)
    assert all(layer.trainable for layer in everything.layers)
    with pytest.raises(ValueError, match="no layer named 'conv9_1'"):
        do2020_face_model(trainable_from="conv9_1", **DO_TINY)


def test_do2020_frozen_layers_do_not_change_in_training():
    model = do2020_face_model(num_classes=7, **DO_TINY)
    x = _images(4, 32, seed=5)
    y = np.eye(7, dtype="float32")[[0, 1, 2, 3]]
    frozen_bn = model.get_layer("conv2_1_1x1_reduce_bn").moving_mean
    frozen_conv = model.get_layer("conv3_2_3x3").kernel
    trained_conv = model.get_layer("conv5_2_3x3").kernel
    before = [keras.ops.convert_to_numpy(v).copy() for v in (frozen_bn, frozen_conv,
                                                              trained_conv)]
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={"probabilities": "categorical_crossentropy"})
    model.fit(x, {"probabilities": y}, epochs=1, batch_size=4, verbose=0)
    after = [keras.ops.convert_to_numpy(v) for v in (frozen_bn, frozen_conv, trained_conv)]
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert not np.allclose(after[2], before[2])


def test_do2020_loads_keras_vggface_weights(tmp_path):
    source = vggface2_resnet50(**DO_TINY, include_top=True, num_classes=10)
    _randomise(source, seed=6)
    path = str(tmp_path / "vggface2_tiny.h5")
    write_keras2_h5(source, path)
    with pytest.warns(UserWarning, match="probabilities"):
        model = do2020_face_model(num_classes=7, weights=path, **DO_TINY)
    x01 = _images(2, 32, seed=7)
    expected = keras.Model(source.input, source.get_layer("avg_pool").output)
    np.testing.assert_allclose(_run(model, x01)["feature"],
                               _run(expected, _preprocess(x01)),
                               rtol=1e-4, atol=1e-4)


def test_do2020_reloads_in_fresh_process(tmp_path):
    model = do2020_face_model(num_classes=7, input_shape=(32, 32, 3), depths=(1, 1, 1, 1),
                              widths=(16, 32, 64, 128), stem_width=8)
    assert_reloads_in_fresh_process(model, _images(2, 32, seed=8), tmp_path)


# Saved models as backbones ---------------------------------------------------------------


def _small_model():
    inputs = keras.Input((16, 16, 3), name="img")
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    return keras.Model(inputs, outputs, name="small")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_file_backbone_cuts_at_layer(tmp_path, suffix):
    model = _small_model()
    path = str(tmp_path / f"small{suffix}")
    model.save(path)
    x = _images(2, 16, seed=9)

    backbone = model_file_backbone(path, layer="r1")
    manual = keras.Model(model.input, model.get_layer("r1").output)
    assert backbone.output_shape == (None, 16, 16, 4)
    assert backbone.name == "small_r1"
    np.testing.assert_allclose(_run(backbone, x), _run(manual, x),
                               rtol=1e-6, atol=1e-6)
    whole = model_file_backbone(path, trainable=False, name="frozen")
    assert whole.name == "frozen" and not whole.trainable_weights
    np.testing.assert_allclose(_run(whole, x), _run(model, x),
                               rtol=1e-6, atol=1e-6)


def test_model_file_backbone_nested_layer_and_input_shape(tmp_path):
    inner = _small_model()
    inputs = keras.Input((16, 16, 3), name="frame")
    x = keras.layers.Rescaling(2.0, name="scale")(inputs)
    outputs = keras.layers.Dense(2, name="head")(inner(x))
    outer = keras.Model(inputs, outputs, name="outer")
    path = str(tmp_path / "outer.keras")
    outer.save(path)
    x = _images(2, 16, seed=10)

    backbone = model_file_backbone(path, layer="small/c2")
    manual = keras.Model(inner.input, inner.get_layer("c2").output)
    assert backbone.output_shape == (None, 8, 8, 6)
    np.testing.assert_allclose(_run(backbone, x),
                               _run(manual, 2.0 * x), rtol=1e-5, atol=1e-6)

    flat = model_file_backbone(path, layer="scale")
    assert flat.output_shape == (None, 16, 16, 3)
    small_path = str(tmp_path / "small.keras")
    inner.save(small_path)
    resized = model_file_backbone(small_path, layer="c2", input_shape=(24, 24, 3))
    assert resized.output_shape == (None, 12, 12, 6)
    x24 = _images(1, 24, seed=11)
    manual_24 = x24
    for name in ("c1", "r1", "c2"):  # the same layers, applied eagerly at 24x24
        manual_24 = inner.get_layer(name)(manual_24)
    np.testing.assert_allclose(_run(resized, x24),
                               keras.ops.convert_to_numpy(manual_24), rtol=1e-5, atol=1e-6)


def test_model_file_backbone_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        model_file_backbone(str(tmp_path / "nothing.keras"))
    path = str(tmp_path / "small.keras")
    _small_model().save(path)
    with pytest.raises(ValueError, match=r"no layer 'c3'.*\['img', 'c1', 'r1'"):
        model_file_backbone(path, layer="c3")
    with pytest.raises(ValueError, match=r"Closest names: \['gap'\]"):
        model_file_backbone(path, layer="gapp")
    with pytest.raises(ValueError, match="not a functional or Sequential sub-model"):
        model_file_backbone(path, layer="c1/kernel")
    weights_path = str(tmp_path / "small.weights.h5")
    _small_model().save_weights(weights_path)
    with pytest.raises(ValueError, match="weights only"):
        model_file_backbone(weights_path)


def test_model_file_backbone_sequential(tmp_path):
    seq = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="a"),
                            keras.layers.ReLU(name="b"), keras.layers.Flatten(name="f")],
                           name="seq")
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, keras.layers.Dense(2, name="d")(seq(inputs)))
    seq.save(str(tmp_path / "seq.keras"))
    outer.save(str(tmp_path / "outer.keras"))
    x = _images(1, 8, seed=12)
    manual = _run(keras.Model(seq.inputs[0], seq.get_layer("b").output), x)
    for path, layer in [("seq.keras", "b"), ("outer.keras", "seq/b")]:
        backbone = model_file_backbone(str(tmp_path / path), layer=layer)
        np.testing.assert_allclose(_run(backbone, x), manual, rtol=1e-6, atol=1e-6)
