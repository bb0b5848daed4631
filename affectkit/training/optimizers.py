"""Optimizers from the plain-dict specs of recipe presets.

    {"name": "adam" | "adamw" | "sgd", "learning_rate": 1e-3,
     "weight_decay": 0.0 | "l2": 0.0 (not both), "momentum": 0.9 (sgd),
     "schedule": {"name": "cosine_annealing", "t_max": 10000, "eta_min": 0.0}}

- `weight_decay` is Keras 3's decoupled decay (applied to the weights, not added to the
  gradient as PyTorch's `weight_decay` is).
- `l2` is PyTorch's `weight_decay`: the coupled L2 term `grad += l2 * w`, added to the
  gradient of every trained variable before the optimizer's moments (`CoupledL2`);
  `adamw` always decays its weights (Keras' default 0.004): for `l2`, use `adam`.
- `schedule` makes `learning_rate` the initial rate of a schedule stepped every batch
  (`CosineAnnealing`, PyTorch's `CosineAnnealingLR`).

The optimizer and schedule classes are registered Keras objects (`affectkit>...`), so a
compiled model saved with them reloads once this module is imported.
"""

import math

import keras
from keras import ops

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
              "sgd": keras.optimizers.SGD}


@keras.saving.register_keras_serializable(package="affectkit")
class CosineAnnealing(keras.optimizers.schedules.LearningRateSchedule):
    """PyTorch's `CosineAnnealingLR` (Loshchilov & Hutter, "SGDR", ICLR 2017, without
    restarts), stepped every batch as in the ABAW3 winner's code used by Haider et al. 2022.

    At step t (the optimizer's `iterations`, 0 on the first batch), PyTorch's closed form:

        lr(t) = eta_min + (initial_learning_rate - eta_min) * (1 + cos(pi * t / t_max)) / 2.

    Like PyTorch's schedule it is periodic: past `t_max` the rate rises again, back to
    `initial_learning_rate` at `2 * t_max` (unlike `keras.optimizers.schedules.CosineDecay`,
    which stays at its floor).

    Args:
        initial_learning_rate: the rate at step 0 (PyTorch's base lr).
        t_max: half the period, in steps (`T_max`).
        eta_min: the lowest rate, reached at `t_max`.
        name: optional name.

    Example:
    >>> schedule = CosineAnnealing(1e-3, t_max=10000)
    >>> keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    """

    def __init__(self, initial_learning_rate, t_max, eta_min=0.0, name=None):
        if not t_max or t_max <= 0:
            raise ValueError(f"CosineAnnealing: t_max={t_max!r}; expected a positive number of "
                             "steps.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.t_max = float(t_max)
        self.eta_min = float(eta_min)
        self.name = name

    def __call__(self, step):
        # (1 + cos(pi t / T)) / 2 = cos(pi t / (2 T))^2, of period 2 T in t: in float32 this
        # keeps its precision near the floor and at large steps.
        period = 2.0 * self.t_max
        phase = ops.mod(ops.cast(step, "float32"), period) / period
        half = ops.cos(math.pi * phase)
        return self.eta_min + (self.initial_learning_rate - self.eta_min) * half * half

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "t_max": self.t_max,
                "eta_min": self.eta_min, "name": self.name}


SCHEDULES = {"cosine_annealing": CosineAnnealing}


class CoupledL2:
    """Mixin of `coupled_l2`: PyTorch's `weight_decay`, the L2 term added to the gradient.

    Each update uses `g + l2 * w` for the gradient `g` of a variable `w` (the gradient of
    `loss + l2 / 2 * ||w||^2`), before the optimizer's moments, for every trained variable
    (BatchNorm scales and biases too, as PyTorch applies it to every parameter of its
    group). It is added in `update_step`, after gradients are unscaled
    (`keras.mixed_precision.LossScaleOptimizer`), summed across `tf.distribute` replicas and
    clipped, once per variable whatever the number of replicas. Zhang & Gu 2020 (MTANet)
    give their weight decay in this form (PyTorch). Keras' own `weight_decay` is decoupled
    (applied to the weights): setting both is refused.
    """

    def __init__(self, *args, l2=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if l2 < 0:
            raise ValueError(f"{type(self).__name__}: l2={l2}; expected >= 0.")
        if l2 and self.weight_decay:
            raise ValueError(f"{type(self).__name__}: both l2={l2} (coupled, PyTorch's "
                             f"weight_decay) and weight_decay={self.weight_decay} (Keras' "
                             "decoupled decay); expected one of them.")
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.convert_to_tensor(gradient)
            gradient = gradient + ops.cast(self.l2, gradient.dtype) * ops.cast(variable,
                                                                               gradient.dtype)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config


_COUPLED_L2 = {}


def coupled_l2(optimizer_class):
    """The registered subclass `CoupledL2<Name>` of a Keras optimizer class with the
    `l2=` argument of `CoupledL2` (made once per class).

    Example:
    >>> optimizer = coupled_l2(keras.optimizers.Adam)(learning_rate=1e-3, l2=1e-3)
    """
    if optimizer_class not in _COUPLED_L2:
        name = f"CoupledL2{optimizer_class.__name__}"
        subclass = type(name, (CoupledL2, optimizer_class), {
            "__module__": __name__,
            "__doc__": f"`{optimizer_class.__name__}` with PyTorch's coupled L2 (`CoupledL2`).",
        })
        _COUPLED_L2[optimizer_class] = keras.saving.register_keras_serializable(
            package="affectkit", name=name)(subclass)
    return _COUPLED_L2[optimizer_class]


# Registered at import, so that saved optimizers reload.
for _optimizer_class in OPTIMIZERS.values():
    coupled_l2(_optimizer_class)


def build_schedule(learning_rate, spec):
    """The learning-rate schedule of an optimizer spec's `schedule` entry, starting at
    `learning_rate` (see the module docstring)."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r}: expected one of {sorted(SCHEDULES)} "
                         f"(spec {dict(spec, name=name)}).")
    known = {"t_max", "eta_min"}
    unknown = sorted(set(spec) - known)
    if unknown or "t_max" not in spec:
        raise ValueError(f"schedule {name}: unknown settings {unknown}; expected t_max "
                         f"(steps) and optionally eta_min; got {sorted(spec)}.")
    return SCHEDULES[name](learning_rate, **spec)


def build_optimizer(spec):
    """A fresh Keras optimizer from a spec dict (see the module docstring).

    Example:
    >>> build_optimizer({"name": "sgd", "learning_rate": 1e-4, "momentum": 0.9})
    >>> build_optimizer({"name": "adam", "learning_rate": 1e-3, "l2": 1e-3})
    >>> build_optimizer({"name": "sgd", "learning_rate": 1e-3, "momentum": 0.9,
    ...                  "schedule": {"name": "cosine_annealing", "t_max": 10000}})
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r}: expected one of {sorted(OPTIMIZERS)} "
                         f"(spec {dict(spec, name=name)}).")
    known = {"learning_rate", "weight_decay", "l2", "momentum", "schedule"}
    unknown = sorted(set(spec) - known)
    if unknown or ("momentum" in spec and name != "sgd"):
        raise ValueError(f"optimizer {name}: unknown settings {unknown or ['momentum']}; "
                         f"expected {sorted(known if name == 'sgd' else known - {'momentum'})}.")
    for key in ("weight_decay", "l2", "schedule"):
        if spec.get(key) is None:
            spec.pop(key, None)
    if spec.get("l2") and (spec.get("weight_decay") or name == "adamw"):
        decay = spec.get("weight_decay", "its default 0.004" if name == "adamw" else None)
        raise ValueError(f"optimizer {name}: both l2={spec['l2']} (coupled, PyTorch's "
                         f"weight_decay) and weight_decay={decay} (Keras' decoupled decay); "
                         "expected one of them (adam with l2 for PyTorch's Adam(weight_decay)).")
    if "schedule" in spec:
        if "learning_rate" not in spec:
            raise ValueError(f"optimizer {name}: a schedule starts at learning_rate; expected "
                             f"learning_rate in {dict(spec, name=name)}.")
        spec["learning_rate"] = build_schedule(spec["learning_rate"], spec.pop("schedule"))
    if "l2" in spec:
        return coupled_l2(OPTIMIZERS[name])(**spec)
    return OPTIMIZERS[name](**spec)
