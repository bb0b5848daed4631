"""Faces followed through a video: detection every K frames, tracking in between, stable ids.

On a detection frame, each detection takes the id of the track whose last box it overlaps
most (IoU, greedily by score); the others start new tracks. In between, every track moves
by the similarity that best explains the motion of points on its face (pyramidal
Lucas-Kanade optical flow with a forward-backward check, Bouguet 2001; Kalal et al., 2010),
which carries its landmarks and box along. A track that is not seen for `patience` frames is
closed; a face that comes back later gets a new id.

Example:

```python
tracker = FaceTracker(make_detector("blazeface"), every=5)
for index, timestamp, frame in VideoReader("talk.mp4"):
    for face in tracker.update(frame):
        print(index, face.face_id, face.box)
```
"""

import dataclasses

import cv2
import numpy as np

from affectkit.inference.detection import box_iou as corner_iou

# Optical flow runs on frames reduced to at most this side (4K frames track as fast as HD).
TRACKING_SIDE = 960
_LK = dict(winSize=(21, 21), maxLevel=3,
           criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))


@dataclasses.dataclass
class TrackedFace:
    """One face in one frame.

    Args:
        face_id: the track's id, stable while the face stays in view (0, 1, ... per video).
        box: `(4,)` x, y, w, h in frame pixels.
        score: the detector's score at the track's last detection.
        landmarks: `(K, 2)` frame pixels; `landmark_names` name them.
        detected: True on frames where the detector found it, False where it was tracked.
    """

    face_id: int
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    landmark_names: tuple
    detected: bool = True


def box_iou(a, b):
    """Intersection over union of two `(x, y, w, h)` boxes."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(corner_iou(np.r_[a[:2], a[:2] + a[2:]], np.r_[b[:2], b[:2] + b[2:]])[0])


class FaceTracker:
    """Detects faces every `every` frames and tracks them in between.

    Args:
        detector: a callable frame (RGB uint8) -> list of `detection.Face`.
        every: detect on frames 0, every, 2 * every, ...; 1 detects on every frame.
        iou_threshold: least overlap of a detection with a track's last box to continue it.
        patience: frames a track may go unseen before it is closed (default `2 * every`,
            at least 3): a detection missed on one frame does not change the id.
    """

    def __init__(self, detector, every=1, iou_threshold=0.3, patience=None):
        if int(every) < 1:
            raise ValueError(f"every={every}: expected a whole number >= 1 (detect every K frames).")
        self.detector = detector
        self.every = int(every)
        self.iou_threshold = float(iou_threshold)
        self.patience = max(3, 2 * self.every) if patience is None else int(patience)
        self.reset()

    def reset(self):
        """Forgets every track (call between videos); ids start again at 0."""
        self._tracks = []  # dicts: face (TrackedFace), last_seen (frame count)
        self._next_id = 0
        self._frame = -1
        self._gray, self._gray_scale = None, 1.0

    def update(self, frame):
        """The faces of the next frame, sorted by `face_id`."""
        self._frame += 1
        gray, scale = self._tracking_image(frame)
        if self._frame % self.every == 0:
            visible = self._associate(self.detector(frame))
        else:
            visible = self._follow(gray, scale)
        self._gray, self._gray_scale = gray, scale
        self._tracks = [t for t in self._tracks if self._frame - t["last_seen"] <= self.patience]
        return sorted(visible, key=lambda face: face.face_id)

    def _tracking_image(self, frame):
        if self.every == 1:
            return None, 1.0
        h, w = frame.shape[:2]
        scale = min(1.0, TRACKING_SIDE / max(h, w))
        small = frame if scale == 1.0 else cv2.resize(frame, (round(w * scale), round(h * scale)),
                                                      interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), scale

    def _associate(self, detections):
        order = sorted(range(len(detections)), key=lambda i: -detections[i].score)
        free = list(self._tracks)
        visible = []
        for i in order:
            det = detections[i]
            best, best_iou = None, self.iou_threshold
            for track in free:
                iou = box_iou(det.box, track["face"].box)
                if iou >= best_iou:
                    best, best_iou = track, iou
            if best is None:
                best = {"last_seen": self._frame}
                self._tracks.append(best)
                face_id = self._next_id
                self._next_id += 1
            else:
                free.remove(best)
                face_id = best["face"].face_id
            face = TrackedFace(face_id, np.asarray(det.box, np.float32), float(det.score),
                               np.asarray(det.landmarks, np.float32), tuple(det.landmark_names))
            best.update(face=face, last_seen=self._frame)
            visible.append(face)
        return visible

    def _follow(self, gray, scale):
        visible = []
        for track in self._tracks:
            if track["last_seen"] != self._frame - 1 or self._gray is None:
                continue  # lost since its last detection: wait for the detector
            face = track["face"]
            moved = self._flow(face, self._gray, gray, self._gray_scale, scale)
            if moved is None:
                continue
            track.update(face=moved, last_seen=self._frame)
            visible.append(moved)
        return visible

    @staticmethod
    def _flow(face, previous, current, previous_scale, scale):
        """`face` moved from the previous frame to the current one, or None when lost."""
        x, y, w, h = face.box
        grid = np.stack(np.meshgrid(np.linspace(x + 0.2 * w, x + 0.8 * w, 4),
                                    np.linspace(y + 0.2 * h, y + 0.8 * h, 4)), -1).reshape(-1, 2)
        points = np.concatenate([face.landmarks, grid]).astype(np.float32) * previous_scale
        new, ok, _ = cv2.calcOpticalFlowPyrLK(previous, current, points[:, None], None, **_LK)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, new, None, **_LK)
        good = (ok[:, 0] == 1) & (ok_back[:, 0] == 1) & (
            np.linalg.norm(back[:, 0] - points, axis=1) < 1.0)
        if good.sum() < max(4, len(points) // 3):
            return None
        matrix, _ = cv2.estimateAffinePartial2D(points[good], new[good, 0], method=cv2.LMEDS)
        if matrix is None:
            return None
        # The similarity in full-frame pixels: scale the reduced-frame map back.
        matrix = matrix.astype(np.float64)
        matrix[:, 2] /= scale
        matrix[:, :2] *= previous_scale / scale
        landmarks = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
        zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        centre = matrix[:, :2] @ np.array([x + w / 2, y + h / 2]) + matrix[:, 2]
        box = np.array([centre[0] - zoom * w / 2, centre[1] - zoom * h / 2, zoom * w, zoom * h])
        return dataclasses.replace(face, box=box.astype(np.float32),
                                   landmarks=landmarks.astype(np.float32), detected=False)
