"""Streaming Keras metrics against the pooled NumPy definitions (themselves checked against
scikit-learn in test_metrics.py): uneven batches, sample weights, sequences, float64 state,
serialization and MirroredStrategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, f1_score

from affectkit import metrics, streaming_metrics
from tests.keras_checks import check_metric, check_serialization
from tests.metric_references import BATCHES, random_au, random_expr, random_va, sklearn_au


def stream(metric, y_true, y_pred, sizes=BATCHES, sample_weight=None):
    start = 0
    for size in sizes:
        stop = start + size
        weight = None if sample_weight is None else sample_weight[start:stop]
        metric.update_state(y_true[start:stop], y_pred[start:stop], sample_weight=weight)
        start = stop
    assert start == len(y_true)
    return float(metric.result())


def test_ccc_metric_pools_uneven_batches():
    rng = np.random.default_rng(10)
    y_true, y_pred = random_va(rng, sum(BATCHES))
    expected = metrics.va_metrics(y_true, y_pred)
    assert stream(streaming_metrics.ConcordanceCorrelation(), y_true, y_pred) == pytest.approx(expected["va"], abs=1e-6)
    for dimension, name in enumerate(("valence", "arousal")):
        metric = streaming_metrics.ConcordanceCorrelation(dimension=dimension)
        assert metric.name == f"ccc_{name}"
        assert stream(metric, y_true, y_pred) == pytest.approx(expected[name], abs=1e-6)
    # (B, T, 2) sequence outputs
    metric = streaming_metrics.ConcordanceCorrelation()
    metric.update_state(y_true[:52].reshape(4, 13, 2), y_pred[:52].reshape(4, 13, 2))
    assert float(metric.result()) == pytest.approx(metrics.va_metrics(y_true[:52], y_pred[:52])["va"], abs=1e-6)
    # reset, and a constant prediction: CCC 0 without NaN
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(y_true, np.zeros_like(y_pred))
    assert float(metric.result()) == 0.0


def test_ccc_metric_keeps_float64_precision_on_large_sets():
    # 200k frames around a large offset: float32 sums of squares would lose the variance.
    rng = np.random.default_rng(11)
    x = 0.9 + 0.01 * rng.normal(size=(200_000, 2))
    y = x + 0.01 * rng.normal(size=x.shape)
    metric = streaming_metrics.ConcordanceCorrelation()
    for chunk in np.array_split(np.arange(len(x)), 4):
        metric.update_state(x[chunk], y[chunk])
    assert float(metric.result()) == pytest.approx(metrics.va_metrics(x, y)["va"], abs=1e-5)


def test_sample_weight_equals_repeated_rows():
    rng = np.random.default_rng(12)
    y_true, y_pred = random_va(rng, 40)
    weights = rng.integers(0, 3, 40)
    repeated = np.repeat(np.arange(40), weights)
    metric = streaming_metrics.ConcordanceCorrelation()
    metric.update_state(y_true, y_pred, sample_weight=weights)
    assert float(metric.result()) == pytest.approx(metrics.va_metrics(y_true[repeated], y_pred[repeated])["va"], abs=1e-6)
    labels, probabilities = random_expr(rng, 40, 8)
    metric = streaming_metrics.MaskedMacroF1(8)
    metric.update_state(labels, probabilities, sample_weight=weights)
    expected = metrics.expr_metrics(labels[repeated], probabilities[repeated], 8)["f1"]
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)


def test_classification_metrics_pool_uneven_batches():
    rng = np.random.default_rng(13)
    n = sum(BATCHES)
    labels, probabilities = random_expr(rng, n, 8)
    valid = labels != -1
    predicted = probabilities.argmax(-1)
    f1 = f1_score(labels[valid], predicted[valid], average="macro", labels=range(8), zero_division=0)
    assert stream(streaming_metrics.MaskedMacroF1(8), labels, probabilities) == pytest.approx(f1, abs=1e-6)
    assert stream(streaming_metrics.MaskedMacroF1(8), labels[:, None], probabilities) == pytest.approx(f1, abs=1e-6)
    accuracy = accuracy_score(labels[valid], predicted[valid])
    assert stream(streaming_metrics.MaskedAccuracy(), labels, probabilities) == pytest.approx(accuracy, abs=1e-6)

    au_true, au_prob = random_au(rng, n, 12)
    au_f1, _, au_acc = sklearn_au(au_true, au_prob)
    assert stream(streaming_metrics.MaskedAUF1(12), au_true, au_prob) == pytest.approx(au_f1, abs=1e-6)
    assert stream(streaming_metrics.MaskedAUAccuracy(), au_true, au_prob) == pytest.approx(au_acc, abs=1e-6)
    au_f1_high, _, _ = sklearn_au(au_true, au_prob, threshold=0.7)
    assert stream(streaming_metrics.MaskedAUF1(12, threshold=0.7), au_true, au_prob) == pytest.approx(au_f1_high, abs=1e-6)

    # (B, T, ...) sequence outputs and reset
    metric = streaming_metrics.MaskedMacroF1(8)
    metric.update_state(labels[:52].reshape(4, 13), probabilities[:52].reshape(4, 13, 8))
    expected = f1_score(labels[:52][valid[:52]], predicted[:52][valid[:52]], average="macro",
                        labels=range(8), zero_division=0)
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric = streaming_metrics.MaskedAUF1(12)
    metric.update_state(au_true[:52].reshape(4, 13, 12), au_prob[:52].reshape(4, 13, 12))
    assert float(metric.result()) == pytest.approx(sklearn_au(au_true[:52], au_prob[:52])[0], abs=1e-6)


def all_metrics():
    return [
        streaming_metrics.ConcordanceCorrelation(),
        streaming_metrics.ConcordanceCorrelation(dimension=1, name="arousal_ccc"),
        streaming_metrics.MaskedMacroF1(num_classes=8),
        streaming_metrics.MaskedAccuracy(),
        streaming_metrics.MaskedAUF1(num_aus=12, threshold=0.4),
        streaming_metrics.MaskedAUAccuracy(threshold=0.6),
    ]


@pytest.mark.parametrize("metric", all_metrics(), ids=lambda m: m.name)
def test_metric_serialization_round_trip(metric):
    check_serialization(metric)


def test_ccc_and_macro_f1_through_the_shared_metric_checks():
    rng = np.random.default_rng(11)
    y_true, y_pred = random_va(rng, 40)
    check_metric(streaming_metrics.ConcordanceCorrelation(), y_true, y_pred,
                 metrics.va_metrics(y_true, y_pred)["va"], batches=(3, 7, 1))
    labels, probabilities = random_expr(rng, 40, 8)
    valid = labels >= 0
    expected = f1_score(labels[valid], probabilities[valid].argmax(-1), labels=range(8),
                        average="macro", zero_division=0)
    check_metric(streaming_metrics.MaskedMacroF1(num_classes=8), labels, probabilities,
                 expected, batches=(5, 2))


def test_metrics_under_mirrored_strategy_give_pooled_values():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(14)
    n = 53  # batches of 8 split 4/4 across replicas, last one uneven
    va_true, va_pred = random_va(rng, n)
    expr_true, expr_prob = random_expr(rng, n, 8)
    au_true, au_prob = random_au(rng, n, 12)
    with strategy.scope():
        ccc = streaming_metrics.ConcordanceCorrelation()
        f1, accuracy = streaming_metrics.MaskedMacroF1(8), streaming_metrics.MaskedAccuracy()
        au_f1, au_accuracy = streaming_metrics.MaskedAUF1(12), streaming_metrics.MaskedAUAccuracy()
    assert all(v.dtype == "float64" for v in ccc.variables)
    dataset = tf.data.Dataset.from_tensor_slices(
        ((va_true, va_pred), (expr_true, expr_prob), (au_true, au_prob))
    ).batch(8)

    @tf.function
    def update(va, expr, au):
        ccc.update_state(*va)
        f1.update_state(*expr)
        accuracy.update_state(*expr)
        au_f1.update_state(*au)
        au_accuracy.update_state(*au)

    replica_batches = []

    @tf.function
    def rows(va):
        return tf.shape(va[0])[0]

    for batch in strategy.experimental_distribute_dataset(dataset):
        strategy.run(update, args=batch)
        replica_batches.append(strategy.experimental_local_results(strategy.run(rows, args=(batch[0],))))
    assert all(len(sizes) == 2 for sizes in replica_batches)  # both replicas got data

    valid = expr_true != -1
    predicted = expr_prob.argmax(-1)
    expected_au_f1, _, expected_au_acc = sklearn_au(au_true, au_prob)
    assert float(ccc.result()) == pytest.approx(metrics.va_metrics(va_true, va_pred)["va"], abs=1e-6)
    assert float(f1.result()) == pytest.approx(
        f1_score(expr_true[valid], predicted[valid], average="macro", labels=range(8), zero_division=0), abs=1e-6)
    assert float(accuracy.result()) == pytest.approx(accuracy_score(expr_true[valid], predicted[valid]), abs=1e-6)
    assert float(au_f1.result()) == pytest.approx(expected_au_f1, abs=1e-6)
    assert float(au_accuracy.result()) == pytest.approx(expected_au_acc, abs=1e-6)
    ccc.reset_state()
    assert float(ccc.result()) == 0.0

    # The same metrics through Keras' own distributed evaluate loop. With every expression
    # labelled, the logged masked loss is the pooled mean cross-entropy only if the loss is
    # scaled for the replicas as Keras' built-in losses are (48 rows: equal replica batches).
    from affectkit.losses import MaskedCategoricalCrossentropy, MaskedCCCLoss

    m = 48
    va_true, va_pred, expr_prob, predicted = va_true[:m], va_pred[:m], expr_prob[:m], predicted[:m]
    expr_full = np.where(expr_true[:m] == -1, 2, expr_true[:m])
    with strategy.scope():
        inputs = [keras.Input((2,), name="va_in"), keras.Input((8,), name="expr_in")]
        outputs = {name: keras.layers.Identity(name=name)(x) for name, x in zip(("va", "expr"), inputs)}
        model = keras.Model(inputs, outputs)
        model.compile(
            loss={"va": MaskedCCCLoss(), "expr": MaskedCategoricalCrossentropy()},
            metrics={"va": [streaming_metrics.ConcordanceCorrelation()], "expr": [streaming_metrics.MaskedMacroF1(8)]},
        )
    results = model.evaluate(
        [va_pred, expr_prob], {"va": va_true, "expr": expr_full},
        batch_size=8, verbose=0, return_dict=True,
    )
    assert results["va_ccc"] == pytest.approx(metrics.va_metrics(va_true, va_pred)["va"], abs=1e-6)
    assert results["expr_macro_f1"] == pytest.approx(
        f1_score(expr_full, predicted, average="macro", labels=range(8), zero_division=0), abs=1e-6)
    pooled_ce = -np.mean(np.log(np.clip(expr_prob[np.arange(m), expr_full], 1e-7, 1)))
    assert results["expr_loss"] == pytest.approx(pooled_ce, rel=1e-5)
