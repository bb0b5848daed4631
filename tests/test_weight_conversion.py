"""`convert-weights`: checkpoints of torchvision and keras.applications onto affectkit
backbones, checked against the source network itself (same already-normalised input, the
same feature map, BatchNorm in inference mode with non-trivial statistics).

The torchvision tests need torch and torchvision (`pip install -e .[bench]`, not in CI's
install); they skip with that reason where those are absent.
"""

import json
import os

import keras
import numpy as np
import pytest

from affectkit.models.backbones import build_backbone
from affectkit.models.backbones.conversion import ConversionError, convert_weights
from tests.keras_checks import REPO_ROOT, keras_vggface_senet50, write_keras2_h5

TOLERANCE = 1e-4  # relative max difference


def relative_difference(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype("float32")


# ----------------------------------------------------------------------- torchvision


# torch and TensorFlow do not load into one process here (importing torchvision after
# TensorFlow crashes), so the source network runs in its own process: it writes the
# checkpoint (.pth and .safetensors) and its feature map of the test input.
TORCH_SOURCE = """
import sys
import numpy as np, torch, torchvision
from safetensors.torch import save_file
library, name, folder = sys.argv[1:4]
torch.manual_seed(0)
if library == "timm":
    import timm
    net = timm.create_model(name, pretrained=False)
else:
    net = getattr(torchvision.models, name)(weights=None)
generator = torch.Generator().manual_seed(0)
# Non-trivial BatchNorm statistics and affine weights, tame enough that 50 random layers
# do not blow activations up (with gains above 1 a deep random SENet amplifies float32
# rounding to 1e-2 of its outputs in both frameworks alike).
for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
        n = module.num_features
        module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
        module.running_var.copy_(torch.rand(n, generator=generator) + 1.0)
        module.weight.data.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
        module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
net.eval()
torch.save(net.state_dict(), folder + "/source.pth")
save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder + "/source.safetensors")
features = (net.forward_features if hasattr(net, "forward_features")
            else torch.nn.Sequential(net.stem, net.trunk_output) if hasattr(net, "trunk_output")
            else torch.nn.Sequential(*list(net.children())[:-2]))
x = np.load(folder + "/input.npy")
with torch.no_grad():
    out = features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
np.save(folder + "/reference.npy", out)
"""


def torch_source(library, name, folder, x):
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", f"import torch, torchvision, {library}"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"needs torch, torchvision and {library} (pip install -e .[bench])")
    np.save(os.path.join(folder, "input.npy"), x)
    result = subprocess.run([sys.executable, "-c", TORCH_SOURCE, library, name, folder],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(os.path.join(folder, "reference.npy"))


@pytest.mark.parametrize("source, source_name, backbone", [
    ("torchvision", "resnet50", "resnet50"), ("torchvision", "resnext50_32x4d", "resnext50"),
    ("torchvision", "regnet_y_1_6gf", "regnety_1.6gf"),
    ("timm", "legacy_seresnet50", "senet50")])
def test_torch_backbones_give_the_source_feature_map(source, source_name, backbone, tmp_path):
    x = images((64, 64, 3))
    ref = torch_source("timm" if source == "timm" else "safetensors", source_name,
                       str(tmp_path), x)
    out = str(tmp_path / "converted.weights.h5")
    record = convert_weights(source, backbone, str(tmp_path / "source.pth"), out,
                             input_shape=(64, 64, 3))
    assert record["normalization"] == "imagenet" and record["backbone"]["name"] == backbone
    assert json.load(open(out[: -len(".weights.h5")] + ".json")) == record
    if source == "timm":  # the Caffe SENet layout goes with the weights
        assert record["backbone"]["stride_in_1x1"] and record["backbone"]["stem_pool"] == "ceil"
    layout = {k: v for k, v in record["backbone"].items() if k != "name"}
    model = build_backbone(backbone, (64, 64, 3), weights=out, **layout)
    assert relative_difference(model.predict(x, verbose=0), ref) <= TOLERANCE

    # The same tensors as .safetensors (read as NumPy, no torch needed) convert the same.
    again = str(tmp_path / "again.weights.h5")
    convert_weights(source, backbone, str(tmp_path / "source.safetensors"), again,
                    input_shape=(64, 64, 3))
    model.load_weights(again)
    assert relative_difference(model.predict(x, verbose=0), ref) <= TOLERANCE


# ----------------------------------------------------------------------- keras.applications


def keras_randomize(model, seed=0):
    """Non-trivial BatchNorm statistics and convolution biases."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for weight in layer.weights:
                size = weight.shape
                values.append(rng.uniform(0.4, 1.2, size) if "variance" in weight.name
                              else rng.uniform(0.5, 1.5, size) if "gamma" in weight.name
                              else rng.normal(0, 0.2, size))
            layer.set_weights(values)
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])
    return model


@pytest.mark.parametrize("backbone, application, shape, cut", [
    ("inception_v3", "InceptionV3", (139, 139, 3), "mixed7"),
    ("resnet50", "ResNet50", (64, 64, 3), "conv5_block3_out")])
def test_keras_applications_give_the_source_feature_map(backbone, application, shape, cut,
                                                        tmp_path):
    source = keras_randomize(getattr(keras.applications, application)(
        weights=None, include_top=False, input_shape=shape))
    path = str(tmp_path / "source.weights.h5")
    source.save_weights(path)
    out = str(tmp_path / "converted.weights.h5")
    record = convert_weights("keras", backbone, path, out, input_shape=shape)
    x = images(shape)
    ref = keras.Model(source.input, source.get_layer(cut).output).predict(x, verbose=0)
    model = build_backbone(backbone, shape, weights=out,
                           **{k: v for k, v in record["backbone"].items() if k != "name"})
    assert relative_difference(model.predict(x, verbose=0), ref) <= TOLERANCE
    if backbone == "resnet50":  # keras.applications' ResNet50: Caffe layout, caffe input
        assert record["backbone"]["stride_in_1x1"] is True
        assert record["normalization"] == "imagenet_caffe"


# ----------------------------------------------------------------------- keras-vggface


KERAS_VGGFACE_TINY = {"depths": (2, 1, 1, 2), "widths": (64, 96, 128, 160), "stem_width": 16}


@pytest.mark.parametrize("backbone", ["senet50", "resnet50", "vggface2_resnet50"])
def test_keras_vggface_h5_gives_the_source_feature_map(backbone, tmp_path):
    """keras-vggface's `.h5` layout (layer names with '/', Keras 2 groups) onto affectkit:
    SENet-50 and ResNet-50 onto `bottleneck_resnet` in keras-vggface's layout, ResNet-50
    also onto `vggface2_resnet50` (its own network); at 70 px the stem pooling's border and
    the 'same' padding of odd maps are exercised."""
    from affectkit.models.backbones.resnet_vggface2 import vggface2_resnet50

    shape = (70, 70, 3)
    tiny = dict(KERAS_VGGFACE_TINY)
    if backbone == "senet50":
        source = keras_vggface_senet50(shape, **tiny)
    else:  # affectkit's keras-vggface ResNet-50, checked against keras-vggface elsewhere
        source = vggface2_resnet50(input_shape=shape, **tiny)
    keras_randomize(source)
    path = str(tmp_path / "rcmalli_vggface_tf_notop_model.h5")
    write_keras2_h5(source, path)
    out = str(tmp_path / "converted.weights.h5")
    hyper = dict(tiny) if backbone == "vggface2_resnet50" else dict(
        tiny, bottleneck_widths=tuple(w // 4 for w in tiny["widths"]))
    record = convert_weights("keras-vggface", backbone, path, out, input_shape=shape, **hyper)
    assert record["normalization"] == "vggface2"
    x = images(shape)
    model = build_backbone(backbone, shape, weights=out,
                           **{k: v for k, v in record["backbone"].items() if k != "name"})
    assert relative_difference(model.predict(x, verbose=0),
                               source.predict(x, verbose=0)) <= TOLERANCE
    if backbone != "vggface2_resnet50":
        assert record["backbone"]["stride_in_1x1"] is True
        assert record["backbone"]["padding"] == "same"


def test_named_weights_resolve_in_the_weights_folder(tmp_path, monkeypatch):
    """`--name` converts into $AFFECTKIT_WEIGHTS; a paper preset naming the weights loads
    them there, in their layout; a missing named file says how to make it."""
    from affectkit.models import AffectModel
    from affectkit.models.backbones.conversion import convert_pretrained
    from affectkit.models.backbones.pretrained import resolve_weights

    monkeypatch.setenv("AFFECTKIT_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(FileNotFoundError) as error:
        resolve_weights("vggface2_senet50")
    message = str(error.value)
    assert str(tmp_path / "weights" / "vggface2_senet50.weights.h5") in message
    assert "rcmalli_vggface_tf_notop_senet50.h5" in message
    assert "affectkit convert-weights --name vggface2_senet50" in message
    assert "--set weights=null" in message

    shape = (70, 70, 3)
    source = keras_randomize(keras_vggface_senet50(shape, **KERAS_VGGFACE_TINY))
    path = str(tmp_path / "rcmalli_vggface_tf_notop_senet50.h5")
    write_keras2_h5(source, path)
    import affectkit.models.backbones.pretrained as pretrained

    tiny = dict(KERAS_VGGFACE_TINY, bottleneck_widths=[16, 24, 32, 40])
    info = pretrained.PRETRAINED["vggface2_senet50"]
    record = convert_weights(info["source"], info["backbone"], path,
                             pretrained.pretrained_path("vggface2_senet50"),
                             input_shape=shape, **tiny)
    model = AffectModel.from_preset("zhang2020_mtanet", schema="abaw3", image_size=70,
                                    weights="vggface2_senet50",
                                    backbone={k: v for k, v in record["backbone"].items()
                                              if k in tiny})
    assert model.backbone_config["padding"] == "same"
    frames = np.random.default_rng(1).random((2, *shape)).astype("float32")
    bgr = frames[..., ::-1] * 255.0 - np.array([91.4953, 103.8827, 131.0912], "float32")
    features = model.backbone(model.get_layer("normalization")(frames))
    assert relative_difference(np.asarray(features), source.predict(bgr, verbose=0)) <= TOLERANCE
    with pytest.raises(ConversionError):  # a SENet file is no ResNet-50
        convert_pretrained("imagenet_inception_v3", path)


# ----------------------------------------------------------------------- wrong checkpoints


def test_a_wrong_checkpoint_lists_missing_unexpected_and_misshaped_tensors(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {"conv1.weight": rng.normal(size=(64, 3, 7, 7)).astype("float32"),
               "bn1.weight": np.ones(32, "float32"), "bn1.bias": np.zeros(32, "float32"),
               "bn1.running_mean": np.zeros(32, "float32"),
               "bn1.running_var": np.ones(32, "float32"),
               "somewhere.else.weight": np.ones(3, "float32")}
    path = str(tmp_path / "wrong.safetensors")
    save_file(tensors, path)
    with pytest.raises(ConversionError) as error:
        convert_weights("torchvision", "resnet50", path, str(tmp_path / "x.weights.h5"),
                        input_shape=(64, 64, 3))
    message = str(error.value)
    assert path in message
    assert "missing (" in message and "layer1.0.conv1" in message
    assert "wrongly shaped (1): stem_bn" in message
    assert "unexpected (1): somewhere.else.weight" in message
    assert not os.path.exists(tmp_path / "x.weights.h5")


def test_convert_weights_command_names_the_bad_file(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "not_a_checkpoint.h5"
    bad.write_text("hello")
    result = subprocess.run(
        [sys.executable, "-m", "affectkit.cli", "convert-weights", "--source", "keras",
         "--backbone", "inception_v3", "--in", str(bad), "--out", str(tmp_path / "o.weights.h5")],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr


def test_a_model_built_for_converted_weights_takes_their_layout_and_input(tmp_path):
    """keras.applications' ResNet50 weights in a paper network: the backbone gets the
    stride on the 1x1 and the model normalises [0, 1] RGB as keras' own `preprocess_input`
    does (BGR, 0-255, minus the ImageNet mean), with nothing said but the weights file."""
    from affectkit.models import AffectModel

    source = keras_randomize(keras.applications.ResNet50(weights=None, include_top=False,
                                                         input_shape=(64, 64, 3)))
    path = str(tmp_path / "resnet50.weights.h5")
    source.save_weights(path)
    out = str(tmp_path / "converted.weights.h5")
    convert_weights("keras", "resnet50", path, out, input_shape=(64, 64, 3))
    model = AffectModel.from_preset("zhang2020_mtanet", schema="abaw3", image_size=64,
                                    backbone={"name": "resnet50"}, weights=out)
    assert model.backbone_config["stride_in_1x1"] is True
    frames = np.random.default_rng(1).random((2, 64, 64, 3)).astype("float32")  # RGB [0, 1]
    features = model.backbone(model.get_layer("normalization")(frames))
    ref = source.predict(keras.applications.resnet50.preprocess_input(frames * 255.0),
                         verbose=0)
    assert relative_difference(np.asarray(features), ref) <= TOLERANCE

    with pytest.raises(ValueError, match="weights of a resnet50 backbone"):
        AffectModel.from_preset("zhang2020_mtanet", image_size=64, weights=out)


def test_a_model_with_the_imagenet_caffe_input_reloads_in_safe_mode(tmp_path):
    """The normalisation converted keras ResNet50 weights bring is saved in `model.keras`
    and reloads in a fresh process in safe mode, giving the same outputs."""
    from affectkit.models import AffectModel
    from tests.keras_checks import assert_reloads_in_fresh_process

    model = AffectModel.from_preset(
        "zhang2020_mtanet", schema="abaw3", image_size=32, normalization="imagenet_caffe",
        backbone={"name": "resnet50", "stride_in_1x1": True, "depths": [1, 1, 1, 1],
                  "stem_width": 8, "widths": [16, 32, 64, 128]},
        neck={"width": 16})
    frames = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    bgr = frames[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68], "float32")
    assert np.allclose(model.get_layer("normalization")(frames), bgr, atol=1e-4)
    assert_reloads_in_fresh_process(model, frames, tmp_path)


def test_a_paper_preset_without_its_weights_stops_or_warns(tmp_path, monkeypatch):
    """Missing named weights stop a run before any work, naming the command that makes
    them; `weights=null` trains from scratch with a warning; frozen layers of a randomly
    initialised backbone are refused."""
    from affectkit import presets
    from affectkit.models import AffectModel
    from affectkit.recipes import get_recipe

    monkeypatch.setenv("AFFECTKIT_WEIGHTS", str(tmp_path / "empty"))
    recipe = get_recipe("zhang2020_mtanet")
    config = presets.resolve("zhang2020_mtanet", "paper")
    with pytest.raises(FileNotFoundError, match="convert-weights --name vggface2_senet50"):
        recipe(config, str(tmp_path), str(tmp_path / "run"), preset="paper").run()
    assert not os.path.exists(tmp_path / "run" / "model.keras")

    scratch = recipe(dict(config, weights=None), str(tmp_path), str(tmp_path / "r"),
                     preset="paper")
    with pytest.warns(UserWarning, match="trains from random initialisation"):
        scratch.check_weights()

    network = AffectModel.from_preset("zhang2020_mtanet", image_size=32, neck={"width": 8},
                                      backbone={"depths": [1, 1, 1, 1], "stem_width": 8,
                                                "widths": [16, 32, 64, 128]})
    network.backbone.get_layer("stem_conv").trainable = False
    with pytest.raises(ValueError, match="would stay randomly initialised"):
        scratch.check_frozen_layers(network)
