"""Search spaces: hyperparameters as data, mapped onto the dotted keys of a run config.

A space maps a hyperparameter's name to an entry:

    {"choices": [a, b, ...]}                  one of these values (numbers, text, booleans)
    {"choices": {"label": value, ...}}        one of these labels; the key takes its value
                                              (any JSON: a list, a dict, true/false)
    {"min": lo, "max": hi}                    a range: integers when both are, else floats;
                                              optional "step", "sampling" linear|log|reverse_log
    "keys": ["stages.stage1.epochs", ...]     optional: the dotted config keys it sets
                                              (default: the name itself is the key)

A key that holds a group of settings (a stage, say) set to true keeps it and set to false
drops it: `"stage2": {"choices": {"on": true, "off": false}, "keys": ["stages.stage2"]}`.
Each recipe's spaces live in its preset file (`affectkit.presets.search_space`); a JSON or
YAML file overrides them entry by entry (`load_space`), `null` removing one.

Nothing here imports TensorFlow or KerasTuner, except `declare`, which declares a space's
hyperparameters on a `keras_tuner.HyperParameters`.
"""

import copy
import json
import os

from affectkit import presets

SAMPLINGS = ("linear", "log", "reverse_log")
ENTRY_KEYS = {"choices", "min", "max", "step", "sampling", "keys"}


def entry_keys(name, entry):
    """The dotted config keys a hyperparameter sets."""
    return list(entry.get("keys") or [name])


def check_space(space, where="search space"):
    """Raises ValueError naming `where` and the entry unless every entry is well formed."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{where}: expected a mapping of hyperparameter names to entries "
                         f"({{\"choices\": [...]}} or {{\"min\": a, \"max\": b}}), got {space!r}.")
    for name, entry in space.items():
        def fail(problem):
            raise ValueError(f"{where}: hyperparameter {name!r}: {problem}")

        if not isinstance(entry, dict):
            fail(f"expected a mapping with 'choices' or 'min'/'max', got {entry!r}.")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            fail(f"unknown fields {sorted(unknown)}; expected some of {sorted(ENTRY_KEYS)}.")
        keys = entry.get("keys", [name])
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            fail(f"'keys' must be a non-empty list of dotted config keys, got {keys!r}.")
        if "choices" in entry:
            if {"min", "max", "step", "sampling"} & set(entry):
                fail("give either 'choices' or a range ('min', 'max'), not both.")
            choices = entry["choices"]
            if not isinstance(choices, (list, dict)) or not choices:
                fail(f"'choices' must be a non-empty list or mapping, got {choices!r}.")
            if isinstance(choices, list):
                if not all(isinstance(c, (bool, int, float, str)) for c in choices):
                    fail("list choices must be numbers, text or booleans; give a mapping of "
                         "labels to values for lists or groups of settings.")
                types = {type(c) for c in choices}
                if len(types) > 1 and not types <= {int, float}:
                    fail(f"choices of one type expected, got {choices!r}.")
                if len(set(map(json.dumps, choices))) != len(choices):
                    fail(f"choices repeat: {choices!r}.")
        elif "min" in entry and "max" in entry:
            low, high = entry["min"], entry["max"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in (low, high)) or not low < high:
                fail(f"expected numbers min < max, got min={low!r}, max={high!r}.")
            sampling = entry.get("sampling", "linear")
            if sampling not in SAMPLINGS:
                fail(f"sampling {sampling!r}: expected one of {SAMPLINGS}.")
            if sampling != "linear" and low <= 0:
                fail(f"{sampling} sampling needs min > 0, got {low!r}.")
        else:
            fail("expected 'choices', or 'min' and 'max'.")
    return space


def load_space(path, base=None):
    """The space of a JSON or YAML file (`.yaml`/`.yml`) merged over `base`, entry by entry
    (an entry `null` removes that hyperparameter)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such search space file; expected JSON or YAML "
                                "mapping hyperparameter names to entries.")
    with open(path) as f:
        text = f.read()
    try:
        if path.lower().endswith((".yaml", ".yml")):
            import yaml

            overrides = yaml.safe_load(text)
        else:
            overrides = json.loads(text)
    except Exception as error:  # a parse error of either format, with its line
        raise ValueError(f"{path}: not a valid search space file ({error}).") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameter names to entries, "
                         f"got {type(overrides).__name__}.")
    space = copy.deepcopy(base or {})
    for name, entry in overrides.items():
        if entry is None:
            space.pop(name, None)
        else:
            space[name] = entry
    return check_space(space, where=path)


def labels(entry):
    """The values a hyperparameter takes in KerasTuner (a choice's label, or itself)."""
    choices = entry["choices"]
    return list(choices) if isinstance(choices, dict) else choices


def config_value(entry, value):
    """The config value of a hyperparameter's value (a label's value, else the value)."""
    choices = entry.get("choices")
    if isinstance(choices, dict):
        return copy.deepcopy(choices[value])
    if "min" in entry and isinstance(entry["min"], int) and isinstance(entry["max"], int):
        return int(value)
    return value


def get_key(config, dotted):
    """The value at a dotted key (numbers index lists); KeyError if there is none."""
    node = config
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(dotted)
    return node


def apply_values(config, space, values):
    """`config` (not changed) with each hyperparameter's value set at its keys; a group of
    settings is kept (true) or dropped (false)."""
    config = copy.deepcopy(config)
    dropped = []
    for name, entry in space.items():
        if name not in values:
            continue
        value = config_value(entry, values[name])
        for key in entry_keys(name, entry):
            try:
                current = get_key(config, key)
            except KeyError:
                current = None
            if isinstance(current, dict) and isinstance(value, bool):
                if not value:
                    dropped.append(key)
                continue
            presets.set_key(config, key, value)
    for key in dropped:  # last, so that other keys may still be set inside a dropped group
        parent, _, last = key.rpartition(".")
        (get_key(config, parent) if parent else config).pop(last, None)
    return config


def default_value(config, name, entry):
    """The value a hyperparameter has in `config` (the preset's), where the space holds it;
    else its first choice (or its minimum)."""
    try:
        current = [get_key(config, key) for key in entry_keys(name, entry)][0]
    except KeyError:
        current = None
    if "choices" in entry:
        choices = entry["choices"]
        if isinstance(choices, dict):
            if isinstance(current, dict):  # a group of settings present in the preset
                current = True
            return next((label for label, v in choices.items() if v == current),
                        next(iter(choices)))
        return current if current in choices else choices[0]
    in_range = (isinstance(current, (int, float)) and not isinstance(current, bool)
                and entry["min"] <= current <= entry["max"])
    return current if in_range else entry["min"]


def check_keys(config, space, where="search space"):
    """Raises ValueError unless every key of the space can be set in `config` (applying
    each entry's default)."""
    for name, entry in space.items():
        try:
            apply_values(config, {name: entry}, {name: default_value(config, name, entry)})
        except ValueError as error:
            raise ValueError(f"{where}: hyperparameter {name!r}: {error}") from None


def declare(hp, space, config):
    """Declares each hyperparameter of `space` on `hp` (a `keras_tuner.HyperParameters`),
    its default the value in `config`; returns `hp`."""
    for name, entry in space.items():
        default = default_value(config, name, entry)
        if "choices" in entry:
            choices = labels(entry)
            if all(isinstance(c, bool) for c in choices) and len(choices) == 2:
                hp.Boolean(name, default=bool(default))
            else:
                hp.Choice(name, choices, default=default)
        elif isinstance(entry["min"], int) and isinstance(entry["max"], int):
            hp.Int(name, entry["min"], entry["max"], step=entry.get("step"),
                   sampling=entry.get("sampling", "linear"), default=default)
        else:
            hp.Float(name, float(entry["min"]), float(entry["max"]), step=entry.get("step"),
                     sampling=entry.get("sampling", "linear"), default=float(default))
    return hp


def describe(space, config):
    """The lines of `affectkit tune --show-space`: each hyperparameter, its values, the keys
    it sets and the preset's value."""
    lines = []
    width = max(len(name) for name in space)
    for name, entry in space.items():
        if "choices" in entry:
            choices = entry["choices"]
            values = ("one of " + ", ".join(
                f"{label}={json.dumps(value)}" for label, value in choices.items())
                if isinstance(choices, dict) else "one of " + ", ".join(map(json.dumps, choices)))
        else:
            values = f"{entry['min']} .. {entry['max']}"
            if entry.get("step"):
                values += f" step {entry['step']}"
            if entry.get("sampling", "linear") != "linear":
                values += f" ({entry['sampling']})"
        keys = ", ".join(entry_keys(name, entry))
        lines.append(f"  {name:<{width}}  {values}")
        lines.append(f"  {'':<{width}}  sets {keys}; preset: "
                     f"{json.dumps(default_value(config, name, entry))}")
    return lines
