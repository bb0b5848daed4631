"""Synthetic data in the Aff-Wild2 layout, for the demo, the tests and the benchmarks.

Aff-Wild2 is licence-restricted, so affectkit draws its own: cartoon faces whose action
units are visible facial changes, expressions that follow FACS prototypes in segments
over time, valence and arousal that follow the expression and drift smoothly, and an
audio track whose loudness follows arousal. Nuisances vary as they do in the wild:
identity, head pose, lighting, background, blur, occlusion, missing labels and frames
without a detected face.

`write_demo_dataset` writes the whole layout (REFERENCE section 2) with the official file
formats of `affectkit.data.affwild2`:

    <out>/cropped_aligned/<video>/<n:05d>.jpg     aligned faces (image_size, default 112)
    <out>/cropped/<video>/<n:05d>.jpg             face with context (context_size, default 160)
    <out>/<task folder>/<split folder>/<video>.txt
    <out>/<MTL file of the edition>              both splits
    <out>/videos/<source>.mp4                    frames + audio; `<source>_left` and
                                                 `<source>_right` share `<source>.mp4`

Geometry, as in the real data: each `cropped_aligned` frame is the face aligned by the
similarity that puts its own five landmarks on the ArcFace template
(`affectkit.data.affwild2.ALIGNED_LANDMARKS_112`, as `affectkit.inference` aligns new
videos), up to a small residual pose (the aligner's error); the cartoon, drawn in its own
face frame (`draw_face`), reaches the aligned view through that similarity (for the mean
identity `FACE_TO_ALIGNED`), and hair, chin and neck overflow the square. The `cropped` frame is the face's column of the source video, about
`CONTEXT_SCALE` aligned sides wide, with the head inside it. `demo_landmarks` gives the
true five landmarks of every frame, without drawing.

Equal arguments give byte-identical annotation files and JPEGs: every video draws from
its own `numpy.random.Generator`, seeded from `(seed, split, video)`.

Example:
>>> from affectkit.data.synthetic import demo_landmarks, write_demo_dataset
>>> summary = write_demo_dataset("/tmp/demo", edition="abaw3", videos=8, frames=240)
>>> summary["videos_per_split"]
{'train': 6, 'val': 2}
>>> demo_landmarks(edition="abaw3", videos=8, frames=240)["demo_train_004"].shape  # the pair
(240, 2, 5, 2)
"""

import dataclasses
import functools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import cv2
import numpy as np

from affectkit.data.affwild2 import (
    CONTEXT_SCALE,
    TASKS,
    aligned_landmarks,
    annotation_dir,
    frame_file_name,
    mtl_file_name,
    write_annotation_file,
    write_mtl_file,
)
from affectkit.inference.alignment import similarity_transform
from affectkit.labels import get_schema

# Every AU the face renderer can show: the 12 of ABAW2+ plus AU20 of ABAW1.
DRAWN_AUS = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU20",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)
_AU_INDEX = {name: i for i, name in enumerate(DRAWN_AUS)}

# An AU is labelled present (1) when its drawn intensity reaches this value.
AU_ON_THRESHOLD = 0.3

# Where each AU changes the face: (x0, y0, x1, y1) as fractions of the image of
# `draw_face`, for a frontal face (`HeadPose()`) of the default identity (the demo's
# aligned view shows them through `FACE_TO_ALIGNED`).
AU_REGIONS = {
    "AU1": (0.33, 0.18, 0.67, 0.42),
    "AU2": (0.10, 0.18, 0.90, 0.42),
    "AU4": (0.25, 0.26, 0.75, 0.46),
    "AU6": (0.12, 0.36, 0.88, 0.66),
    "AU7": (0.20, 0.36, 0.80, 0.54),
    "AU10": (0.28, 0.50, 0.72, 0.82),
    "AU12": (0.22, 0.50, 0.78, 0.88),
    "AU15": (0.25, 0.60, 0.75, 0.90),
    "AU20": (0.22, 0.60, 0.78, 0.90),
    "AU23": (0.28, 0.60, 0.72, 0.90),
    "AU24": (0.28, 0.60, 0.72, 0.92),
    "AU25": (0.32, 0.62, 0.68, 0.90),
    "AU26": (0.15, 0.62, 0.85, 1.00),
}

# FACS prototypes (Ekman & Friesen): `core` AUs are shown (each dropped now and then),
# `one_of` adds one AU of the tuple, `optional` adds an AU with the given probability.
EXPRESSION_PROTOTYPES = {
    "Neutral": {"core": (), "one_of": (), "optional": {}},
    "Anger": {"core": ("AU4", "AU7"), "one_of": ("AU23", "AU24"), "optional": {"AU10": 0.15}},
    "Disgust": {"core": ("AU10",), "one_of": (), "optional": {"AU4": 0.5, "AU15": 0.3, "AU25": 0.2}},
    "Fear": {
        "core": ("AU1", "AU2", "AU4", "AU20", "AU25"),
        "one_of": (),
        "optional": {"AU26": 0.3, "AU7": 0.2},
    },
    "Happiness": {"core": ("AU6", "AU12"), "one_of": (), "optional": {"AU25": 0.4, "AU7": 0.2}},
    "Sadness": {"core": ("AU1", "AU4", "AU15"), "one_of": (), "optional": {"AU24": 0.15}},
    "Surprise": {"core": ("AU1", "AU2", "AU25", "AU26"), "one_of": (), "optional": {}},
    # "Other" (ABAW3+): a non-prototypical mix of two or three AUs, drawn per segment.
    "Other": {"core": (), "one_of": (), "optional": {}},
}

# Mean (valence, arousal) of each expression (circumplex model, Russell 1980).
EXPRESSION_VA = {
    "Neutral": (0.0, -0.1),
    "Anger": (-0.6, 0.65),
    "Disgust": (-0.55, 0.3),
    "Fear": (-0.55, 0.6),
    "Happiness": (0.65, 0.35),
    "Sadness": (-0.55, -0.45),
    "Surprise": (0.25, 0.65),
    "Other": (0.05, 0.15),
}

# How often each expression starts a segment (scaled per video).
_EXPRESSION_PRIOR = {
    "Neutral": 0.24,
    "Anger": 0.10,
    "Disgust": 0.07,
    "Fear": 0.07,
    "Happiness": 0.18,
    "Sadness": 0.11,
    "Surprise": 0.10,
    "Other": 0.13,
}

JPEG_QUALITY = 90
AUDIO_SAMPLE_RATE = 16000

# Rates of the missing parts (fractions of frames, in short runs).
MISSING_IMAGE_RATE = 0.03
MISSING_LABEL_RATE = 0.025

# The demo data of `affectkit demo-data` and `make demo`: 96 videos of 6 s (60 frames at
# 10 fps), so that each face shows several expressions and a model trained from scratch
# must read expressions rather than recognise identities.
DEMO_DEFAULTS = {"videos": 96, "frames": 60, "fps": 10.0}

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
_SPLIT_CODES = {"train": 1, "val": 2}


# --------------------------------------------------------------------------------------
# Identity and pose
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FaceIdentity:
    """What makes one synthetic person look like themselves.

    Lengths are fractions of the face frame (the image of `draw_face`); colours are BGR.

    Args:
        skin, hair, iris, lips, shirt: colours.
        hair_style: 0 short, 1 long (falls beside the face), 2 bald.
        face_width, face_height: half-axes of the head.
        jaw: chin width relative to the cheeks (1 = round face).
        eye_spacing: distance of each eye centre from the midline.
        eye_size, eye_open: half-width and half-opening of an eye.
        brow_height: how far the brows sit above the eye centres.
        brow_thickness: brow thickness at the inner end.
        nose_length, nose_width: nose base below the eyes, nostril span.
        mouth_width: half-width of the mouth at rest.
        lip_thickness: lip thickness factor (1 = average).
        glasses: draws thin glasses frames.

    Example:
    >>> face = draw_face({"AU12": 1.0}, FaceIdentity(glasses=True))
    """

    skin: tuple = (150, 180, 225)
    hair: tuple = (35, 45, 60)
    iris: tuple = (60, 85, 110)
    lips: tuple = (105, 105, 185)
    shirt: tuple = (140, 90, 50)
    hair_style: int = 0
    face_width: float = 0.31
    face_height: float = 0.41
    jaw: float = 0.85
    eye_spacing: float = 0.125
    eye_size: float = 0.058
    eye_open: float = 0.027
    brow_height: float = 0.075
    brow_thickness: float = 0.02
    nose_length: float = 0.145
    nose_width: float = 0.055
    mouth_width: float = 0.1
    lip_thickness: float = 1.0
    glasses: bool = False


@dataclasses.dataclass(frozen=True)
class HeadPose:
    """In-plane head pose of a drawn face, and where the eyes look.

    Args:
        angle: in-plane rotation in degrees (counter-clockwise on screen).
        scale: face size relative to the image's default.
        dx, dy: shift of the face centre, as fractions of the image size.
        gaze: horizontal gaze in [-1, 1] (iris position in the eye).
    """

    angle: float = 0.0
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    gaze: float = 0.0


_SKIN_TONES = np.array(  # BGR, light to dark
    [
        (196, 224, 255),
        (167, 194, 241),
        (130, 170, 224),
        (105, 172, 224),
        (66, 134, 198),
        (36, 85, 141),
        (40, 58, 92),
    ],
    np.float64,
)
_HAIR_COLOURS = np.array(
    [(20, 20, 25), (30, 40, 60), (40, 70, 110), (110, 170, 210), (30, 60, 150), (150, 150, 155)],
    np.float64,
)
_IRIS_COLOURS = np.array([(40, 60, 90), (60, 85, 110), (150, 110, 60), (90, 130, 80)], np.float64)


# Ranges of `random_identity` for the proportions that place the five landmarks.
_LANDMARK_RANGES = {"eye_spacing": (0.108, 0.14), "nose_length": (0.13, 0.16), "mouth_width": (0.088, 0.112)}


def _colour(c):
    return tuple(min(255.0, max(0.0, float(x))) for x in c)


def random_identity(rng):
    """Draws a `FaceIdentity`: skin tone, face shape, eye spacing, hair, lips, glasses.

    Args:
        rng: `numpy.random.Generator`.
    """
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    skin = _SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[i + 1] * (t - i) + rng.normal(0, 6, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 8, 3)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0, 8, 3)
    lips = skin * np.array([0.72, 0.62, 0.95]) + np.array([0, 0, 25]) + rng.normal(0, 6, 3)
    shirt = rng.uniform(20, 235, 3)
    return FaceIdentity(
        skin=_colour(skin),
        hair=_colour(hair),
        iris=_colour(iris),
        lips=_colour(lips),
        shirt=_colour(shirt),
        hair_style=int(rng.choice(3, p=(0.5, 0.35, 0.15))),
        face_width=float(rng.uniform(0.28, 0.34)),
        face_height=float(rng.uniform(0.38, 0.43)),
        jaw=float(rng.uniform(0.72, 0.95)),
        eye_spacing=float(rng.uniform(*_LANDMARK_RANGES["eye_spacing"])),
        eye_size=float(rng.uniform(0.05, 0.064)),
        eye_open=float(rng.uniform(0.022, 0.031)),
        brow_height=float(rng.uniform(0.068, 0.085)),
        brow_thickness=float(rng.uniform(0.014, 0.026)),
        nose_length=float(rng.uniform(*_LANDMARK_RANGES["nose_length"])),
        nose_width=float(rng.uniform(0.045, 0.065)),
        mouth_width=float(rng.uniform(*_LANDMARK_RANGES["mouth_width"])),
        lip_thickness=float(rng.uniform(0.8, 1.25)),
        glasses=bool(rng.random() < 0.15),
    )


# --------------------------------------------------------------------------------------
# Face geometry: the cartoon's own frame and the aligned view
# --------------------------------------------------------------------------------------

# The five landmarks, named by image side (`left_eye` has the smaller x), as
# `affectkit.data.affwild2.aligned_landmarks` names them.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

_EYE_Y = 0.44  # height of the eye centres in the face frame
_NOSE_TO_MOUTH = 0.145  # mouth line below the nose base
_NOSE_TIP = 0.025  # the nose tip (the template's point) above the nose base (the nostrils)


def _face_landmarks(eye_spacing, nose_length, mouth_width):
    """`(5, 2)` landmarks of a neutral frontal face, in face-frame fractions."""
    ny = _EYE_Y + nose_length
    my = ny + _NOSE_TO_MOUTH
    return np.array([(0.5 - eye_spacing, _EYE_Y), (0.5 + eye_spacing, _EYE_Y), (0.5, ny - _NOSE_TIP),
                     (0.5 - mouth_width, my), (0.5 + mouth_width, my)])


# Face frame (fractions of the image of `draw_face`) -> aligned view (fractions of
# `cropped_aligned`): the similarity that puts the mean identity's five landmarks on the
# ArcFace template (`aligned_landmarks(1.0)`); it zooms in by about 1.26.
FACE_TO_ALIGNED = similarity_transform(
    _face_landmarks(*(0.5 * sum(_LANDMARK_RANGES[k]) for k in ("eye_spacing", "nose_length", "mouth_width"))),
    aligned_landmarks(1.0, LANDMARK_NAMES),
)
FACE_TO_ALIGNED.setflags(write=False)

# The demo draws each face on a canvas this much (x image_size) wider than the aligned
# view on every side, so that hair, chin, neck and occluders can overflow the view.
_CANVAS_MARGIN = 0.3

# The shirt under the neck: an ellipse (cx, cy, half-width, half-height) in the face frame.
_TORSO = (0.5, 1.34, 0.72, 0.42)


def _head_ellipse(identity):
    """`(cx, cy, half-width, half-height)` around the head of `_paint_face` (hair, ears, open jaw)."""
    I = identity
    top = 0.52 - (I.face_height if I.hair_style == 2 else 1.07 * I.face_height)
    bottom = 0.52 + I.face_height + 0.065
    width = 1.22 * I.face_width if I.hair_style == 1 else 1.05 * I.face_width + 0.032
    return 0.5, 0.5 * (top + bottom), width + 0.01, 0.5 * (bottom - top) + 0.01


def _face_to_pixels(pose, size, face_to_aligned=None, offset=0.0):
    """`(A, b)`: face-frame fractions -> pixels `A @ p + b` of a `size` view.

    The point goes through `face_to_aligned` (2x3, fractions; default identity), then
    the pose (rotation and scale about the view centre, shift), then `offset` pixels.
    """
    a = math.radians(pose.angle)
    s = pose.scale * size
    # cv2 convention (as cv2.getRotationMatrix2D): positive angle turns counter-clockwise.
    R = np.array([[math.cos(a) * s, math.sin(a) * s], [-math.sin(a) * s, math.cos(a) * s]])
    F = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) if face_to_aligned is None else face_to_aligned
    b = R @ (F[:, 2] - 0.5) + np.array([size * (0.5 + pose.dx), size * (0.5 + pose.dy)]) + offset
    return R @ F[:, :2], b


# --------------------------------------------------------------------------------------
# Face renderer
# --------------------------------------------------------------------------------------


class _Painter:
    """Records polygons and lines in face-frame coordinates (fractions of the face image).

    `flush` maps every recorded point to pixels in one matrix product (`_face_to_pixels`),
    adds the optional sub-pixel jitter in one draw, and paints in recording order.
    """

    def __init__(self, img, mask, size, pose, jitter=None, face_to_aligned=None, offset=0.0):
        self.img = img
        self.mask = mask
        self.A, self.b = _face_to_pixels(pose, size, face_to_aligned, offset)
        zoom = 1.0 if face_to_aligned is None else math.sqrt(abs(np.linalg.det(face_to_aligned[:, :2])))
        self.px = pose.scale * size * zoom  # pixels per face-frame unit, for line widths
        self.jitter = jitter
        self.gaze = float(np.clip(pose.gaze, -1, 1))
        self.ops = []

    def fill(self, p, colour, silhouette=False):
        self.ops.append((p, colour, 0, silhouette))

    def line(self, p, colour, width, closed=False, silhouette=False):
        self.ops.append((p, colour, max(1, int(round(width * self.px))), silhouette, closed))

    def bounds(self):
        """`(low, high)` pixel corners around every recorded point, widened for line widths."""
        q = np.concatenate([np.asarray(op[0], np.float64) for op in self.ops]) @ self.A.T + self.b
        pad = 2 + 0.5 * max(op[2] for op in self.ops)
        return q.min(0) - pad, q.max(0) + pad

    def flush(self, origin=(0, 0)):
        """Paints the recorded shapes; `origin` is the pixel of the mapping that is (0, 0) of `img`."""
        if not self.ops:
            return
        arrays = [np.asarray(op[0], np.float64) for op in self.ops]
        q = np.concatenate(arrays) @ self.A.T + (self.b - origin)
        if self.jitter is not None:
            q += self.jitter.normal(0, 0.15, q.shape)
        q = np.round(q * _ONE).astype(np.int32)
        i = 0
        for op, arr in zip(self.ops, arrays):
            pts = q[i : i + len(arr)]
            i += len(arr)
            colour, width, silhouette = op[1], op[2], op[3]
            if width == 0:
                cv2.fillPoly(self.img, [pts], colour, _AA, _SHIFT)
                if silhouette and self.mask is not None:
                    cv2.fillPoly(self.mask, [pts], 255, _AA, _SHIFT)
            else:
                cv2.polylines(self.img, [pts], op[4], colour, width, _AA, _SHIFT)
                if silhouette and self.mask is not None:
                    cv2.polylines(self.mask, [pts], op[4], 255, width, _AA, _SHIFT)
        self.ops = []


@functools.lru_cache(maxsize=None)
def _lin(a, b, n):
    """Cached read-only `np.linspace(a, b, n)`."""
    x = np.linspace(a, b, n)
    x.setflags(write=False)
    return x


@functools.lru_cache(maxsize=None)
def _trig(t0, t1, n):
    t = np.linspace(t0, t1, n)
    c, s = np.cos(t), np.sin(t)
    c.setflags(write=False)
    s.setflags(write=False)
    return c, s


def _ellipse(cx, cy, ax, ay, t0=0.0, t1=2 * math.pi, n=28, angle=0.0):
    c, s = _trig(t0, t1, n)
    x, y = ax * c, ay * s
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        x, y = ca * x - sa * y, sa * x + ca * y
    return np.stack([cx + x, cy + y], 1)


def _quad(p0, p1, p2, n=9):
    """Quadratic curve from p0 to p2 passing through p1 at its middle."""
    p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
    c = 2 * p1 - 0.5 * (p0 + p2)
    t = _lin(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p2


def _shade(colour, k, tint=None):
    """`colour` darkened by k (negative lightens), optionally mixed towards `tint` by k."""
    if tint is None:
        return tuple(min(255.0, max(0.0, x * (1 - k))) for x in colour)
    return tuple(min(255.0, max(0.0, x * (1 - k) + k * y)) for x, y in zip(colour, tint))


def _band(x, y_top, y_bottom):
    """Polygon between two curves sampled at the same x (top left to right, bottom back)."""
    return np.concatenate([np.stack([x, y_top], 1), np.stack([x[::-1], y_bottom[::-1]], 1)])


def _paint_face(painter, g, identity):
    """Draws the face with AU intensities `g` (dict over `DRAWN_AUS`, 0..1)."""
    I = identity
    skin = I.skin
    fw, fh = I.face_width, I.face_height
    cx, cy = 0.5, 0.52
    g1, g2, g4, g6, g7 = g["AU1"], g["AU2"], g["AU4"], g["AU6"], g["AU7"]
    g10, g12, g15, g20 = g["AU10"], g["AU12"], g["AU15"], g["AU20"]
    g23, g24, g25, g26 = g["AU23"], g["AU24"], g["AU25"], g["AU26"]
    chin_drop = 0.065 * g26

    # Neck, long hair, ears, head: the silhouette that the context view composites.
    neck_w = 0.38 * fw
    painter.fill(
        [(cx - neck_w, 0.78), (cx + neck_w, 0.78), (cx + neck_w * 1.15, 1.06), (cx - neck_w * 1.15, 1.06)],
        _shade(skin, 0.14),
        silhouette=True,
    )
    if I.hair_style == 1:
        painter.fill(_ellipse(cx, cy + 0.03, fw * 1.22, fh * 1.03), I.hair, silhouette=True)
    for sgn in (-1, 1):
        painter.fill(_ellipse(cx + sgn * fw * 0.97, 0.5, 0.032, 0.058, n=16), _shade(skin, 0.06), True)
    c_, s_ = _trig(math.pi, 2 * math.pi, 20)
    upper = np.stack([cx + fw * c_, cy + fh * s_], 1)
    c_, s_ = _trig(0.0, math.pi, 22)
    c_, s_ = c_[1:-1], s_[1:-1]
    narrow = 1 - (1 - I.jaw) * s_**2
    lower = np.stack([cx + fw * c_ * narrow, cy + (fh + chin_drop) * s_], 1)
    painter.fill(np.concatenate([upper, lower]), skin, silhouette=True)

    # Hair cap above a hairline that clears the forehead wrinkles.
    top = cy - fh
    if I.hair_style != 2:
        arc = _ellipse(cx, cy, 1.05 * fw, 1.07 * fh, t0=math.pi + 0.6, t1=2 * math.pi - 0.6, n=16)
        xs = np.linspace(arc[-1, 0], arc[0, 0], 12)
        span = abs(arc[0, 0] - cx)
        hairline = top + 0.085 + (arc[0, 1] - top - 0.085) * ((xs - cx) / span) ** 2
        painter.fill(np.concatenate([arc, np.stack([xs, hairline], 1)]), I.hair, silhouette=True)

    ey = _EYE_Y
    es = I.eye_spacing
    ew = I.eye_size
    by = ey - I.brow_height

    # Cheek raiser (AU6): cheeks bunch up under the eyes (drawn below the eye features).
    if g6 > 0.01:
        for sgn in (-1, 1):
            painter.fill(
                _ellipse(cx + sgn * (es + 0.012), 0.575 - 0.035 * g6, 0.07, 0.042, n=20),
                _shade(skin, 0.35 * g6, tint=(120, 120, 230)),
            )

    # Forehead wrinkles: central for AU1, lateral for AU2.
    for k, y in enumerate((by - 0.085, by - 0.052)):
        if g1 > 0.01:
            x = cx + _lin(-0.09, 0.09, 7)
            painter.line(np.stack([x, y - 0.008 * (1 - ((x - cx) / 0.09) ** 2)], 1), _shade(skin, 0.45 * g1), 0.009)
        if g2 > 0.01:
            for sgn in (-1, 1):
                x = cx + sgn * _lin(0.1, 0.22, 6)
                painter.line(np.stack([x, y + 0.012 * ((x - cx) / 0.22) ** 2], 1), _shade(skin, 0.45 * g2), 0.009)

    # Brow lowerer (AU4): vertical furrows between the brows.
    if g4 > 0.01:
        for sgn in (-1, 1):
            painter.line([(cx + sgn * 0.014, by + 0.005), (cx + sgn * 0.02, by + 0.06)], _shade(skin, 0.5 * g4), 0.01)

    # Brows: inner end raised by AU1, outer end by AU2, all lowered and drawn together by AU4.
    brow_colour = _shade(I.hair, 0.2)
    for sgn in (-1, 1):
        inner = (cx + sgn * (0.042 - 0.02 * g4), by + 0.035 * g4 - 0.055 * g1)
        middle = (cx + sgn * (es + 0.005), by - 0.012 + 0.025 * g4 - 0.022 * g1 - 0.028 * g2)
        outer = (cx + sgn * (es + ew + 0.035), by + 0.006 + 0.018 * g4 - 0.055 * g2)
        centre = _quad(inner, middle, outer, n=9)
        th = I.brow_thickness * _lin(1.0, 0.5, 9)
        painter.fill(_band(centre[:, 0], centre[:, 1] - th / 2, centre[:, 1] + th / 2), brow_colour)

    # Eyes: lids tightened by AU7, lower lid pushed up by AU6.
    xs = _lin(-1.0, 1.0, 13)
    p = 1 - xs**2
    for sgn in (-1, 1):
        ex = cx + sgn * es
        h_up = I.eye_open * (1 - 0.25 * g7 - 0.12 * g6)
        h_lo = I.eye_open * 0.75 * (1 - 0.65 * g7 - 0.45 * g6)
        x = ex + ew * xs
        y_up = ey - h_up * p
        y_lo = ey + h_lo * p
        painter.fill(_band(x, y_up, y_lo), (232, 236, 240))
        r = ew * 0.42
        ix = ex + painter.gaze * ew * 0.35
        for radius, colour in ((r, I.iris), (r * 0.45, (25, 25, 30))):
            circle = _ellipse(ix, ey, radius, radius, n=16)
            u = np.clip((circle[:, 0] - ex) / ew, -1, 1)
            circle[:, 1] = np.clip(circle[:, 1], ey - h_up * (1 - u**2), ey + h_lo * (1 - u**2))
            painter.fill(circle, colour)
        painter.line(np.stack([x, y_up], 1), (35, 35, 45), 0.016)
        painter.line(np.stack([x, y_lo], 1), _shade(skin, 0.3 + 0.4 * g7), 0.009)
        if g7 > 0.01:  # the tensed lower lid bulges
            xb = ex + ew * _lin(-0.8, 0.8, 7)
            painter.line(np.stack([xb, ey + h_lo + 0.014 + 0.006 * (1 - ((xb - ex) / ew) ** 2)], 1),
                         _shade(skin, 0.5 * g7), 0.01)
        if g6 > 0.01:  # crow's feet and the infraorbital furrow
            corner = np.array([ex + sgn * ew * 1.08, ey])
            for a in (-0.45, 0.0, 0.45):
                d = np.array([sgn * math.cos(a), math.sin(a)]) * 0.04
                painter.line([corner, corner + d], _shade(skin, 0.5 * g6), 0.009)
            xf = ex + ew * _lin(-0.9, 0.9, 7)
            painter.line(np.stack([xf, ey + 0.05 - 0.012 * g6 + 0.01 * ((xf - ex) / ew) ** 2], 1),
                         _shade(skin, 0.45 * g6), 0.01)
        if I.glasses:
            painter.line(_ellipse(ex, ey + 0.004, ew * 1.4, 0.048, n=24), (30, 30, 30), 0.012, closed=True)
    if I.glasses:
        painter.line([(cx - es + ew * 1.4, ey), (cx + es - ew * 1.4, ey)], (30, 30, 30), 0.012)

    # Nose; the upper lip raiser (AU10) lifts and widens the wings.
    ny = ey + I.nose_length
    nw = I.nose_width * (1 + 0.15 * g10)
    painter.line([(cx + 0.022, ey + 0.01), (cx + 0.028, ny - 0.03)], _shade(skin, 0.15), 0.01)
    for sgn in (-1, 1):
        painter.fill(_ellipse(cx + sgn * nw * 0.42, ny - 0.012 * g10, 0.014, 0.0075 * (1 + 0.4 * g10), n=12),
                     _shade(skin, 0.6))
        # Alar wing: an arc opening towards the midline.
        t0, t1 = (-0.5 * math.pi, 0.6 * math.pi) if sgn > 0 else (0.4 * math.pi, 1.5 * math.pi)
        painter.line(_ellipse(cx + sgn * nw * 0.78, ny - 0.012 - 0.012 * g10, 0.02, 0.022, t0=t0, t1=t1, n=9),
                     _shade(skin, 0.35), 0.009)

    # Mouth: corners pulled up (AU12), down (AU15), sideways (AU20), narrowed and thinned
    # (AU23), pressed (AU24); lips parted (AU25); jaw dropped (AU26); upper lip raised (AU10).
    my = ny + _NOSE_TO_MOUTH
    mw = I.mouth_width * (1 + 0.25 * g12 + 0.32 * g20 - 0.24 * g23 - 0.04 * g24)
    corner_dy = -0.042 * g12 + 0.04 * g15 + 0.01 * g20
    xs = _lin(-1.0, 1.0, 17)
    p = 1 - xs**2
    x = cx + mw * xs
    line = my + corner_dy * xs**2 - 0.004 * g20 * p
    thin = max(0.2, 1 - 0.6 * g24 - 0.45 * g23)
    tu = 0.016 * I.lip_thickness * thin
    tl = 0.022 * I.lip_thickness * thin
    raise_ul = 0.022 * g10 * np.sqrt(p)
    opening = (0.034 * g25 + 0.04 * g26) * p**0.7
    upper_bottom = line - raise_ul
    upper_top = upper_bottom - tu * np.sqrt(p) * (1 - 0.3 * np.exp(-((xs / 0.16) ** 2))) - 0.002
    lower_top = line + opening
    lower_bottom = lower_top + tl * np.sqrt(p) + 0.002

    # Nasolabial folds, deepened by AU10 and AU12 (and a little by AU20).
    for sgn in (-1, 1):
        start = (cx + sgn * (nw * 0.95 + 0.008), ny - 0.008 - 0.01 * g10)
        end = (cx + sgn * (mw + 0.028), line[-1] + 0.012)
        mid = (cx + sgn * (0.5 * (nw + mw) + 0.035), 0.5 * (start[1] + end[1]))
        painter.line(_quad(start, mid, end, n=8), _shade(skin, 0.1 + 0.4 * g10 + 0.3 * g12 + 0.1 * g20), 0.01)

    gap = lower_top - upper_bottom
    if gap.max() > 0.002:
        painter.fill(_band(x, upper_bottom, lower_top), (45, 35, 70))
        teeth = np.minimum(upper_bottom + 0.017, lower_top)
        inner = np.abs(xs) < 0.75
        if inner.sum() >= 2:
            painter.fill(_band(x[inner], upper_bottom[inner], teeth[inner]), (222, 228, 232))
    painter.fill(_band(x, upper_top, upper_bottom + 0.002), I.lips)
    painter.fill(_band(x, lower_top - 0.002, lower_bottom), _shade(I.lips, -0.08))
    painter.line(np.stack([x, upper_bottom], 1), _shade(I.lips, 0.45 + 0.3 * g24), 0.009 + 0.01 * g24)

    if g23 > 0.01:  # lip tightener: small vertical wrinkles above the upper lip
        for u in (-0.45, -0.15, 0.15, 0.45):
            xi = cx + u * mw
            yi = np.interp(xi, x, upper_top)
            painter.line([(xi, yi - 0.004), (xi * 1.0, yi - 0.026)], _shade(skin, 0.5 * g23), 0.009)
    if g24 > 0.01:  # lip presser: the chin boss bulges below the lower lip
        xb = cx + _lin(-0.06, 0.06, 9)
        yb = lower_bottom.max() + 0.018 + 0.012 * (1 - ((xb - cx) / 0.06) ** 2)
        painter.line(np.stack([xb, yb], 1), _shade(skin, 0.5 * g24), 0.011)
    for sgn, xc, yc in ((-1, x[0], line[0]), (1, x[-1], line[-1])):
        if g12 > 0.01:  # smile: dimples curving up from the corners
            painter.line(_quad((xc + sgn * 0.006, yc - 0.012), (xc + sgn * 0.02, yc), (xc + sgn * 0.012, yc + 0.016), n=6),
                         _shade(skin, 0.45 * g12), 0.009)
        if g15 > 0.01:  # corners depressed: lines running down from the corners
            painter.line([(xc + sgn * 0.004, yc + 0.006), (xc + sgn * 0.014, yc + 0.05)], _shade(skin, 0.5 * g15), 0.01)
        if g20 > 0.01:  # lips stretched: creases pulled out sideways
            painter.line([(xc + sgn * 0.008, yc + 0.003), (xc + sgn * 0.05, yc + 0.014)], _shade(skin, 0.5 * g20), 0.01)

    # Chin crease, moved down with the jaw (AU26).
    xc_ = cx + _lin(-0.045, 0.045, 7)
    chin_y = cy + fh + chin_drop - 0.06
    painter.line(np.stack([xc_, chin_y + 0.008 * (1 - ((xc_ - cx) / 0.045) ** 2)], 1), _shade(skin, 0.15), 0.009)


def _paint_occluder(painter, occluder, identity):
    """Draws a hand, an object or a band over part of the face (and into the silhouette)."""
    kind = occluder["kind"]
    cx, cy = occluder["centre"]
    angle = occluder["angle"]
    size = occluder["size"]
    if kind == "hand":
        colour = _shade(identity.skin, occluder["shade"])
        painter.fill(_ellipse(cx, cy, 0.12 * size, 0.15 * size, n=24, angle=angle), colour, True)
        c, s = math.cos(angle), math.sin(angle)
        for k in range(4):
            offset = (k - 1.5) * 0.05 * size
            base = np.array([cx + c * offset + s * 0.1 * size, cy + s * offset - c * 0.1 * size])
            spread = (k - 1.5) * 0.12
            d = np.array([math.sin(angle + spread), -math.cos(angle + spread)]) * 0.16 * size
            finger = np.array([base, base + d])
            painter.line(finger, colour, 0.042 * size, silhouette=True)
        painter.line(_ellipse(cx, cy, 0.12 * size, 0.15 * size, n=24, angle=angle), _shade(colour, 0.25), 0.006)
    else:
        w, h = (0.38 * size, 0.18 * size) if kind == "object" else (0.9, 0.09 * size)
        c, s = math.cos(angle), math.sin(angle)
        corners = np.array([(-w, -h), (w, -h), (w, h), (-w, h)]) / 2
        rect = np.stack([cx + c * corners[:, 0] - s * corners[:, 1], cy + s * corners[:, 0] + c * corners[:, 1]], 1)
        painter.fill(rect, occluder["colour"], True)


def _au_dict(au_intensities):
    g = {name: 0.0 for name in DRAWN_AUS}
    for name, value in (au_intensities or {}).items():
        if name not in g:
            raise ValueError(f"draw_face: unknown AU {name!r}: expected one of {', '.join(DRAWN_AUS)}.")
        g[name] = float(np.clip(value, 0.0, 1.0))
    return g


def draw_face(au_intensities=None, identity=None, pose=None, rng=None, size=112, background=None,
              return_mask=False, occluder=None):
    """Draws one synthetic face (BGR, uint8) with the given action-unit intensities.

    Every AU of `DRAWN_AUS` is a visible change inside its `AU_REGIONS` box: AU1/AU2
    raise the inner/outer brows and wrinkle the forehead, AU4 lowers and knits the brows,
    AU6 raises the cheeks (crow's feet), AU7 tightens the lids, AU10 raises the upper lip,
    AU12/AU15/AU20 pull the lip corners up/down/sideways, AU23/AU24 tighten/press the lips,
    AU25 parts them and AU26 drops the jaw.

    The face is drawn in its own face frame, looser than the ArcFace template; the demo's
    aligned view draws it through the similarity of its landmarks onto the template
    (`FACE_TO_ALIGNED` for the mean identity).

    Args:
        au_intensities: dict AU name -> intensity in [0, 1]; absent AUs are 0.
        identity: `FaceIdentity` (default: the default identity).
        pose: `HeadPose` (default: frontal, centred).
        rng: optional `numpy.random.Generator` that jitters the drawn points by a
            fraction of a pixel (a hand-drawn look); `None` draws exactly.
        size: output side in pixels.
        background: optional `(size, size, 3)` uint8 image to draw on (default flat grey).
        return_mask: also return the face silhouette (uint8, 255 inside), which the
            context view uses to composite the face over its background.
        occluder: optional dict (`kind` "hand" / "object" / "band", `centre`, `angle`,
            `size`, `colour`, `shade`) drawn over the face.

    Returns:
        `(size, size, 3)` uint8 image, and the silhouette if `return_mask`.

    Example:
    >>> smile = draw_face({"AU6": 0.8, "AU12": 1.0}, random_identity(np.random.default_rng(0)))
    """
    g = _au_dict(au_intensities)
    identity = identity or FaceIdentity()
    pose = pose or HeadPose()
    if background is None:
        img = np.full((size, size, 3), 190, np.uint8)
    else:
        img = np.array(background, np.uint8, copy=True)
        if img.shape != (size, size, 3):
            raise ValueError(f"draw_face: background has shape {img.shape}, expected ({size}, {size}, 3).")
    mask = np.zeros((size, size), np.uint8) if return_mask else None
    painter = _Painter(img, mask, size, pose, jitter=rng)
    _paint_face(painter, g, identity)
    if occluder is not None:
        _paint_occluder(painter, occluder, identity)
    painter.flush()
    return (img, mask) if return_mask else img


# --------------------------------------------------------------------------------------
# Affect over time
# --------------------------------------------------------------------------------------


def _gauss_kernel(sigma):
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum(), r


def _smooth(x, sigma):
    """Gaussian low-pass along axis 0 (edges padded with their value)."""
    x = np.asarray(x, np.float64)
    if sigma <= 0 or len(x) == 0:
        return x
    k, r = _gauss_kernel(sigma)
    if x.ndim == 1:
        return np.convolve(np.pad(x, r, mode="edge"), k, mode="valid")
    return np.stack([_smooth(x[:, j], sigma) for j in range(x.shape[1])], 1)


def _lowpass_noise(rng, n, sigma, scale=1.0):
    """Smooth zero-mean noise of standard deviation about `scale`."""
    k, r = _gauss_kernel(max(sigma, 0.5))
    w = rng.standard_normal(n + 2 * r)
    return np.convolve(w, k, mode="valid") / math.sqrt(float((k**2).sum())) * scale


def _box(x, length):
    """Moving average along axis 0: turns steps into linear onset/offset ramps."""
    if length <= 1:
        return x
    r = length // 2
    k = np.ones(2 * r + 1) / (2 * r + 1)
    return np.stack([np.convolve(np.pad(x[:, j], r, mode="edge"), k, mode="valid") for j in range(x.shape[1])], 1)


def _run_mask(rng, n, rate, max_len, min_runs=0):
    """Boolean mask covering about `rate` of `n` frames in runs of 1..max_len frames."""
    mask = np.zeros(n, bool)
    if n <= 0:
        return mask
    count = int(rng.poisson(rate * n / ((1 + max_len) / 2)))
    count = max(count, min_runs)
    for _ in range(count):
        length = int(rng.integers(1, max_len + 1))
        start = int(rng.integers(0, max(1, n - length + 1)))
        mask[start : start + length] = True
    return mask


@dataclasses.dataclass
class AffectTrack:
    """What one synthetic face feels and shows, frame by frame (no missing markers).

    Attributes:
        schema: the `LabelSchema` the expression indices refer to.
        expression: `(n,)` expression index in `schema.expressions`.
        au_intensity: `(n, len(DRAWN_AUS))` drawn intensity in [0, 1].
        valence, arousal: `(n,)` in [-1, 1].
    """

    schema: object
    expression: np.ndarray
    au_intensity: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray

    def __len__(self):
        return len(self.expression)

    def au_labels(self):
        """`(n, schema.num_aus)` 0/1 occurrence labels in the schema's AU order."""
        cols = [_AU_INDEX[name] for name in self.schema.aus]
        return (self.au_intensity[:, cols] >= AU_ON_THRESHOLD).astype(np.int64)

    def au_at(self, frame):
        """Dict AU name -> intensity of a 0-based frame (what `draw_face` takes)."""
        return {name: float(v) for name, v in zip(DRAWN_AUS, self.au_intensity[frame])}


def simulate_affect(frames, edition="abaw3", rng=None, fps=30):
    """Simulates one face's expressions, action units, valence and arousal over time.

    Expressions are piecewise constant in segments of 0.6-2.5 s. Each segment shows its
    FACS prototype (`EXPRESSION_PROTOTYPES`) at a random strength, now and then without
    one of its AUs or with an unrelated one, plus short AU events independent of the
    expression. Intensities ramp up and down over about 0.3 s. Valence and arousal
    follow the expression (`EXPRESSION_VA`) with a person offset, smoothed, plus slow
    drift, clipped to [-1, 1].

    Args:
        frames: number of frames.
        edition: ABAW edition or `LabelSchema` (ABAW1/2 have no "Other" class).
        rng: `numpy.random.Generator` (default: seeded with 0).
        fps: frames per second (sets the time constants).

    Returns:
        `AffectTrack`.
    """
    schema = get_schema(edition)
    rng = rng if rng is not None else np.random.default_rng(0)
    n = int(frames)
    names = list(schema.expressions)
    prior = np.array([_EXPRESSION_PRIOR[name] for name in names]) * rng.uniform(0.5, 1.5, len(names))
    prior /= prior.sum()
    n_aus = len(DRAWN_AUS)

    expression = np.zeros(n, np.int64)
    target = np.zeros((n, n_aus))
    va_target = np.zeros((n, 2))
    lo, hi = max(4, round(0.6 * fps)), max(6, round(2.5 * fps))
    start, previous = 0, -1
    while start < n:
        length = int(rng.integers(lo, hi + 1))
        e = int(rng.choice(len(names), p=prior))
        if e == previous:
            e = int(rng.choice(len(names), p=prior))
        name = names[e]
        strength = rng.uniform(0.55, 1.0)
        seg = np.zeros(n_aus)
        proto = EXPRESSION_PROTOTYPES[name]
        shown = list(proto["core"])
        if proto["one_of"]:
            shown.append(proto["one_of"][int(rng.integers(len(proto["one_of"])))])
        for au, prob in proto["optional"].items():
            if rng.random() < prob:
                shown.append(au)
        if name == "Other":
            k = int(rng.integers(2, 4))
            shown = [DRAWN_AUS[i] for i in rng.choice(n_aus, size=k, replace=False)]
        for au in shown:
            if rng.random() >= 0.12:  # now and then a prototype AU does not show
                seg[_AU_INDEX[au]] = min(1.0, strength * rng.uniform(0.8, 1.2))
        spurious = 0.03 if name == "Neutral" else 0.05
        for i in range(n_aus):
            if seg[i] == 0 and rng.random() < spurious:
                seg[i] = rng.uniform(0.35, 0.8)
        end = min(n, start + length)
        expression[start:end] = e
        target[start:end] = seg
        va_target[start:end] = np.array(EXPRESSION_VA[name]) * (0.5 + 0.5 * strength) + rng.normal(0, 0.1, 2)
        start, previous = end, e

    # Short AU events independent of the expression (about one per AU per 15 s).
    for i in range(n_aus):
        for _ in range(int(rng.poisson(n / (15.0 * fps)))):
            length = int(rng.integers(max(2, round(0.2 * fps)), max(3, round(0.7 * fps)) + 1))
            s = int(rng.integers(0, max(1, n - length + 1)))
            target[s : s + length, i] = np.maximum(target[s : s + length, i], rng.uniform(0.35, 0.85))

    ramp = max(3, int(round(0.3 * fps)))
    intensity = _box(target, ramp)
    jitter = np.stack([_lowpass_noise(rng, n, 0.2 * fps, 0.05) for _ in range(n_aus)], 1)
    intensity = np.clip(intensity + jitter * (intensity > 0.05), 0.0, 1.0)

    offset = rng.normal(0, 0.08, 2)
    va = _smooth(va_target + offset, 0.4 * fps)
    va += np.stack([_lowpass_noise(rng, n, 1.0 * fps, 0.1) for _ in range(2)], 1)
    va = np.clip(va, -1.0, 1.0)
    return AffectTrack(schema, expression, intensity, va[:, 0].copy(), va[:, 1].copy())


# --------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------


def synthesize_audio(arousal, fps=30, rng=None, sample_rate=AUDIO_SAMPLE_RATE):
    """A voice-like mono track whose loudness (RMS per frame) follows arousal.

    A harmonic tone (pitch rising with arousal, slight vibrato) mixed with breath noise
    and a mild syllable rhythm; the envelope is a monotonic function of arousal,
    interpolated between frame centres.

    Args:
        arousal: `(n,)` arousal per video frame in [-1, 1].
        fps: video frame rate.
        rng: `numpy.random.Generator`.
        sample_rate: samples per second.

    Returns:
        int16 array of `round(n * sample_rate / fps)` samples.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    arousal = np.clip(np.asarray(arousal, np.float64), -1, 1)
    n = len(arousal)
    samples = int(round(n * sample_rate / fps))
    t = np.arange(samples) / sample_rate
    a = np.interp(t * fps - 0.5, np.arange(n), arousal)
    level = (a + 1) / 2
    envelope = 0.02 + 0.55 * level**1.4
    f0 = rng.uniform(100, 220) * (1 + 0.3 * level) * (1 + 0.01 * np.sin(2 * math.pi * 5.5 * t))
    phase = 2 * math.pi * np.cumsum(f0) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    tone /= np.sqrt(np.mean(tone**2))
    noise = rng.standard_normal(samples)
    noise = np.convolve(noise, np.ones(4) / 4, mode="same")
    noise /= np.sqrt(np.mean(noise**2)) + 1e-12
    syllables = 0.92 + 0.08 * np.sin(2 * math.pi * rng.uniform(3, 5) * t + rng.uniform(0, 2 * math.pi))
    signal = envelope * syllables * (0.85 * tone + 0.35 * noise) / 1.2
    return np.round(np.clip(signal, -0.99, 0.99) * 32767).astype(np.int16)


def _write_wav(path, pcm, sample_rate):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def _ffmpeg_exe():
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as error:  # noqa: BLE001 - report any way the binary is missing
        raise RuntimeError(
            "write_demo_dataset: writing videos/<video>.mp4 needs the ffmpeg binary of the "
            f"imageio-ffmpeg package ({error}). Install imageio-ffmpeg, or pass write_videos=False."
        ) from error


def _mux(ffmpeg, video_path, wav_path, out_path):
    command = [
        ffmpeg, "-y", "-v", "error", "-i", video_path, "-i", wav_path,
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "64k",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-flags:a", "+bitexact", "-threads", "1", out_path,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not os.path.exists(out_path):
        raise RuntimeError(
            f"write_demo_dataset: ffmpeg could not mux {out_path} (exit {result.returncode}): "
            f"{result.stderr.strip()[-800:]}\ncommand: {' '.join(command)}"
        )


# --------------------------------------------------------------------------------------
# Scene: background, lighting, pose, occlusion
# --------------------------------------------------------------------------------------


def _background(rng, height, width):
    """One textured background per source video: gradient, stripes, blobs, room or noise."""
    style = int(rng.integers(5))
    base = rng.uniform(30, 230, 3)
    other = rng.uniform(30, 230, 3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if style == 0:
        a = rng.uniform(0, 2 * math.pi)
        u = (math.cos(a) * x + math.sin(a) * y) / max(height, width)
        u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        img = base * (1 - u[..., None]) + other * u[..., None]
    elif style == 1:
        a = rng.uniform(0, math.pi)
        period = rng.uniform(8, 30)
        u = 0.5 + 0.5 * np.sin((math.cos(a) * x + math.sin(a) * y) * 2 * math.pi / period)
        img = base * (1 - 0.5 * u[..., None]) + other * 0.5 * u[..., None]
    elif style == 2:
        img = np.empty((height, width, 3), np.float32)
        img[:] = base
        for _ in range(int(rng.integers(8, 20))):
            c = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.circle(img, c, int(rng.integers(4, max(6, height // 3))), tuple(rng.uniform(20, 235, 3).tolist()), -1)
        img = cv2.GaussianBlur(img, (0, 0), 2.5)
    elif style == 3:
        img = np.empty((height, width, 3), np.float32)
        img[:] = base
        floor = int(height * rng.uniform(0.65, 0.85))
        img[floor:] = other
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, floor))
            w, h = int(rng.integers(10, width // 2 + 11)), int(rng.integers(10, height // 2 + 11))
            cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), tuple(rng.uniform(20, 235, 3).tolist()), -1)
    else:
        coarse = rng.uniform(-60, 60, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
        img = base + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255).astype(np.uint8)


def _random_occluder(rng):
    kind = ("hand", "hand", "object", "band")[int(rng.integers(4))]
    targets = [(0.5, 0.76), (0.38, 0.45), (0.62, 0.45), (0.3, 0.64), (0.7, 0.64), (0.5, 0.9)]
    if kind == "band":
        targets = [(0.5, 0.45), (0.5, 0.78), (0.5, 0.3)]
    centre = np.array(targets[int(rng.integers(len(targets)))]) + rng.normal(0, 0.03, 2)
    return {
        "kind": kind,
        "centre": centre,
        "angle": float(rng.normal(0, 0.5)),
        "size": float(rng.uniform(0.8, 1.2)),
        "colour": _colour(rng.uniform(10, 245, 3)),
        "shade": float(rng.uniform(-0.08, 0.12)),
    }


class _Face:
    """Everything about one face track of a source video, drawn up front."""

    def __init__(self, name, split, tasks, seeds, frames, schema, fps, image_size, context_size):
        r_id, r_affect, r_pose, r_occ, r_missing, r_draw = (np.random.default_rng(s) for s in seeds)
        self.name, self.split, self.tasks = name, split, tasks
        self.identity = random_identity(r_id)
        # This face's own landmarks onto the template, as an aligner puts them (the
        # residual pose below is the aligner's error).
        I = self.identity
        self.face_to_aligned = similarity_transform(_face_landmarks(I.eye_spacing, I.nose_length, I.mouth_width),
                                           aligned_landmarks(1.0, LANDMARK_NAMES))
        self.track = simulate_affect(frames, schema, r_affect, fps)
        n, S, C = frames, image_size, context_size

        # Pose: in the source frame rotation, scale and translation of the aligned view; a
        # small residual in the aligned view (alignment is never perfect).
        base_angle = r_pose.normal(0, 5)
        self.angle = np.clip(base_angle + _lowpass_noise(r_pose, n, fps * 0.8, 7.0), -28, 28)
        # Source pixels per aligned pixel: 0.9-1.1 times C / (S * CONTEXT_SCALE), so that the
        # context side is about CONTEXT_SCALE aligned sides (the head fills most of it).
        base_scale = r_pose.uniform(0.9, 1.1)
        self.scale = np.clip(base_scale + _lowpass_noise(r_pose, n, fps, 0.035), 0.75, 1.18) * C / (S * CONTEXT_SCALE)
        # Shift of the aligned view's centre from the centre of its column.
        base_t = r_pose.normal(0, 0.05 * C, 2)
        tx = np.clip(base_t[0] + _lowpass_noise(r_pose, n, fps, 0.035 * C), -0.1 * C, 0.1 * C)
        ty = np.clip(base_t[1] + _lowpass_noise(r_pose, n, fps, 0.035 * C), -0.1 * C, 0.1 * C)
        self.res_angle = _lowpass_noise(r_pose, n, fps * 0.5, 1.0)
        self.res_scale = 1 + _lowpass_noise(r_pose, n, fps * 0.5, 0.012)
        self.res_dx = _lowpass_noise(r_pose, n, fps * 0.5, 0.006)
        self.res_dy = _lowpass_noise(r_pose, n, fps * 0.5, 0.006)
        self.gaze = np.clip(_lowpass_noise(r_pose, n, fps * 0.4, 0.45), -1, 1)
        self.tx, self.ty = self._head_inside(tx, ty, S, C)

        # Occlusion: runs of frames with a hand or an object over part of the face.
        self.occluder = [None] * n
        rate = float(r_occ.choice([0.0, 0.04, 0.1], p=(0.3, 0.45, 0.25)))
        mask = _run_mask(r_occ, n, rate, max(3, int(fps)))
        t = 0
        while t < n:
            if not mask[t]:
                t += 1
                continue
            end = t
            while end < n and mask[end]:
                end += 1
            occ = _random_occluder(r_occ)
            drift = r_occ.normal(0, 0.004, (end - t, 2)).cumsum(0)
            for k in range(t, end):
                self.occluder[k] = dict(occ, centre=occ["centre"] + drift[k - t])
            t = end

        # Frames without a detected face (both frame folders lack the JPEG).
        self.missing_image = _run_mask(r_missing, n, MISSING_IMAGE_RATE, 6, min_runs=1 if n >= 20 else 0)
        self.missing_label = {
            task: _run_mask(r_missing, n, MISSING_LABEL_RATE, 5, min_runs=1 if n >= 20 else 0)
            for task in TASKS
        }
        self.jitter_rng = r_draw

    def labels(self, task):
        """Annotation rows of one task with the missing markers in place."""
        tr, schema = self.track, self.track.schema
        missing = self.missing_label[task]
        if task == "va":
            va = np.round(np.stack([tr.valence, tr.arousal], 1), 4) + 0.0
            va[missing] = schema.va_missing
            return va
        if task == "expr":
            expr = tr.expression.copy()
            expr[missing] = schema.expr_missing
            return expr
        au = tr.au_labels()
        au[missing] = schema.au_missing
        return au

    def _head_inside(self, tx, ty, S, C):
        """`(tx, ty)` shifted, frame by frame, so that the head stays inside its column."""
        head = _head_ellipse(self.identity)
        F = self.face_to_aligned
        q = _ellipse(*head, n=32) @ F[:, :2].T + F[:, 2] - 0.5  # outline, aligned fractions from the centre
        # Through the residual pose (about the view centre) to aligned pixels from the centre,
        r = np.radians(self.res_angle)[:, None]
        k = self.res_scale[:, None]
        u = S * (k * (np.cos(r) * q[:, 0] + np.sin(r) * q[:, 1]) + self.res_dx[:, None])
        v = S * (k * (-np.sin(r) * q[:, 0] + np.cos(r) * q[:, 1]) + self.res_dy[:, None])
        # then through the face's rotation and scale to source pixels from the view centre.
        c = (np.cos(np.radians(self.angle)) * self.scale)[:, None]
        s = (np.sin(np.radians(self.angle)) * self.scale)[:, None]
        margin = 0.02 * C
        out = []
        for shift, extent in ((tx, c * u + s * v), (ty, -s * u + c * v)):
            lo, hi = margin - C / 2 - extent.min(1), C / 2 - margin - extent.max(1)
            out.append(np.where(lo <= hi, np.clip(shift, lo, hi), 0.5 * (lo + hi)))
        return out

    def pose(self, t):
        """Residual `HeadPose` of frame t in the aligned view."""
        return HeadPose(self.res_angle[t], self.res_scale[t], self.res_dx[t], self.res_dy[t], self.gaze[t])

    def matrix(self, t, image_size, context_size, column):
        """Affine map aligned view (pixels) -> source frame (column = face's horizontal slot)."""
        a = math.radians(self.angle[t])
        s = self.scale[t]
        A = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) * s
        centre = np.array([column * context_size + context_size / 2 + self.tx[t], context_size / 2 + self.ty[t]])
        b = centre - A @ np.array([image_size / 2, image_size / 2])
        return np.concatenate([A, b[:, None]], 1)

    def landmarks(self, image_size, context_size, column, view="source"):
        """`(frames, 5, 2)` true landmarks (`LANDMARK_NAMES`) in pixels of `view`."""
        I = self.identity
        face = _face_landmarks(I.eye_spacing, I.nose_length, I.mouth_width)
        out = np.empty((len(self.angle), 5, 2))
        for t in range(len(out)):
            A, b = _face_to_pixels(self.pose(t), image_size, self.face_to_aligned)
            p = face @ A.T + b
            if view != "cropped_aligned":
                M = self.matrix(t, image_size, context_size, column)
                p = p @ M[:, :2].T + M[:, 2]
                if view == "cropped":
                    p[:, 0] -= column * context_size
            out[t] = p
        return out


class _Source:
    """One source video: its faces side by side, background, lighting, blur, noise, audio."""

    def __init__(self, seed_key, faces, frames, fps, context_size):
        rng = np.random.default_rng(seed_key)
        n, C = frames, context_size
        self.faces = faces
        self.height, self.width = C, C * len(faces)
        self.margin = max(4, C // 8)
        self.background = _background(rng, self.height + 2 * self.margin, self.width + 2 * self.margin)
        self.ox = np.clip(np.round(self.margin + _lowpass_noise(rng, n, fps, 0.35 * self.margin)), 0, 2 * self.margin).astype(int)
        self.oy = np.clip(np.round(self.margin + _lowpass_noise(rng, n, fps, 0.35 * self.margin)), 0, 2 * self.margin).astype(int)
        self.brightness = rng.normal(0, 12) + _lowpass_noise(rng, n, fps, 6.0)
        self.contrast = np.clip(rng.uniform(0.72, 1.1) + _lowpass_noise(rng, n, fps, 0.05), 0.5, 1.5)
        self.cast = np.clip(rng.normal(1, 0.07, 3), 0.8, 1.2).astype(np.float32)
        self.gx = rng.normal(0, 0.25) + _lowpass_noise(rng, n, 2 * fps, 0.05)
        self.gy = rng.normal(0, 0.2) + _lowpass_noise(rng, n, 2 * fps, 0.05)
        blur_rate = float(rng.choice([0.0, 0.05, 0.12], p=(0.3, 0.45, 0.25)))
        self.blur = np.where(_run_mask(rng, n, blur_rate, max(3, int(fps // 2))), rng.uniform(0.8, 2.2, n), 0.0)
        sigma = rng.uniform(1.5, 4.0)
        pad = 16
        self.noise = [
            np.round(rng.normal(0, sigma, (self.height + pad, self.width + pad, 3))).astype(np.float32)
            for _ in range(3)
        ]
        self.noise_pick = rng.integers(0, 3, n)
        self.noise_dx = rng.integers(0, pad + 1, n)
        self.noise_dy = rng.integers(0, pad + 1, n)
        self.audio_rng = rng
        self.columns = len(faces)
        yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        self.grid = (xx / C - 0.5 * self.columns, yy / C - 0.5)
        self._aligned_grid = {}

    def _light(self, img, gain, t):
        """`img * gain * colour cast + brightness`, blurred on blur frames, plus sensor noise."""
        cast = self.cast
        g3 = cv2.merge((gain * cast[0], gain * cast[1], gain * cast[2]))
        lit = cv2.multiply(img, g3, dtype=cv2.CV_32F)
        b = float(self.brightness[t])
        lit = cv2.add(lit, (b, b, b, 0.0))
        return lit

    def _finish(self, lit, t, noise, blur_sigma):
        if blur_sigma > 0:
            lit = cv2.GaussianBlur(lit, (0, 0), blur_sigma)
        return cv2.add(lit, noise, dtype=cv2.CV_8U)

    def render(self, t, image_size):
        """Renders frame t: the source frame (uint8) and each face's (aligned, context) views.

        Each face is painted on a canvas around its aligned view (`_CANVAS_MARGIN`), lit,
        composited into the source frame through its silhouette, and cropped: the
        canvas's central `image_size` square is the aligned view. Only the part of the
        canvas that the face and the view cover is warped, painted and lit.
        """
        S, C = image_size, self.height
        m = int(round(_CANVAS_MARGIN * S))
        P = S + 2 * m
        frame = np.ascontiguousarray(self.background[self.oy[t] : self.oy[t] + C, self.ox[t] : self.ox[t] + self.width])
        matrices = [face.matrix(t, S, C, i) for i, face in enumerate(self.faces)]

        # Torsos under the heads (in the face frame, like the neck).
        for face, M in zip(self.faces, matrices):
            F = face.face_to_aligned
            pts = S * (_ellipse(*_TORSO, n=32) @ F[:, :2].T + F[:, 2]) @ M[:, :2].T + M[:, 2]
            cv2.fillPoly(frame, [np.round(pts * _ONE).astype(np.int32)], face.identity.shirt, _AA, _SHIFT)

        # Lighting: gain c * (1 + gx * X + gy * Y) over source-frame coordinates X, Y.
        c, gx, gy = float(self.contrast[t]), float(self.gx[t]), float(self.gy[t])
        X, Y = self.grid
        lit = self._light(frame, cv2.addWeighted(X, c * gx, Y, c * gy, c), t)
        if P not in self._aligned_grid:
            v, u = np.mgrid[0:P, 0:P].astype(np.float32)
            self._aligned_grid[P] = (u, v)
        U, V = self._aligned_grid[P]
        noise = self.noise[self.noise_pick[t]][self.noise_dy[t] :, self.noise_dx[t] :]
        views = []
        for i, (face, M) in enumerate(zip(self.faces, matrices)):
            painter = _Painter(None, None, S, face.pose(t), face.jitter_rng, face.face_to_aligned, offset=m)
            _paint_face(painter, face.track.au_at(t), face.identity)
            if face.occluder[t] is not None:
                _paint_occluder(painter, face.occluder[t], face.identity)
            # The used part of the canvas: the face, and the view with room for the blur.
            sigma = self.blur[t] / max(face.scale[t], 0.3) if self.blur[t] > 0 else 0.0
            pad = int(math.ceil(3 * sigma))
            low, high = painter.bounds()
            x0, y0 = (min(max(0, int(math.floor(v))), m - pad) for v in low)
            x1, y1 = (max(min(P, int(math.ceil(v)) + 1), m + S + pad) for v in high)
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(P, x1), min(P, y1)
            Mc = M.copy()  # canvas pixels (from x0, y0) -> source-frame pixels
            Mc[:, 2] += (x0 - m) * M[:, 0] + (y0 - m) * M[:, 1]
            canvas = cv2.warpAffine(frame, Mc, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REFLECT)
            mask = np.zeros(canvas.shape[:2], np.uint8)
            painter.img, painter.mask = canvas, mask
            painter.flush(origin=(x0, y0))

            # Light the canvas as the scene is lit at the same place (Mc maps canvas pixels
            # to source-frame pixels, so the gain stays linear in u, v).
            beta = c * (gx * Mc[0, 0] + gy * Mc[1, 0]) / C
            gamma = c * (gx * Mc[0, 1] + gy * Mc[1, 1]) / C
            alpha0 = c * (1 + gx * (Mc[0, 2] / C - 0.5 * self.columns) + gy * (Mc[1, 2] / C - 0.5))
            u, v = U[: y1 - y0, : x1 - x0], V[: y1 - y0, : x1 - x0]
            canvas_lit = self._light(canvas, cv2.addWeighted(u, beta, v, gamma, alpha0), t)

            # Composite the face silhouette into the lit source frame (its own column, within
            # the canvas's bounding box).
            corners = np.array([(0, 0), (x1 - x0, 0), (0, y1 - y0), (x1 - x0, y1 - y0)]) @ Mc[:, :2].T + Mc[:, 2]
            c0, r0 = (max(0, int(math.floor(v))) for v in corners.min(0) - (i * C, 0))
            c1, r1 = (min(C, int(math.ceil(v)) + 1) for v in corners.max(0) - (i * C, 0))
            if c1 > c0 and r1 > r0:
                local = Mc.copy()
                local[:, 2] -= (i * C + c0, r0)
                size = (c1 - c0, r1 - r0)
                warped = cv2.warpAffine(canvas_lit, local, size, flags=cv2.INTER_LINEAR)
                alpha = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR)
                region = lit[r0:r1, i * C + c0 : i * C + c1]
                a3 = cv2.merge((alpha, alpha, alpha))
                region += cv2.multiply(cv2.subtract(warped, region), a3, scale=1 / 255.0, dtype=cv2.CV_32F)

            # Blur the canvas (no border effects inside the view), then crop the view.
            if sigma > 0:
                canvas_lit = cv2.GaussianBlur(canvas_lit, (0, 0), sigma)
            view = canvas_lit[m - y0 : m - y0 + S, m - x0 : m - x0 + S]
            views.append(self._finish(view, t, noise[:S, :S], 0.0))

        full = self._finish(lit, t, noise[:C, : self.width], float(self.blur[t]))
        return full, [(aligned, full[:, i * C : (i + 1) * C]) for i, aligned in enumerate(views)]


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


def _plan(videos, seed):
    """Splits, source videos (pairs `_left`/`_right`) and which tasks each video has."""
    n_val = 1 if videos < 6 else max(2, int(round(videos / 4)))
    counts = {"train": videos - n_val, "val": n_val}
    rng = np.random.default_rng([seed, 0, 999])
    sources = []
    tasks = {}
    for split in ("train", "val"):
        n = counts[split]
        singles = n - 2 if n >= 2 else n
        names = []
        k = 0
        for k in range(singles):
            sources.append((split, k, f"demo_{split}_{k:03d}", [f"demo_{split}_{k:03d}"]))
            names.append(f"demo_{split}_{k:03d}")
        if n >= 2:
            k = singles
            source = f"demo_{split}_{k:03d}"
            pair = [f"{source}_left", f"{source}_right"]
            sources.append((split, k, source, pair))
            names.extend(pair)
        # The first video of a split has every task, the second VA only, the third
        # EXPR and AU; others have all three or a random part.
        for i, name in enumerate(names):
            if i == 0:
                chosen = TASKS
            elif i == 1:
                chosen = ("va",)
            elif i == 2:
                chosen = ("expr", "au")
            elif rng.random() < 0.6:
                chosen = TASKS
            else:
                keep = rng.random(3) < 0.5
                if not keep.any():
                    keep[int(rng.integers(3))] = True
                chosen = tuple(task for task, k_ in zip(TASKS, keep) if k_)
            tasks[name] = chosen
    return counts, sources, tasks


def _clear_video(out, name, schema):
    for view in ("cropped_aligned", "cropped"):
        shutil.rmtree(os.path.join(out, view, name), ignore_errors=True)
    for task in TASKS:
        for split in ("train", "val"):
            path = os.path.join(out, annotation_dir(schema, task, split), name + ".txt")
            if os.path.exists(path):
                os.remove(path)


def _default_context_size(image_size):
    size = int(round(image_size * 10 / 7))
    return size + (size % 2)


def _demo_args(caller, edition, videos, frames, seed, image_size, context_size, fps):
    """Checked arguments of the demo writer: `(schema, videos, frames, seed, S, C)`."""
    schema = get_schema(edition)
    videos, frames, seed, image_size = int(videos), int(frames), int(seed), int(image_size)
    if videos < 2:
        raise ValueError(f"{caller}: videos={videos}; need at least 2 (one train, one val).")
    if frames < 1:
        raise ValueError(f"{caller}: frames={frames}; need at least 1.")
    if seed < 0:
        raise ValueError(f"{caller}: seed={seed}; expected an integer >= 0.")
    if image_size < 16:
        raise ValueError(f"{caller}: image_size={image_size}; expected >= 16.")
    if fps <= 0:
        raise ValueError(f"{caller}: fps={fps}; expected > 0.")
    C = _default_context_size(image_size) if context_size is None else int(context_size)
    if C < image_size:
        raise ValueError(f"{caller}: context_size={C} is smaller than image_size={image_size}.")
    return schema, videos, frames, seed, image_size, C


def _source_faces(seed, split, k, names, tasks, frames, schema, fps, image_size, context_size):
    """The `_Face` tracks of one source video, left to right."""
    code = _SPLIT_CODES[split]
    faces = []
    for j, name in enumerate(names):
        seeds = np.random.SeedSequence([seed, code, k, 1 + j]).spawn(6)
        faces.append(_Face(name, split, tasks[name], seeds, frames, schema, fps, image_size, context_size))
    return faces


def demo_landmarks(edition="abaw3", videos=8, frames=240, seed=0, image_size=112, context_size=None, fps=30,
                   view="source"):
    """The true five landmarks of every face that `write_demo_dataset` draws, without drawing.

    Takes the writer's arguments (equal arguments, equal faces). The landmarks are where
    the cartoon's eye centres, nose base and mouth corners are at rest (each identity's
    proportions), through the residual pose and the face's place in the source video;
    expressions move the drawn mouth corners a little, the sub-pixel jitter of the
    drawing is left out. Frames without a JPEG (`missing_images`) have landmarks too.

    Args:
        edition, videos, frames, seed, image_size, context_size, fps: as `write_demo_dataset`.
        view: pixel coordinates of `"source"` (the frames of `videos/<source>.mp4`),
            `"cropped"` (the face's `cropped` JPEG) or `"cropped_aligned"` (its aligned
            JPEG, within a few pixels of the ArcFace template `aligned_landmarks`).

    Returns:
        dict source name (as `summary["sources"]`) -> float array `(frames, faces, 5, 2)`
        of (x, y) in `LANDMARK_NAMES` order, faces left to right (`_left`, `_right`).

    Example:
    >>> marks = demo_landmarks(videos=4, frames=30)
    >>> marks["demo_train_001"].shape
    (30, 2, 5, 2)
    """
    if view not in ("source", "cropped", "cropped_aligned"):
        raise ValueError(f"demo_landmarks: view={view!r}; expected 'source', 'cropped' or 'cropped_aligned'.")
    schema, videos, frames, seed, S, C = _demo_args("demo_landmarks", edition, videos, frames, seed, image_size,
                                                    context_size, fps)
    _, plan, tasks = _plan(videos, seed)
    out = {}
    for split, k, source_name, names in plan:
        faces = _source_faces(seed, split, k, names, tasks, frames, schema, fps, S, C)
        out[source_name] = np.stack([face.landmarks(S, C, i, view) for i, face in enumerate(faces)], 1)
    return out


def write_demo_dataset(out, edition="abaw3", videos=8, frames=240, seed=0, image_size=112,
                       context_size=None, fps=30, write_videos=True, verbose=False):
    """Writes a synthetic dataset in the Aff-Wild2 layout of one ABAW edition.

    About a quarter of the videos are validation (at least one, at least two from six
    videos on). Each split with two or more videos has one `<source>_left` /
    `<source>_right` pair: two faces side by side in one `<source>.mp4`, cropped
    separately, sharing the audio. The first video of each split is annotated for every
    task, the second for VA only, the third for EXPR and AU; a few percent of rows carry
    the missing markers, and a few percent of frames, in short runs, have no JPEG in
    either frame folder while their annotation lines stay. The aligned faces follow the
    ArcFace template up to a residual pose; `demo_landmarks` with the same arguments gives
    the true landmarks.

    Equal arguments give byte-identical annotation files and JPEGs (and, with the
    bundled ffmpeg, identical mp4 files).

    Args:
        out: root folder to write (created; the generated videos' files are replaced).
        edition: ABAW edition (`"abaw1"` ... `"abaw6"`) for folder names, headers,
            classes and AUs. All 13 AUs are drawn; the edition's subset is labelled.
        videos: number of annotated videos (face tracks; a pair counts two), >= 2.
        frames: frames per video.
        seed: integer seed >= 0.
        image_size: side of the aligned faces (`cropped_aligned`).
        context_size: side of the face-with-context crops (`cropped`); default
            `image_size * 10 / 7` (160 for 112).
        fps: frame rate of the videos (sets time constants and the audio alignment).
        write_videos: write `videos/<source>.mp4` with audio (needs imageio-ffmpeg).
        verbose: print one line per source video to stderr.

    Returns:
        dict: `root`, `edition`, `videos_per_split`, `videos` (names per split),
        `sources` (mp4 name -> its videos), `frames_per_video`, `frames` (total),
        `images` (JPEGs per view), `missing_images` (frames without an image),
        `tasks` (video -> annotated tasks), `paths`.
    """
    schema, videos, frames, seed, image_size, C = _demo_args("write_demo_dataset", edition, videos, frames, seed,
                                                             image_size, context_size, fps)
    out = os.path.abspath(os.fspath(out))
    os.makedirs(out, exist_ok=True)
    ffmpeg = _ffmpeg_exe() if write_videos else None

    counts, plan, tasks = _plan(videos, seed)
    faces_by_split = {"train": [], "val": []}
    sources = {}
    missing = {}
    images = 0
    encode = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    tmp = tempfile.mkdtemp(prefix="affectkit_synthetic_") if write_videos else None
    try:
        for split, k, source_name, names in plan:
            faces = _source_faces(seed, split, k, names, tasks, frames, schema, fps, image_size, C)
            for name in names:
                _clear_video(out, name, schema)
            source = _Source(np.random.SeedSequence([seed, _SPLIT_CODES[split], k, 0]), faces, frames, fps, C)
            sources[source_name] = list(names)

            writer = None
            if write_videos:
                tmp_video = os.path.join(tmp, source_name + ".mp4")
                h, w = source.height + source.height % 2, source.width + source.width % 2
                writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
                if not writer.isOpened():
                    raise RuntimeError(
                        f"write_demo_dataset: cv2.VideoWriter could not open {tmp_video} with codec "
                        "'mp4v' (OpenCV built without FFMPEG video I/O?). Pass write_videos=False to skip videos."
                    )
            folders = {}
            for face in faces:
                for view in ("cropped_aligned", "cropped"):
                    folders[face.name, view] = os.path.join(out, view, face.name)
                    os.makedirs(folders[face.name, view], exist_ok=True)
            for t in range(frames):
                full, views = source.render(t, image_size)
                if writer is not None:
                    if full.shape[:2] != (h, w):
                        full = cv2.copyMakeBorder(full, 0, h - full.shape[0], 0, w - full.shape[1], cv2.BORDER_REPLICATE)
                    writer.write(full)
                for face, (aligned, context) in zip(faces, views):
                    if face.missing_image[t]:
                        continue
                    file_name = frame_file_name(t + 1)
                    for view, img in (("cropped_aligned", aligned), ("cropped", context)):
                        ok, buf = cv2.imencode(".jpg", img, encode)
                        if not ok:
                            raise RuntimeError(f"write_demo_dataset: JPEG encoding failed for {face.name} frame {t + 1}.")
                        buf.tofile(os.path.join(folders[face.name, view], file_name))
                    images += 1
            if writer is not None:
                writer.release()
                arousal = np.mean([face.track.arousal for face in faces], axis=0)
                wav = os.path.join(tmp, source_name + ".wav")
                _write_wav(wav, synthesize_audio(arousal, fps, source.audio_rng), AUDIO_SAMPLE_RATE)
                os.makedirs(os.path.join(out, "videos"), exist_ok=True)
                target = os.path.join(out, "videos", source_name + ".mp4")
                if os.path.exists(target):
                    os.remove(target)
                _mux(ffmpeg, tmp_video, wav, target)

            for face in faces:
                for task in face.tasks:
                    path = os.path.join(out, annotation_dir(schema, task, split), face.name + ".txt")
                    write_annotation_file(path, task, face.labels(task), schema)
                missing[face.name] = int(face.missing_image.sum())
                faces_by_split[split].append(face)
            if verbose:
                print(f"[synthetic] {split} {source_name}: {', '.join(names)} ({frames} frames)", file=sys.stderr)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    mtl_paths = {}
    for split, faces in faces_by_split.items():
        rows_img, rows_va, rows_expr, rows_au = [], [], [], []
        for face in faces:
            va = face.labels("va") if "va" in face.tasks else np.full((frames, 2), schema.va_missing)
            expr = face.labels("expr") if "expr" in face.tasks else np.full(frames, schema.expr_missing)
            au = face.labels("au") if "au" in face.tasks else np.full((frames, schema.num_aus), schema.au_missing)
            labelled = (va[:, 0] != schema.va_missing) | (expr != schema.expr_missing) | (au[:, 0] != schema.au_missing)
            keep = np.flatnonzero(labelled & ~face.missing_image)
            rows_img += [f"{face.name}/{frame_file_name(t + 1)}" for t in keep]
            rows_va.append(va[keep])
            rows_expr.append(expr[keep])
            rows_au.append(au[keep])
        path = os.path.join(out, mtl_file_name(schema, split))
        write_mtl_file(path, rows_img, np.concatenate(rows_va), np.concatenate(rows_expr),
                       np.concatenate(rows_au), schema)
        mtl_paths[split] = path

    return {
        "root": out,
        "edition": schema.edition,
        "videos_per_split": dict(counts),
        "videos": {split: [f.name for f in faces] for split, faces in faces_by_split.items()},
        "sources": sources,
        "frames_per_video": frames,
        "frames": frames * videos,
        "images": images,
        "missing_images": missing,
        "tasks": {name: list(t) for name, t in tasks.items()},
        "paths": {
            "cropped_aligned": os.path.join(out, "cropped_aligned"),
            "cropped": os.path.join(out, "cropped"),
            "videos": os.path.join(out, "videos") if write_videos else None,
            "annotations": {
                task: {split: os.path.join(out, annotation_dir(schema, task, split)) for split in ("train", "val")}
                for task in TASKS
            },
            "mtl": mtl_paths,
        },
    }
