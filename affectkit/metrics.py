"""Official ABAW metrics (NumPy) and their streaming Keras counterparts.

All metrics pool every labelled frame of the whole set: not per video, not per batch.
Frames whose label is missing (valence/arousal -5, expression -1, each AU -1) are left
out of that task's metric (see `affectkit.labels`).

NumPy functions (the definitions used for scores, `metrics.json` and submissions):
`ccc`, `va_metrics`, `expr_metrics`, `au_metrics`, `abaw_scores`, `chance_baselines`.

Keras metrics (for `compile(metrics=...)` and custom loops): `ConcordanceCorrelation`,
`MaskedMacroF1`, `MaskedAccuracy`, `MaskedAUF1`, `MaskedAUAccuracy`. They keep sums
(count, sums, squares, cross-products; true/false positives) in float64 state variables,
so the result over any batching equals the pooled NumPy value, and under `tf.distribute`
(where Keras sums metric variables across replicas on read) it is the value over all
replicas' frames.
"""

import keras
import numpy as np
from keras import ops

from affectkit.labels import AU_MISSING, EXPR_MISSING, VA_MISSING, VA_NAMES, get_schema

_STATE_DTYPE = "float64"

# ---------------------------------------------------------------------------------------
# NumPy: the official definitions
# ---------------------------------------------------------------------------------------


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


def au_metrics(y_true, y_pred, threshold=0.5):
    """Mean per-AU binary F1 and accuracy over all labelled AU entries.

    Args:
        y_true: (..., K) 0/1 with -1 for a missing entry (left out of that AU's F1).
        y_pred: (..., K) 0/1 or probabilities; an AU is predicted present when
            `y_pred > threshold` (as Keras' binary metrics).
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
    predicted = (y_pred.reshape(-1, num_aus) > threshold).astype(np.int64)
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


# ---------------------------------------------------------------------------------------
# Keras streaming metrics
# ---------------------------------------------------------------------------------------


def _row_weights(sample_weight, leading_shape, rows, dtype):
    """Per-row weights (rows,) from a `sample_weight` broadcastable to the leading dims."""
    if sample_weight is None:
        return None
    weights = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
    lead_rank = len(leading_shape)
    while len(weights.shape) > lead_rank and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    while len(weights.shape) < lead_rank:
        weights = ops.expand_dims(weights, axis=-1)
    return ops.reshape(ops.broadcast_to(weights, leading_shape), (rows,))


def _safe_ratio(numerator, denominator):
    positive = denominator > 0
    return ops.where(positive, numerator / ops.where(positive, denominator, 1), 0)


@keras.saving.register_keras_serializable(package="affectkit")
class ConcordanceCorrelation(keras.metrics.Metric):
    """Streaming CCC over all labelled frames seen (ABAW's pooled CCC).

    Accumulates, per column, the count, sums, sums of squares and cross-products of
    the labelled (non -5) entries in float64 state, so the result is exact over
    uneven batches and under `tf.distribute` (variables are summed across replicas).
    Unlike `keras.metrics.ConcordanceCorrelation` it does not average per-batch values.

    Args:
        dimension: column to report (0 valence, 1 arousal), or None for the mean CCC
            over all columns (the ABAW VA score).
        num_columns: number of columns of `y_true`/`y_pred` (2 for valence, arousal).
        name: metric name; default `"ccc"`, `"ccc_valence"` or `"ccc_arousal"`.
        dtype: dtype of the result.

    Example:
    >>> metric = ConcordanceCorrelation()
    >>> metric.update_state([[0.1, -5.0], [0.4, 0.2]], [[0.0, 0.3], [0.5, 0.1]])
    >>> float(metric.result())
    """

    def __init__(self, dimension=None, num_columns=2, name=None, dtype=None):
        if dimension is not None and not 0 <= int(dimension) < int(num_columns):
            raise ValueError(f"ConcordanceCorrelation: dimension {dimension} outside 0..{num_columns - 1}.")
        if name is None:
            if dimension is None:
                name = "ccc"
            elif int(num_columns) == 2:
                name = f"ccc_{VA_NAMES[int(dimension)]}"
            else:
                name = f"ccc_{int(dimension)}"
        super().__init__(name=name, dtype=dtype)
        self.dimension = None if dimension is None else int(dimension)
        self.num_columns = int(num_columns)
        self.missing_value = VA_MISSING
        self._sums = {
            key: self.add_variable(
                shape=(self.num_columns,), initializer="zeros", dtype=_STATE_DTYPE, name=key
            )
            for key in ("count", "sum_true", "sum_pred", "sum_true_sq", "sum_pred_sq", "sum_cross")
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        columns = self.num_columns
        leading = ops.shape(y_true)[:-1]
        t = ops.cast(ops.reshape(y_true, (-1, columns)), _STATE_DTYPE)
        p = ops.cast(ops.reshape(y_pred, (-1, columns)), _STATE_DTYPE)
        mask = ops.cast(ops.abs(t - self.missing_value) > 1e-3, _STATE_DTYPE)
        weights = _row_weights(sample_weight, leading, ops.shape(t)[0], _STATE_DTYPE)
        if weights is not None:
            mask = mask * ops.expand_dims(weights, -1)
        updates = {
            "count": mask,
            "sum_true": mask * t,
            "sum_pred": mask * p,
            "sum_true_sq": mask * t * t,
            "sum_pred_sq": mask * p * p,
            "sum_cross": mask * t * p,
        }
        for key, value in updates.items():
            self._sums[key].assign_add(ops.sum(value, axis=0))

    def per_column(self):
        """The CCC of every column (float64 tensor of shape (num_columns,))."""
        s = {key: ops.convert_to_tensor(var) for key, var in self._sums.items()}
        n = s["count"]
        mean_t = _safe_ratio(s["sum_true"], n)
        mean_p = _safe_ratio(s["sum_pred"], n)
        var_t = _safe_ratio(s["sum_true_sq"], n) - mean_t * mean_t
        var_p = _safe_ratio(s["sum_pred_sq"], n) - mean_p * mean_p
        cov = _safe_ratio(s["sum_cross"], n) - mean_t * mean_p
        denominator = var_t + var_p + (mean_t - mean_p) ** 2
        return _safe_ratio(2.0 * cov, denominator)

    def result(self):
        values = self.per_column()
        value = ops.mean(values) if self.dimension is None else values[self.dimension]
        return ops.cast(value, self.dtype)

    def get_config(self):
        return {
            "dimension": self.dimension,
            "num_columns": self.num_columns,
            "name": self.name,
            "dtype": self.dtype,
        }


class _ConfusionCounts(keras.metrics.Metric):
    """Per-unit true/false positives and false negatives (units: classes or AUs)."""

    def _add_counts(self, units):
        self.true_positives = self.add_variable(
            shape=(units,), initializer="zeros", dtype=_STATE_DTYPE, name="true_positives"
        )
        self.false_positives = self.add_variable(
            shape=(units,), initializer="zeros", dtype=_STATE_DTYPE, name="false_positives"
        )
        self.false_negatives = self.add_variable(
            shape=(units,), initializer="zeros", dtype=_STATE_DTYPE, name="false_negatives"
        )

    def _accumulate(self, actual, predicted, valid):
        """`actual`, `predicted`: 0/1 (rows, units); `valid`: weights (rows, units)."""
        self.true_positives.assign_add(ops.sum(valid * actual * predicted, axis=0))
        self.false_positives.assign_add(ops.sum(valid * (1 - actual) * predicted, axis=0))
        self.false_negatives.assign_add(ops.sum(valid * actual * (1 - predicted), axis=0))

    def per_unit_f1(self):
        """F1 of every class / AU (float64), 0 where undefined (sklearn zero_division=0)."""
        tp = ops.convert_to_tensor(self.true_positives)
        return _safe_ratio(
            2.0 * tp,
            2.0 * tp + ops.convert_to_tensor(self.false_positives) + ops.convert_to_tensor(self.false_negatives),
        )

    def result(self):
        return ops.cast(ops.mean(self.per_unit_f1()), self.dtype)


def _expr_rows(y_true, y_pred, sample_weight):
    """Flattened labels, argmax predictions and row weights (0 for missing labels)."""
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    num_classes = y_pred.shape[-1]
    probabilities = ops.reshape(y_pred, (-1, num_classes))
    rows = ops.shape(probabilities)[0]
    labels = ops.reshape(ops.cast(y_true, "int32"), (rows,))
    predicted = ops.cast(ops.argmax(probabilities, axis=-1), "int32")
    valid = ops.cast(labels >= 0, _STATE_DTYPE)
    weights = _row_weights(sample_weight, ops.shape(y_pred)[:-1], rows, _STATE_DTYPE)
    if weights is not None:
        valid = valid * weights
    return labels, predicted, valid, num_classes


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedMacroF1(_ConfusionCounts):
    """Streaming macro F1 of expression predictions; labels -1 are ignored.

    Keeps per-class true positives, false positives and false negatives of the argmax
    prediction; the result equals `sklearn.metrics.f1_score(..., average="macro",
    labels=range(num_classes), zero_division=0)` on all labelled frames seen.

    Args:
        num_classes: number of expression classes.
        name: metric name.
        dtype: dtype of the result.

    Example:
    >>> metric = MaskedMacroF1(num_classes=8)
    >>> metric.update_state(labels, probabilities)  # (B,) or (B, 1), and (B, 8)
    """

    def __init__(self, num_classes, name="macro_f1", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        self._add_counts(self.num_classes)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predicted, valid, num_classes = _expr_rows(y_true, y_pred, sample_weight)
        if num_classes != self.num_classes:
            raise ValueError(
                f"{self.name}: predictions have {num_classes} classes, expected {self.num_classes}."
            )
        actual = ops.one_hot(ops.maximum(labels, 0), self.num_classes, dtype=_STATE_DTYPE)
        guess = ops.one_hot(predicted, self.num_classes, dtype=_STATE_DTYPE)
        self._accumulate(actual, guess, ops.expand_dims(valid, -1))

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedAccuracy(keras.metrics.Metric):
    """Streaming accuracy of expression predictions (argmax); labels -1 are ignored.

    Args:
        name: metric name.
        dtype: dtype of the result.

    Example:
    >>> metric = MaskedAccuracy()
    >>> metric.update_state([0, -1, 2], [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.6, 0.3]])
    >>> float(metric.result())
    0.5
    """

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.correct = self.add_variable(shape=(), initializer="zeros", dtype=_STATE_DTYPE, name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=_STATE_DTYPE, name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predicted, valid, _ = _expr_rows(y_true, y_pred, sample_weight)
        self.correct.assign_add(ops.sum(valid * ops.cast(labels == predicted, _STATE_DTYPE)))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return ops.cast(
            _safe_ratio(ops.convert_to_tensor(self.correct), ops.convert_to_tensor(self.count)),
            self.dtype,
        )

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _au_entries(y_true, y_pred, sample_weight, threshold):
    """0/1 labels, 0/1 predictions and entry weights (0 where the label is -1), (rows, K)."""
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    num_aus = y_pred.shape[-1]
    t = ops.cast(ops.reshape(y_true, (-1, num_aus)), _STATE_DTYPE)
    p = ops.cast(ops.reshape(y_pred, (-1, num_aus)), _STATE_DTYPE)
    valid = ops.cast(t >= 0, _STATE_DTYPE)
    actual = ops.cast(t > 0.5, _STATE_DTYPE)
    predicted = ops.cast(p > threshold, _STATE_DTYPE)
    weights = _row_weights(sample_weight, ops.shape(y_pred)[:-1], ops.shape(t)[0], _STATE_DTYPE)
    if weights is not None:
        valid = valid * ops.expand_dims(weights, -1)
    return actual, predicted, valid, num_aus


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedAUF1(_ConfusionCounts):
    """Streaming mean per-AU binary F1; entries -1 are ignored per AU.

    An AU is predicted present when its probability is above `threshold`. An AU with
    no positive label and no positive prediction scores 0 (as `au_metrics`).

    Args:
        num_aus: number of AUs (columns).
        threshold: decision threshold on the predicted probabilities.
        name: metric name.
        dtype: dtype of the result.

    Example:
    >>> metric = MaskedAUF1(num_aus=12)
    >>> metric.update_state(au_labels, au_probabilities)  # both (B, 12)
    """

    def __init__(self, num_aus, threshold=0.5, name="mean_f1", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_aus = int(num_aus)
        self.threshold = float(threshold)
        self._add_counts(self.num_aus)

    def update_state(self, y_true, y_pred, sample_weight=None):
        actual, predicted, valid, num_aus = _au_entries(y_true, y_pred, sample_weight, self.threshold)
        if num_aus != self.num_aus:
            raise ValueError(f"{self.name}: predictions have {num_aus} AUs, expected {self.num_aus}.")
        self._accumulate(actual, predicted, valid)

    def get_config(self):
        return {
            "num_aus": self.num_aus,
            "threshold": self.threshold,
            "name": self.name,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedAUAccuracy(keras.metrics.Metric):
    """Streaming accuracy over all labelled AU entries (entries -1 are ignored).

    Args:
        threshold: decision threshold on the predicted probabilities.
        name: metric name.
        dtype: dtype of the result.

    Example:
    >>> metric = MaskedAUAccuracy()
    >>> metric.update_state([[1, -1], [0, 1]], [[0.8, 0.9], [0.3, 0.2]])
    >>> float(metric.result())
    0.6666667
    """

    def __init__(self, threshold=0.5, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.correct = self.add_variable(shape=(), initializer="zeros", dtype=_STATE_DTYPE, name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=_STATE_DTYPE, name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        actual, predicted, valid, _ = _au_entries(y_true, y_pred, sample_weight, self.threshold)
        self.correct.assign_add(ops.sum(valid * ops.cast(actual == predicted, _STATE_DTYPE)))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return ops.cast(
            _safe_ratio(ops.convert_to_tensor(self.correct), ops.convert_to_tensor(self.count)),
            self.dtype,
        )

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name, "dtype": self.dtype}
