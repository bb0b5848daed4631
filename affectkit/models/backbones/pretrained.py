"""Named pretrained weights: the checkpoints the papers fine-tune, as local files.

A name such as `vggface2_senet50` stands for `<folder>/vggface2_senet50.weights.h5` (and its
conversion record `.json`), the file `affectkit convert-weights --name vggface2_senet50
--in CHECKPOINT` writes there. The folder is `$AFFECTKIT_WEIGHTS`, by default
`~/.affectkit/weights`. Nothing is ever downloaded: the user gets each public checkpoint
(`PRETRAINED[name]["checkpoint"]`, from `["where"]`) and converts it once.

| name | backbone | paper | checkpoint |
|---|---|---|---|
| `vggface2_senet50` | `senet50` (Caffe layout) | Zhang & Gu 2020 | keras-vggface `rcmalli_vggface_tf_notop_senet50.h5` |
| `vggface2_resnet50` | `vggface2_resnet50` | Do et al. 2020 | keras-vggface `rcmalli_vggface_tf_notop_resnet50.h5` |
| `imagenet_inception_v3` | `inception_v3` | Haider et al. 2022 | keras.applications InceptionV3 notop `.h5` |
| `imagenet_regnety_1.6gf` | `regnety_1.6gf` | Phan et al. 2022 | torchvision `regnet_y_1_6gf` state dict |
"""

import os

KERAS_VGGFACE_RELEASE = "https://github.com/rcmalli/keras-vggface/releases/tag/v2.0"
PRETRAINED = {
    "vggface2_senet50": {
        "backbone": "senet50", "source": "keras-vggface",
        "checkpoint": "rcmalli_vggface_tf_notop_senet50.h5",
        "where": f"keras-vggface's release v2.0 ({KERAS_VGGFACE_RELEASE}); the model with "
                 "the classifier, rcmalli_vggface_tf_senet50.h5, converts as well",
        "paper": "zhang2020_mtanet: SENet-50 trained on VGGFace2 (Cao et al. 2018)",
    },
    "vggface2_resnet50": {
        "backbone": "vggface2_resnet50", "source": "keras-vggface",
        "checkpoint": "rcmalli_vggface_tf_notop_resnet50.h5",
        "where": f"keras-vggface's release v2.0 ({KERAS_VGGFACE_RELEASE})",
        "paper": "do2020_stat_temporal: ResNet-50 trained on VGGFace2 (Cao et al. 2018)",
    },
    "imagenet_inception_v3": {
        "backbone": "inception_v3", "source": "keras",
        "checkpoint": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "where": "keras.applications: InceptionV3(weights='imagenet', include_top=False) "
                 "keeps it in ~/.keras/models/ on a machine that may download",
        "paper": "haider2022_mtl_ensemble: InceptionV3 trained on ImageNet",
    },
    "imagenet_regnety_1.6gf": {
        "backbone": "regnety_1.6gf", "source": "torchvision",
        "checkpoint": "regnet_y_1_6gf-*.pth (or that state dict as .safetensors)",
        "where": "torchvision: regnet_y_1_6gf(weights='IMAGENET1K_V1') keeps it in "
                 "~/.cache/torch/hub/checkpoints/ on a machine that may download",
        "paper": "phan2022_regnet_transformer: RegNetY-1.6GF trained on ImageNet",
    },
}
WEIGHTS_ENV = "AFFECTKIT_WEIGHTS"
DEFAULT_FOLDER = os.path.join("~", ".affectkit", "weights")


def weights_folder():
    """The folder of named weights: `$AFFECTKIT_WEIGHTS`, else `~/.affectkit/weights`."""
    return os.path.expanduser(os.environ.get(WEIGHTS_ENV) or DEFAULT_FOLDER)


def pretrained_path(name):
    """Where the named weights `name` live (whether or not they are there yet)."""
    if name not in PRETRAINED:
        raise ValueError(f"Unknown named weights {name!r}: expected one of "
                         f"{sorted(PRETRAINED)}.")
    return os.path.join(weights_folder(), f"{name}.weights.h5")


def conversion_command(name):
    """The `affectkit convert-weights` command that makes the named weights."""
    return f"affectkit convert-weights --name {name} --in {PRETRAINED[name]['checkpoint']}"


def resolve_weights(weights, where="weights"):
    """The local file of `weights`: a named weight's file, or the path itself; None stays.

    Raises `FileNotFoundError` naming where the file was expected, how to get and convert
    the checkpoint, and how to train from scratch instead.

    Example:

    ```python
    resolve_weights("vggface2_senet50")  # ~/.affectkit/weights/vggface2_senet50.weights.h5
    ```
    """
    if weights is None:
        return None
    weights = os.fspath(weights)
    if weights in PRETRAINED:
        path = pretrained_path(weights)
        if not os.path.isfile(path):
            info = PRETRAINED[weights]
            raise FileNotFoundError(
                f"{where}={weights!r}: no file {path} (named weights live in "
                f"${WEIGHTS_ENV}, default {DEFAULT_FOLDER}). Get {info['checkpoint']} from "
                f"{info['where']}, then run: {conversion_command(weights)}. To train from "
                f"random weights instead: --set {where}=null.")
        return path
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{where}={weights!r}: no such file, and not one of the named weights "
            f"{sorted(PRETRAINED)}; expected a local weights file or a name.")
    return path
