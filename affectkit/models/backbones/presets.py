"""Plain-dict presets: a preset name and overrides -> the family builder's arguments."""


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
