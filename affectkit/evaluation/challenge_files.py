"""Challenge files: from model outputs to the official ABAW prediction files.

`decode_outputs` turns network outputs into challenge values (valence/arousal clipped to
[-1, 1], expression index, AU 0/1 by `affectkit.metrics.au_present`, the rule the metrics
use); `write_official_predictions` writes them per task as per-video files and as one MTL
submission file, one line per annotated frame.
"""

import os

import numpy as np

from affectkit.data import affwild2
from affectkit.labels import get_schema
from affectkit.metrics import AU_THRESHOLD, au_present


def decode_outputs(outputs, threshold=AU_THRESHOLD):
    """Network outputs (dict task -> array) to submission values (dict task -> array).

    Example:
    >>> decode_outputs({"au": [[0.2, 0.5]], "va": [[1.3, -0.2]]})
    {'va': array([[ 1. , -0.2]], dtype=float32), 'au': array([[0, 1]])}
    """
    decoded = {}
    if "va" in outputs:
        decoded["va"] = np.clip(np.asarray(outputs["va"], dtype=np.float32), -1.0, 1.0)
    if "expr" in outputs:
        decoded["expr"] = np.argmax(np.asarray(outputs["expr"]), axis=-1).astype(np.int64)
    if "au" in outputs:
        decoded["au"] = au_present(np.asarray(outputs["au"]), threshold).astype(np.int64)
    return decoded


def write_official_predictions(out_dir, frames, outputs, schema, threshold=AU_THRESHOLD):
    """Writes `<out_dir>/<task>/<video>.txt` per task and `<out_dir>/mtl_submission.txt`.

    Args:
        out_dir: output folder.
        frames: DataFrame with `video` and `frame` columns, one row per output row
            (e.g. `FrameIndex.frames` of an index built with `fill_missing_images=True`,
            so that every annotated frame has a prediction).
        outputs: dict task -> network outputs, rows aligned with `frames`.
        schema: `LabelSchema` or edition name.
    Returns:
        dict of written paths: task -> folder, `"mtl"` -> file (when all tasks are present).
    """
    schema = get_schema(schema)
    decoded = decode_outputs(outputs, threshold)
    videos = frames["video"].to_numpy()
    frame_numbers = frames["frame"].to_numpy()
    order = np.lexsort((frame_numbers, videos))
    starts = np.flatnonzero(np.r_[True, videos[order][1:] != videos[order][:-1]])
    bounds = list(zip(starts, list(starts[1:]) + [len(order)]))
    written = {}
    for task, values in decoded.items():
        folder = os.path.join(out_dir, task)
        predictions = {}
        for start, stop in bounds:
            rows = order[start:stop]
            expected = np.arange(1, len(rows) + 1)
            if not np.array_equal(frame_numbers[rows], expected):
                raise ValueError(
                    f"Video {videos[rows[0]]}: frames are not 1..{len(rows)} without gaps; "
                    "official per-video files need one line per frame."
                )
            predictions[videos[rows[0]]] = values[rows]
        affwild2.write_prediction_folder(folder, task, predictions, schema)
        written[task] = folder
    if set(decoded) == {"va", "expr", "au"}:
        path = os.path.join(out_dir, "mtl_submission.txt")
        images = [f"{v}/{affwild2.frame_file_name(f)}" for v, f in zip(videos, frame_numbers)]
        affwild2.write_mtl_file(
            path, images, decoded["va"], decoded["expr"], decoded["au"], schema, submission=True
        )
        written["mtl"] = path
    return written
