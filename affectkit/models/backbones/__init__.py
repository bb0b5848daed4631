"""Backbones by name: one file per family, each a functional builder with plain-dict presets.

`build_backbone(name, input_shape, weights=None, **overrides)` builds any registered
preset; `weights` is always a local file (nothing is downloaded). Any Keras image model
file can serve as a backbone through `model_file_backbone(path, layer=...)`.
"""

from affectkit.models.backbones import inception, regnet, resnet_vggface2, senet
from affectkit.models.backbones.model_file import model_file_backbone  # noqa: F401


def _preset_builder(module):
    def build(name, input_shape, weights=None, **overrides):
        return module.build_preset(name, input_shape=input_shape, weights=weights, **overrides)

    return build


def _inception_v3(name, input_shape, weights=None, **overrides):
    return inception.inception_v3_features(input_shape, weights=weights, **overrides)


def _vggface2(name, input_shape, weights=None, **overrides):
    return resnet_vggface2.vggface2_resnet50(input_shape, weights=weights, **overrides)


BACKBONES = {
    **{name: _preset_builder(senet) for name in senet.PRESETS},
    **{name: _preset_builder(regnet) for name in regnet.PRESETS},
    "inception_v3": _inception_v3,
    "vggface2_resnet50": _vggface2,
}


def available_backbones():
    """Names accepted by `build_backbone`."""
    return sorted(BACKBONES)


def build_backbone(name, input_shape, weights=None, **overrides):
    """Builds the backbone preset `name` as a functional model returning its feature map.

    Args:
        name: a preset name from `available_backbones()`.
        input_shape: `(height, width, channels)`.
        weights: a local weights file or None (random initialisation).
        **overrides: the family builder's hyperparameters (depths, widths, cut, ...).
    """
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}: expected one of {', '.join(available_backbones())}."
        )
    return BACKBONES[name](name, input_shape=input_shape, weights=weights, **overrides)
