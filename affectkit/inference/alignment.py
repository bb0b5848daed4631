"""The view a model was trained on, cut out of a video frame from a face's landmarks.

Both views follow the geometry of `affectkit.data.affwild2` (REFERENCE section 7), which the
demo writer draws too:

    aligned   a similarity transform (rotation, uniform scale, shift) that takes the face's
              landmarks onto ArcFace's five-point template (`cropped_aligned`)
    cropped   an upright square on the centre of the aligned square, `CONTEXT_SCALE` times
              its side (`cropped`: the face with context)

A face much larger than the output (a 4K frame) is first reduced with area averaging, so
the crop does not alias; only the pixels around the face are touched.

Example:

```python
crop = cut_view(frame, face.landmarks, face.landmark_names, view="aligned", size=112)
```
"""

import cv2
import numpy as np

from affectkit.data.affwild2 import CONTEXT_SCALE, VIEWS, aligned_landmarks


def similarity_transform(source, target):
    """The least-squares similarity `(2, 3)` that maps `source` points onto `target`.

    Umeyama's closed form (Umeyama, 1991), without reflection: `target ~ A @ source + b`.

    Args:
        source, target: `(n, 2)` point arrays, n >= 2.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"similarity_transform: expected two (n, 2) arrays with n >= 2; got "
                         f"{source.shape} and {target.shape}.")
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    covariance = t.T @ s / len(source)
    u, d, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (s**2).sum() / len(source)
    scale = (d * sign).sum() / variance if variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_t - matrix[:, :2] @ mu_s
    return matrix


def view_matrix(landmarks, landmark_names, view="aligned", size=112):
    """The affine map `(2, 3)` from frame pixels to the `size`-pixel crop of a view."""
    if view not in VIEWS:
        raise ValueError(f"view {view!r}: expected one of {VIEWS}.")
    aligned = similarity_transform(landmarks, aligned_landmarks(size, landmark_names))
    if view == "aligned":
        return aligned
    # The aligned square in the frame: its centre and side; the context square around them.
    scale = np.sqrt(abs(np.linalg.det(aligned[:, :2])))
    centre = np.linalg.solve(aligned[:, :2], np.full(2, size / 2.0) - aligned[:, 2])
    zoom = scale / CONTEXT_SCALE
    return np.array([[zoom, 0.0, size / 2.0 - zoom * centre[0]],
                     [0.0, zoom, size / 2.0 - zoom * centre[1]]])


def warp_to_crop(frame, matrix, size):
    """`frame` through `matrix` (frame -> crop pixels) into a `size` x `size` crop.

    Where the crop shrinks the frame by more than 2x, the region under the crop is first
    reduced with `cv2.INTER_AREA`, so fine detail averages rather than aliases.
    """
    matrix = np.asarray(matrix, np.float64)
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.5:
        # The frame region under the crop (its corners through the inverse map), a margin.
        inverse = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
        points = corners @ inverse.T
        h, w = frame.shape[:2]
        margin = 2.0 / scale
        x0, y0 = np.maximum(np.floor(points.min(0) - margin), 0).astype(int)
        x1, y1 = np.minimum(np.ceil(points.max(0) + margin), (w, h)).astype(int)
        if x1 > x0 and y1 > y0:
            factor = min(1.0, 2.0 * scale)  # leaves a warp that shrinks by 2x at most
            region = frame[y0:y1, x0:x1]
            rw, rh = max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor))
            region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
            # crop = M @ frame = M @ (offset + region / factor).
            fx, fy = (x1 - x0) / rw, (y1 - y0) / rh
            matrix = matrix @ np.array([[fx, 0, x0], [0, fy, y0], [0, 0, 1]], np.float64)
            frame = region
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def cut_view(frame, landmarks, landmark_names, view="aligned", size=112):
    """The `size` x `size` crop of a view (`"aligned"` or `"cropped"`) from a face's landmarks.

    Args:
        frame: `(H, W, 3)` uint8 image.
        landmarks: `(n, 2)` landmark positions in frame pixels.
        landmark_names: their names, keys of `affwild2.ALIGNED_LANDMARKS_112`.
        view: the model's view.
        size: the model's input size.
    """
    return warp_to_crop(frame, view_matrix(landmarks, landmark_names, view, size), size)
