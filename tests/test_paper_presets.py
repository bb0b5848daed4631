"""Each recipe's `paper` preset at full size from converted weights: the named weights the
preset expects are converted from a source checkpoint of the right format (random weights:
nothing is downloaded) into `$AFFECTKIT_WEIGHTS`, and the recipe trains one epoch of every
stage on a tiny synthetic Aff-Wild2 layout and scores it. Slow: full-size networks on CPU.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from affectkit import presets
from affectkit.models.backbones.conversion import convert_pretrained
from affectkit.recipes import get_recipe
from tests.keras_checks import keras_vggface_senet50, write_keras2_h5

pytestmark = pytest.mark.slow

# The checkpoint format each paper's weights come in, made with random weights.
TORCHVISION_REGNET = """
import sys, torch, torchvision
from safetensors.torch import save_file
net = torchvision.models.regnet_y_1_6gf(weights=None)
save_file({k: v.contiguous() for k, v in net.state_dict().items()}, sys.argv[1])
"""


def source_checkpoint(name, folder):
    """A checkpoint in the public format of the named weights `name`."""
    if name == "vggface2_senet50":
        path = os.path.join(folder, "rcmalli_vggface_tf_notop_senet50.h5")
        write_keras2_h5(keras_vggface_senet50(), path)
    elif name == "vggface2_resnet50":
        from affectkit.models.backbones.resnet_vggface2 import vggface2_resnet50

        path = os.path.join(folder, "rcmalli_vggface_tf_notop_resnet50.h5")
        write_keras2_h5(vggface2_resnet50(), path)
    elif name == "imagenet_inception_v3":
        path = os.path.join(folder, "inception_v3_notop.weights.h5")
        keras.applications.InceptionV3(weights=None, include_top=False).save_weights(path)
    else:
        if importlib.util.find_spec("torchvision") is None:  # not imported: beside TF it crashes
            pytest.skip("torchvision makes the RegNet checkpoint (the bench extra: pip "
                        "install -e .[bench])")
        path = os.path.join(folder, "regnet_y_1_6gf.safetensors")
        # torch and TensorFlow do not share a process here: torch runs in its own.
        subprocess.run([sys.executable, "-c", TORCHVISION_REGNET, path], check=True)
    return path


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """Tiny synthetic layouts per edition: 4 videos (3 for training) of 48 frames."""
    from affectkit.data.synthetic import write_demo_dataset

    roots = {}

    def data(edition):
        if edition not in roots:
            roots[edition] = str(tmp_path_factory.mktemp(edition) / "data")
            write_demo_dataset(roots[edition], edition=edition, videos=4, frames=48, seed=1,
                               write_videos=False)
        return roots[edition]

    return data


def one_epoch(config):
    """The paper preset with one epoch per stage (do2020: one per face model, 2 folds)."""
    for stage in config["stages"].values():
        stage["epochs"] = 1
    if "face" in config:
        config["face"].update(epochs=1, folds=2)
    return config


@pytest.mark.parametrize("recipe, weights", [
    ("zhang2020_mtanet", "vggface2_senet50"),
    ("do2020_stat_temporal", "vggface2_resnet50"),
    ("haider2022_mtl_ensemble", "imagenet_inception_v3"),
    ("phan2022_regnet_transformer", "imagenet_regnety_1.6gf"),
])
def test_paper_preset_trains_at_full_size_from_converted_weights(
        recipe, weights, demo_data, tmp_path, monkeypatch):
    from affectkit.models.backbones import build_backbone
    from affectkit.models.backbones.pretrained import pretrained_path

    config = one_epoch(presets.resolve(recipe, "paper"))
    assert (config["face"]["weights"] if "face" in config else config["weights"]) == weights
    monkeypatch.setenv("AFFECTKIT_WEIGHTS", str(tmp_path / "weights"))
    record = convert_pretrained(weights, source_checkpoint(weights, str(tmp_path)))

    # The network the recipe builds holds the converted weights, in their layout.
    out = str(tmp_path / "run")
    run = get_recipe(recipe)(config, demo_data(config["edition"]), out, preset="paper")
    network = run.build_face_model() if "face" in config else run.build_model().backbone
    spec = {k: v for k, v in record["backbone"].items() if k != "name"}
    converted = build_backbone(record["backbone"]["name"], network.input_shape[1:],
                               weights=pretrained_path(weights), **spec)
    weighted = [[layer for layer in model.layers if layer.weights][:3]
                for model in (network, converted)]  # in order: Inception's names are Keras'
    for layer, expected in zip(*weighted):
        for got, value in zip(layer.get_weights(), expected.get_weights()):
            np.testing.assert_array_equal(got, value)

    report = run.run()
    assert np.isfinite(report["validation"]["score"])
    assert os.path.isfile(os.path.join(out, "model.keras"))
