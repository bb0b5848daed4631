"""The one on-disk format of per-frame predictions: `predictions/validation.csv`.

One row per (video, frame), every annotated frame of the set (frames without an image of
their own take the nearest frame's prediction). Columns, named by the label schema:

    video, frame                          the Aff-Wild2 video and its 1-based frame number
    valence, arousal                      (va)
    <expression names>                    class probabilities (expr), e.g. Neutral, Anger, ...
    <AU names>                            AU probabilities (au), e.g. AU1, AU2, ...

Ensembles average or vote these files; the official challenge files are written from them.
"""

import os

import numpy as np
import pandas as pd

from affectkit.labels import get_schema
from affectkit.training.run_directory import write_atomic

VALIDATION_FILE = os.path.join("predictions", "validation.csv")


def task_columns(task, schema):
    """The column names of a task's outputs."""
    schema = get_schema(schema)
    columns = {"va": list(schema.va_names), "expr": list(schema.expressions),
               "au": list(schema.aus)}
    if task not in columns:
        raise ValueError(f"Unknown task {task!r}: expected some of {tuple(columns)}.")
    return columns[task]


def write_predictions(path, frames, outputs, schema):
    """Writes per-frame outputs (dict task -> `(n, ...)`, rows aligned with `frames`, a
    DataFrame with `video` and `frame`) to a predictions CSV, atomically."""
    schema = get_schema(schema)
    table = {"video": frames["video"].to_numpy(str),
             "frame": frames["frame"].to_numpy(np.int64)}
    for task in ("va", "expr", "au"):
        if task in outputs:
            values = np.asarray(outputs[task], np.float32)
            columns = task_columns(task, schema)
            if values.shape != (len(frames), len(columns)):
                raise ValueError(f"{path}: {task} outputs of shape {values.shape}; expected "
                                 f"({len(frames)}, {len(columns)}) ({', '.join(columns)}).")
            table.update(zip(columns, values.T))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda partial: pd.DataFrame(table).to_csv(partial, index=False,
                                                                  float_format="%.6g"))
    return path


def read_predictions(path, schema):
    """`(frames, outputs)` of a predictions CSV: `frames` a DataFrame (video, frame) and
    `outputs` dict task -> float array, for every task whose columns are all present."""
    schema = get_schema(schema)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such predictions file; expected the "
                                f"{VALIDATION_FILE} of a finished run.")
    table = pd.read_csv(path)
    if not {"video", "frame"} <= set(table.columns):
        raise ValueError(f"{path}: expected columns video, frame, then outputs; got "
                         f"{list(table.columns)[:6]}.")
    outputs = {}
    for task in ("va", "expr", "au"):
        columns = task_columns(task, schema)
        present = [c for c in columns if c in table.columns]
        if present and present != columns:
            raise ValueError(f"{path}: {task} needs columns {columns}; found {present}.")
        if present:
            outputs[task] = table[columns].to_numpy(np.float32)
    frames = table[["video", "frame"]].astype({"video": str, "frame": np.int64})
    return frames, outputs
