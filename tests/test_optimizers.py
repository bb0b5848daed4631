"""Optimizer specs (`affectkit.training.optimizers`) against NumPy written from PyTorch's
formulas: the cosine-annealing schedule (`CosineAnnealingLR`, periodic past T_max) stepped
per batch, and PyTorch's coupled L2 weight decay in Adam and SGD, also under a loss-scale
optimizer and `tf.distribute`; config round trips, `.keras` save/load, and the presets of
Haider et al. 2022 and Zhang & Gu 2020 that use them."""

import copy
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from affectkit import presets
from affectkit.training.multitask_model import MultiTaskModel
from affectkit.training.optimizers import CosineAnnealing, build_optimizer, coupled_l2
from affectkit.tuning import spaces
from tests.keras_checks import assert_reloads_in_fresh_process, check_serialization

# --- NumPy references (PyTorch's formulas) ---------------------------------------------------


def np_cosine_annealing(lr0, t_max, steps, eta_min=0.0):
    """`torch.optim.lr_scheduler.CosineAnnealingLR`'s closed form at each step."""
    steps = np.asarray(steps, np.float64)
    return eta_min + (lr0 - eta_min) * (1 + np.cos(np.pi * steps / t_max)) / 2


def np_torch_adam(w, grads, lr, l2, betas=(0.9, 0.999), eps=1e-8):
    """`torch.optim.Adam(weight_decay=l2)` (amsgrad off) over the given gradients."""
    w = w.astype(np.float64).copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g + l2 * w
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        bias1, bias2 = 1 - betas[0] ** t, 1 - betas[1] ** t
        w = w - lr / bias1 * m / (np.sqrt(v) / np.sqrt(bias2) + eps)
    return w


def np_torch_sgd(w, grads, lr, l2, momentum=0.0):
    """`torch.optim.SGD(momentum=..., weight_decay=l2)` (no dampening, not Nesterov)."""
    w = w.astype(np.float64).copy()
    buffer = None
    for g in grads:
        d = g + l2 * w
        buffer = d if buffer is None else momentum * buffer + d
        w = w - lr * (buffer if momentum else d)
    return w


def keras_steps(optimizer, w, grads):
    variable = keras.Variable(w.astype(np.float32))
    for g in grads:
        optimizer.apply([g.astype(np.float32)], [variable])
    return keras.ops.convert_to_numpy(variable)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3, 4, 3))


# --- the schedule ------------------------------------------------------------------------------


def test_cosine_annealing_is_pytorchs_closed_form_and_periodic_past_t_max():
    steps = [0, 1, 2500, 5000, 9999, 10000, 10001, 15000, 20000, 25000, 30000]
    schedule = CosineAnnealing(1e-3, t_max=10000)
    values = [float(schedule(step)) for step in steps]
    np.testing.assert_allclose(values, np_cosine_annealing(1e-3, 10000, steps), rtol=1e-5, atol=1e-12)
    # periodic like PyTorch's: the floor at t_max, back up to the initial rate at 2 t_max
    assert values[steps.index(10000)] == pytest.approx(0.0, abs=1e-12)
    assert values[steps.index(15000)] == pytest.approx(5e-4, rel=1e-5)
    assert values[steps.index(20000)] == pytest.approx(1e-3, rel=1e-5)
    with_floor = CosineAnnealing(0.1, t_max=7, eta_min=0.01)
    np.testing.assert_allclose([float(with_floor(t)) for t in range(30)],
                               np_cosine_annealing(0.1, 7, range(30), eta_min=0.01), rtol=1e-5)
    config = check_serialization(schedule)
    assert config == {"initial_learning_rate": 1e-3, "t_max": 10000.0, "eta_min": 0.0, "name": None}
    with pytest.raises(ValueError, match="t_max"):
        CosineAnnealing(1e-3, t_max=0)


def test_optimizer_steps_with_the_scheduled_rate_of_each_batch(data):
    """SGD without momentum over 12 updates with t_max 5: update t uses lr(t), t = 0.."""
    w, _ = data
    grads = np.random.default_rng(1).normal(size=(12,) + w.shape)
    optimizer = build_optimizer({"name": "sgd", "learning_rate": 0.1,
                                 "schedule": {"name": "cosine_annealing", "t_max": 5}})
    rates = np_cosine_annealing(0.1, 5, range(12))
    expected = w - np.einsum("t,tij->ij", rates, grads)
    np.testing.assert_allclose(keras_steps(optimizer, w, grads), expected, rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations) == 12


def test_a_stage_follows_the_schedule_per_batch():
    """`fit` of the training wrapper the stages use: the rate at each batch is lr(iterations)."""
    class Rates(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_begin(self, batch, logs=None):
            self.seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    inputs = keras.Input((3,))
    network = keras.Model(inputs, {"expr": keras.layers.Dense(4, activation="softmax",
                                                              name="expr")(inputs)})
    from affectkit.losses import MaskedCategoricalCrossentropy
    model = MultiTaskModel(network, {"expr": MaskedCategoricalCrossentropy()})
    model.compile(optimizer=build_optimizer(
        {"name": "sgd", "learning_rate": 1e-2, "momentum": 0.9,
         "schedule": {"name": "cosine_annealing", "t_max": 4}}))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = {"expr": rng.integers(0, 4, 20)}
    rates = Rates()
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[rates])
    assert int(model.optimizer.iterations) == 20
    np.testing.assert_allclose(rates.seen, np_cosine_annealing(1e-2, 4, range(20)), rtol=1e-5,
                               atol=1e-10)


# --- coupled L2 --------------------------------------------------------------------------------


def test_one_adam_step_with_l2_is_pytorchs(data):
    w, grads = data
    # Keras puts Adam's epsilon outside the bias correction of the second moment, PyTorch
    # inside: at step 1 they agree exactly when Keras' epsilon is PyTorch's * sqrt(1 - b2).
    epsilon = 1e-8 * np.sqrt(1 - 0.999)
    optimizer = build_optimizer({"name": "adam", "learning_rate": 1e-2, "l2": 0.1})
    optimizer.epsilon = epsilon
    expected = np_torch_adam(w, grads[:1], lr=1e-2, l2=0.1)
    np.testing.assert_allclose(keras_steps(optimizer, w, grads[:1]), expected, rtol=1e-6, atol=1e-7)
    # Three steps agree to the epsilon's placement.
    optimizer = build_optimizer({"name": "adam", "learning_rate": 1e-2, "l2": 0.1})
    np.testing.assert_allclose(keras_steps(optimizer, w, grads), np_torch_adam(w, grads, 1e-2, 0.1),
                               rtol=1e-4, atol=1e-5)
    # Keras' decoupled weight_decay is another update.
    decoupled = build_optimizer({"name": "adam", "learning_rate": 1e-2, "weight_decay": 0.1})
    assert np.abs(keras_steps(decoupled, w, grads) - np_torch_adam(w, grads, 1e-2, 0.1)).max() > 1e-3


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_steps_with_l2_are_pytorchs(data, momentum):
    w, grads = data
    spec = {"name": "sgd", "learning_rate": 0.05, "momentum": momentum, "l2": 0.3}
    expected_one = np_torch_sgd(w, grads[:1], lr=0.05, l2=0.3, momentum=momentum)
    np.testing.assert_allclose(keras_steps(build_optimizer(spec), w, grads[:1]), expected_one,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(keras_steps(build_optimizer(spec), w, grads),
                               np_torch_sgd(w, grads, lr=0.05, l2=0.3, momentum=momentum),
                               rtol=1e-5, atol=1e-6)


def test_l2_under_a_loss_scale_optimizer(data):
    """Mixed precision's wrapper unscales the gradients before the L2 term is added."""
    w, grads = data
    optimizer = keras.optimizers.LossScaleOptimizer(
        build_optimizer({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "l2": 0.3}))
    variable = keras.Variable(w)
    optimizer.build([variable])
    for g in grads:
        scale = float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
        optimizer.apply([(g * scale).astype(np.float32)], [variable])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable),
                               np_torch_sgd(w, grads, lr=0.05, l2=0.3, momentum=0.9),
                               rtol=1e-5, atol=1e-6)


def test_l2_with_mixed_precision_fit():
    """`compile` under `mixed_float16` wraps the optimizer in a loss-scale optimizer; a fit
    step trains with it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(2, dtype="float32")(
            keras.layers.Dense(4)(inputs)))
        model.compile(optimizer=build_optimizer({"name": "adam", "learning_rate": 1e-3,
                                                 "l2": 1e-3}), loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert type(model.optimizer.inner_optimizer).__name__ == "CoupledL2Adam"
        history = model.fit(np.ones((8, 3), "float32"), np.zeros((8, 2), "float32"), epochs=1,
                            verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("devices", [["/cpu:0"], ["/cpu:0", "/cpu:1"]], ids=["1", "2"])
def test_l2_under_tf_distribute_is_added_once_per_variable(data, devices):
    """Each replica's gradient is its share of the batch's (summed across replicas); the
    L2 term is added once, after that sum."""
    w, grads = data
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        variable = keras.Variable(w)
        optimizer = build_optimizer({"name": "adam", "learning_rate": 1e-2, "l2": 0.1})
        optimizer.build([variable])

    @tf.function
    def step(g):
        strategy.run(lambda: optimizer.apply([g / len(devices)], [variable]))

    for g in grads:
        step(tf.constant(g, tf.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable),
                               np_torch_adam(w, grads, 1e-2, 0.1), rtol=1e-4, atol=1e-5)


# --- specs, configs, saving --------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    {"name": "adam", "learning_rate": 1e-3, "l2": 1e-3},
    {"name": "sgd", "learning_rate": 1e-4, "momentum": 0.0, "l2": 5e-3},
    {"name": "sgd", "learning_rate": 1e-3, "momentum": 0.9,
     "schedule": {"name": "cosine_annealing", "t_max": 10000}},
    {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 5e-5,
     "schedule": {"name": "cosine_annealing", "t_max": 10, "eta_min": 1e-5}},
], ids=["adam_l2", "sgd_l2", "sgd_cosine", "adamw_cosine"])
def test_optimizer_config_round_trip(spec):
    optimizer = build_optimizer(spec)
    config = optimizer.get_config()
    if "l2" in spec:
        check_serialization(optimizer)
        assert type(optimizer).__name__ == "CoupledL2" + type(optimizer).__mro__[2].__name__
        assert config["l2"] == spec["l2"] and not config["weight_decay"]
    if "schedule" in spec:
        assert config["learning_rate"]["registered_name"] == "affectkit>CosineAnnealing"
    text = json.dumps(keras.saving.serialize_keras_object(optimizer))
    clone = keras.saving.deserialize_keras_object(json.loads(text))
    assert type(clone) is type(optimizer) and clone.get_config() == config
    clone = type(optimizer).from_config(copy.deepcopy(config))  # Keras' changes its argument
    assert clone.get_config() == config


def test_coupled_l2_classes_are_made_once_and_registered():
    for cls in (keras.optimizers.Adam, keras.optimizers.SGD, keras.optimizers.AdamW):
        subclass = coupled_l2(cls)
        assert subclass is coupled_l2(cls) and issubclass(subclass, cls)
        assert keras.saving.get_registered_name(subclass) == f"affectkit>CoupledL2{cls.__name__}"
    optimizer = coupled_l2(keras.optimizers.AdamW)(learning_rate=1e-3, weight_decay=0.0, l2=0.1)
    assert optimizer.l2 == 0.1


def test_spec_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="expected one of them"):
        build_optimizer({"name": "adam", "learning_rate": 1e-3, "l2": 1e-3, "weight_decay": 1e-3})
    with pytest.raises(ValueError, match="its default 0.004"):
        build_optimizer({"name": "adamw", "learning_rate": 1e-3, "l2": 1e-3})
    with pytest.raises(ValueError, match="expected one of them"):
        coupled_l2(keras.optimizers.SGD)(learning_rate=1e-3, weight_decay=1e-3, l2=1e-3)
    with pytest.raises(ValueError, match="cosine_annealing"):
        build_optimizer({"name": "sgd", "learning_rate": 0.1, "schedule": {"name": "step"}})
    with pytest.raises(ValueError, match="t_max"):
        build_optimizer({"name": "sgd", "learning_rate": 0.1,
                         "schedule": {"name": "cosine_annealing"}})
    with pytest.raises(ValueError, match="expected learning_rate"):
        build_optimizer({"name": "sgd", "schedule": {"name": "cosine_annealing", "t_max": 10}})
    with pytest.raises(ValueError, match="momentum"):
        build_optimizer({"name": "adam", "momentum": 0.9})
    with pytest.raises(ValueError, match="unknown settings"):
        build_optimizer({"name": "sgd", "nesterov": True})
    # null entries are left out
    plain = build_optimizer({"name": "sgd", "l2": None, "schedule": None, "weight_decay": None})
    assert type(plain) is keras.optimizers.SGD


def test_compiled_model_with_them_saves_and_reloads(tmp_path):
    """`.keras` save/load of a model compiled with a coupled-L2 SGD on the cosine schedule:
    the same optimizer (class, config, iterations) and the same next training step; and a
    reload in a fresh process."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = rng.normal(size=(16, 2)).astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=build_optimizer({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                                             "l2": 0.01, "schedule": {"name": "cosine_annealing",
                                                                      "t_max": 3}}), loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=True, safe_mode=True)
    assert type(reloaded.optimizer) is type(model.optimizer)
    assert reloaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations) == 4
    for trained in (model, reloaded):
        trained.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    (tmp_path / "fresh").mkdir()
    assert_reloads_in_fresh_process(model, x, tmp_path / "fresh",
                                    imports="keras, affectkit, affectkit.training.optimizers")


# --- the presets that use them -----------------------------------------------------------------


def test_haider_paper_stage_uses_cosine_annealing_per_batch():
    spec = presets.resolve("haider2022_mtl_ensemble", "paper")["stages"]["mtl"]["optimizer"]
    optimizer = build_optimizer(spec)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert isinstance(optimizer._learning_rate, CosineAnnealing)
    for step in (0, 5000, 10000, 15000):
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(
            float(np_cosine_annealing(1e-3, 1e4, step)), rel=1e-5, abs=1e-12)


def test_zhang_presets_use_coupled_l2_and_their_search_space_keys_exist():
    paper = presets.resolve("zhang2020_mtanet", "paper")
    stage1, stage2 = (paper["stages"][s]["optimizer"] for s in ("stage1_sum", "stage2_uncertainty"))
    assert stage1 == {"name": "adam", "learning_rate": 1e-3, "l2": 1e-3}
    assert stage2 == {"name": "sgd", "learning_rate": 1e-4, "momentum": 0.0, "l2": 5e-3}
    adam, sgd = build_optimizer(stage1), build_optimizer(stage2)
    assert type(adam).__name__ == "CoupledL2Adam" and adam.l2 == 1e-3 and not adam.weight_decay
    assert type(sgd).__name__ == "CoupledL2SGD" and sgd.l2 == 5e-3 and sgd.momentum == 0.0
    demo = presets.resolve("zhang2020_mtanet", "cpu_demo")
    for stage in demo["stages"].values():
        assert "weight_decay" not in stage["optimizer"]
        build_optimizer(stage["optimizer"])
    for preset in ("paper", "cpu_demo"):
        spaces.check_keys(presets.resolve("zhang2020_mtanet", preset),
                          presets.search_space("zhang2020_mtanet", preset))
