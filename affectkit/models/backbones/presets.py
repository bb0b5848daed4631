"""Plain-dict presets: a preset name and overrides -> the family builder's arguments."""

import inspect


def preset_config(presets, name, overrides):
    """The builder arguments of `presets[name]` with `overrides` applied.

    The model is named after the preset unless `overrides` has a `model_name`.

    Example:

    ```python
    preset_config(senet.PRESETS, "senet50", {"input_shape": (112, 112, 3)})
    ```
    """
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(presets)}.")
    overrides = dict(overrides)
    config = {**presets[name], "name": overrides.pop("model_name", name)}
    config.update(overrides)
    return config


def builder_arguments(builder, presets, preset, overrides):
    """Every argument of `builder` for a preset (a name in `presets`, or a dict of builder
    arguments) with `overrides`: the builder's defaults where neither sets one (for
    counting weights or widths from the hyperparameters without building).

    Example:

    ```python
    builder_arguments(senet.bottleneck_resnet, senet.PRESETS, "senet50", {})["widths"]
    ```
    """
    config = (preset_config(presets, preset, overrides) if isinstance(preset, str)
              else {**preset, **overrides})
    defaults = {k: p.default for k, p in inspect.signature(builder).parameters.items()}
    return {**defaults, **config}
