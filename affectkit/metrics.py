"""Official ABAW metrics in NumPy: the definitions used for scores, `metrics.json` and
the scoring of submission files. Importing this module loads neither Keras nor TensorFlow.

All metrics pool every labelled frame of the whole set: not per video, not per batch.
Frames whose label is missing (valence/arousal -5, expression -1, each AU -1) are left
out of that task's metric (see `affectkit.labels`).

Functions: `ccc`, `va_metrics`, `expr_metrics`, `au_metrics`, `abaw_scores`,
`chance_baselines`, and `au_present`, the one rule that turns AU probabilities into 0/1
(used here, by the streaming Keras metrics of `affectkit.streaming_metrics` and by the
challenge-file writer of `affectkit.evaluation.challenge_files`).
"""

import numpy as np

from affectkit.labels import AU_MISSING, EXPR_MISSING, VA_MISSING, VA_NAMES, get_schema

AU_THRESHOLD = 0.5


def au_present(probabilities, threshold=AU_THRESHOLD):
    """Whether each AU is predicted present: `probabilities >= threshold`.

    The one decision rule of affectkit: the NumPy metrics, the streaming Keras metrics
    and the official prediction files all use it, so a probability of exactly the
    threshold counts as present everywhere. Works on NumPy arrays and on backend
    tensors alike (it returns booleans of the same kind).

    Args:
        probabilities: AU probabilities (any shape).
        threshold: decision threshold (default `AU_THRESHOLD`, 0.5).

    Example:
    >>> au_present(np.array([0.2, 0.5, 0.9]))
    array([False,  True,  True])
    """
    return probabilities >= threshold


def ccc(x, y):
    """Concordance correlation coefficient of two 1-D samples (population moments, float64).

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2). Returns 0.0 when the
    denominator is 0 (both samples constant and equal, or empty): a constant predictor
    has no concordance.

    Args:
        x: 1-D array-like (e.g. labels).
        y: 1-D array-like of the same length (e.g. predictions).

    Example:
    >>> ccc([0.1, 0.5, -0.2], [0.1, 0.5, -0.2])
    1.0
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"ccc: x has {x.size} values but y has {y.size}; expected the same.")
    if x.size == 0:
        return 0.0
    mx, my = x.mean(), y.mean()
    vx, vy = np.mean((x - mx) ** 2), np.mean((y - my) ** 2)
    cov = np.mean((x - mx) * (y - my))
    denominator = vx + vy + (mx - my) ** 2
    if denominator <= 0.0:
        return 0.0
    return float(2.0 * cov / denominator)


def _is_va_missing(values):
    return np.isclose(values, VA_MISSING)


def va_metrics(y_true, y_pred):
    """CCC of valence and arousal, each over the rows where that dimension is labelled.

    Args:
        y_true: (..., 2) valence then arousal; -5 marks a missing value (per element).
        y_pred: (..., 2) predictions in the same order.

    Returns:
        dict with `valence`, `arousal` (CCCs) and `va`, their mean.

    Example:
    >>> va_metrics([[0.1, 0.2], [0.3, -5], [-0.4, 0.0]], [[0.1, 0.1], [0.2, 0.5], [-0.3, 0.1]])["va"]
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape[-1:] != (2,) or y_pred.shape != y_true.shape:
        raise ValueError(
            f"va_metrics: expected y_true and y_pred of the same shape (..., 2) "
            f"(valence, arousal); got {y_true.shape} and {y_pred.shape}."
        )
    y_true = y_true.reshape(-1, 2)
    y_pred = y_pred.reshape(-1, 2)
    scores = {}
    for column, name in enumerate(VA_NAMES):
        valid = ~_is_va_missing(y_true[:, column])
        scores[name] = ccc(y_true[valid, column], y_pred[valid, column])
    scores["va"] = 0.5 * (scores["valence"] + scores["arousal"])
    return scores


def _expr_arrays(y_true, y_pred, num_classes):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = y_true.reshape(-1).astype(np.int64)
    n = labels.size
    if y_pred.ndim >= 2 and y_pred.shape[-1] == num_classes and y_pred.size == n * num_classes:
        predicted = np.argmax(y_pred.reshape(n, num_classes), axis=-1)
    elif y_pred.size == n:
        predicted = y_pred.reshape(-1).astype(np.int64)
    else:
        raise ValueError(
            f"expr_metrics: y_true has {n} labels, so y_pred must hold {n} class indices or "
            f"({n}, {num_classes}) probabilities; got shape {y_pred.shape}."
        )
    valid = labels != EXPR_MISSING
    labels, predicted = labels[valid], predicted[valid]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"expr_metrics: labels must be -1 (missing) or 0..{num_classes - 1}; "
            f"found {int(labels.min())}..{int(labels.max())}."
        )
    return labels, predicted


def _f1_from_counts(tp, fp, fn):
    """Binary F1 = 2tp / (2tp + fp + fn), 0 where the denominator is 0 (zero_division=0)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)


def expr_metrics(y_true, y_pred, num_classes):
    """Macro F1, accuracy, per-class F1 and confusion matrix of expression predictions.

    Equals `sklearn.metrics.f1_score(t, p, average="macro", labels=range(num_classes),
    zero_division=0)` on the labelled frames.

    Args:
        y_true: (...,) or (..., 1) integer class indices; -1 marks a missing label.
        y_pred: class indices of the same size, or (..., num_classes) probabilities
            (argmax is taken).
        num_classes: number of expression classes (7 in ABAW1/2, 8 from ABAW3).

    Returns:
        dict with `f1`, `accuracy`, `f1_per_class` (list) and `confusion`
        (num_classes x num_classes list, rows true class, columns predicted class).

    Example:
    >>> expr_metrics([0, 1, -1, 2], [0, 2, 1, 2], num_classes=3)["accuracy"]
    0.6666666666666666
    """
    labels, predicted = _expr_arrays(y_true, y_pred, num_classes)
    in_range = (predicted >= 0) & (predicted < num_classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels[in_range], predicted[in_range]), 1)
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = np.bincount(labels, minlength=num_classes)[:num_classes] - tp
    f1_per_class = _f1_from_counts(tp, fp, fn)
    accuracy = float(np.mean(labels == predicted)) if labels.size else 0.0
    return {
        "f1": float(np.mean(f1_per_class)),
        "accuracy": accuracy,
        "f1_per_class": [float(v) for v in f1_per_class],
        "confusion": confusion.tolist(),
    }


def au_metrics(y_true, y_pred, threshold=AU_THRESHOLD):
    """Mean per-AU binary F1 and accuracy over all labelled AU entries.

    Args:
        y_true: (..., K) 0/1 with -1 for a missing entry (left out of that AU's F1).
        y_pred: (..., K) 0/1 or probabilities; an AU is predicted present when
            `au_present(y_pred, threshold)`, i.e. `y_pred >= threshold`.
        threshold: decision threshold for probabilities.

    Returns:
        dict with `f1` (mean over the K AUs; an AU with no positive label and no
        positive prediction scores 0), `f1_per_au` (list) and `accuracy`.

    Example:
    >>> au_metrics([[1, 0], [0, -1]], [[0.9, 0.2], [0.1, 0.7]])["accuracy"]
    1.0
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim < 2 or y_pred.shape != y_true.shape:
        raise ValueError(
            f"au_metrics: expected y_true and y_pred of the same shape (..., K); "
            f"got {y_true.shape} and {y_pred.shape}."
        )
    num_aus = y_true.shape[-1]
    y_true = y_true.reshape(-1, num_aus).astype(np.int64)
    predicted = au_present(y_pred.reshape(-1, num_aus), threshold).astype(np.int64)
    valid = y_true != AU_MISSING
    positive = (y_true == 1) & valid
    tp = np.sum(positive & (predicted == 1), axis=0)
    fp = np.sum(~positive & valid & (predicted == 1), axis=0)
    fn = np.sum(positive & (predicted == 0), axis=0)
    f1_per_au = _f1_from_counts(tp, fp, fn)
    correct = np.sum((predicted == y_true) & valid)
    count = np.sum(valid)
    return {
        "f1": float(np.mean(f1_per_au)),
        "f1_per_au": [float(v) for v in f1_per_au],
        "accuracy": float(correct / count) if count else 0.0,
    }


_TASKS = ("va", "expr", "au")


def abaw_scores(task, edition, y_true, y_pred):
    """Every component of the official ABAW score of a task, plus `score`.

    - `va`: score = (CCC_valence + CCC_arousal) / 2 (every edition).
    - `expr`: ABAW1/2 score = 0.67 * macro-F1 + 0.33 * accuracy (7 classes);
      ABAW3+ score = macro-F1 (8 classes).
    - `au`: ABAW1/2 score = 0.5 * mean F1 + 0.5 * accuracy; ABAW3+ score = mean F1
      (12 AUs).
    - `mtl`: `y_true`/`y_pred` are dicts with any of `va`, `expr`, `au`; each task's
      components come prefixed (`va_valence`, `expr_f1`, `au_f1`, `va_score`, ...) and
      `score` is the sum of the task scores. From ABAW3 on this is the MTL challenge's
      P = VA + EXPR F1 + AU F1.

    Args:
        task: `"va"`, `"expr"`, `"au"` or `"mtl"`.
        edition: edition name (`"abaw1"` ... `"abaw6"`) or a `LabelSchema`.
        y_true: labels with missing markers (see `va_metrics`, `expr_metrics`,
            `au_metrics`), or a dict of them for `mtl`.
        y_pred: predictions of the same layout (expression: indices or probabilities).

    Example:
    >>> abaw_scores("expr", "abaw3", [0, 7, -1], [0, 7, 3])["score"]
    0.25
    """
    schema = get_schema(edition)
    if task == "va":
        scores = va_metrics(y_true, y_pred)
        scores["score"] = scores["va"]
        return scores
    if task == "expr":
        scores = expr_metrics(y_true, y_pred, schema.num_expressions)
        if schema.expr_score_uses_accuracy:
            scores["score"] = 0.67 * scores["f1"] + 0.33 * scores["accuracy"]
        else:
            scores["score"] = scores["f1"]
        return scores
    if task == "au":
        width = np.shape(y_true)[-1] if np.ndim(y_true) else None
        if width != schema.num_aus:
            raise ValueError(
                f"abaw_scores: {schema.edition} has {schema.num_aus} AUs "
                f"({', '.join(schema.aus)}); AU labels have shape {np.shape(y_true)}."
            )
        scores = au_metrics(y_true, y_pred)
        if schema.expr_score_uses_accuracy:
            scores["score"] = 0.5 * scores["f1"] + 0.5 * scores["accuracy"]
        else:
            scores["score"] = scores["f1"]
        return scores
    if task == "mtl":
        if not isinstance(y_true, dict) or not isinstance(y_pred, dict):
            raise ValueError("abaw_scores('mtl', ...): y_true and y_pred must be dicts keyed by task.")
        tasks = [t for t in _TASKS if t in y_true]
        missing = [t for t in tasks if t not in y_pred]
        if not tasks or missing:
            raise ValueError(
                f"abaw_scores('mtl', ...): labels for {sorted(y_true)} and predictions for "
                f"{sorted(y_pred)}; expected predictions for every labelled task of va, expr, au."
            )
        scores, total = {}, 0.0
        for name in tasks:
            task_scores = abaw_scores(name, schema, y_true[name], y_pred[name])
            total += task_scores["score"]
            for key, value in task_scores.items():
                scores[f"{name}_{key}"] = value
        scores["score"] = total
        return scores
    raise ValueError(f"abaw_scores: unknown task {task!r}; expected va, expr, au or mtl.")


def _chance_prediction(task, schema, y_train, y_eval):
    if task == "va":
        y_train = np.asarray(y_train, dtype=np.float64).reshape(-1, 2)
        y_eval = np.asarray(y_eval, dtype=np.float64)
        means = []
        for column in range(2):
            values = y_train[~_is_va_missing(y_train[:, column]), column]
            means.append(values.mean() if values.size else 0.0)
        return np.broadcast_to(np.asarray(means), y_eval.shape)
    if task == "expr":
        labels = np.asarray(y_train).reshape(-1).astype(np.int64)
        labels = labels[labels != EXPR_MISSING]
        majority = int(np.argmax(np.bincount(labels, minlength=schema.num_expressions))) if labels.size else 0
        return np.full(np.asarray(y_eval).reshape(-1).shape, majority, dtype=np.int64)
    if task == "au":
        return np.ones(np.shape(y_eval), dtype=np.int64)
    raise ValueError(f"chance_baselines: unknown task {task!r}; expected va, expr, au or mtl.")


def chance_baselines(task, edition, y_true_train, y_true_eval):
    """ABAW scores of trivial predictors, for judging a model's scores.

    EXPR: the majority class of the training labels; AU: every AU present;
    VA: the training mean of each dimension (a constant, so CCC 0).

    Args:
        task: `"va"`, `"expr"`, `"au"` or `"mtl"` (then dicts keyed by task).
        edition: edition name or `LabelSchema`.
        y_true_train: training labels (with missing markers).
        y_true_eval: labels of the set to score on.

    Returns:
        the `abaw_scores` dict of the trivial predictor on `y_true_eval`.

    Example:
    >>> chance_baselines("au", "abaw3", train_au, val_au)["score"]
    """
    schema = get_schema(edition)
    if task == "mtl":
        predictions = {
            name: _chance_prediction(name, schema, y_true_train[name], y_true_eval[name])
            for name in _TASKS
            if name in y_true_eval
        }
        return abaw_scores("mtl", schema, {k: y_true_eval[k] for k in predictions}, predictions)
    return abaw_scores(task, schema, y_true_eval, _chance_prediction(task, schema, y_true_train, y_true_eval))
