"""Independent references and random data for the metric tests: CCC through Pearson's r,
scikit-learn's F1 and accuracy, and labels with missing markers."""

import numpy as np
from sklearn.metrics import f1_score

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
    """Mean per-AU F1 (sklearn), per-AU F1s and accuracy; present where p >= threshold."""
    f1s, correct, count = [], 0, 0
    for k in range(y_true.shape[1]):
        valid = y_true[:, k] != -1
        predicted = (y_pred[valid, k] >= threshold).astype(int)
        f1s.append(f1_score(y_true[valid, k], predicted, labels=[0, 1], zero_division=0))
        correct += np.sum(predicted == y_true[valid, k])
        count += valid.sum()
    return np.mean(f1s), f1s, correct / count
