"""Presets: one plain-dict file per paper, named after its recipe.

Each file holds `MODEL`, the paper's network as `AffectModel` arguments
(`AffectModel.from_preset(name)`), `RUNS`, the recipe's run presets (`paper`, the
settings the paper gives, and `cpu_demo`, small enough to train on the demo data on two CPU
cores), each a nested dict whose `model` entry overrides `MODEL`, and `SPACES`, the
`affectkit tune` search spaces of those presets, from the paper's ablations. Nothing here imports
TensorFlow, so listing presets is instant.

Overrides merge into a preset key by key (`merge`), and dotted keys address nested entries
(`set_key(config, "stages.stage1.epochs", 3)`).
"""

import copy
import importlib
import json

RECIPES = (
    "zhang2020_mtanet",
    "do2020_stat_temporal",
    "liu2023_multimodal_ensemble",
    "haider2022_mtl_ensemble",
    "phan2022_regnet_transformer",
)
# Keys that say which block (or backbone) a dict configures.
IDENTITY_KEYS = ("type", "name")


def available():
    """The recipe names that have presets."""
    return RECIPES


def _module(name):
    if name not in RECIPES:
        raise ValueError(f"Unknown preset {name!r}: expected one of {', '.join(RECIPES)}.")
    return importlib.import_module(f"affectkit.presets.{name}")


def title(name):
    """The paper of a recipe: its preset file's first docstring paragraph."""
    first = (_module(name).__doc__ or name).strip().split("\n\n")[0]
    return " ".join(first.split()).split(": ", 1)[-1]


def model_preset(name):
    """A copy of the `AffectModel` arguments of a paper's network."""
    return copy.deepcopy(_module(name).MODEL)


def run_presets(name):
    """A copy of a recipe's run presets: dict preset name -> nested config."""
    return copy.deepcopy(_module(name).RUNS)


def search_space(name, preset="paper"):
    """A copy of a recipe's `affectkit tune` search space for a run preset (`SPACES`; the
    `paper` one for presets without their own): hyperparameter name -> entry
    (`affectkit.tuning.spaces`)."""
    spaces = _module(name).SPACES
    return copy.deepcopy(spaces.get(preset, spaces["paper"]))


def merge(base, overrides):
    """`base` with `overrides` merged in, key by key, recursively (neither is changed).

    A dict merges into a dict, except that a dict with another `"type"` (a block) or
    `"name"` (a backbone) replaces it, since a different block takes other arguments;
    anything else replaces the value.

    Example:
    >>> merge({"neck": {"type": "avg_max", "width": 512}}, {"neck": {"width": 64}})
    {'neck': {'type': 'avg_max', 'width': 64}}
    """
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        old = merged.get(key)
        same_kind = (isinstance(old, dict) and isinstance(value, dict)
                     and all(value.get(k, old.get(k)) == old.get(k) for k in IDENTITY_KEYS))
        merged[key] = merge(old, value) if same_kind else copy.deepcopy(value)
    return merged


def parse_value(text):
    """A `--set` value: JSON when it parses (numbers, true/false/null, lists, dicts), else the
    string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def set_key(config, dotted, value):
    """Sets `config[a][b][c] = value` for `dotted = "a.b.c"` (a number indexes a list:
    `model.feature_inputs.probabilities.0`); the key must exist in the preset unless its
    parent is a dict of blocks or options that may take new keys (`model.*`)."""
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = _child(node, part, dotted, parts[: i + 1])
        if child is None:
            if parts[0] != "model" or isinstance(node, list):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"--set {dotted}: {where!r} is not a group of settings; "
                                 f"expected one of {_names(node)}.")
            child = node[part] = {}
        node = child
    last = parts[-1]
    if isinstance(node, list):
        _child(node, last, dotted, parts)
        node[int(last)] = value
        return config
    if last not in node and parts[0] != "model":
        raise ValueError(f"--set {dotted}: no setting {last!r}; expected one of "
                         f"{_names(node)}.")
    node[last] = value
    return config


def _child(node, part, dotted, where):
    """The group of settings (dict or list) at `node[part]`, or None where there is none."""
    if isinstance(node, list):
        if not (part.isdigit() and int(part) < len(node)):
            raise ValueError(f"--set {dotted}: {'.'.join(where[:-1])!r} is a list of "
                             f"{len(node)}; expected an index 0..{len(node) - 1}, got {part!r}.")
        child = node[int(part)]
    else:
        child = node.get(part)
    return child if isinstance(child, (dict, list)) else None


def _names(node):
    return list(range(len(node))) if isinstance(node, list) else sorted(node)


def resolve(name, preset="paper", sets=(), epochs=None, config=None):
    """The run config of a recipe: its preset `preset` (or a whole `config`, e.g. from a
    run's `config.json`), its `model` completed from the paper's network (`MODEL`), with
    `sets` applied (`"dotted.key=value"`, values parsed by
    `parse_value`) and, with `epochs`, every stage's epochs set to it.

    Example:
    >>> resolve("zhang2020_mtanet", "cpu_demo", sets=["data.batch_size=16"], epochs=1)
    """
    if config is None:
        runs = run_presets(name)
        if preset not in runs:
            raise ValueError(f"{name} has no preset {preset!r}: expected one of {sorted(runs)}.")
        config = runs[preset]
    config = copy.deepcopy(config)
    # The whole network, so that every model key can be set (and is recorded in config.json).
    # Its label schema is the run's `edition`.
    config["model"] = merge(model_preset(name), config.get("model") or {})
    config["model"].pop("schema", None)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. "
                             "stages.stage1_sum.epochs=3.")
        set_key(config, key.strip(), parse_value(value.strip()))
    if epochs is not None:
        for stage in config["stages"].values():
            stage["epochs"] = int(epochs)
    return config
