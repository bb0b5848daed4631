"""ABAW metrics: NumPy definitions against independent formulas and scikit-learn, and the
streaming Keras metrics against the pooled values (uneven batches, MirroredStrategy)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from affectkit import metrics
from affectkit.labels import get_schema

BATCHES = (7, 1, 13, 32)  # uneven batch sizes, 53 rows in all


def reference_ccc(x, y):
    """CCC through Pearson's r: 2 r sx sy / (sx^2 + sy^2 + (mx - my)^2)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sx, sy = x.std(), y.std()
    r = np.corrcoef(x, y)[0, 1]
    return 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


def random_va(rng, n, missing=0.2):
    y_true = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    y_pred = np.clip(0.6 * y_true + rng.normal(0.1, 0.3, (n, 2)), -1, 1).astype(np.float32)
    y_true[rng.random((n, 2)) < missing] = -5.0
    return y_true, y_pred


def random_expr(rng, n, classes, missing=0.2):
    y_true = rng.integers(0, classes, n)
    y_true[rng.random(n) < missing] = -1
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[np.maximum(y_true, 0)]
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return y_true, probabilities.astype(np.float32)


def random_au(rng, n, aus, missing=0.15):
    y_true = (rng.random((n, aus)) < 0.3).astype(np.int64)
    y_pred = np.clip(0.5 * y_true + rng.random((n, aus)) * 0.7, 0, 1).astype(np.float32)
    y_true[rng.random((n, aus)) < missing] = -1
    return y_true, y_pred


def sklearn_au(y_true, y_pred, threshold=0.5):
    f1s, correct, count = [], 0, 0
    for k in range(y_true.shape[1]):
        valid = y_true[:, k] != -1
        predicted = (y_pred[valid, k] > threshold).astype(int)
        f1s.append(f1_score(y_true[valid, k], predicted, labels=[0, 1], zero_division=0))
        correct += np.sum(predicted == y_true[valid, k])
        count += valid.sum()
    return np.mean(f1s), f1s, correct / count


# --- NumPy definitions --------------------------------------------------------------------


def test_ccc_matches_pearson_form_and_handles_constants():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    y = 0.7 * x + rng.normal(0.2, 0.5, size=500)
    assert metrics.ccc(x, y) == pytest.approx(reference_ccc(x, y), abs=1e-12)
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    centred = x - x.mean()
    assert metrics.ccc(centred, -centred) == pytest.approx(-1.0)
    assert metrics.ccc(x, np.full_like(x, 0.3)) == pytest.approx(0.0, abs=1e-12)  # constant prediction
    assert metrics.ccc([0.2, 0.2], [0.2, 0.2]) == 0.0  # denominator 0, no NaN
    assert metrics.ccc([], []) == 0.0


def test_va_metrics_leave_out_missing_per_dimension():
    rng = np.random.default_rng(1)
    y_true, y_pred = random_va(rng, 300)
    scores = metrics.va_metrics(y_true, y_pred)
    for column, name in enumerate(("valence", "arousal")):
        valid = y_true[:, column] != -5
        assert scores[name] == pytest.approx(reference_ccc(y_true[valid, column], y_pred[valid, column]), abs=1e-9)
    assert scores["va"] == pytest.approx((scores["valence"] + scores["arousal"]) / 2)
    # extra leading dims are flattened
    nested = metrics.va_metrics(y_true.reshape(30, 10, 2), y_pred.reshape(30, 10, 2))
    assert nested["va"] == pytest.approx(scores["va"])


@pytest.mark.parametrize("classes", [7, 8])
def test_expr_metrics_match_sklearn(classes):
    rng = np.random.default_rng(classes)
    y_true, probabilities = random_expr(rng, 400, classes)
    y_true[y_true == 3] = 0  # a class absent from the labels: F1 0, still averaged
    valid = y_true != -1
    predicted = probabilities.argmax(-1)
    scores = metrics.expr_metrics(y_true, probabilities, classes)
    expected_f1 = f1_score(y_true[valid], predicted[valid], average="macro", labels=range(classes), zero_division=0)
    assert scores["f1"] == pytest.approx(expected_f1, abs=1e-12)
    assert scores["accuracy"] == pytest.approx(accuracy_score(y_true[valid], predicted[valid]))
    np.testing.assert_allclose(
        scores["f1_per_class"],
        f1_score(y_true[valid], predicted[valid], average=None, labels=range(classes), zero_division=0),
    )
    np.testing.assert_array_equal(
        scores["confusion"], confusion_matrix(y_true[valid], predicted[valid], labels=range(classes))
    )
    # class indices as predictions, and labels shaped (n, 1), give the same
    again = metrics.expr_metrics(y_true.reshape(-1, 1), predicted, classes)
    assert again["f1"] == pytest.approx(scores["f1"]) and again["accuracy"] == pytest.approx(scores["accuracy"])
    # sequences (B, T) with (B, T, C) probabilities
    nested = metrics.expr_metrics(y_true.reshape(40, 10), probabilities.reshape(40, 10, classes), classes)
    assert nested["f1"] == pytest.approx(scores["f1"])


def test_expr_metrics_reject_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="labels must be"):
        metrics.expr_metrics([0, 9], [0, 1], 8)
    with pytest.raises(ValueError, match="y_pred must hold"):
        metrics.expr_metrics([0, 1, 2], np.zeros((3, 5)), 8)


def test_au_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y_true, y_pred = random_au(rng, 300, 12)
    y_true[:, 5] = np.where(y_true[:, 5] == 1, 0, y_true[:, 5])  # an AU with no positives
    mean_f1, per_au, accuracy = sklearn_au(y_true, y_pred)
    scores = metrics.au_metrics(y_true, y_pred)
    assert scores["f1"] == pytest.approx(mean_f1, abs=1e-12)
    np.testing.assert_allclose(scores["f1_per_au"], per_au)
    assert scores["accuracy"] == pytest.approx(accuracy)
    binary = metrics.au_metrics(y_true, (y_pred > 0.5).astype(int))
    assert binary["f1"] == pytest.approx(mean_f1)
    nested = metrics.au_metrics(y_true.reshape(30, 10, 12), y_pred.reshape(30, 10, 12))
    assert nested["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("edition", ["abaw1", "abaw2", "abaw3", "abaw5"])
def test_abaw_scores_follow_each_edition(edition):
    schema = get_schema(edition)
    rng = np.random.default_rng(schema.edition_number)
    classes, aus = schema.num_expressions, schema.num_aus
    expr_true, expr_prob = random_expr(rng, 300, classes)
    au_true, au_prob = random_au(rng, 300, aus)
    va_true, va_pred = random_va(rng, 300)

    valid = expr_true != -1
    f1 = f1_score(expr_true[valid], expr_prob.argmax(-1)[valid], average="macro", labels=range(classes), zero_division=0)
    acc = accuracy_score(expr_true[valid], expr_prob.argmax(-1)[valid])
    au_f1, _, au_acc = sklearn_au(au_true, au_prob)
    ccc_v = reference_ccc(*(a[va_true[:, 0] != -5, 0] for a in (va_true, va_pred)))
    ccc_a = reference_ccc(*(a[va_true[:, 1] != -5, 1] for a in (va_true, va_pred)))

    early = edition in ("abaw1", "abaw2")
    expected_expr = 0.67 * f1 + 0.33 * acc if early else f1
    expected_au = 0.5 * au_f1 + 0.5 * au_acc if early else au_f1
    assert metrics.abaw_scores("expr", edition, expr_true, expr_prob)["score"] == pytest.approx(expected_expr)
    assert metrics.abaw_scores("au", edition, au_true, au_prob)["score"] == pytest.approx(expected_au)
    assert metrics.abaw_scores("va", edition, va_true, va_pred)["score"] == pytest.approx((ccc_v + ccc_a) / 2)

    mtl = metrics.abaw_scores(
        "mtl", schema, {"va": va_true, "expr": expr_true, "au": au_true},
        {"va": va_pred, "expr": expr_prob, "au": au_prob},
    )
    assert mtl["va_valence"] == pytest.approx(ccc_v) and mtl["va_arousal"] == pytest.approx(ccc_a)
    assert mtl["expr_f1"] == pytest.approx(f1) and mtl["au_f1"] == pytest.approx(au_f1)
    assert mtl["score"] == pytest.approx((ccc_v + ccc_a) / 2 + expected_expr + expected_au)
    if not early:  # ABAW3+ MTL: P = VA + EXPR macro-F1 + AU mean F1
        assert mtl["score"] == pytest.approx((ccc_v + ccc_a) / 2 + f1 + au_f1)


def test_abaw_scores_check_au_count_and_task():
    with pytest.raises(ValueError, match="12 AUs"):
        metrics.abaw_scores("au", "abaw3", np.zeros((4, 8)), np.zeros((4, 8)))
    with pytest.raises(ValueError, match="unknown task"):
        metrics.abaw_scores("pose", "abaw3", [0], [0])


def test_chance_baselines():
    rng = np.random.default_rng(5)
    train_expr = np.array([4] * 50 + [0] * 30 + [-1] * 80)
    eval_expr, _ = random_expr(rng, 200, 8)
    valid = eval_expr != -1
    majority = np.full(valid.sum(), 4)
    expected = f1_score(eval_expr[valid], majority, average="macro", labels=range(8), zero_division=0)
    assert metrics.chance_baselines("expr", "abaw3", train_expr, eval_expr)["score"] == pytest.approx(expected)

    train_au, _ = random_au(rng, 100, 12)
    eval_au, _ = random_au(rng, 200, 12)
    au_f1, _, au_acc = sklearn_au(eval_au, np.ones_like(eval_au, dtype=float))
    au = metrics.chance_baselines("au", "abaw2", train_au, eval_au)
    assert au["score"] == pytest.approx(0.5 * au_f1 + 0.5 * au_acc)

    train_va, _ = random_va(rng, 100)
    eval_va, _ = random_va(rng, 200)
    va = metrics.chance_baselines("va", "abaw3", train_va, eval_va)
    assert va["score"] == pytest.approx(0.0, abs=1e-12) and not np.isnan(va["valence"])

    mtl = metrics.chance_baselines(
        "mtl", "abaw3", {"va": train_va, "expr": train_expr, "au": train_au},
        {"va": eval_va, "expr": eval_expr, "au": eval_au},
    )
    assert mtl["score"] == pytest.approx(expected + au_f1)


# --- streaming Keras metrics ---------------------------------------------------------------


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
    assert stream(metrics.ConcordanceCorrelation(), y_true, y_pred) == pytest.approx(expected["va"], abs=1e-6)
    for dimension, name in enumerate(("valence", "arousal")):
        metric = metrics.ConcordanceCorrelation(dimension=dimension)
        assert metric.name == f"ccc_{name}"
        assert stream(metric, y_true, y_pred) == pytest.approx(expected[name], abs=1e-6)
    # (B, T, 2) sequence outputs
    metric = metrics.ConcordanceCorrelation()
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
    metric = metrics.ConcordanceCorrelation()
    for chunk in np.array_split(np.arange(len(x)), 4):
        metric.update_state(x[chunk], y[chunk])
    assert float(metric.result()) == pytest.approx(metrics.va_metrics(x, y)["va"], abs=1e-5)


def test_sample_weight_equals_repeated_rows():
    rng = np.random.default_rng(12)
    y_true, y_pred = random_va(rng, 40)
    weights = rng.integers(0, 3, 40)
    repeated = np.repeat(np.arange(40), weights)
    metric = metrics.ConcordanceCorrelation()
    metric.update_state(y_true, y_pred, sample_weight=weights)
    assert float(metric.result()) == pytest.approx(metrics.va_metrics(y_true[repeated], y_pred[repeated])["va"], abs=1e-6)
    labels, probabilities = random_expr(rng, 40, 8)
    metric = metrics.MaskedMacroF1(8)
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
    assert stream(metrics.MaskedMacroF1(8), labels, probabilities) == pytest.approx(f1, abs=1e-6)
    assert stream(metrics.MaskedMacroF1(8), labels[:, None], probabilities) == pytest.approx(f1, abs=1e-6)
    accuracy = accuracy_score(labels[valid], predicted[valid])
    assert stream(metrics.MaskedAccuracy(), labels, probabilities) == pytest.approx(accuracy, abs=1e-6)

    au_true, au_prob = random_au(rng, n, 12)
    au_f1, _, au_acc = sklearn_au(au_true, au_prob)
    assert stream(metrics.MaskedAUF1(12), au_true, au_prob) == pytest.approx(au_f1, abs=1e-6)
    assert stream(metrics.MaskedAUAccuracy(), au_true, au_prob) == pytest.approx(au_acc, abs=1e-6)
    au_f1_high, _, _ = sklearn_au(au_true, au_prob, threshold=0.7)
    assert stream(metrics.MaskedAUF1(12, threshold=0.7), au_true, au_prob) == pytest.approx(au_f1_high, abs=1e-6)

    # (B, T, ...) sequence outputs and reset
    metric = metrics.MaskedMacroF1(8)
    metric.update_state(labels[:52].reshape(4, 13), probabilities[:52].reshape(4, 13, 8))
    expected = f1_score(labels[:52][valid[:52]], predicted[:52][valid[:52]], average="macro",
                        labels=range(8), zero_division=0)
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric = metrics.MaskedAUF1(12)
    metric.update_state(au_true[:52].reshape(4, 13, 12), au_prob[:52].reshape(4, 13, 12))
    assert float(metric.result()) == pytest.approx(sklearn_au(au_true[:52], au_prob[:52])[0], abs=1e-6)


def all_metrics():
    return [
        metrics.ConcordanceCorrelation(),
        metrics.ConcordanceCorrelation(dimension=1, name="arousal_ccc"),
        metrics.MaskedMacroF1(num_classes=8),
        metrics.MaskedAccuracy(),
        metrics.MaskedAUF1(num_aus=12, threshold=0.4),
        metrics.MaskedAUAccuracy(threshold=0.6),
    ]


@pytest.mark.parametrize("metric", all_metrics(), ids=lambda m: m.name)
def test_metric_serialization_round_trip(metric):
    serialized = keras.saving.serialize_keras_object(metric)
    assert serialized["registered_name"] == f"affectkit>{type(metric).__name__}"
    clone = keras.saving.deserialize_keras_object(serialized)
    assert type(clone) is type(metric)
    assert clone.get_config() == metric.get_config()


def test_metrics_under_mirrored_strategy_give_pooled_values():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(14)
    n = 53  # batches of 8 split 4/4 across replicas, last one uneven
    va_true, va_pred = random_va(rng, n)
    expr_true, expr_prob = random_expr(rng, n, 8)
    au_true, au_prob = random_au(rng, n, 12)
    with strategy.scope():
        ccc = metrics.ConcordanceCorrelation()
        f1, accuracy = metrics.MaskedMacroF1(8), metrics.MaskedAccuracy()
        au_f1, au_accuracy = metrics.MaskedAUF1(12), metrics.MaskedAUAccuracy()
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
            metrics={"va": [metrics.ConcordanceCorrelation()], "expr": [metrics.MaskedMacroF1(8)]},
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
