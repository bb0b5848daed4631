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

from affectkit.features.live import LiveFeatures
from affectkit.inference.alignment import cut_view
from affectkit.inference.video import ImageSequence, VideoReader
from affectkit.metrics import AU_THRESHOLD

FACE_COLUMNS = ("frame", "timestamp", "face_id", "success", "confidence", "x", "y", "w", "h")


class _Slot:
    """A face of a frame on its way through the frame and temporal steps."""

    __slots__ = ("record", "k", "face_id", "crops", "item")

    def __init__(self, record, k, face_id, crops):
        self.record, self.k, self.face_id, self.crops, self.item = record, k, face_id, crops, None


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


def run_recipe(model, run_dir):
    """The `Recipe` of the run directory that trained `model` (`config.json`), for what
    the model file alone does not hold: how a model of cached features gets its inputs."""
    from affectkit.recipes import get_recipe
    from affectkit.training.run_directory import read_run_config

    if run_dir is None or not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise ValueError(
            f"{model.name}: a model of cached features (input_kind 'features', e.g. do2020's "
            "temporal stage or liu2023's encoders) computes its inputs with its run's face "
            "models or feature extractors; expected its run directory (or the model.keras "
            "inside one, beside its config.json), not the model alone.")
    record = read_run_config(run_dir)
    return get_recipe(record["recipe"])(record["config"], record["data"], run_dir,
                                        preset=record.get("preset"))


class FacePredictor:
    """Runs a model on the faces of videos and images.

    Every face's crop goes first through the model's *frame step*, `batch_size` faces at a
    time: the model itself (`input_kind="images"`), or the per-frame features a model of
    cached features was trained on, computed live (`affectkit.features.live`). A temporal
    model then reads each face track as it was trained, with no later frame than that:
    a clip model (`"clips"`, phan2022) and a segment model (liu2023) in consecutive
    segments of their length, the last one of a track padded with its last frame (masked
    by `valid`; an LSTM's state carried from one segment of a track to the next); a window
    model (do2020) each frame with its `s - 1` previous ones (a track's first frame
    repeated at its start), as `affectkit.data.sequences` cuts runs of frames in training.

    Args:
        model: an affectkit model, a `.keras` file or a run directory. Its config gives
            the label schema, tasks, view and input size; a model of cached features
            needs its run directory (`run_recipe`), which holds its face models or
            extractors.
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

        run_dir = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
        if run_dir is not None and not os.path.isdir(run_dir):
            run_dir = os.path.dirname(os.path.abspath(run_dir))
        self.model = load_model(model)
        self.schema = label_schema(self.model)
        config = self.model.get_config()
        self.kind = config.get("input_kind", "images")
        self.tasks = tuple(t for t in ("va", "expr", "au") if t in config["tasks"])
        self.features, self.layout = None, None
        if self.kind == "features":
            recipe = run_recipe(self.model, run_dir)
            self.features = LiveFeatures(recipe.live_feature_sources())
            self.layout = recipe.temporal_layout()
            self.crops = self.features.crops
        else:
            self.crops = [(config["view"], int(config["image_size"]))]
            if self.kind == "clips":
                self.layout = {"kind": "segments", "length": int(config["sequence_length"])}
        inputs = self.model.input if isinstance(self.model.input, dict) else {}
        self.masked = "valid" in inputs  # a segment transformer: padding masked
        self.stateful = "state_h" in inputs  # a segment LSTM: state carried
        self.batch_size = int(batch_size)
        self.au_threshold = float(au_threshold)
        self.columns = prediction_columns(self.schema, self.tasks)
        self.detector = make_detector(detector) if isinstance(detector, str) else detector
        self.tracker = FaceTracker(self.detector, every=every)
        if self.kind == "features":
            self._call = tf.function(lambda x: self.model(x, training=False),
                                     reduce_retracing=True)
        else:
            # Crops travel as uint8; the model takes RGB in [0, 1] and normalises them itself.
            size = self.crops[0][1]
            shape = (None, size, size, 3) if self.kind == "images" else (
                None, self.layout["length"], size, size, 3)
            self._call = tf.function(
                lambda x: self.model(tf.cast(x, tf.float32) / 255.0, training=False),
                input_signature=[tf.TensorSpec(shape, tf.uint8)])
        self.timings = dict.fromkeys(("decode", "detect", "align", "model"), 0.0)
        self.warnings = []

    # --- rows -----------------------------------------------------------------------------

    def iter_rows(self, frames, track=True, on_frame=None):
        """Rows for `(index, timestamp, frame)` items, in frame order, a batch at a time.

        Yields lists of row dicts (keys `self.columns`). `on_frame(frame, rows)` is called
        for every frame once its rows are known (the overlay writer). Faces go through the
        frame step `batch_size` at a time, then, for a temporal model, track by track
        through its segments or windows (see the class docstring)."""
        self.tracker.reset()
        if self.features is not None:  # a video's sound, for a model that reads audio
            self.features.start(getattr(frames, "path", None))
        pending, ready = collections.deque(), []
        self._events, self._faces = [], 0  # frame-step queue: faces, and tracks that ended
        self._tracks, self._states, self._windows = {}, {}, []
        live = set()  # the face ids of the previous frame
        clock = time.perf_counter()
        for index, timestamp, frame in frames:
            now = time.perf_counter()
            self.timings["decode"] += now - clock
            faces = self.tracker.update(frame) if track else self._detect_still(frame)
            clock = time.perf_counter()
            self.timings["detect"] += clock - now
            crops = [{(view, size): cut_view(frame, face.landmarks, face.landmark_names, view,
                                             size) for view, size in self.crops}
                     for face in faces]
            self.timings["align"] += time.perf_counter() - clock
            record = _Frame(index, timestamp, faces, frame if on_frame else None)
            pending.append(record)
            if self.layout is not None:  # the previous frame's tracks that ended here
                ids = {face.face_id for face in faces}
                self._events += [("end", i) for i in sorted(live - ids if track else live)]
                live = ids
            for k, (face, crop) in enumerate(zip(faces, crops)):
                self._events.append(("face", _Slot(record, k, face.face_id, crop)))
            self._faces += len(faces)
            if self._faces >= self.batch_size:
                self._frame_step()
            ready += self._ready_rows(pending, on_frame)
            if len(ready) >= self.batch_size:
                yield ready
                ready = []
            clock = time.perf_counter()
        self._frame_step()
        for face_id in list(self._tracks):
            self._end_track(face_id)
        self._run_windows()
        ready += self._ready_rows(pending, on_frame)
        if ready:
            yield ready

    def _detect_still(self, frame):
        from affectkit.inference.tracking import TrackedFace

        found = sorted(self.detector(frame), key=lambda face: face.box[0])
        return [TrackedFace(i, f.box, f.score, f.landmarks, f.landmark_names)
                for i, f in enumerate(found)]

    def _frame_step(self):
        """Runs the frame step on the queued faces, then hands them and the ended tracks,
        in order, to the temporal step."""
        events, self._events, self._faces = self._events, [], 0
        slots = [item for kind, item in events if kind == "face"]
        if slots:
            clock = time.perf_counter()
            if self.kind == "features":
                crops = {key: np.stack([slot.crops[key] for slot in slots])
                         for key in self.crops}
                values = self.features(crops, [slot.record.index for slot in slots])
                for i, slot in enumerate(slots):
                    slot.item = {name: array[i] for name, array in values.items()}
            elif self.kind == "clips":
                for slot in slots:
                    slot.item = slot.crops[self.crops[0]]
            else:
                self._store(slots, self._model_outputs(
                    np.stack([slot.crops[self.crops[0]] for slot in slots])))
            self.timings["model"] += time.perf_counter() - clock
        if self.layout is None:
            return
        for kind, item in events:
            if kind == "end":
                self._end_track(item)
            elif self.layout["kind"] == "windows":
                self._push_window(item)
            else:
                segment = self._tracks.setdefault(item.face_id, [])
                segment.append(item)
                if len(segment) == self.layout["length"]:
                    self._run_segment(item.face_id, self._tracks.pop(item.face_id))

    def _end_track(self, face_id):
        """A track ended (its face left, or the input did): its last, partial segment runs;
        its state and window history are dropped (a new track starts afresh)."""
        track = self._tracks.pop(face_id, None)
        if self.layout["kind"] == "segments" and track:
            self._run_segment(face_id, track)
        self._states.pop(face_id, None)

    def _run_segment(self, face_id, slots):
        """One segment of a track: its frames, padded with the last one to the length."""
        clock = time.perf_counter()
        length = self.layout["length"]
        padded = slots + [slots[-1]] * (length - len(slots))
        if self.kind == "clips":
            inputs = np.stack([slot.item for slot in padded])[None]
        else:
            inputs = {name: np.stack([slot.item[name] for slot in padded])[None]
                      for name in slots[0].item}
            if self.masked:
                inputs["valid"] = (np.arange(length) < len(slots))[None]
            if self.stateful:
                units = int(self.model.input["state_h"].shape[-1])
                zeros = np.zeros((1, units), np.float32)
                inputs["state_h"], inputs["state_c"] = self._states.get(face_id, (zeros, zeros))
        outputs = self._call(inputs)
        if self.stateful:
            self._states[face_id] = (np.asarray(outputs["state_h"]),
                                     np.asarray(outputs["state_c"]))
        self._store(slots, {task: np.asarray(outputs[task])[0] for task in self.tasks})
        self.timings["model"] += time.perf_counter() - clock

    def _push_window(self, slot):
        """A frame of a window model: its windowed inputs with the track's previous frames
        (the first one repeated at the track's start), the others its own."""
        window = self.layout["window"]
        history = self._tracks.get(slot.face_id)
        if history is None:
            history = self._tracks[slot.face_id] = collections.deque([slot.item] * window,
                                                                     maxlen=window)
        else:
            history.append(slot.item)
        slot.item = {name: (np.stack([item[name] for item in history])
                            if name in self.layout["windowed"] else value)
                     for name, value in slot.item.items()}
        self._windows.append(slot)
        if len(self._windows) >= self.batch_size:
            self._run_windows()

    def _run_windows(self):
        slots, self._windows = self._windows, []
        if slots:
            clock = time.perf_counter()
            self._store(slots, self._model_outputs(
                {name: np.stack([slot.item[name] for slot in slots]) for name in slots[0].item}))
            self.timings["model"] += time.perf_counter() - clock

    def _model_outputs(self, inputs):
        outputs = self._call(inputs)
        return {task: np.asarray(outputs[task]) for task in self.tasks}

    def _store(self, slots, outputs):
        for i, slot in enumerate(slots):
            slot.record.values[slot.k] = self._task_values(outputs, i)

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
