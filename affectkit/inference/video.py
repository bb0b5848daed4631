"""Inputs of `affectkit predict`: videos and images, decoded as a stream of RGB frames.

`find_inputs` expands the paths given on the command line into `Input`s: a video file is
one input; an image file is an "images" input of one file; a folder gives each of its
videos as an input and all its images together as one "images" input named after it.

`VideoReader` and `ImageSequence` share one interface: iterating yields
`(index, timestamp_s, frame)` with `frame` an upright RGB uint8 `(H, W, 3)` array
(`timestamp_s` is None for images). A reader holds one frame at a time.

Bad input raises `FileNotFoundError` or `ValueError` naming the file and what was expected;
a video that stops decoding part way (truncated, damaged) ends early and says so in the
reader's `warnings` list instead.
"""

import math
import os
import re
import struct
from dataclasses import dataclass

import cv2
import numpy as np

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 30.0  # used when a container gives no usable frame rate


def _has_ext(path, extensions):
    return os.path.splitext(path)[1].lower() in extensions


def _natural_key(path):
    """Sort key putting `frame2.png` before `frame10.png`."""
    parts = re.split(r"(\d+)", os.path.basename(path))
    return [int(s) if s.isdigit() else s.lower() for s in parts]


@dataclass(frozen=True)
class Input:
    """One unit of work: a video, or a list of images treated as one sequence.

    `name` is the stem of its output files; `files` the images, in order (empty for a video).
    """

    path: str
    kind: str  # "video" or "images"
    name: str
    files: tuple = ()

    def open(self):
        """A `VideoReader` or `ImageSequence` over this input."""
        return VideoReader(self.path) if self.kind == "video" else ImageSequence(self.files)


def find_inputs(paths):
    """Expand video files, image files and folders (non-recursive) into `Input`s.

    A file with an unknown extension is taken as a video (the reader says if it is not).
    Inputs given twice are kept once; repeated names get a `-2`, `-3`... suffix.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            entries = sorted(
                (os.path.join(path, e) for e in os.listdir(path) if not e.startswith(".")),
                key=_natural_key,
            )
            entries = [e for e in entries if os.path.isfile(e)]
            videos = [e for e in entries if _has_ext(e, VIDEO_EXTENSIONS)]
            images = [e for e in entries if _has_ext(e, IMAGE_EXTENSIONS)]
            if not videos and not images:
                raise ValueError(
                    f"{path}: folder has no videos or images, expected files ending in "
                    f"{', '.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)}."
                )
            found += [Input(v, "video", _stem(v)) for v in videos]
            if images:
                name = os.path.basename(os.path.abspath(path))
                found.append(Input(path, "images", name, tuple(images)))
        elif os.path.isfile(path):
            if _has_ext(path, IMAGE_EXTENSIONS):
                found.append(Input(path, "images", _stem(path), (path,)))
            else:
                found.append(Input(path, "video", _stem(path)))
        else:
            raise FileNotFoundError(
                f"{path}: no such file or folder, expected a video, an image or a folder of them."
            )
    inputs, seen, names = [], set(), set()
    for inp in found:
        key = (inp.kind, os.path.realpath(inp.path), tuple(map(os.path.realpath, inp.files)))
        if key in seen:
            continue
        seen.add(key)
        name, k = inp.name, 1
        while name in names:
            k += 1
            name = f"{inp.name}-{k}"
        names.add(name)
        inputs.append(Input(inp.path, inp.kind, name, inp.files))
    return inputs


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _check_file(path, what):
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, expected {what}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file, expected {what}.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file (0 bytes), expected {what}.")


def _next_timestamp(pos_ms, index, fps, prev):
    """Seconds of frame `index`: the container's clock when it moves forward, else `index / fps`
    (or one frame after `prev`, so timestamps always increase)."""
    t = pos_ms / 1000.0
    if math.isfinite(t) and t >= 0 and (prev is None or t > prev):
        return t
    if prev is None or index / fps > prev:
        return index / fps
    return prev + 1.0 / fps


# OpenCV's `CAP_PROP_ORIENTATION_META` (degrees clockwise) -> rotation that makes frames upright.
_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class VideoReader:
    """Streaming decode of a video file (OpenCV/FFmpeg) into upright RGB frames.

    `fps` (float; `DEFAULT_FPS` when the container has none, noted in `warnings`),
    `frame_count` (the container's estimate, None when unknown), `width` and `height`
    (of the upright frames). Each iteration starts again from the first frame.
    Timestamps follow the container's presentation times (so variable frame rate videos
    get their real times), falling back to `index / fps` where those do not increase.
    """

    _auto_orient = True  # let OpenCV apply the rotation metadata (False: rotate here)

    def __init__(self, path):
        self.path = os.fspath(path)
        self.warnings = []
        self._cap, self._first = self._open()
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            self._warn(
                f"{self.path}: no usable frame rate in the container ({fps}), "
                f"assuming {DEFAULT_FPS:g} fps."
            )
            fps = DEFAULT_FPS
        self.fps = float(fps)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count >= 1 else None
        self.height, self.width = self._first[1].shape[:2]

    def _warn(self, message):
        if message not in self.warnings:
            self.warnings.append(message)

    def _open(self):
        """An opened capture and its first `(timestamp_ms, frame)`; raises for unusable files."""
        what = "a video file (" + ", ".join(VIDEO_EXTENSIONS) + ")"
        _check_file(self.path, what)
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # no "can't open" chatter
        try:
            api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
            cap = cv2.VideoCapture(self.path, api)
        except cv2.error:
            cap = None
        finally:
            cv2.utils.logging.setLogLevel(level)
        if cap is None or not cap.isOpened():
            raise ValueError(f"{self.path}: could not be opened as a video, expected {what}.")
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1 if self._auto_orient else 0)
        self._rotation = None
        if not cap.get(cv2.CAP_PROP_ORIENTATION_AUTO):  # backend ignores it: rotate ourselves
            degrees = int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META))) % 360
            self._rotation = _ROTATIONS.get(degrees)
        first = self._read(cap)
        if first is None:
            cap.release()
            raise ValueError(
                f"{self.path}: opened as a video but its first frame could not be decoded, "
                "expected a playable video."
            )
        return cap, first

    def _read(self, cap):
        """The next `(timestamp_ms, RGB frame)`, or None at the end or on a decoding error."""
        try:
            ok, frame = cap.read()
        except cv2.error:
            return None
        if not ok or frame is None or frame.size == 0:
            return None
        if self._rotation is not None:
            frame = cv2.rotate(frame, self._rotation)
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if frame.ndim == 2 else cv2.COLOR_BGR2RGB)
        return cap.get(cv2.CAP_PROP_POS_MSEC), frame

    def __iter__(self):
        if self._first is None:  # iterated before (or closed): start again
            self.close()
            self._cap, self._first = self._open()
        cap, item, self._first = self._cap, self._first, None
        index, t = 0, None
        while item is not None:
            t = _next_timestamp(item[0], index, self.fps, t)
            yield index, t, item[1]
            index += 1
            item = self._read(cap)
        if cap is not self._cap:  # closed, or restarted by another iteration, meanwhile
            return
        # The container's frame count is an estimate: only warn when the decoded frames also
        # end clearly before the container's duration (not for an estimate one frame off).
        if self.frame_count and index < self.frame_count:
            if t + 1.5 / self.fps < 0.99 * self.frame_count / self.fps:
                self._warn(
                    f"{self.path}: stopped after {index} of {self.frame_count} frames; the rest "
                    "could not be decoded (the file may be truncated or damaged)."
                )
        self.close()

    def close(self):
        """Release the decoder (iterating again reopens the file)."""
        if self._cap is not None:
            self._cap.release()
        self._cap, self._first = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (
            f"VideoReader({self.path!r}, fps={self.fps:g}, frame_count={self.frame_count}, "
            f"size={self.width}x{self.height})"
        )


def _exif_orientation(metadata_types, metadata):
    """The EXIF orientation tag (1-8) among `cv2.imdecodeWithMetadata`'s metadata; 1 if none."""
    for kind, data in zip(metadata_types, metadata):
        if int(kind) != cv2.IMAGE_METADATA_EXIF:
            continue
        b = np.asarray(data, np.uint8).tobytes()
        b = b[6:] if b.startswith(b"Exif\0\0") else b
        order = {b"II": "<", b"MM": ">"}.get(b[:2])
        try:
            ifd = struct.unpack(order + "I", b[4:8])[0]
            for k in range(struct.unpack(order + "H", b[ifd : ifd + 2])[0]):
                entry = b[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
                tag, _, _, value = struct.unpack(order + "HHI4s", entry)
                if tag == 0x0112:
                    return struct.unpack(order + "H", value[:2])[0]
        except (TypeError, struct.error):  # no byte order mark / cut short: ignore the EXIF
            pass
    return 1


def _orient(img, orientation):
    """Apply EXIF `orientation` (1-8) so the image comes out upright."""
    if orientation in (5, 6, 7, 8):
        img = np.swapaxes(img, 0, 1)  # transpose; then 6 = flip left-right, 8 = flip up-down
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        img = img[:, ::-1]
    if orientation in (3, 4):
        img = img[::-1]
    return img


def read_image(path):
    """An image file as RGB uint8 `(H, W, 3)`, upright.

    Grayscale is repeated to 3 channels, 16-bit scaled to 8-bit, float taken as [0, 1], an alpha
    channel composited over white (transparent parts of a face crop would otherwise keep
    whatever colour they store), and the EXIF orientation applied. Raises ValueError naming
    the file when it cannot be decoded as an image.
    """
    path = os.fspath(path)
    what = "an image file (" + ", ".join(IMAGE_EXTENSIONS) + ")"
    _check_file(path, what)
    buf = np.fromfile(path, np.uint8)
    try:
        if hasattr(cv2, "imdecodeWithMetadata"):  # OpenCV >= 4.12
            img, types, meta = cv2.imdecodeWithMetadata(buf, cv2.IMREAD_UNCHANGED)
            orientation = _exif_orientation(types, meta) if img is not None else 1
        else:  # older OpenCV orients the image itself, but drops any alpha channel
            img, orientation = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH), 1
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise ValueError(f"{path}: could not be decoded as an image, expected {what}.")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype.kind == "f":
        img = (np.clip(np.nan_to_num(img), 0, 1) * 255 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(
            f"{path}: unsupported pixel type {img.dtype}, expected 8- or 16-bit or float pixels."
        )
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if channels in (2, 4):  # gray + alpha, BGR + alpha: composite over white
        alpha = img[..., -1:].astype(np.float32) / 255.0
        img = (img[..., :-1] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 3:
        img = img[..., ::-1]  # BGR -> RGB
    else:
        raise ValueError(f"{path}: {channels} channels, expected a grayscale, RGB or RGBA image.")
    return np.ascontiguousarray(_orient(img, orientation))


class ImageSequence:
    """Image files as one sequence with `VideoReader`'s interface; yields `(index, None, frame)`.

    `index` is the file's position in `files`. An unreadable file raises ValueError naming it,
    or with `skip_unreadable=True` is left out (its index skipped) and noted in `warnings`.
    """

    fps = None

    def __init__(self, files, skip_unreadable=False):
        self.files = tuple(map(os.fspath, files))
        self.frame_count = len(self.files)
        self.skip_unreadable = skip_unreadable
        self.warnings = []

    def __iter__(self):
        for index, path in enumerate(self.files):
            try:
                frame = read_image(path)
            except (ValueError, FileNotFoundError) as exc:
                if not self.skip_unreadable:
                    raise
                if f"{exc} Skipped." not in self.warnings:
                    self.warnings.append(f"{exc} Skipped.")
                continue
            yield index, None, frame

    def close(self):
        """Nothing to release (for symmetry with `VideoReader`)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"ImageSequence({self.frame_count} files)"
