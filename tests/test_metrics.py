"""ABAW metrics: the NumPy definitions against independent formulas and scikit-learn, and
the one AU decision rule shared by the NumPy metrics, the streaming Keras metrics and the
official prediction files."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from affectkit import metrics
from affectkit.labels import get_schema
from tests.metric_references import random_au, random_expr, random_va, reference_ccc, sklearn_au


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
    binary = metrics.au_metrics(y_true, (y_pred >= 0.5).astype(int))
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


# --- the one AU decision rule --------------------------------------------------------------


def test_au_probability_of_exactly_the_threshold_is_present_everywhere(tmp_path):
    """p = 0.5 counts as present (p >= 0.5) in the NumPy metrics, the streaming Keras
    metrics and the official files, so a run's metrics equal the score of its files."""
    import pandas as pd

    from affectkit import streaming_metrics
    from affectkit.data.affwild2 import write_annotation_file
    from affectkit.evaluation.challenge_files import decode_outputs, write_official_predictions
    from affectkit.evaluation.scoring import evaluate_files

    assert metrics.AU_THRESHOLD == 0.5
    column_labels = np.array([1, 0, 1, 0])
    column_probabilities = np.array([0.5, 0.4999, 0.7, 0.5], dtype=np.float32)
    decided = np.array([1, 0, 1, 1])  # by hand: 0.5 is present
    labels = np.repeat(column_labels[:, None], 12, axis=1)
    probabilities = np.repeat(column_probabilities[:, None], 12, axis=1)
    expected_f1 = f1_score(column_labels, decided)  # tp 2, fp 1, fn 0: 0.8
    assert expected_f1 == pytest.approx(0.8)

    numpy_scores = metrics.au_metrics(labels, probabilities)
    assert numpy_scores["f1"] == pytest.approx(expected_f1)
    assert numpy_scores["accuracy"] == pytest.approx(0.75)

    f1_metric = streaming_metrics.MaskedAUF1(12)
    accuracy_metric = streaming_metrics.MaskedAUAccuracy()
    for metric in (f1_metric, accuracy_metric):
        metric.update_state(labels, probabilities)
    assert float(f1_metric.result()) == pytest.approx(expected_f1)
    assert float(accuracy_metric.result()) == pytest.approx(0.75)

    np.testing.assert_array_equal(decode_outputs({"au": probabilities})["au"][:, 0], decided)
    gt = tmp_path / "gt"
    gt.mkdir()
    write_annotation_file(str(gt / "video1.txt"), "au", labels, "abaw3")
    frames = pd.DataFrame({"video": ["video1"] * 4, "frame": [1, 2, 3, 4]})
    written = write_official_predictions(str(tmp_path / "pred"), frames, {"au": probabilities},
                                         "abaw3")
    file_scores = evaluate_files("abaw3", "au", str(gt), written["au"])
    assert file_scores["f1"] == pytest.approx(expected_f1)
    assert file_scores["accuracy"] == pytest.approx(0.75)
