"""Videos made from still photographs whose faces move, change size and leave the frame,
with the true face box of every frame: the test and benchmark input of `affectkit predict`.

Real faces ship inside scikit-image (`skimage.data.astronaut()`); `ASTRONAUT_FACE` is that
photograph's face, labelled by hand. A `MovingPhoto` is one copy of a photo on the video's
canvas: where its centre goes and how large it is, frame by frame.

Example:

```python
from skimage import data
truth = write_moving_photo_video("moving.mp4", [MovingPhoto(data.astronaut(), ASTRONAUT_FACE)])
truth[truth.visible].head()  # frame, face, visible, x, y, w, h
```
"""

import dataclasses
import os

import cv2
import numpy as np
import pandas as pd

# skimage.data.astronaut() (512 x 512): the face box (x, y, w, h; hairline to chin, cheek to
# cheek) and landmarks, labelled by hand.
ASTRONAUT_FACE = {
    "box": (176.0, 72.0, 96.0, 100.0),
    "left_eye": (204.0, 103.0),
    "right_eye": (249.0, 106.0),
    "nose": (224.0, 127.0),
    "mouth": (221.0, 147.0),
}


@dataclasses.dataclass
class MovingPhoto:
    """A photograph on the canvas, moving from `start` to `end` while its size goes from
    `scale[0]` to `scale[1]` (canvas pixels per photo pixel). Positions are where the face
    centre goes, in canvas pixels; `region` (x, y, w, h) pastes that part of the photo only
    (default all of it); `mirror` flips it left-right."""

    photo: np.ndarray
    face: dict
    start: tuple = (160.0, 180.0)
    end: tuple = (480.0, 180.0)
    scale: tuple = (0.8, 0.8)
    mirror: bool = False
    region: tuple = None

    def image(self):
        """The pasted picture (the region, mirrored when asked)."""
        x, y, w, h = self.region or (0, 0, self.photo.shape[1], self.photo.shape[0])
        image = self.photo[y : y + h, x : x + w]
        return np.ascontiguousarray(image[:, ::-1] if self.mirror else image)

    def face_box(self):
        """The face box in `image()` pixels."""
        rx, ry, rw, _ = self.region or (0, 0, self.photo.shape[1], self.photo.shape[0])
        x, y, w, h = self.face["box"]
        x, y = x - rx, y - ry
        return (rw - x - w if self.mirror else x), y, w, h

    def matrix(self, t):
        """The `image()` -> canvas similarity at progress t in [0, 1]."""
        x, y, w, h = self.face_box()
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * t
        cx, cy = (np.asarray(self.start) + (np.asarray(self.end) - np.asarray(self.start)) * t)
        return np.array([[s, 0, cx - s * (x + w / 2)], [0, s, cy - s * (y + h / 2)]])


def render_moving_photos(photos, frames, size=(640, 360), background=90):
    """Yields `(frame RGB, truth rows)` for each frame; rows: face, visible, x, y, w, h.

    A face is `visible` when its whole box is inside the frame.
    """
    width, height = size
    images = [p.image() for p in photos]
    for k in range(frames):
        t = k / max(1, frames - 1)
        canvas = np.full((height, width, 3), background, np.uint8)
        rows = []
        for i, (photo, image) in enumerate(zip(photos, images)):
            matrix = photo.matrix(t)
            cv2.warpAffine(image, matrix, (width, height), dst=canvas, flags=cv2.INTER_AREA
                           if matrix[0, 0] < 1 else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_TRANSPARENT)
            x, y, w, h = photo.face_box()
            s = matrix[0, 0]
            box = (s * x + matrix[0, 2], s * y + matrix[1, 2], s * w, s * h)
            visible = box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= width and box[1] + box[3] <= height
            rows.append({"frame": k + 1, "face": i, "visible": bool(visible), "x": box[0],
                         "y": box[1], "w": box[2], "h": box[3]})
        yield canvas, rows


def write_moving_photo_video(path, photos, frames=90, size=(640, 360), fps=30.0):
    """Writes an MP4 of `render_moving_photos` and returns its truth as a DataFrame."""
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
    if not writer.isOpened():
        raise ValueError(f"{path}: OpenCV could not open an 'mp4v' video writer.")
    truth = []
    try:
        for canvas, rows in render_moving_photos(photos, frames, size):
            writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))
            truth += rows
    finally:
        writer.release()
    return pd.DataFrame(truth)
