"""`MultiTaskModel`: the combined loss against NumPy, and one step under MirroredStrategy
(two logical CPUs) against the same step on one device."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from affectkit import losses
from affectkit.training.multitask_model import MultiTaskModel



def network(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = {
        "va": keras.layers.Dense(2, activation="tanh", name="va")(hidden),
        "expr": keras.layers.Dense(3, activation="softmax", name="expr")(hidden),
        "au": keras.layers.Dense(4, activation="sigmoid", name="au")(hidden),
    }
    return keras.Model(inputs, outputs)


def batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    va = rng.uniform(-1, 1, (16, 2)).astype("float32")
    va[:3] = -5.0  # missing VA
    expr = rng.integers(0, 3, 16)
    expr[[5, 6, 13, 14]] = -1  # missing expressions, as many in each half batch
    au = rng.integers(0, 2, (16, 4))
    au[[2, 10], :] = -1  # missing AUs, as many in each half batch
    return x, {"va": va, "expr": expr, "au": au}


def train_one_step(strategy, uncertainty):
    """One SGD step on the classification tasks, whose masked means split exactly over
    two replicas when each half batch has as many labels (CCC pools, so it does not)."""
    x, y = batch()
    y = {"expr": y["expr"], "au": y["au"]}
    with strategy.scope():
        net = network(1)
        model = MultiTaskModel(
            net, {"expr": losses.MaskedCategoricalCrossentropy(),
                  "au": losses.MaskedBinaryCrossentropy()},
            loss_weights={"expr": 2.0, "au": 0.5}, uncertainty=uncertainty,
            regression_tasks=("au",),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.build()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    logs = model.fit(dataset, epochs=1, verbose=0, shuffle=False).history
    return [w.numpy() for w in model.trainable_weights], logs


def np_ccc(x, y):
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_loss_is_the_weighted_sum_of_masked_task_losses():
    x, y = batch()
    net = network(1)
    model = MultiTaskModel(
        net, {"va": losses.MaskedCCCLoss(), "expr": losses.MaskedCategoricalCrossentropy()},
        loss_weights={"va": 0.5, "expr": 2.0},
    )
    y = {"va": y["va"], "expr": y["expr"]}
    pred = {k: v.numpy() for k, v in net(x).items()}
    total = float(model.compute_loss(y={k: tf.constant(v) for k, v in y.items()}, y_pred=pred))
    valid = y["va"][:, 0] != -5
    va = 1 - np.mean([np_ccc(y["va"][valid, i], pred["va"][valid, i]) for i in range(2)])
    labelled = y["expr"] != -1
    ce = -np.mean(np.log(pred["expr"][labelled, y["expr"][labelled]]))
    assert total == pytest.approx(0.5 * va + 2.0 * ce, rel=1e-5)


@pytest.mark.parametrize("uncertainty", [False, True])
def test_mirrored_step_equals_single_device_step(uncertainty):
    # ReductionToOneDevice: collective all-reduce instances clash between the several
    # strategies one test process creates.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    mirrored, mirrored_logs = train_one_step(strategy, uncertainty)
    single, single_logs = train_one_step(tf.distribute.get_strategy(), uncertainty)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for key in ("loss", "expr_loss", "au_loss"):
        assert mirrored_logs[key][0] == pytest.approx(single_logs[key][0], rel=1e-4)
