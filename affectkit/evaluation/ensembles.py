"""Official files from per-frame predictions, and ensembles of finished runs.

`write_and_score` turns one set of per-frame outputs into `predictions/validation.csv`,
the official challenge files and their scores; `ensemble` combines the `validation.csv`
of several run directories (the average of their outputs, or a per-frame majority vote
of their expression classes) and does the same for the combination.
"""

import json
import os

import numpy as np

from affectkit.data import affwild2
from affectkit.evaluation.scoring import evaluate_files, write_scores
from affectkit.evaluation.challenge_files import decode_outputs, write_official_predictions
from affectkit.labels import get_schema
from affectkit.evaluation.predictions import VALIDATION_FILE, read_predictions, write_predictions
from affectkit.training.run_directory import read_run_config

METHODS = ("average", "vote")


def write_and_score(out, frames, outputs, schema, sources):
    """Writes `out/predictions/validation.csv` and the official files of `outputs` (rows
    aligned with `frames`, every annotated frame), scored against `sources` (the
    `FrameIndex.sources` of the annotations: task -> folder, or `"mtl"` -> file).

    Returns dict task (or `"mtl"`) -> every component of its ABAW score.
    """
    schema = get_schema(schema)
    tasks = [t for t in ("va", "expr", "au") if t in outputs]
    write_predictions(os.path.join(out, VALIDATION_FILE), frames, outputs, schema)
    folder = os.path.join(out, "predictions")
    sources = sources or {}
    if "mtl" in sources:
        path = os.path.join(folder, "mtl_submission.txt")
        decoded = decode_outputs(outputs)
        affwild2.write_mtl_submission(path, frames, decoded["va"], decoded["expr"],
                                      decoded["au"], schema)
        return {"mtl": evaluate_files(schema, "mtl", sources["mtl"], path)}
    written = write_official_predictions(folder, frames, {t: outputs[t] for t in tasks}, schema)
    return {task: evaluate_files(schema, task, sources[task], written[task])
            for task in tasks if task in sources}


def vote(probabilities):
    """Per-frame majority vote of several models' class predictions (Liu et al. 2023, 3.5).

    Each model votes for its argmax class; ties between the most-voted classes go to the one
    with the largest summed probability (then the lowest index).

    Args:
        probabilities: `(models, frames, classes)`.
    Returns:
        int64 `(frames,)` class indices.

    Example:
    >>> vote([[[0.6, 0.4]], [[0.3, 0.7]], [[0.9, 0.1]]])
    array([0])
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 3:
        raise ValueError(f"vote: probabilities of shape {p.shape}; expected (models, frames, "
                         "classes).")
    votes = np.eye(p.shape[-1])[np.argmax(p, axis=-1)].sum(axis=0)
    tied = votes == votes.max(axis=-1, keepdims=True)
    return np.argmax(np.where(tied, p.sum(axis=0), -np.inf), axis=-1).astype(np.int64)


def combine(outputs, method="average"):
    """One set of outputs from several runs' (dict task -> array, same rows): the mean per
    task, or with `"vote"` the expression vote as one-hot (other tasks averaged).

    Example:
    >>> combine([{"va": np.zeros((1, 2))}, {"va": np.ones((1, 2))}])["va"]
    array([[0.5, 0.5]])
    """
    if method not in METHODS:
        raise ValueError(f"ensemble method {method!r}: expected one of {METHODS}.")
    outputs = list(outputs)
    tasks = sorted(set.intersection(*(set(o) for o in outputs)))
    combined = {task: np.mean([np.asarray(o[task], np.float64) for o in outputs], axis=0)
                for task in tasks}
    if method == "vote" and "expr" in combined:
        classes = combined["expr"].shape[-1]
        combined["expr"] = np.eye(classes)[vote([o["expr"] for o in outputs])]
    return combined


def member_runs(run_dirs):
    """The finished runs among `run_dirs`: each one with a `predictions/validation.csv`, or
    the `fold_k` runs inside a folder of cross-validation runs."""
    members = []
    for run_dir in run_dirs:
        if os.path.isfile(os.path.join(run_dir, VALIDATION_FILE)):
            members.append(run_dir)
            continue
        folds = sorted(
            os.path.join(run_dir, name) for name in (os.listdir(run_dir) if os.path.isdir(run_dir) else [])
            if name.startswith("fold_") and os.path.isfile(os.path.join(run_dir, name, VALIDATION_FILE)))
        if not folds:
            raise FileNotFoundError(f"{run_dir}: no {VALIDATION_FILE}; expected the run "
                                    "directory of a finished training (or a folder of fold_k "
                                    "runs).")
        members.extend(folds)
    return members


def ensemble(run_dirs, out, method="average", data=None):
    """Combines the validation predictions of finished runs; writes and scores the result.

    Runs whose training data include the official validation videos (cross-validation
    folds that hold out training videos) are left out, with a note: scoring them on
    videos they trained on would overstate the ensemble.

    Args:
        run_dirs: run directories, or folders of `fold_k` runs.
        out: output folder (`metrics.json`, `predictions/`).
        method: `"average"` or `"vote"`.
        data: the Aff-Wild2 folder to score against; default the first run's.
    Returns:
        the report: `members` (run -> its official scores), `ensemble`, `left_out`.
    """
    members = member_runs(run_dirs)
    records = {run: read_run_config(run) for run in members}
    metrics = {}
    for run in members:
        with open(os.path.join(run, "metrics.json")) as f:
            metrics[run] = json.load(f)
    left_out = [run for run in members if metrics[run].get("trained_on_official_validation")]
    members = [run for run in members if run not in left_out]
    for run in left_out:
        print(f"[ensemble] leaving out {run}: it trained on the official validation videos.")
    if len(members) < 2:
        raise ValueError(f"An ensemble needs at least 2 runs not trained on the validation "
                         f"videos; got {members} (left out: {left_out}).")
    editions = {metrics[run]["edition"] for run in members}
    if len(editions) != 1:
        raise ValueError(f"The runs use editions {sorted(editions)}; expected one.")
    schema = get_schema(editions.pop())
    loaded = [read_predictions(os.path.join(run, VALIDATION_FILE), schema) for run in members]
    frames = loaded[0][0]
    for run, (other, _) in zip(members[1:], loaded[1:]):
        if not frames.equals(other):
            raise ValueError(f"{run}: its validation frames differ from those of {members[0]}; "
                             "expected runs on the same validation set.")
    combined = combine([outputs for _, outputs in loaded], method)
    data = data or records[members[0]]["data"]
    sources = _sources(data, schema, members, metrics)
    report = {
        "edition": schema.edition,
        "method": method,
        "runs": [os.path.abspath(run) for run in members],
        "left_out": [os.path.abspath(run) for run in left_out],
        "members": {os.path.abspath(run): metrics[run].get("official", {}) for run in members},
        "chance_baselines": metrics[members[0]].get("chance_baselines", {}),
        "ensemble": write_and_score(out, frames, combined, schema, sources),
    }
    write_scores(os.path.join(out, "metrics.json"), report)
    return report


def _sources(data, schema, members, metrics):
    """The annotation sources the members were scored against (per task, or the MTL file)."""
    official = metrics[members[0]].get("official", {})
    if "mtl" in official:
        return {"mtl": os.path.join(data, affwild2.mtl_file_name(schema, "val"))}
    return {task: os.path.join(data, affwild2.annotation_dir(schema, task, "val"))
            for task in official}
