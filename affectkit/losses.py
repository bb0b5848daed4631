"""Masked losses of the ABAW systems, and learned uncertainty weighting of task losses.

Every loss takes labels with the dataset's missing markers (valence/arousal -5,
expression -1, each AU -1) and returns one scalar per batch: the mean over the valid
entries. A batch with no valid label gives exactly 0 with finite (zero) gradients.
Extra leading dimensions, e.g. (B, T, ...) of per-frame sequence heads, are flattened.

`sample_weight`, when given, weighs rows (it broadcasts over the leading dims, e.g.
(B,) for (B, T, ...) outputs); the result is then the weighted mean over valid rows.
The masking itself (rows, weights, missing markers) is `affectkit.masking`, which the
streaming metrics share.

Distribution: like Keras' built-in losses with the default reduction
`"sum_over_batch_size"`, the value is divided by the number of replicas when called
under a `tf.distribute` strategy with several replicas (Keras sums gradients across
replicas). With `reduction="sum"` or `None` the plain per-replica mean is returned.
"""

import keras
import numpy as np
from keras import ops

from affectkit.labels import get_schema
from affectkit.masking import (
    au_entries,
    class_rows,
    row_weights,
    safe_ratio,
    va_entries,
    va_labelled,
)

_EPSILON = 1e-7


def _scale_for_replicas(value):
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        value = value * ops.cast(1.0 / replicas, value.dtype)
    return value


class _MaskedLoss(keras.losses.Loss):
    """Base class of the masked losses: subclasses implement `call(y_true, y_pred,
    sample_weight)` over the labelled rows; the result is scaled for `tf.distribute` replicas
    like Keras' own losses."""

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            y_true = ops.convert_to_tensor(y_true, dtype=self.dtype)
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            value = self.call(y_true, y_pred, sample_weight=sample_weight)
            if self.reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
                value = _scale_for_replicas(value)
            return value


def _log_probabilities(y_pred, from_logits):
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    return ops.log(ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON))


def _smoothed_one_hot(labels, num_classes, label_smoothing, dtype):
    targets = ops.one_hot(labels, num_classes, dtype=dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return targets


def au_positive_weights(au_labels):
    """Per-AU positive weights: negatives / positives among the labelled entries.

    As the `pos_weight` of PyTorch's `BCEWithLogitsLoss` (Haider et al. 2022); an AU with
    no positive or no negative label gets 1.

    Example:
    >>> au_positive_weights([[1, 0], [0, -1], [0, 1]])
    [2.0, 1.0]
    """
    au = np.asarray(au_labels, dtype=np.float64)
    if au.ndim != 2:
        raise ValueError(f"au_positive_weights: expected (frames, AUs) labels; got shape {au.shape}.")
    positives = (au == 1).sum(axis=0)
    negatives = (au == 0).sum(axis=0)
    defined = (positives > 0) & (negatives > 0)
    weights = np.where(defined, negatives / np.maximum(positives, 1), 1.0)
    return [float(w) for w in weights]


def expr_class_weights(expr_labels, num_classes):
    """Per-class weights: the largest class count / the class count (labels -1 ignored).

    The most frequent class gets 1, as in the weighted cross-entropy of Haider et al. 2022;
    a class absent from the labels gets 1 (no row carries its weight).

    Example:
    >>> expr_class_weights([0, 0, 0, 1, -1, 2, 2], 4)
    [1.0, 3.0, 1.5, 1.0]
    """
    labels = np.asarray(expr_labels).reshape(-1).astype(np.int64)
    labels = labels[labels >= 0]
    if labels.size and labels.max() >= num_classes:
        raise ValueError(
            f"expr_class_weights: label {labels.max()} for {num_classes} classes; expected "
            f"labels in 0..{num_classes - 1} or -1."
        )
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if not counts.any():
        return [1.0] * num_classes
    weights = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 1.0)
    return [float(w) for w in weights]


def resolve_loss_weights(config, train_labels, schema):
    """`config["au_pos_weights"]` and `config["expr_class_weights"]` resolved for
    `MaskedBinaryCrossentropy(pos_weights=)` and `MaskedCategoricalCrossentropy(class_weights=)`:
    `"auto"` computes them from the training labels (`au_positive_weights`,
    `expr_class_weights`), `None` (or absent) is unweighted, a list is taken as given.

    Returns:
        `{"au_pos_weights": list | None, "expr_class_weights": list | None}`.
    """
    schema = get_schema(schema)
    resolved = {}
    for key, compute, size in (
        ("au_pos_weights", lambda: au_positive_weights(train_labels["au"]), schema.num_aus),
        ("expr_class_weights",
         lambda: expr_class_weights(train_labels["expr"], schema.num_expressions),
         schema.num_expressions),
    ):
        value = config.get(key)
        if isinstance(value, str):
            if value != "auto":
                raise ValueError(f"{key}={value!r}: expected 'auto', None or {size} numbers.")
            value = compute()
        elif value is not None:
            value = [float(v) for v in value]
            if len(value) != size:
                raise ValueError(f"{key}: {len(value)} numbers, expected {size} ({schema.edition}).")
        resolved[key] = value
    return resolved


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedCCCLoss(_MaskedLoss):
    """Mean over columns of 1 - CCC, each column's CCC over its labelled rows.

    Valence/arousal loss of Kollias et al. used by Zhang & Gu 2020 (MTANet),
    1 - (CCC_v + CCC_a) / 2, and per dimension by Haider et al. 2022 and Do et al. 2020.
    Per column: CCC = 2 cov / (var_t + var_p + (mean_t - mean_p)^2 + 1e-7) with
    population moments over the rows whose label is not -5. A column with no labelled
    row contributes 0. With a single labelled row the variances and covariance are 0, so
    CCC = 0 and that column contributes 1 with zero gradient (the same value as
    `affectkit.metrics.ccc` on one pair). The mean is over all columns.

    Args:
        name: loss name.
        reduction: `"sum_over_batch_size"` (default: scaled for `tf.distribute` like
            Keras losses) or `"sum"`/`None` (not scaled).
        dtype: computation dtype.

    Example:
    >>> loss = MaskedCCCLoss()
    >>> loss([[0.1, -5.0], [0.5, 0.3], [-0.2, 0.1]], [[0.0, 0.2], [0.4, 0.1], [-0.1, 0.0]])
    """

    def __init__(self, name="masked_ccc_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred, sample_weight=None):
        t, p, mask = va_entries(y_true, y_pred, sample_weight)
        t = t * ops.cast(mask > 0, t.dtype)  # the -5 markers never enter the sums
        n = ops.sum(mask, axis=0)
        mean_t = safe_ratio(ops.sum(mask * t, axis=0), n)
        mean_p = safe_ratio(ops.sum(mask * p, axis=0), n)
        dt, dp = t - mean_t, p - mean_p
        var_t = safe_ratio(ops.sum(mask * dt * dt, axis=0), n)
        var_p = safe_ratio(ops.sum(mask * dp * dp, axis=0), n)
        cov = safe_ratio(ops.sum(mask * dt * dp, axis=0), n)
        ccc = 2.0 * cov / (var_t + var_p + ops.square(mean_t - mean_p) + _EPSILON)
        per_column = ops.where(n > 0, 1.0 - ccc, 0.0)
        return ops.mean(per_column)

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedCategoricalCrossentropy(_MaskedLoss):
    """Cross-entropy on integer class labels; labels -1 are ignored.

    Per row: CE = -sum_c w_y * t_c log p_c with t the one-hot label smoothed as
    t = onehot * (1 - label_smoothing) + label_smoothing / C, and w_y the weight of the
    row's class (1 without `class_weights`). The loss is sum(w_y CE) / sum(w_y) over the
    labelled rows (as PyTorch's weighted `CrossEntropyLoss`, used by Haider et al. 2022).

    Args:
        from_logits: `y_pred` are logits instead of probabilities.
        label_smoothing: in [0, 1].
        class_weights: optional list of C per-class weights.
        name, reduction, dtype: as `keras.losses.Loss`.

    Example:
    >>> loss = MaskedCategoricalCrossentropy(class_weights=[1.0, 2.0, 0.5])
    >>> loss([0, -1, 2], [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    """

    def __init__(
        self,
        from_logits=False,
        label_smoothing=0.0,
        class_weights=None,
        name="masked_categorical_crossentropy",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred, sample_weight=None):
        labels, predictions, valid = class_rows(y_true, y_pred, sample_weight)
        num_classes = predictions.shape[-1]
        targets = _smoothed_one_hot(labels, num_classes, self.label_smoothing, predictions.dtype)
        per_row = -ops.sum(targets * _log_probabilities(predictions, self.from_logits), axis=-1)
        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(
                    f"{self.name}: {len(self.class_weights)} class weights for {num_classes} classes."
                )
            class_weights = ops.convert_to_tensor(self.class_weights, dtype=predictions.dtype)
            valid = valid * ops.take(class_weights, labels)
        return safe_ratio(ops.sum(valid * per_row), ops.sum(valid))

    def get_config(self):
        return {
            "from_logits": self.from_logits,
            "label_smoothing": self.label_smoothing,
            "class_weights": self.class_weights,
            "name": self.name,
            "reduction": self.reduction,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedBinaryCrossentropy(_MaskedLoss):
    """Per-AU binary cross-entropy; entries -1 are ignored.

    Per entry: -(w_k y log p + (1 - y) log(1 - p)) with w_k the positive weight of AU k
    (1 without `pos_weights`; as PyTorch's `BCEWithLogitsLoss(pos_weight=...)` used by
    Haider et al. 2022). The loss is the mean over the labelled entries.

    Args:
        from_logits: `y_pred` are logits instead of probabilities.
        pos_weights: optional list of K per-AU positive weights (e.g. negatives/positives).
        name, reduction, dtype: as `keras.losses.Loss`.

    Example:
    >>> loss = MaskedBinaryCrossentropy(pos_weights=[2.0, 1.0])
    >>> loss([[1, -1], [0, 1]], [[0.8, 0.3], [0.4, 0.6]])
    """

    def __init__(
        self,
        from_logits=False,
        pos_weights=None,
        name="masked_binary_crossentropy",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.pos_weights = None if pos_weights is None else [float(w) for w in pos_weights]

    def call(self, y_true, y_pred, sample_weight=None):
        num_aus = y_pred.shape[-1]
        positive, p, valid = au_entries(y_true, y_pred, sample_weight)
        if self.from_logits:
            log_p, log_not_p = -ops.softplus(-p), -ops.softplus(p)
        else:
            clipped = ops.clip(p, _EPSILON, 1.0 - _EPSILON)
            log_p, log_not_p = ops.log(clipped), ops.log(1.0 - clipped)
        if self.pos_weights is not None:
            if len(self.pos_weights) != num_aus:
                raise ValueError(f"{self.name}: {len(self.pos_weights)} positive weights for {num_aus} AUs.")
            log_p = log_p * ops.convert_to_tensor(self.pos_weights, dtype=p.dtype)
        per_entry = -(positive * log_p + (1.0 - positive) * log_not_p)
        return safe_ratio(ops.sum(valid * per_entry), ops.sum(valid))

    def get_config(self):
        return {
            "from_logits": self.from_logits,
            "pos_weights": self.pos_weights,
            "name": self.name,
            "reduction": self.reduction,
            "dtype": self.dtype,
        }


class _FocalLoss(_MaskedLoss):
    """What the focal losses share: alpha, gamma, label smoothing and `from_logits`, and
    the labelled rows with their smoothed targets and log-probabilities."""

    def __init__(self, alpha, gamma, label_smoothing, from_logits, name, reduction, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = [float(a) for a in alpha] if isinstance(alpha, (list, tuple)) else float(alpha)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def smoothed_rows(self, y_true, y_pred, sample_weight):
        """`(labels, smoothed one-hot targets, log-probabilities, valid)` of the rows."""
        labels, predictions, valid = class_rows(y_true, y_pred, sample_weight)
        targets = _smoothed_one_hot(labels, predictions.shape[-1], self.label_smoothing,
                                    predictions.dtype)
        return labels, targets, _log_probabilities(predictions, self.from_logits), valid

    def get_config(self):
        return {
            "alpha": self.alpha,
            "gamma": self.gamma,
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
            "name": self.name,
            "reduction": self.reduction,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedFocalLoss(_FocalLoss):
    """Multi-class focal loss (Lin et al. 2017) on integer labels with label smoothing.

    The focal loss the paper of Phan et al. 2022 names (alpha 0.9, gamma 2, label
    smoothing 0.1), in Keras' form. Per row:
    FL = -sum_c alpha_c * (1 - p_c)^gamma * t_c * log p_c, with t the smoothed one-hot
    t = onehot * (1 - label_smoothing) + label_smoothing / C (the same formula as
    `keras.losses.CategoricalFocalCrossentropy`). The loss is the mean over labelled rows.
    The authors' code trains with another form, `MaskedFocalKLLoss`.

    Args:
        alpha: weighting factor, a float or a list of C per-class factors.
        gamma: focusing parameter.
        label_smoothing: in [0, 1].
        from_logits: `y_pred` are logits instead of probabilities.
        name, reduction, dtype: as `keras.losses.Loss`.

    Example:
    >>> loss = MaskedFocalLoss(alpha=0.9, gamma=2.0, label_smoothing=0.1)
    >>> loss([1, -1], [[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    """

    def __init__(self, alpha=0.25, gamma=2.0, label_smoothing=0.0, from_logits=False,
                 name="masked_focal_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(alpha=alpha, gamma=gamma, label_smoothing=label_smoothing,
                         from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred, sample_weight=None):
        labels, targets, log_p, valid = self.smoothed_rows(y_true, y_pred, sample_weight)
        p = ops.exp(log_p)
        alpha = ops.convert_to_tensor(self.alpha, dtype=log_p.dtype)
        per_row = -ops.sum(alpha * ops.power(1.0 - p, self.gamma) * targets * log_p, axis=-1)
        return safe_ratio(ops.sum(valid * per_row), ops.sum(valid))


@keras.saving.register_keras_serializable(package="affectkit")
class MaskedFocalKLLoss(_FocalLoss):
    """Focal-weighted smoothed cross-entropy plus the KL divergence from the smoothed labels.

    The expression loss of Phan et al. 2022 as their code computes it (`CEFocalLoss` with
    `distillation_loss=True` of the co-authors' ABAW3 code, th2l/Affwild2-ABAW3-ActionUnit
    `core/loss.py`). With t_i the smoothed one-hot of row i,
    t = onehot * (1 - label_smoothing) + label_smoothing / C, and p_i its predicted
    distribution, over the labelled rows:

        loss = focal_weight * mean_i[alpha_y * (1 - p_{i,y})^gamma * CE(t_i, p_i)]
               + kl_weight * mean_i KL(t_i || p_i),

    CE(t, p) = -sum_c t_c log p_c (PyTorch's `cross_entropy` with `label_smoothing`),
    p_{i,y} the probability of the labelled class (not smoothed) and KL(t || p) =
    sum_c t_c (log t_c - log p_c), summed over classes and averaged over rows (PyTorch's
    `kl_div(..., reduction="batchmean")`). On a confidently right row (p_y = 0.97 of 8
    classes, the rest equal) the two terms are 0.0004 and 0.038 before weighting, where
    `MaskedFocalLoss` gives 0.426.

    Args:
        alpha: weight of the focal term's rows, a float or a list of C per-class weights
            (alpha_y, the labelled class's).
        gamma: focusing parameter.
        label_smoothing: in [0, 1].
        focal_weight: weight of the focal term (0.8 in the authors' code).
        kl_weight: weight of the KL term (0.2 in the authors' code).
        from_logits: `y_pred` are logits instead of probabilities.
        name, reduction, dtype: as `keras.losses.Loss`.

    Example:
    >>> loss = MaskedFocalKLLoss(alpha=0.9, gamma=2.0, label_smoothing=0.1)
    >>> loss([1, -1], [[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    """

    def __init__(self, alpha=0.9, gamma=2.0, label_smoothing=0.1, focal_weight=0.8,
                 kl_weight=0.2, from_logits=False, name="masked_focal_kl_loss",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(alpha=alpha, gamma=gamma, label_smoothing=label_smoothing,
                         from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.focal_weight = float(focal_weight)
        self.kl_weight = float(kl_weight)

    def call(self, y_true, y_pred, sample_weight=None):
        labels, targets, log_p, valid = self.smoothed_rows(y_true, y_pred, sample_weight)
        num_classes = log_p.shape[-1]
        log_p_label = ops.take_along_axis(log_p, ops.expand_dims(labels, -1), axis=-1)[:, 0]
        if isinstance(self.alpha, list):
            if len(self.alpha) != num_classes:
                raise ValueError(f"{self.name}: {len(self.alpha)} alpha weights for "
                                 f"{num_classes} classes.")
            alpha = ops.take(ops.convert_to_tensor(self.alpha, dtype=log_p.dtype), labels)
        else:
            alpha = self.alpha
        cross_entropy = -ops.sum(targets * log_p, axis=-1)
        focal = alpha * ops.power(1.0 - ops.exp(log_p_label), self.gamma) * cross_entropy
        # sum_c t log t, with 0 log 0 = 0 (no smoothing); constant in the predictions.
        target_entropy = ops.sum(
            ops.where(targets > 0, targets * ops.log(ops.maximum(targets, _EPSILON)), 0.0),
            axis=-1)
        kl = target_entropy + cross_entropy
        per_row = self.focal_weight * focal + self.kl_weight * kl
        return safe_ratio(ops.sum(valid * per_row), ops.sum(valid))

    def get_config(self):
        return {**super().get_config(), "focal_weight": self.focal_weight,
                "kl_weight": self.kl_weight}


@keras.saving.register_keras_serializable(package="affectkit")
class VAVectorMSE(_MaskedLoss):
    """MSE on the valence-arousal 5-vector of Do et al. 2020.

    `y_true` is (..., 2) valence, arousal (-5 missing); `y_pred` is (..., 5) predicting
    [a, v, m, |a - m|, |v - m|] with m = (a + v) / 2 (arousal first). The target vector
    is built from `y_true`; the loss is the mean squared error over the 5 components and
    over the rows where both valence and arousal are labelled.

    Args:
        name, reduction, dtype: as `keras.losses.Loss`.

    Example:
    >>> loss = VAVectorMSE()
    >>> loss([[0.2, 0.4], [-5.0, 0.1]], [[0.4, 0.2, 0.3, 0.1, 0.1], [0.0] * 5])
    """

    def __init__(self, name="va_vector_mse", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    @staticmethod
    def target_vector(y_true):
        """[a, v, m, |a - m|, |v - m|] (..., 5) from (..., 2) valence, arousal labels."""
        valence, arousal = y_true[..., 0], y_true[..., 1]
        mean = 0.5 * (arousal + valence)
        return ops.stack(
            [arousal, valence, mean, ops.abs(arousal - mean), ops.abs(valence - mean)], axis=-1
        )

    def call(self, y_true, y_pred, sample_weight=None):
        t = ops.reshape(y_true, (-1, 2))
        p = ops.reshape(y_pred, (-1, 5))
        labelled = va_labelled(t)
        valid = ops.cast(ops.logical_and(labelled[:, 0], labelled[:, 1]), p.dtype)
        weights = row_weights(sample_weight, ops.shape(y_pred)[:-1], ops.shape(p)[0], p.dtype)
        if weights is not None:
            valid = valid * weights
        t = t * ops.expand_dims(ops.cast(valid > 0, t.dtype), -1)
        per_row = ops.mean(ops.square(self.target_vector(t) - p), axis=-1)
        return safe_ratio(ops.sum(valid * per_row), ops.sum(valid))

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="affectkit")
class RDropLoss(_MaskedLoss):
    """R-Drop loss (Liang et al. 2021) as used by Liu et al. 2023 (eq. 4), with masking.

    `y_pred` holds two forward passes with different dropout on its second-last axis:
    (..., 2, C). `y_true` is integer labels (...,) or (..., 1), -1 missing. With p1, p2
    the two predicted distributions and, per labelled row i,
    KL_i = 0.5 * (KL(p1_i || p2_i) + KL(p2_i || p1_i)), KL(p || q) = sum_c p_c (log p_c - log q_c):

        loss = mean_i (CE(p1_i) + CE(p2_i)) / 2 + alpha * KL,

    the cross-entropies averaged over the labelled rows, and KL = mean_i KL_i
    (`kl_reduction="mean"`, on the scale of the cross-entropy whatever the batch size) or
    sum_i KL_i (`"sum"`: the reference code, dropreg/R-Drop `README.md` `compute_kl_loss`,
    `kl_div(..., reduction="none")`, `.sum()`, `(p_loss + q_loss) / 2`, padded positions
    zeroed by `pad_mask`; its weight then grows with the number of labelled frames in a
    batch). Liu et al.'s eq. 4 does not say which. Missing labels (and padding) are left
    out of both terms.

    Args:
        alpha: weight of the symmetric KL term (5 in Liu et al. 2023).
        kl_reduction: `"mean"` or `"sum"` over the labelled rows (see above).
        from_logits: `y_pred` are logits instead of probabilities.
        name, reduction, dtype: as `keras.losses.Loss`.

    Example:
    >>> loss = RDropLoss(alpha=5.0, kl_reduction="sum", from_logits=True)
    >>> loss(labels, ops.stack([model(x, training=True), model(x, training=True)], axis=-2))
    """

    KL_REDUCTIONS = ("mean", "sum")

    def __init__(
        self,
        alpha=5.0,
        kl_reduction="mean",
        from_logits=False,
        name="r_drop_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if kl_reduction not in self.KL_REDUCTIONS:
            raise ValueError(f"{name}: kl_reduction={kl_reduction!r}; expected one of "
                             f"{self.KL_REDUCTIONS}.")
        self.alpha = float(alpha)
        self.kl_reduction = kl_reduction
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred, sample_weight=None):
        if y_pred.shape[-2] != 2:
            raise ValueError(f"{self.name}: y_pred must be (..., 2, C); got shape {y_pred.shape}.")
        labels, predictions, valid = class_rows(y_true, y_pred, sample_weight, class_axis_rank=2)
        num_classes = predictions.shape[-1]
        targets = ops.one_hot(labels, num_classes, dtype=predictions.dtype)
        log_p = _log_probabilities(predictions, self.from_logits)  # (rows, 2, C)
        log_p1, log_p2 = log_p[:, 0, :], log_p[:, 1, :]
        p1, p2 = ops.exp(log_p1), ops.exp(log_p2)
        cross_entropy = -0.5 * ops.sum(targets * (log_p1 + log_p2), axis=-1)
        symmetric_kl = 0.5 * ops.sum(p1 * (log_p1 - log_p2) + p2 * (log_p2 - log_p1), axis=-1)
        total = ops.sum(valid)
        kl_sum = ops.sum(valid * symmetric_kl)
        kl = kl_sum if self.kl_reduction == "sum" else safe_ratio(kl_sum, total)
        return safe_ratio(ops.sum(valid * cross_entropy), total) + self.alpha * kl

    def get_config(self):
        return {
            "alpha": self.alpha,
            "kl_reduction": self.kl_reduction,
            "from_logits": self.from_logits,
            "name": self.name,
            "reduction": self.reduction,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="affectkit")
class UncertaintyWeighting(keras.layers.Layer):
    """Learned homoscedastic-uncertainty weights of task losses (Kendall et al. 2018).

    As written in Zhang & Gu 2020 (MTANet), eq. 5, with s_i = log(sigma_i^2):
    L = sum_i c_i * exp(-s_i) * L_i + 0.5 * s_i, where c_i = 0.5 for regression tasks
    (1 / (2 sigma^2)) and 1 for classification tasks (1 / sigma^2); 0.5 s_i = log sigma_i.
    Each s_i is a trainable scalar `log_var_<task>` initialised to 0.

    Args:
        tasks: task names, the keys of the losses dict passed to `call`.
        regression_tasks: the tasks weighted 0.5 exp(-s) (e.g. `["va"]`); names not in
            `tasks` are ignored.

    Example:
    >>> weighting = UncertaintyWeighting(tasks=["va", "expr", "au"], regression_tasks=["va"])
    >>> total = weighting({"va": va_loss, "expr": expr_loss, "au": au_loss})
    """

    def __init__(self, tasks, regression_tasks=("va",), **kwargs):
        super().__init__(**kwargs)
        self.tasks = [str(t) for t in tasks]
        self.regression_tasks = [str(t) for t in regression_tasks]
        if not self.tasks:
            raise ValueError("UncertaintyWeighting: `tasks` is empty.")
        self.log_vars = {}

    def build(self, input_shape=None):
        if self.built:
            return
        for task in self.tasks:
            self.log_vars[task] = self.add_weight(
                name=f"log_var_{task}", shape=(), initializer="zeros", trainable=True
            )
        self.built = True

    def coefficient(self, task):
        """c_i: 0.5 for a regression task, 1 for a classification task."""
        return 0.5 if task in self.regression_tasks else 1.0

    def call(self, losses):
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise KeyError(f"UncertaintyWeighting: no loss for task(s) {missing}; got {sorted(losses)}.")
        terms = []
        for task in self.tasks:
            s = self.log_vars[task]
            loss = ops.cast(losses[task], s.dtype)
            terms.append(self.coefficient(task) * ops.exp(-s) * loss + 0.5 * s)
        return ops.sum(ops.stack(terms))

    def compute_output_shape(self, input_shape):
        return ()

    def effective_weights(self):
        """The current weight c_i exp(-s_i) of each task's loss (floats, for logs)."""
        return {
            task: float(self.coefficient(task) * ops.convert_to_numpy(ops.exp(-self.log_vars[task])))
            for task in self.tasks
        }

    def get_config(self):
        config = super().get_config()
        config.update({"tasks": list(self.tasks), "regression_tasks": list(self.regression_tasks)})
        return config
