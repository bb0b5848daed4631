"""Masking of missing labels, shared by the masked losses and the streaming Keras metrics.

Labels keep the dataset's missing markers (valence/arousal -5, expression -1, each AU -1;
see `affectkit.labels`). These functions flatten any leading dimensions ((B,), (B, T), ...)
into rows and return, beside the labels and predictions, the weight of every row or entry:
0 where the label is missing, else the row's `sample_weight` (1 without one). A loss or a
metric then reduces `weight * value` and divides by the summed weights with `safe_ratio`.
"""

from keras import ops

from affectkit.labels import VA_MISSING

_VA_TOLERANCE = 1e-3


def safe_ratio(numerator, denominator):
    """numerator / denominator where denominator > 0, else 0 (with finite gradients)."""
    positive = denominator > 0
    return ops.where(positive, numerator / ops.where(positive, denominator, 1), 0)


def row_weights(sample_weight, leading_shape, rows, dtype):
    """Per-row weights (rows,) from a `sample_weight` broadcastable to the leading dims.

    A (B,) weight of (B, T, ...) outputs weighs every frame of a sequence; trailing
    size-1 dims ((B, 1)) are dropped. Returns None without a `sample_weight`.
    """
    if sample_weight is None:
        return None
    weights = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
    lead_rank = len(leading_shape)
    while len(weights.shape) > lead_rank and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    while len(weights.shape) < lead_rank:
        weights = ops.expand_dims(weights, axis=-1)
    return ops.reshape(ops.broadcast_to(weights, leading_shape), (rows,))


def va_labelled(values):
    """Boolean mask of the valence/arousal values that are not the missing marker (-5)."""
    return ops.abs(values - VA_MISSING) > _VA_TOLERANCE


def _column_entries(y_true, y_pred, sample_weight, dtype, labelled):
    """`(labels, predictions, weights)`, each (rows, C), of per-entry labels: weights are 0
    where `labelled(labels)` is False, times the row weights."""
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = y_pred.dtype if dtype is None else dtype
    columns = y_pred.shape[-1]
    labels = ops.cast(ops.reshape(y_true, (-1, columns)), dtype)
    predictions = ops.cast(ops.reshape(y_pred, (-1, columns)), dtype)
    weights = ops.cast(labelled(labels), dtype)
    rows = row_weights(sample_weight, ops.shape(y_pred)[:-1], ops.shape(predictions)[0], dtype)
    if rows is not None:
        weights = weights * ops.expand_dims(rows, -1)
    return labels, predictions, weights


def va_entries(y_true, y_pred, sample_weight=None, dtype=None):
    """`(labels, predictions, weights)`, each (rows, C) in `dtype`, of regression targets.

    Args:
        y_true: (..., C) labels; -5 marks a missing value (per entry).
        y_pred: (..., C) predictions.
        sample_weight: optional row weights, broadcastable to the leading dims.
        dtype: computation dtype (default: that of `y_pred`).
    """
    return _column_entries(y_true, y_pred, sample_weight, dtype, va_labelled)


def class_rows(y_true, y_pred, sample_weight=None, class_axis_rank=1, dtype=None):
    """`(labels, predictions, weights)` of integer class labels, one row per frame.

    Args:
        y_true: (...,) or (..., 1) class indices; -1 (any negative value) marks a missing label.
        y_pred: (..., C) scores, or (..., 2, C) with `class_axis_rank=2` (two passes).
        sample_weight: optional row weights, broadcastable to the leading dims.
        class_axis_rank: trailing dims of `y_pred` kept per row.
        dtype: dtype of the weights (default: that of `y_pred`).

    Returns:
        int32 labels (rows,) with missing ones replaced by 0 (their weight is 0),
        predictions (rows, ...) as given, and weights (rows,).
    """
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = y_pred.dtype if dtype is None else dtype
    trailing = tuple(y_pred.shape[-class_axis_rank:])
    predictions = ops.reshape(y_pred, (-1,) + trailing)
    rows = ops.shape(predictions)[0]
    labels = ops.cast(ops.reshape(y_true, (rows,)), "int32")
    weights = ops.cast(labels >= 0, dtype)
    per_row = row_weights(sample_weight, ops.shape(y_pred)[:-class_axis_rank], rows, dtype)
    if per_row is not None:
        weights = weights * per_row
    return ops.maximum(labels, 0), predictions, weights


def au_entries(y_true, y_pred, sample_weight=None, dtype=None):
    """`(positive, predictions, weights)`, each (rows, K) in `dtype`, of AU labels.

    Args:
        y_true: (..., K) 0/1 labels; -1 marks a missing entry.
        y_pred: (..., K) probabilities or logits.
        sample_weight: optional row weights, broadcastable to the leading dims.
        dtype: computation dtype (default: that of `y_pred`).

    Returns:
        0/1 labels (1 where the AU is present), predictions and entry weights.
    """
    labels, predictions, weights = _column_entries(y_true, y_pred, sample_weight, dtype,
                                                   lambda values: values >= 0)
    return ops.cast(labels > 0.5, labels.dtype), predictions, weights
