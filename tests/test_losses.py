"""Masked losses and uncertainty weighting against NumPy computations: missing markers,
all-missing batches (0, finite gradients), (B, T) leading dims, serialization, and a
compiled model saved to `.keras` and reloaded in safe mode."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from affectkit import losses, metrics, streaming_metrics
from tests.keras_checks import check_loss, check_serialization

EPS = 1e-7


# --- NumPy references ------------------------------------------------------------------


def np_softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ccc_loss(y_true, y_pred):
    y_true = y_true.reshape(-1, y_true.shape[-1]).astype(np.float64)
    y_pred = y_pred.reshape(-1, y_pred.shape[-1]).astype(np.float64)
    per_column = []
    for c in range(y_true.shape[1]):
        valid = y_true[:, c] != -5
        if not valid.any():
            per_column.append(0.0)
            continue
        x, y = y_true[valid, c], y_pred[valid, c]
        cov = np.mean((x - x.mean()) * (y - y.mean()))
        per_column.append(1 - 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2 + EPS))
    return np.mean(per_column)


def np_class_rows(labels, probabilities, from_logits):
    labels = labels.reshape(-1).astype(int)
    p = probabilities.reshape(labels.size, -1).astype(np.float64)
    p = np_softmax(p) if from_logits else np.clip(p, EPS, 1 - EPS)
    valid = labels != -1
    return labels[valid], p[valid]


def np_crossentropy(labels, probabilities, from_logits=False, label_smoothing=0.0, class_weights=None):
    labels, p = np_class_rows(labels, probabilities, from_logits)
    classes = p.shape[1]
    t = np.eye(classes)[labels] * (1 - label_smoothing) + label_smoothing / classes
    ce = -(t * np.log(p)).sum(-1)
    w = np.ones(len(labels)) if class_weights is None else np.asarray(class_weights)[labels]
    return (w * ce).sum() / w.sum()


def np_focal(labels, probabilities, alpha, gamma, label_smoothing, from_logits=False):
    labels, p = np_class_rows(labels, probabilities, from_logits)
    classes = p.shape[1]
    t = np.eye(classes)[labels] * (1 - label_smoothing) + label_smoothing / classes
    return np.mean(-(alpha * (1 - p) ** gamma * t * np.log(p)).sum(-1))


def np_focal_kl(labels, probabilities, alpha=0.9, gamma=2.0, label_smoothing=0.1,
                focal_weight=0.8, kl_weight=0.2, from_logits=False):
    """The authors' `CEFocalLoss(distillation_loss=True)` (th2l/Affwild2-ABAW3-ActionUnit
    core/loss.py) written out: per frame alpha_y (1 - p_y)^gamma CE(smoothed, p), averaged,
    plus KL(smoothed || p) summed over classes and averaged over frames ("batchmean")."""
    labels, p = np_class_rows(labels, probabilities, from_logits)
    classes = p.shape[1]
    one_hot = np.eye(classes)[labels]
    t = one_hot * (1 - label_smoothing) + label_smoothing / classes
    ce = -(t * np.log(p)).sum(-1)
    p_label = (p * one_hot).sum(-1)
    alpha_label = (np.asarray(alpha, np.float64) * one_hot).sum(-1)
    focal = alpha_label * (1 - p_label) ** gamma * ce
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(t > 0, t * (np.log(t) - np.log(p)), 0.0).sum(-1)
    return focal_weight * focal.mean() + kl_weight * kl.mean()


def np_bce(y_true, y_pred, from_logits=False, pos_weights=None):
    k = y_true.shape[-1]
    y_true = y_true.reshape(-1, k)
    z = y_pred.reshape(-1, k).astype(np.float64)
    p = 1 / (1 + np.exp(-z)) if from_logits else np.clip(z, EPS, 1 - EPS)
    w = np.ones(k) if pos_weights is None else np.asarray(pos_weights)
    terms = -(w * y_true * np.log(p) + (1 - y_true) * np.log(1 - p))
    return terms[y_true != -1].mean()


def np_va_vector(y_true, y_pred):
    y_true = y_true.reshape(-1, 2).astype(np.float64)
    y_pred = y_pred.reshape(-1, 5).astype(np.float64)
    valid = (y_true != -5).all(-1)
    v, a = y_true[valid, 0], y_true[valid, 1]
    m = (a + v) / 2
    target = np.stack([a, v, m, np.abs(a - m), np.abs(v - m)], -1)
    return np.mean((target - y_pred[valid]) ** 2)


def np_rdrop(labels, y_pred, alpha, from_logits=False, kl_reduction="mean"):
    """Liu et al. eq. 4: the mean of the two passes' cross-entropies + alpha * the symmetric
    KL, averaged over the labelled frames ("mean") or, as the R-Drop README's
    `compute_kl_loss` (`kl_div(reduction="none").sum()` of each direction, halved), summed."""
    labels = labels.reshape(-1).astype(int)
    passes = y_pred.reshape(labels.size, 2, -1).astype(np.float64)
    p = np_softmax(passes) if from_logits else np.clip(passes, EPS, 1 - EPS)
    valid = labels != -1
    labels, p1, p2 = labels[valid], p[valid, 0], p[valid, 1]
    rows = np.arange(len(labels))
    ce = 0.5 * (-np.log(p1[rows, labels]).mean() - np.log(p2[rows, labels]).mean())
    if kl_reduction == "sum":
        p_loss = (p2 * (np.log(p2) - np.log(p1))).sum()  # kl_div(log p1, p2): KL(p2 || p1)
        q_loss = (p1 * (np.log(p1) - np.log(p2))).sum()
        return ce + alpha * (p_loss + q_loss) / 2
    kl12 = (p1 * np.log(p1 / p2)).sum(-1)
    kl21 = (p2 * np.log(p2 / p1)).sum(-1)
    return ce + alpha * np.mean(0.5 * (kl12 + kl21))


# --- random data with missing markers -----------------------------------------------------


def va_data(rng, shape, missing=0.25):
    y_true = rng.uniform(-1, 1, shape + (2,)).astype(np.float32)
    y_pred = np.tanh(y_true + rng.normal(0, 0.5, y_true.shape)).astype(np.float32)
    y_true[rng.random(y_true.shape) < missing] = -5.0
    return y_true, y_pred


def class_data(rng, shape, classes=8, missing=0.25, logits=False):
    labels = rng.integers(0, classes, shape).astype(np.float32)
    labels[rng.random(shape) < missing] = -1
    z = rng.normal(0, 2, shape + (classes,)).astype(np.float32)
    return labels, (z if logits else np_softmax(z).astype(np.float32))


def au_data(rng, shape, aus=12, missing=0.2, logits=False):
    y_true = (rng.random(shape + (aus,)) < 0.3).astype(np.float32)
    y_true[rng.random(y_true.shape) < missing] = -1
    z = rng.normal(0, 2, shape + (aus,)).astype(np.float32)
    return y_true, (z if logits else (1 / (1 + np.exp(-z))).astype(np.float32))


def value(loss, y_true, y_pred):
    return float(loss(y_true, y_pred))


# --- each loss against NumPy ---------------------------------------------------------------


def test_ccc_loss_matches_numpy():
    rng = np.random.default_rng(0)
    y_true, y_pred = va_data(rng, (64,))
    assert value(losses.MaskedCCCLoss(), y_true, y_pred) == pytest.approx(np_ccc_loss(y_true, y_pred), abs=1e-5)
    # (B, T, 2) sequence heads are flattened
    y_true, y_pred = va_data(rng, (4, 16))
    assert value(losses.MaskedCCCLoss(), y_true, y_pred) == pytest.approx(np_ccc_loss(y_true, y_pred), abs=1e-5)
    # a column with no labelled row contributes 0 to the mean over columns
    y_true[..., 1] = -5
    assert value(losses.MaskedCCCLoss(), y_true, y_pred) == pytest.approx(np_ccc_loss(y_true, y_pred), abs=1e-5)
    # one labelled row: CCC 0 (no variance), so the column contributes 1
    single = np.array([[0.3, -5.0], [-5.0, -5.0]], np.float32)
    assert value(losses.MaskedCCCLoss(), single, np.array([[0.1, 0.2], [0.0, 0.0]], np.float32)) == pytest.approx(0.5)
    # perfect predictions: loss ~0 (1 - CCC with the epsilon)
    y_true, _ = va_data(rng, (32,), missing=0.0)
    assert value(losses.MaskedCCCLoss(), y_true, y_true) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"label_smoothing": 0.1}, {"class_weights": [1.0, 2.0, 0.5, 1.5, 1.0, 3.0, 0.7, 1.2]},
     {"from_logits": True, "label_smoothing": 0.2, "class_weights": [0.5] * 4 + [2.0] * 4}],
)
def test_categorical_crossentropy_matches_numpy(kwargs):
    rng = np.random.default_rng(1)
    labels, y_pred = class_data(rng, (50,), logits=kwargs.get("from_logits", False))
    expected = np_crossentropy(labels, y_pred, **kwargs)
    assert value(losses.MaskedCategoricalCrossentropy(**kwargs), labels, y_pred) == pytest.approx(expected, rel=1e-5)
    assert value(losses.MaskedCategoricalCrossentropy(**kwargs), labels[:, None], y_pred) == pytest.approx(expected, rel=1e-5)
    labels, y_pred = class_data(rng, (3, 20), logits=kwargs.get("from_logits", False))
    assert value(losses.MaskedCategoricalCrossentropy(**kwargs), labels, y_pred) == pytest.approx(
        np_crossentropy(labels, y_pred, **kwargs), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"pos_weights": list(np.linspace(0.5, 4, 12))},
                                    {"from_logits": True, "pos_weights": [2.0] * 12}])
def test_binary_crossentropy_matches_numpy(kwargs):
    rng = np.random.default_rng(2)
    for shape in [(40,), (3, 10)]:
        y_true, y_pred = au_data(rng, shape, logits=kwargs.get("from_logits", False))
        assert value(losses.MaskedBinaryCrossentropy(**kwargs), y_true, y_pred) == pytest.approx(
            np_bce(y_true, y_pred, **kwargs), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"alpha": 0.9, "gamma": 2.0, "label_smoothing": 0.1},
                                    {"alpha": 0.25, "gamma": 0.0},
                                    {"alpha": 1.0, "gamma": 1.5, "label_smoothing": 0.05, "from_logits": True}])
def test_focal_loss_matches_numpy(kwargs):
    rng = np.random.default_rng(3)
    for shape in [(60,), (2, 64)]:
        labels, y_pred = class_data(rng, shape, logits=kwargs.get("from_logits", False))
        assert value(losses.MaskedFocalLoss(**kwargs), labels, y_pred) == pytest.approx(
            np_focal(labels, y_pred, **{"label_smoothing": 0.0, **kwargs}), rel=1e-5)
    # gamma 0 and alpha 1 is plain cross-entropy
    probabilities = np_softmax(y_pred) if kwargs.get("from_logits") else y_pred
    assert value(losses.MaskedFocalLoss(alpha=1.0, gamma=0.0), labels, probabilities) == pytest.approx(
        np_crossentropy(labels, probabilities), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 0.25, "gamma": 0.0, "label_smoothing": 0.0},
                                    {"alpha": [0.5, 1.0, 0.9, 1.2, 0.7, 1.0, 2.0, 0.3],
                                     "focal_weight": 1.0, "kl_weight": 0.5, "from_logits": True}])
def test_focal_kl_loss_matches_the_authors_formula(kwargs):
    rng = np.random.default_rng(11)
    for shape in [(60,), (2, 64)]:
        labels, y_pred = class_data(rng, shape, logits=kwargs.get("from_logits", False))
        assert value(losses.MaskedFocalKLLoss(**kwargs), labels, y_pred) == pytest.approx(
            np_focal_kl(labels, y_pred, **kwargs), rel=1e-5)
        assert value(losses.MaskedFocalKLLoss(**kwargs), labels[..., None], y_pred) == pytest.approx(
            np_focal_kl(labels, y_pred, **kwargs), rel=1e-5)


def test_focal_kl_loss_on_a_confident_frame_is_the_reference_sheets():
    """REFERENCE section 6: p_y = 0.97 of 8 classes, the rest equal: the authors' focal term
    0.0004 and KL 0.038 before weighting, where Keras' focal form gives 0.426."""
    p = np.full((1, 8), 0.03 / 7, np.float32)
    p[0, 2] = 0.97
    label = np.array([2.0], np.float32)
    focal = value(losses.MaskedFocalKLLoss(focal_weight=1.0, kl_weight=0.0), label, p)
    kl = value(losses.MaskedFocalKLLoss(focal_weight=0.0, kl_weight=1.0), label, p)
    assert focal == pytest.approx(0.0004, abs=5e-5) and kl == pytest.approx(0.038, abs=5e-4)
    assert value(losses.MaskedFocalKLLoss(), label, p) == pytest.approx(0.8 * focal + 0.2 * kl, rel=1e-5)
    keras_form = value(losses.MaskedFocalLoss(alpha=0.9, gamma=2.0, label_smoothing=0.1), label, p)
    assert keras_form == pytest.approx(0.426, abs=5e-4)


def test_va_vector_mse_matches_numpy():
    rng = np.random.default_rng(4)
    for shape in [(50,), (4, 8)]:
        y_true, _ = va_data(rng, shape)
        y_pred = rng.uniform(-1, 1, shape + (5,)).astype(np.float32)
        assert value(losses.VAVectorMSE(), y_true, y_pred) == pytest.approx(np_va_vector(y_true, y_pred), rel=1e-5)
    # the target vector itself gives 0 (arousal first)
    y_true = np.array([[0.2, 0.6]], np.float32)
    assert value(losses.VAVectorMSE(), y_true, np.array([[0.6, 0.2, 0.4, 0.2, 0.2]], np.float32)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("from_logits", [False, True])
def test_rdrop_loss_matches_numpy(from_logits):
    rng = np.random.default_rng(5)
    for shape in [(30,), (2, 16)]:
        labels, _ = class_data(rng, shape)
        z = rng.normal(0, 2, shape + (2, 8)).astype(np.float32)
        y_pred = z if from_logits else np_softmax(z).astype(np.float32)
        assert value(losses.RDropLoss(alpha=5.0, from_logits=from_logits), labels, y_pred) == pytest.approx(
            np_rdrop(labels, y_pred, 5.0, from_logits), rel=1e-5)
    # identical passes: no KL term, just the cross-entropy
    same = np.repeat(y_pred[..., :1, :], 2, axis=-2)
    assert value(losses.RDropLoss(from_logits=from_logits), labels, same) == pytest.approx(
        np_crossentropy(labels, same[..., 0, :], from_logits=from_logits), rel=1e-5)


@pytest.mark.parametrize("from_logits", [False, True])
def test_rdrop_loss_sums_the_kl_as_the_reference_code(from_logits):
    rng = np.random.default_rng(12)
    for shape in [(30,), (2, 16)]:
        labels, _ = class_data(rng, shape)
        z = rng.normal(0, 2, shape + (2, 8)).astype(np.float32)
        y_pred = z if from_logits else np_softmax(z).astype(np.float32)
        summed = losses.RDropLoss(alpha=5.0, kl_reduction="sum", from_logits=from_logits)
        assert value(summed, labels, y_pred) == pytest.approx(
            np_rdrop(labels, y_pred, 5.0, from_logits, kl_reduction="sum"), rel=1e-5)
        # the KL term is the mean one times the number of labelled frames
        valid = int((labels != -1).sum())
        mean_kl = value(losses.RDropLoss(alpha=1.0, from_logits=from_logits), labels, y_pred) - \
            value(losses.RDropLoss(alpha=0.0, from_logits=from_logits), labels, y_pred)
        sum_kl = value(losses.RDropLoss(alpha=1.0, kl_reduction="sum", from_logits=from_logits),
                       labels, y_pred) - value(losses.RDropLoss(alpha=0.0, from_logits=from_logits),
                                               labels, y_pred)
        assert sum_kl == pytest.approx(valid * mean_kl, rel=1e-4)
    with pytest.raises(ValueError, match="kl_reduction"):
        losses.RDropLoss(kl_reduction="batchmean")


def test_sample_weight_equals_repeated_rows():
    rng = np.random.default_rng(6)
    labels, y_pred = class_data(rng, (30,))
    weights = rng.integers(0, 3, 30).astype(np.float32)
    repeated = np.repeat(np.arange(30), weights.astype(int))
    loss = losses.MaskedFocalLoss(alpha=0.9, label_smoothing=0.1)
    assert float(loss(labels, y_pred, sample_weight=weights)) == pytest.approx(
        float(loss(labels[repeated], y_pred[repeated])), rel=1e-5)
    y_true, va_pred = va_data(rng, (30,))
    assert float(losses.MaskedCCCLoss()(y_true, va_pred, sample_weight=weights)) == pytest.approx(
        np_ccc_loss(y_true[repeated], va_pred[repeated]), abs=1e-5)


# --- all-missing batches: exactly 0 with finite gradients ------------------------------------


ALL_MISSING = [  # (loss, labels, shape of the raw outputs, activation applied to them)
    (losses.MaskedCCCLoss(), np.full((2, 6, 2), -5.0), (2, 6, 2), tf.tanh),
    (losses.MaskedCategoricalCrossentropy(label_smoothing=0.1, class_weights=[1.0] * 8), -np.ones((2, 6)), (2, 6, 8), tf.nn.softmax),
    (losses.MaskedCategoricalCrossentropy(from_logits=True), -np.ones((12, 1)), (12, 8), tf.identity),
    (losses.MaskedBinaryCrossentropy(pos_weights=[3.0] * 12), -np.ones((2, 6, 12)), (2, 6, 12), tf.sigmoid),
    (losses.MaskedBinaryCrossentropy(from_logits=True), -np.ones((12, 12)), (12, 12), tf.identity),
    (losses.MaskedFocalLoss(alpha=0.9, label_smoothing=0.1), -np.ones((2, 6)), (2, 6, 8), tf.nn.softmax),
    (losses.VAVectorMSE(), np.array([[-5.0, 0.3], [0.2, -5.0], [-5.0, -5.0]]), (3, 5), tf.tanh),
    (losses.RDropLoss(), -np.ones((2, 6)), (2, 6, 2, 8), tf.nn.softmax),
    (losses.RDropLoss(from_logits=True), -np.ones((12,)), (12, 2, 8), tf.identity),
    (losses.RDropLoss(kl_reduction="sum"), -np.ones((2, 6)), (2, 6, 2, 8), tf.nn.softmax),
    (losses.MaskedFocalKLLoss(), -np.ones((2, 6)), (2, 6, 8), tf.nn.softmax),
    (losses.MaskedFocalKLLoss(label_smoothing=0.0, from_logits=True), -np.ones((12, 1)), (12, 8),
     tf.identity),
]


@pytest.mark.parametrize("loss,y_true,pred_shape,activation", ALL_MISSING,
                         ids=lambda x: getattr(x, "name", None) if isinstance(x, keras.losses.Loss) else "")
def test_all_missing_batch_is_zero_with_finite_gradient(loss, y_true, pred_shape, activation):
    rng = np.random.default_rng(7)
    logits = tf.Variable(rng.normal(size=pred_shape).astype(np.float32))
    with tf.GradientTape() as tape:
        result = loss(y_true.astype(np.float32), activation(logits))
    gradient = tape.gradient(result, logits)
    assert float(result) == 0.0
    assert gradient is not None and np.all(np.isfinite(gradient.numpy()))
    assert np.all(gradient.numpy() == 0.0)


def test_partially_missing_gradients_are_finite_and_masked():
    rng = np.random.default_rng(8)
    y_true, y_pred = va_data(rng, (16,))
    y_true[:3] = -5.0
    variable = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        result = losses.MaskedCCCLoss()(y_true, variable)
    gradient = tape.gradient(result, variable).numpy()
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(gradient[y_true == -5], 0.0)  # missing entries get no gradient


# --- distribution scaling --------------------------------------------------------------------


def test_losses_are_scaled_for_replicas_like_keras_losses():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(9)
    labels, probabilities = class_data(rng, (8,), missing=0.0)
    local = np_crossentropy(labels, probabilities)
    scaled = losses.MaskedCategoricalCrossentropy()
    unscaled = losses.MaskedCategoricalCrossentropy(reduction="sum")
    builtin = keras.losses.SparseCategoricalCrossentropy()
    results = strategy.run(
        tf.function(lambda: (scaled(labels, probabilities), unscaled(labels, probabilities),
                             builtin(labels, probabilities)))
    )
    values = [strategy.experimental_local_results(r) for r in results]
    for replica in range(2):
        assert float(values[0][replica]) == pytest.approx(local / 2, rel=1e-5)
        assert float(values[1][replica]) == pytest.approx(local, rel=1e-5)
        assert float(values[2][replica]) == pytest.approx(local / 2, rel=1e-5)  # Keras' own convention


# --- uncertainty weighting ---------------------------------------------------------------------


def test_uncertainty_weighting_matches_hand_computation():
    layer = losses.UncertaintyWeighting(tasks=["va", "expr", "au"], regression_tasks=["va"])
    task_losses = {"va": tf.constant(0.8), "expr": tf.constant(1.7), "au": tf.constant(0.3)}
    # initial s = 0: 0.5 * 0.8 + 1.7 + 0.3
    assert float(layer(task_losses)) == pytest.approx(0.5 * 0.8 + 1.7 + 0.3)
    assert [w.name for w in layer.trainable_weights] == ["log_var_va", "log_var_expr", "log_var_au"]
    s = {"va": 0.4, "expr": -0.3, "au": 1.1}
    for task, variable in layer.log_vars.items():
        variable.assign(s[task])
    c = {"va": 0.5, "expr": 1.0, "au": 1.0}
    # eq. 5 of Zhang & Gu 2020 with sigma^2 = exp(s): c / sigma^2 * L + log(sigma)
    sigma = {t: np.sqrt(np.exp(s[t])) for t in s}
    expected = sum(c[t] / sigma[t] ** 2 * float(task_losses[t]) + np.log(sigma[t]) for t in s)
    with tf.GradientTape() as tape:
        total = layer(task_losses)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    gradients = tape.gradient(total, [layer.log_vars[t] for t in ("va", "expr", "au")])
    for task, gradient in zip(("va", "expr", "au"), gradients):
        assert float(gradient) == pytest.approx(-c[task] * np.exp(-s[task]) * float(task_losses[task]) + 0.5, rel=1e-5)
    weights = layer.effective_weights()
    assert weights["va"] == pytest.approx(0.5 * np.exp(-0.4), rel=1e-6)
    with pytest.raises(KeyError, match="au"):
        layer({"va": tf.constant(1.0), "expr": tf.constant(1.0)})


# --- serialization and saved models -----------------------------------------------------------


def all_losses():
    return [
        losses.MaskedCCCLoss(),
        losses.MaskedCategoricalCrossentropy(from_logits=True, label_smoothing=0.1, class_weights=[1.0, 2.0]),
        losses.MaskedBinaryCrossentropy(from_logits=True, pos_weights=[1.0, 3.0]),
        losses.MaskedFocalLoss(alpha=0.9, gamma=2.0, label_smoothing=0.1, from_logits=True),
        losses.MaskedFocalLoss(alpha=[0.5, 1.0]),
        losses.VAVectorMSE(name="vector", reduction="sum"),
        losses.RDropLoss(alpha=3.0, from_logits=True),
        losses.RDropLoss(alpha=5.0, kl_reduction="sum", name="rdrop_sum"),
        losses.MaskedFocalKLLoss(),
        losses.MaskedFocalKLLoss(alpha=[0.5, 1.0], gamma=1.0, label_smoothing=0.0, focal_weight=1.0,
                                 kl_weight=0.5, from_logits=True, reduction="sum"),
        losses.UncertaintyWeighting(tasks=["va", "expr"], regression_tasks=["va"], name="weights"),
    ]


@pytest.mark.parametrize("obj", all_losses(), ids=lambda o: type(o).__name__)
def test_loss_serialization_round_trip(obj):
    check_serialization(obj)


def test_ccc_loss_through_the_shared_loss_checks():
    rng = np.random.default_rng(5)
    y_true = rng.uniform(-1, 1, (12, 2)).astype(np.float32)
    y_true[[1, 4], 0] = -5.0  # missing valence
    y_pred = rng.uniform(-1, 1, (12, 2)).astype(np.float32)
    check_loss(losses.MaskedCCCLoss(), y_true, y_pred, np_ccc_loss(y_true, y_pred))


def test_new_losses_through_the_shared_loss_checks():
    rng = np.random.default_rng(13)
    labels, y_pred = class_data(rng, (16,))
    check_loss(losses.MaskedFocalKLLoss(), labels, y_pred, np_focal_kl(labels, y_pred))
    labels, _ = class_data(rng, (16,))
    pair = np_softmax(rng.normal(0, 2, (16, 2, 8))).astype(np.float32)
    check_loss(losses.RDropLoss(kl_reduction="sum"), labels, pair,
               np_rdrop(labels, pair, 5.0, kl_reduction="sum"), atol=1e-4)


@pytest.mark.parametrize("loss", [losses.MaskedFocalKLLoss(alpha=0.9, gamma=2.0, label_smoothing=0.1),
                                  losses.RDropLoss(alpha=5.0, kl_reduction="sum")],
                         ids=lambda o: type(o).__name__)
def test_new_losses_compiled_save_and_reload(loss, tmp_path):
    """A model compiled with the loss, saved to `.keras` and reloaded in safe mode: the same
    loss config and the same evaluated loss, equal to the NumPy formula."""
    rng = np.random.default_rng(14)
    rdrop = isinstance(loss, losses.RDropLoss)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    labels, _ = class_data(rng, (24,))
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16 if rdrop else 8, name="logits")(inputs)
    if rdrop:
        hidden = keras.layers.Reshape((2, 8))(hidden)
    outputs = keras.layers.Softmax(axis=-1)(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    expected = model.evaluate(x, labels, batch_size=24, verbose=0)
    predictions = model.predict(x, verbose=0)
    reference = (np_rdrop(labels, predictions, 5.0, kl_reduction="sum") if rdrop
                 else np_focal_kl(labels, predictions))
    assert expected == pytest.approx(reference, rel=1e-4)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=True, safe_mode=True)
    assert type(reloaded.loss) is type(loss) and reloaded.loss.get_config() == loss.get_config()
    assert reloaded.evaluate(x, labels, batch_size=24, verbose=0) == pytest.approx(expected, rel=1e-6)


def tiny_model():
    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = {
        "va": keras.layers.Dense(2, activation="tanh", name="va")(hidden),
        "expr": keras.layers.Dense(8, activation="softmax", name="expr")(hidden),
        "au": keras.layers.Dense(12, activation="sigmoid", name="au")(hidden),
    }
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny functional model compiled with affectkit losses and metrics, fit one epoch and
    saved to `.keras`; returns (path, data path, model, x, y, evaluate results)."""
    tmp_path = tmp_path_factory.mktemp("saved")
    rng = np.random.default_rng(10)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    va_true, _ = va_data(rng, (32,))
    expr_true, _ = class_data(rng, (32,))
    au_true, _ = au_data(rng, (32,))
    y = {"va": va_true, "expr": expr_true.astype(np.int64), "au": au_true.astype(np.int64)}

    keras.utils.set_random_seed(0)
    model = tiny_model()
    model.compile(
        optimizer="sgd",
        loss={
            "va": losses.MaskedCCCLoss(),
            "expr": losses.MaskedFocalLoss(alpha=0.9, label_smoothing=0.1),
            "au": losses.MaskedBinaryCrossentropy(pos_weights=[2.0] * 12),
        },
        metrics={
            "va": [streaming_metrics.ConcordanceCorrelation(),
                   streaming_metrics.ConcordanceCorrelation(dimension=0)],
            "expr": [streaming_metrics.MaskedMacroF1(8), streaming_metrics.MaskedAccuracy()],
            "au": [streaming_metrics.MaskedAUF1(12), streaming_metrics.MaskedAUAccuracy()],
        },
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    expected = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    path = str(tmp_path / "model.keras")
    model.save(path)
    data_path = str(tmp_path / "data.npz")
    np.savez(data_path, x=x, **y)
    return path, data_path, model, x, y, expected


def test_compiled_model_metrics_equal_official_definitions(saved_model):
    _, _, model, x, y, expected = saved_model
    predictions = model.predict(x, verbose=0)
    assert expected["va_ccc"] == pytest.approx(metrics.va_metrics(y["va"], predictions["va"])["va"], abs=1e-5)
    assert expected["va_ccc_valence"] == pytest.approx(
        metrics.va_metrics(y["va"], predictions["va"])["valence"], abs=1e-5)
    assert expected["expr_macro_f1"] == pytest.approx(
        metrics.expr_metrics(y["expr"], predictions["expr"], 8)["f1"], abs=1e-6)
    assert expected["expr_accuracy"] == pytest.approx(
        metrics.expr_metrics(y["expr"], predictions["expr"], 8)["accuracy"], abs=1e-6)
    au = metrics.au_metrics(y["au"], predictions["au"])
    assert expected["au_mean_f1"] == pytest.approx(au["f1"], abs=1e-6)
    assert expected["au_accuracy"] == pytest.approx(au["accuracy"], abs=1e-6)
    assert expected["va_loss"] == pytest.approx(np_ccc_loss(y["va"], predictions["va"]), abs=1e-5)
    assert expected["expr_loss"] == pytest.approx(
        np_focal(y["expr"], predictions["expr"], alpha=0.9, gamma=2.0, label_smoothing=0.1), rel=1e-5)
    assert expected["au_loss"] == pytest.approx(np_bce(y["au"], predictions["au"], pos_weights=[2.0] * 12), rel=1e-5)


def test_compiled_model_reloads_in_safe_mode(saved_model):
    path, _, model, x, y, expected = saved_model
    reloaded = keras.saving.load_model(path, compile=True, safe_mode=True)
    for task in ("va", "expr", "au"):
        assert type(reloaded.loss[task]) is type(model.loss[task])
        assert reloaded.loss[task].get_config() == model.loss[task].get_config()
    again = reloaded.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert set(again) == set(expected)
    for key, val in expected.items():
        assert again[key] == pytest.approx(val, abs=1e-5), key


@pytest.mark.parametrize("imports", ["keras, affectkit", "affectkit, keras"])
def test_compiled_model_reloads_in_fresh_process_with_only_import_affectkit(saved_model, imports):
    """The DESIGN contract: `import affectkit` alone registers every loss and metric, whether
    Keras is imported before or after it."""
    path, data_path, _, _, _, expected = saved_model
    script = textwrap.dedent(
        f"""
        import json, numpy as np, {imports}
        data = dict(np.load({data_path!r}))
        x = data.pop("x")
        model = keras.saving.load_model({path!r}, compile=True)
        assert type(model.loss["va"]).__name__ == "MaskedCCCLoss", model.loss
        print(json.dumps(model.evaluate(x, data, batch_size=32, verbose=0, return_dict=True)))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    for key, val in expected.items():
        assert fresh[key] == pytest.approx(val, abs=1e-5), key
