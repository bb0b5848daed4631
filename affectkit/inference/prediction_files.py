"""What `affectkit predict` writes: a CSV per input, and on request ABAW submission files,
plots and an annotated video.

    <out>/<name>.csv              one row per (frame, face) (`predictor.prediction_columns`)
    <out>/plots/<name>_*.png      --plots: valence/arousal, expression timeline, AU heatmap
    <out>/overlay/<name>.mp4      --overlay: the video with boxes and predictions drawn
    <out>/submission/...          --submission: per-task per-video files and the MTL file

Each CSV is written to a temporary name and renamed when complete, so an interrupted run
leaves no half-written file, and a second run over the same inputs skips the finished ones.
A bad input is reported and skipped; the others go on, and a summary ends the run.
"""

import dataclasses
import os
import time

import numpy as np
import pandas as pd

from affectkit.inference.video import VideoReader, find_inputs

# Errors that mean a bad input file (or an output that cannot be written), reported per
# input: missing, unreadable, not a video, a folder that cannot be written.
INPUT_ERRORS = (ValueError, OSError, EOFError)


@dataclasses.dataclass
class PredictionSummary:
    """What a run over several inputs did: written CSVs, skipped (already done), failed."""

    written: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)  # (path, message)
    frames: int = 0
    seconds: float = 0.0
    files: dict = dataclasses.field(default_factory=dict)  # "submission", "plots", ...

    def lines(self):
        """The end-of-run report: where everything is, then the counts and failures."""
        fps = self.frames / self.seconds if self.seconds else 0.0
        lines = [f"Predictions: {path}" for path in self.written]
        lines += [f"Already done (skipped): {path}" for path in self.skipped]
        for key, paths in self.files.items():
            paths = sorted(set(paths.values())) if isinstance(paths, dict) else paths
            lines.append(f"{key}: {', '.join(paths)}")
        lines += [f"{len(self.written)} written, {len(self.skipped)} already done (skipped), "
                 f"{len(self.failed)} failed; {self.frames} frames in {self.seconds:.1f} s "
                 f"({fps:.1f} frames/s)"]
        lines += [f"  failed: {message}" for _, message in self.failed]
        return lines


def _write_csv(path, tables):
    """Streams DataFrames (one after another, same columns) to `path` through a temporary
    file, renamed when complete."""
    tmp = f"{path}.part"
    try:
        with open(tmp, "w", newline="") as handle:
            for i, table in enumerate(tables):
                table.to_csv(handle, header=i == 0, index=False, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def predict_to_files(predictor, paths, out, submission=False, plots=False, overlay=False,
                     progress=True):
    """Runs `predictor` (a `FacePredictor`) over videos, images and folders into `out`.

    Returns a `PredictionSummary`.
    """
    os.makedirs(out, exist_ok=True)
    summary = PredictionSummary()
    start = time.perf_counter()
    inputs = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        try:  # a missing path or an empty folder is reported; the other paths go on
            inputs += [item for item in find_inputs([path]) if item not in inputs]
        except INPUT_ERRORS as error:
            summary.failed.append((path, str(error)))
    for item in inputs:
        csv_path = os.path.join(out, f"{item.name}.csv")
        if os.path.isfile(csv_path):
            summary.skipped.append(csv_path)
            continue
        try:
            frames = _predict_input(predictor, item, csv_path, out, overlay, progress)
        except INPUT_ERRORS as error:
            summary.failed.append((item.path, str(error)))
            continue
        summary.written.append(csv_path)
        summary.frames += frames
        if plots:
            from affectkit.inference.reports import plot_predictions

            table = pd.read_csv(csv_path)
            written = plot_predictions(table, predictor.schema, os.path.join(out, "plots"),
                                       item.name)
            summary.files.setdefault("plots", []).extend(written)
    summary.seconds = time.perf_counter() - start
    if submission:
        videos = [item for item in inputs if item.kind == "video"
                  and os.path.isfile(os.path.join(out, f"{item.name}.csv"))]
        summary.files["submission"] = write_submission(
            os.path.join(out, "submission"),
            {item.name: pd.read_csv(os.path.join(out, f"{item.name}.csv")) for item in videos},
            predictor.schema, predictor.tasks)
    return summary


def _predict_input(predictor, item, csv_path, out, overlay, progress):
    """Writes one input's CSV (and overlay); returns its number of frames."""
    if item.kind == "images":
        table = predictor.predict_images(item.files, skip_unreadable=len(item.files) > 1)
        for warning in predictor.warnings:
            print(warning)
        _write_csv(csv_path, [table])
        return len(item.files)
    with VideoReader(item.path) as reader:
        bar = FrameProgress(item.name, reader.frame_count, reader.fps) if progress else None
        writer = None
        if overlay:
            from affectkit.inference.reports import OverlayWriter

            folder = os.path.join(out, "overlay")
            os.makedirs(folder, exist_ok=True)
            writer = OverlayWriter(os.path.join(folder, f"{item.name}.mp4"), reader.fps or 30.0,
                                   (reader.width, reader.height), predictor.schema)
        seen = [0]

        def on_frame(frame, rows):
            seen[0] += 1
            if writer is not None:
                writer.write(frame, rows)
            if bar is not None:
                bar.update(seen[0])

        try:
            _write_csv(csv_path, (predictor.table(rows)
                                  for rows in predictor.iter_rows(reader, on_frame=on_frame)))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
        for warning in reader.warnings:
            print(f"{item.path}: {warning}")
        return seen[0]


class FrameProgress:
    """A progress line for one video: frames done, frames per second and time left.

    On a terminal the line redraws in place (at most 4 times a second); elsewhere (a log
    file) a line comes every 10% of the video, or every 30 s when its length is unknown.
    """

    def __init__(self, name, total=None, fps=None, stream=None):
        import sys

        self.name, self.total = name, total
        self.stream = stream or sys.stdout
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.last_shown, self.last_step = self.start, -1
        about = f"{total} frames" if total else "length unknown"
        print(f"{name}: {about}" + (f", {fps:g} fps" if fps else ""), file=self.stream)

    def update(self, done):
        now = time.perf_counter()
        finished = self.total is not None and done >= self.total
        if self.interactive:
            show = finished or now - self.last_shown >= 0.25
        elif self.total:
            step = int(10 * done / self.total)
            show, self.last_step = step > self.last_step, max(step, self.last_step)
        else:
            show = now - self.last_shown >= 30
        if not show:
            return
        self.last_shown = now
        rate = done / max(now - self.start, 1e-9)
        text = f"  {done}/{self.total or '?'} frames  {rate:.1f} frames/s"
        if self.total and rate > 0:
            text += f"  ETA {_clock((self.total - done) / rate)}"
        print(("\r" + text) if self.interactive else text, end="" if self.interactive else "\n",
              file=self.stream, flush=True)

    def close(self):
        if self.interactive:
            print(file=self.stream)


def _clock(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


# --- ABAW submission ----------------------------------------------------------------------


def face_tracks_of_video(table):
    """`{video suffix: rows}`: `""` for one person, `"_left"`/`"_right"` for two.

    A video counts as two people when most of its frames with a face show two or more; then
    the leftmost face of each frame is `_left` and the rightmost `_right` (Aff-Wild2's
    naming). With one person, the frame's largest face is kept.
    """
    faces = table[table["success"] == 1]
    if faces.empty:
        return {"": faces}
    per_frame = faces.groupby("frame").size()
    if (per_frame >= 2).mean() > 0.5:
        two = faces["frame"].isin(per_frame.index[per_frame >= 2])
        multi, single = faces[two], faces[~two]
        centre = multi["x"] + multi["w"] / 2
        left = multi.loc[centre.groupby(multi["frame"]).idxmin()]
        right = multi.loc[centre.groupby(multi["frame"]).idxmax()]
        # A frame with one face gives it to the side whose faces sit nearer.
        x = single["x"] + single["w"] / 2
        near_left = ((x - (left["x"] + left["w"] / 2).mean()).abs()
                     <= (x - (right["x"] + right["w"] / 2).mean()).abs())
        return {"_left": pd.concat([left, single[near_left]]),
                "_right": pd.concat([right, single[~near_left]])}
    area = faces["w"] * faces["h"]
    return {"": faces.loc[area.groupby(faces["frame"]).idxmax()]}


def write_submission(out, tables, schema, tasks):
    """ABAW prediction files from per-video prediction tables (`{video name: table}`).

    Every frame gets a prediction: frames without a face take the nearest frame's of the
    same person, and a video where no face was found predicts valence = arousal = 0,
    Neutral and no AU. Returns the paths `write_official_predictions` wrote.
    """
    from affectkit.evaluation.challenge_files import write_official_predictions

    frames, outputs = [], {task: [] for task in tasks}
    for video, table in tables.items():
        n = int(table["frame"].max()) if len(table) else 0
        for suffix, rows in face_tracks_of_video(table).items():
            frame_numbers = np.arange(1, n + 1)
            values = _filled_outputs(rows, frame_numbers, schema, tasks)
            frames.append(pd.DataFrame({"video": video + suffix, "frame": frame_numbers}))
            for task in tasks:
                outputs[task].append(values[task])
    if not frames:
        return {}
    frames = pd.concat(frames, ignore_index=True)
    outputs = {task: np.concatenate(v) for task, v in outputs.items()}
    return write_official_predictions(out, frames, outputs, schema)


def _filled_outputs(rows, frame_numbers, schema, tasks):
    """Task arrays over `frame_numbers`, holes filled from the nearest predicted frame."""
    columns = {"va": ["valence", "arousal"], "expr": list(schema.expressions),
               "au": list(schema.aus)}
    if rows.empty:
        return {task: np.zeros((len(frame_numbers), len(columns[task])), np.float32)
                for task in tasks}
    known = rows["frame"].to_numpy()
    order = np.argsort(known)
    known = known[order]
    position = np.clip(np.searchsorted(known, frame_numbers), 0, len(known) - 1)
    before = np.clip(position - 1, 0, len(known) - 1)
    nearest = np.where(np.abs(known[before] - frame_numbers) <= np.abs(known[position] - frame_numbers),
                       before, position)
    return {task: rows[columns[task]].to_numpy(np.float32)[order][nearest] for task in tasks}
