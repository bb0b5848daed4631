"""Backbones by name: one file per family, each a functional builder with plain-dict presets.

A preset name is all it takes to choose a backbone: `build_backbone(name, input_shape)`
builds it (feature map, or a vector with `pooling="avg"` / `"max"`),
`backbone_normalization(name)` says which input normalisation its weights expect and
`normalization_layer(kind)` is the layer that maps [0, 1] RGB to it, and
`backbone_feature_width(name)` gives its output channels without building it. `weights` is
always a local file (nothing is downloaded). Any Keras image model file can serve as a
backbone through `model_file_backbone(path, layer=...)`.

| preset | family (file) | normalisation | output channels |
|---|---|---|---|
| `resnet50`, `senet50`, `resnext50`, `resnext50_cbam` | bottleneck ResNet (`senet.py`) | imagenet | 2048 |
| `regnetx_*`, `regnety_*` (400MF ... 3.2GF) | RegNet (`regnet.py`) | imagenet | last width (888 for `regnety_1.6gf`) |
| `vggface2_resnet50` | VGGFace2 ResNet-50 (`resnet_vggface2.py`) | vggface2 | 2048 |
| `inception_v3` | InceptionV3 cut at `mixed7` (`inception.py`) | inception | 768 |

Shared parts: `blocks` (convolution, BatchNorm, squeeze-excitation, `GroupedConv2D`),
`normalization` (input normalisation layers), `weights` (weight files, freezing),
`presets` (preset name + overrides -> builder arguments).
"""

from affectkit.models.backbones import inception, regnet, resnet_vggface2, senet
from affectkit.models.backbones.model_file import model_file_backbone  # noqa: F401
from affectkit.models.backbones.normalization import normalization_layer  # noqa: F401

FAMILIES = (senet, regnet, resnet_vggface2, inception)
BACKBONES = {name: family for family in FAMILIES for name in family.PRESETS}


def available_backbones():
    """Names accepted by `build_backbone`."""
    return sorted(BACKBONES)


def _family(name):
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}: expected one of {', '.join(available_backbones())}."
        )
    return BACKBONES[name]


def build_backbone(name, input_shape, weights=None, **hyperparameters):
    """Builds the backbone preset `name` as a functional model returning its feature map.

    The model takes its input already normalised the way its source network takes it
    (`backbone_normalization(name)`; put `normalization_layer(...)` in front of it for RGB in
    [0, 1]).

    Args:
        name: a preset name from `available_backbones()`.
        input_shape: `(height, width, channels)`.
        weights: a local weights file or None (random initialisation).
        **hyperparameters: the family builder's arguments (depths, widths, cut, ...);
            `pooling="avg"` or `"max"` returns a `(batch, channels)` vector instead of the
            `(batch, height, width, channels)` map.

    Example:

    ```python
    backbone = build_backbone("resnext50", (112, 112, 3))           # (None, 4, 4, 2048)
    vector = build_backbone("regnety_1.6gf", (112, 112, 3), pooling="avg")   # (None, 888)
    ```
    """
    family = _family(name)
    return family.build_preset(name, input_shape=tuple(input_shape), weights=weights,
                               **hyperparameters)


def backbone_normalization(name):
    """The input normalisation the weights of preset `name` expect.

    Returns:
        `"imagenet"` (RGB on [0, 1], minus torchvision's ImageNet mean, over its standard
        deviation), `"vggface2"` (BGR on 0-255 minus the VGGFace2 mean), `"inception"`
        (RGB in [-1, 1]) or `None` (RGB in [0, 1] as it is); see
        `affectkit.models.backbones.normalization`.

    Example:

    ```python
    backbone_normalization("vggface2_resnet50")   # "vggface2"
    ```
    """
    return _family(name).NORMALIZATION


def backbone_feature_width(name, **hyperparameters):
    """Channels of the final feature map (or pooled vector) of preset `name`, computed from
    the hyperparameters without building the model.

    Args:
        name: a preset name from `available_backbones()`.
        **hyperparameters: as for `build_backbone` (e.g. `widths`, `cut`).

    Example:

    ```python
    backbone_feature_width("regnety_1.6gf")               # 888
    backbone_feature_width("inception_v3")                # 768 (cut at mixed7)
    backbone_feature_width("resnet50", widths=(16, 32, 64, 128))   # 128
    ```
    """
    return _family(name).feature_width(name, **hyperparameters)
