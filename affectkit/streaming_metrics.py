"""Streaming Keras metrics of the ABAW tasks, for `compile(metrics=...)` and custom loops.

`ConcordanceCorrelation`, `MaskedMacroF1`, `MaskedAccuracy`, `MaskedAUF1`,
`MaskedAUAccuracy`. Each keeps sums (count, sums, squares, cross-products; true/false
positives) in float64 state variables, so the result over any batching equals the pooled
value of the NumPy definitions in `affectkit.metrics`, and under `tf.distribute` (where
Keras sums metric variables across replicas on read) it is the value over all replicas'
frames. Missing labels are masked as in the losses (`affectkit.masking`); AU probabilities
become 0/1 by `affectkit.metrics.au_present`, the rule of the official files.
"""

import keras
from keras import ops

from affectkit.labels import VA_NAMES
from affectkit.masking import au_entries, class_rows, safe_ratio, va_entries
from affectkit.metrics import AU_THRESHOLD, au_present

_STATE_DTYPE = "float64"


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
        self._sums = {
            key: self.add_variable(
                shape=(self.num_columns,), initializer="zeros", dtype=_STATE_DTYPE, name=key
            )
            for key in ("count", "sum_true", "sum_pred", "sum_true_sq", "sum_pred_sq", "sum_cross")
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        t, p, mask = va_entries(y_true, y_pred, sample_weight, dtype=_STATE_DTYPE)
        if t.shape[-1] != self.num_columns:
            raise ValueError(
                f"{self.name}: values have {t.shape[-1]} columns, expected {self.num_columns}."
            )
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
        mean_t = safe_ratio(s["sum_true"], n)
        mean_p = safe_ratio(s["sum_pred"], n)
        var_t = safe_ratio(s["sum_true_sq"], n) - mean_t * mean_t
        var_p = safe_ratio(s["sum_pred_sq"], n) - mean_p * mean_p
        cov = safe_ratio(s["sum_cross"], n) - mean_t * mean_p
        denominator = var_t + var_p + (mean_t - mean_p) ** 2
        return safe_ratio(2.0 * cov, denominator)

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
        return safe_ratio(
            2.0 * tp,
            2.0 * tp + ops.convert_to_tensor(self.false_positives) + ops.convert_to_tensor(self.false_negatives),
        )

    def result(self):
        return ops.cast(ops.mean(self.per_unit_f1()), self.dtype)


def _expr_rows(y_true, y_pred, sample_weight):
    """Labels, argmax predictions and row weights (0 for missing labels), float64 weights."""
    labels, probabilities, valid = class_rows(y_true, y_pred, sample_weight, dtype=_STATE_DTYPE)
    predicted = ops.cast(ops.argmax(probabilities, axis=-1), "int32")
    return labels, predicted, valid, probabilities.shape[-1]


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


class _AccuracyCounts(keras.metrics.Metric):
    """Counts of correct and labelled entries; `result` is their ratio (0 when none)."""

    def __init__(self, name, dtype):
        super().__init__(name=name, dtype=dtype)
        self.correct = self.add_variable(shape=(), initializer="zeros", dtype=_STATE_DTYPE, name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=_STATE_DTYPE, name="count")

    def _accumulate(self, actual, predicted, valid):
        self.correct.assign_add(ops.sum(valid * ops.cast(actual == predicted, _STATE_DTYPE)))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return ops.cast(
            safe_ratio(ops.convert_to_tensor(self.correct), ops.convert_to_tensor(self.count)),
            self.dtype,
        )


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedAccuracy(_AccuracyCounts):
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

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predicted, valid, _ = _expr_rows(y_true, y_pred, sample_weight)
        self._accumulate(labels, predicted, valid)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _au_entries(y_true, y_pred, sample_weight, threshold):
    """0/1 labels, 0/1 predictions (`au_present`) and entry weights (0 where the label is -1)."""
    actual, probabilities, valid = au_entries(y_true, y_pred, sample_weight, dtype=_STATE_DTYPE)
    predicted = ops.cast(au_present(probabilities, threshold), _STATE_DTYPE)
    return actual, predicted, valid, probabilities.shape[-1]


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedAUF1(_ConfusionCounts):
    """Streaming mean per-AU binary F1; entries -1 are ignored per AU.

    An AU is predicted present when its probability is at least `threshold` (the rule
    `affectkit.metrics.au_present` of the official files). An AU with no positive label
    and no positive prediction scores 0 (as `affectkit.metrics.au_metrics`).

    Args:
        num_aus: number of AUs (columns).
        threshold: decision threshold on the predicted probabilities.
        name: metric name.
        dtype: dtype of the result.

    Example:
    >>> metric = MaskedAUF1(num_aus=12)
    >>> metric.update_state(au_labels, au_probabilities)  # both (B, 12)
    """

    def __init__(self, num_aus, threshold=AU_THRESHOLD, name="mean_f1", dtype=None):
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
class MaskedAUAccuracy(_AccuracyCounts):
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

    def __init__(self, threshold=AU_THRESHOLD, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)

    def update_state(self, y_true, y_pred, sample_weight=None):
        actual, predicted, valid, _ = _au_entries(y_true, y_pred, sample_weight, self.threshold)
        self._accumulate(actual, predicted, valid)

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name, "dtype": self.dtype}
