"""Optimizers from the plain-dict specs of recipe presets.

    {"name": "adam" | "adamw" | "sgd", "learning_rate": 1e-3, "weight_decay": 0.0,
     "momentum": 0.9 (sgd)}

`weight_decay` is Keras 3's decoupled decay (applied to the weights, not added to the
gradient as PyTorch's `weight_decay` is).
"""

import keras

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
              "sgd": keras.optimizers.SGD}


def build_optimizer(spec):
    """A fresh Keras optimizer from a spec dict (see the module docstring).

    Example:
    >>> build_optimizer({"name": "sgd", "learning_rate": 1e-4, "momentum": 0.9})
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r}: expected one of {sorted(OPTIMIZERS)} "
                         f"(spec {dict(spec, name=name)}).")
    known = {"learning_rate", "weight_decay", "momentum"}
    unknown = sorted(set(spec) - known)
    if unknown or ("momentum" in spec and name != "sgd"):
        raise ValueError(f"optimizer {name}: unknown settings {unknown or ['momentum']}; "
                         f"expected {sorted(known if name == 'sgd' else known - {'momentum'})}.")
    if spec.get("weight_decay") is None:
        spec.pop("weight_decay", None)
    return OPTIMIZERS[name](**spec)
