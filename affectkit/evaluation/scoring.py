"""Scoring prediction files in the official ABAW formats against Aff-Wild2 annotations.

Per-task predictions are folders of per-video files (`<video>.txt`, the annotation
format); MTL predictions are one submission file (`image,valence,arousal,expression,aus`).
Scores are the NumPy definitions of `affectkit.metrics`; nothing here loads TensorFlow.
"""

import os

import numpy as np

from affectkit import metrics
from affectkit.data import affwild2
from affectkit.labels import get_schema

_PER_TASK = ("va", "expr", "au")


def _task_arrays(gt_folder, pred_folder, task, schema):
    truth = affwild2.read_annotation_folder(gt_folder, task, schema)
    preds = affwild2.read_annotation_folder(pred_folder, task, schema)
    missing = sorted(set(truth) - set(preds))
    if missing:
        raise ValueError(
            f"{pred_folder}: no prediction file for {len(missing)} annotated video(s), "
            f"e.g. {missing[0]}.txt (expected one <video>.txt per file in {gt_folder})."
        )
    y_true, y_pred = [], []
    for video, labels in truth.items():
        pred = preds[video]
        if len(pred) != len(labels):
            raise ValueError(
                f"{os.path.join(pred_folder, video + '.txt')}: {len(pred)} frame lines, "
                f"expected {len(labels)} as in {os.path.join(gt_folder, video + '.txt')}."
            )
        y_true.append(labels)
        y_pred.append(pred)
    return np.concatenate(y_true), np.concatenate(y_pred)


def _mtl_arrays(gt_file, pred_file, schema):
    truth = affwild2.read_mtl_file(gt_file, schema)
    preds = affwild2.read_mtl_file(pred_file, schema, submission=True)
    keys = ["video", "frame"]
    merged = truth.merge(preds, on=keys, how="left", suffixes=("", "_pred"), indicator=True)
    absent = merged[merged["_merge"] != "both"]
    if len(absent):
        row = absent.iloc[0]
        raise ValueError(
            f"{pred_file}: no prediction for {len(absent)} annotated frame(s), e.g. "
            f"{row['video']}/{affwild2.frame_file_name(row['frame'])} from {gt_file}."
        )
    aus = list(schema.aus)
    y_true = {
        "va": merged[["valence", "arousal"]].to_numpy(np.float32),
        "expr": merged["expr"].to_numpy(np.int64),
        "au": merged[aus].to_numpy(np.int64),
    }
    y_pred = {
        "va": merged[["valence_pred", "arousal_pred"]].to_numpy(np.float32),
        "expr": merged["expr_pred"].to_numpy(np.int64),
        "au": merged[[a + "_pred" for a in aus]].to_numpy(np.int64),
    }
    return y_true, y_pred


def evaluate_files(edition, task, gt, pred):
    """Scores official-format prediction files; returns every ABAW component and `score`.

    Args:
        edition: ABAW edition name, e.g. `"abaw3"`.
        task: `"va"`, `"expr"`, `"au"` (folders of per-video files) or `"mtl"`
            (an MTL annotation file and an MTL submission file).
        gt: annotation folder or MTL annotation file.
        pred: prediction folder or MTL submission file.
    """
    schema = get_schema(edition)
    if task in _PER_TASK:
        y_true, y_pred = _task_arrays(gt, pred, task, schema)
    elif task == "mtl":
        y_true, y_pred = _mtl_arrays(gt, pred, schema)
    else:
        raise ValueError(f"Unknown task {task!r}: expected va, expr, au or mtl.")
    return metrics.abaw_scores(task, schema, y_true, y_pred)


def format_scores(scores):
    """One `name: value` line per scalar component (lists are left to the JSON file)."""
    lines = []
    for name, value in scores.items():
        if isinstance(value, (float, int, np.floating, np.integer)):
            lines.append(f"{name:>24s}: {float(value):.4f}")
    return "\n".join(lines)


def write_scores(path, scores):
    """Writes scores as JSON (NumPy values converted)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, np.ndarray)):
            return [plain(v) for v in value]
        if isinstance(value, (np.floating, np.integer)):
            return value.item()
        return value

    from affectkit.training.run_directory import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, plain(scores))
