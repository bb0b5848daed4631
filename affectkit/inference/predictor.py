"""Per-frame affect of every face in a video or a set of images: one row per (frame, face).

`FacePredictor` joins the stages: frames (`video`) -> faces (`detection`, `tracking`) -> the
model's own view and input size (`alignment`, read from the model's config) -> batched model
calls -> rows. A frame without a face is a row with `success` 0 and empty predictions, never
dropped (OpenFace's convention). Rows stream out in frame order, so a long video needs
memory for one batch of faces only.

Columns (`prediction_columns`): `frame` (1-based), `timestamp` (s), `face_id`, `success`,
`confidence`, `x, y, w, h`, then by task `valence, arousal`; one probability per expression
of the label schema and `expression` (its name); one probability per AU (`AU1`, ...) and
its presence (`AU1_c`, ...).

Example:

```python
from affectkit.inference import predict_video
table = predict_video("runs/mtanet/model.keras", "talk.mp4")
table.groupby("face_id")[["valence", "arousal"]].mean()
```
"""

import collections
import os
import time

import numpy as np
import pandas as pd

from affectkit.inference.alignment import cut_view
from affectkit.inference.video import ImageSequence, VideoReader
from affectkit.metrics import AU_THRESHOLD

FACE_COLUMNS = ("frame", "timestamp", "face_id", "success", "confidence", "x", "y", "w", "h")


class _Frame:
    """A frame waiting for its faces' predictions (`values`, one dict per face)."""

    __slots__ = ("index", "timestamp", "faces", "values", "image")

    def __init__(self, index, timestamp, faces, image):
        self.index, self.timestamp, self.faces, self.image = index, timestamp, faces, image
        self.values = [None] * len(faces)


def prediction_columns(schema, tasks):
    """The CSV columns of a model's predictions, in order."""
    columns = list(FACE_COLUMNS)
    if "va" in tasks:
        columns += ["valence", "arousal"]
    if "expr" in tasks:
        columns += list(schema.expressions) + ["expression"]
    if "au" in tasks:
        columns += list(schema.aus) + [f"{au}_c" for au in schema.aus]
    return columns


def load_model(model):
    """A Keras model from a `model.keras` file or a run directory that holds one (or the model)."""
    import keras

    import affectkit  # noqa: F401  (registers affectkit's layers for safe-mode loading)
    from affectkit.models.backbones.model_file import load_model_file

    if isinstance(model, keras.Model):
        return model
    path = os.fspath(model)
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{model}: a folder without model.keras; expected a run "
                                    "directory of `affectkit train` or a .keras file.")
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"{model}: no such file; expected a .keras model or a run "
                                "directory.")
    return load_model_file(path)


class FacePredictor:
    """Runs a frame model on the faces of videos and images.

    Args:
        model: an affectkit model reading images (`input_kind="images"`), a `.keras` file or
            a run directory. Its config gives the label schema, tasks, view and input size.
        detector: `"blazeface"`, `"mtcnn"` or a callable frame -> list of `detection.Face`.
        every: detect every K frames and track in between (videos).
        batch_size: faces per model call.
        au_threshold: AU presence (`AU*_c`) where the probability is at least this.
    """

    def __init__(self, model, detector="blazeface", every=1, batch_size=32,
                 au_threshold=AU_THRESHOLD):
        import tensorflow as tf

        from affectkit.inference.detection import make_detector
        from affectkit.inference.tracking import FaceTracker
        from affectkit.models.affect_model import label_schema

        self.model = load_model(model)
        self.schema = label_schema(self.model)
        config = self.model.get_config()
        kind = config.get("input_kind", "images")
        if kind not in ("images", "clips"):
            raise ValueError(
                f"{self.model.name}: a model of {kind} (cached features, e.g. do2020's "
                "temporal stage or liu2023's fusion): affectkit predict runs models that read "
                "face images (input_kind 'images' or 'clips').")
        self.sequence_length = config.get("sequence_length") if kind == "clips" else None
        self.tasks = tuple(t for t in ("va", "expr", "au") if t in config["tasks"])
        self.view, self.image_size = config["view"], int(config["image_size"])
        self.batch_size = int(batch_size)
        self.au_threshold = float(au_threshold)
        self.columns = prediction_columns(self.schema, self.tasks)
        self.detector = make_detector(detector) if isinstance(detector, str) else detector
        self.tracker = FaceTracker(self.detector, every=every)
        shape = (None, self.image_size, self.image_size, 3)
        if self.sequence_length is not None:
            shape = (None, self.sequence_length) + shape[1:]
        # Crops travel as uint8; the model takes RGB in [0, 1] and normalises them itself.
        self._call = tf.function(
            lambda x: self.model(tf.cast(x, tf.float32) / 255.0, training=False),
            input_signature=[tf.TensorSpec(shape, tf.uint8)])
        self.timings = dict.fromkeys(("decode", "detect", "align", "model"), 0.0)
        self.warnings = []

    # --- rows -----------------------------------------------------------------------------

    def iter_rows(self, frames, track=True, on_frame=None):
        """Rows for `(index, timestamp, frame)` items, in frame order, a batch at a time.

        Yields lists of row dicts (keys `self.columns`). `on_frame(frame, rows)` is called
        for every frame once its rows are known (the overlay writer). A frame model's
        faces go to the model `batch_size` at a time; a clip model (`input_kind="clips"`)
        reads each face track in clips of its `sequence_length` consecutive frames, as it
        was trained: a clip ends early where the track does (padded with its last frame).
        """
        self.tracker.reset()
        pending, queue, clips, ready = collections.deque(), [], {}, []
        clock = time.perf_counter()
        for index, timestamp, frame in frames:
            now = time.perf_counter()
            self.timings["decode"] += now - clock
            faces = self.tracker.update(frame) if track else self._detect_still(frame)
            clock = time.perf_counter()
            self.timings["detect"] += clock - now
            crops = [cut_view(frame, face.landmarks, face.landmark_names, self.view,
                              self.image_size) for face in faces]
            self.timings["align"] += time.perf_counter() - clock
            record = _Frame(index, timestamp, faces, frame if on_frame else None)
            pending.append(record)
            slots = [(record, k, crop) for k, crop in enumerate(crops)]
            if self.sequence_length is None:
                queue += slots
                if len(queue) >= self.batch_size:
                    self._fill(queue)
                    queue = []
            else:
                seen = {face.face_id for face in faces}
                for face_id in [i for i in clips if i not in seen]:  # the track ended here
                    self._fill(clips.pop(face_id))
                for face, slot in zip(faces, slots):
                    clip = clips.setdefault(face.face_id, [])
                    clip.append(slot)
                    if len(clip) == self.sequence_length:
                        self._fill(clips.pop(face.face_id))
            ready += self._ready_rows(pending, on_frame)
            if len(ready) >= self.batch_size:
                yield ready
                ready = []
            clock = time.perf_counter()
        self._fill(queue)
        for clip in clips.values():
            self._fill(clip)
        ready += self._ready_rows(pending, on_frame)
        if ready:
            yield ready

    def _detect_still(self, frame):
        from affectkit.inference.tracking import TrackedFace

        found = sorted(self.detector(frame), key=lambda face: face.box[0])
        return [TrackedFace(i, f.box, f.score, f.landmarks, f.landmark_names)
                for i, f in enumerate(found)]

    def _fill(self, slots):
        """Runs the model on the crops of `slots` (a batch, or one clip) and stores the values."""
        if not slots:
            return
        clock = time.perf_counter()
        batch = np.stack([crop for _, _, crop in slots])
        if self.sequence_length is not None:  # one clip, padded with its last frame
            padding = self.sequence_length - len(batch)
            batch = np.concatenate([batch, np.repeat(batch[-1:], padding, 0)])[None]
        outputs = self._call(batch)
        outputs = {task: np.asarray(outputs[task]) for task in self.tasks}
        if self.sequence_length is not None:
            outputs = {task: values[0] for task, values in outputs.items()}
        self.timings["model"] += time.perf_counter() - clock
        for i, (record, k, _) in enumerate(slots):
            record.values[k] = self._task_values(outputs, i)

    def _ready_rows(self, pending, on_frame):
        """The rows of the frames at the head of `pending` whose faces all have values."""
        rows = []
        while pending and all(v is not None for v in pending[0].values):
            record = pending.popleft()
            base = {"frame": record.index + 1, "timestamp": record.timestamp}
            frame_rows = []
            if not record.faces:
                frame_rows.append({**base, "face_id": None, "success": 0, "confidence": 0.0})
            for face, values in zip(record.faces, record.values):
                x, y, w, h = (float(v) for v in face.box)
                frame_rows.append({**base, "face_id": face.face_id, "success": 1,
                                   "confidence": round(float(face.score), 4),
                                   "x": x, "y": y, "w": w, "h": h, **values})
            if on_frame is not None:
                on_frame(record.image, frame_rows)
            rows += frame_rows
        return rows

    def _task_values(self, outputs, i):
        values = {}
        if "va" in outputs:
            values["valence"], values["arousal"] = (float(v) for v in np.clip(outputs["va"][i], -1, 1))
        if "expr" in outputs:
            probabilities = outputs["expr"][i]
            values.update(zip(self.schema.expressions, probabilities.astype(float)))
            values["expression"] = self.schema.expressions[int(np.argmax(probabilities))]
        if "au" in outputs:
            probabilities = outputs["au"][i]
            values.update(zip(self.schema.aus, probabilities.astype(float)))
            present = probabilities >= self.au_threshold
            values.update({f"{au}_c": int(p) for au, p in zip(self.schema.aus, present)})
        return values

    def table(self, rows):
        """A DataFrame of rows with `self.columns`, integer columns kept integer."""
        table = pd.DataFrame(rows, columns=self.columns)
        table["face_id"] = table["face_id"].astype("Int64")
        return table

    # --- inputs ---------------------------------------------------------------------------

    def predict_video(self, path, on_frame=None):
        """The rows of every frame of a video, as a DataFrame."""
        with VideoReader(path) as reader:
            rows = [row for batch in self.iter_rows(reader, on_frame=on_frame) for row in batch]
        return self.table(rows)

    def predict_images(self, paths, skip_unreadable=False):
        """The rows of each image (a face per row; `frame` numbers the images in order).

        An unreadable image raises ValueError naming it, or with `skip_unreadable` is left
        out and named in `self.warnings`."""
        sequence = ImageSequence([os.fspath(p) for p in paths], skip_unreadable=skip_unreadable)
        rows = [row for batch in self.iter_rows(sequence, track=False) for row in batch]
        table = self.table(rows)
        table.insert(0, "file", [sequence.files[i - 1] for i in table["frame"]])
        self.warnings = list(sequence.warnings)
        return table


def predict_video(model, path, detector="blazeface", every=1, batch_size=32):
    """Per-frame predictions of every face in a video (see `FacePredictor`)."""
    return FacePredictor(model, detector, every, batch_size).predict_video(path)


def predict_images(model, paths, detector="blazeface", batch_size=32):
    """Predictions of every face in each image: a DataFrame with a `file` column."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return FacePredictor(model, detector, 1, batch_size).predict_images(paths)
