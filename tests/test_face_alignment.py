"""Face alignment (`affectkit.inference.alignment`) against scikit-image and known geometry."""

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.transform import SimilarityTransform

from affectkit.data.affwild2 import CONTEXT_SCALE, aligned_landmarks
from affectkit.inference.alignment import cut_view, similarity_transform, view_matrix, warp_to_crop

FIVE = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def test_similarity_transform_matches_scikit_image():
    rng = np.random.default_rng(0)
    for _ in range(5):
        source = rng.uniform(0, 300, (5, 2))
        target = aligned_landmarks(112, FIVE) + rng.normal(0, 2, (5, 2))
        if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            reference = SimilarityTransform.from_estimate(source, target)
        else:
            reference = SimilarityTransform()
            reference.estimate(source, target)
        np.testing.assert_allclose(similarity_transform(source, target), reference.params[:2],
                                   rtol=1e-9, atol=1e-9)


def test_similarity_transform_recovers_an_exact_map_and_rejects_bad_shapes():
    angle, scale, shift = np.radians(20), 0.4, np.array([12.0, -7.0])
    A = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.array([[0.0, 0], [100, 10], [40, 80], [70, 60]])
    matrix = similarity_transform(source, source @ A.T + shift)
    np.testing.assert_allclose(matrix[:, :2], A, atol=1e-12)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
    with pytest.raises(ValueError, match="n >= 2"):
        similarity_transform(np.zeros((1, 2)), np.zeros((1, 2)))


def _face_in_frame(angle=15.0, scale=2.5, offset=(300.0, 120.0)):
    """Template landmarks placed into a frame by a known similarity (aligned -> frame)."""
    a = np.radians(angle)
    A = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    points = aligned_landmarks(112, FIVE) @ A.T + np.asarray(offset)
    return A, np.asarray(offset), points


def test_aligned_view_inverts_the_placement():
    A, b, points = _face_in_frame()
    matrix = view_matrix(points, FIVE, "aligned", 112)
    np.testing.assert_allclose(matrix[:, :2], np.linalg.inv(A), atol=1e-9)
    # Another input size scales the template with it.
    big = view_matrix(points, FIVE, "aligned", 224)
    np.testing.assert_allclose(big[:, :2], 2 * np.linalg.inv(A), atol=1e-9)


def test_context_view_is_an_upright_square_around_the_aligned_one():
    A, b, points = _face_in_frame(angle=25.0, scale=2.0)
    matrix = view_matrix(points, FIVE, "cropped", 160)
    # Upright, and its side in the frame is CONTEXT_SCALE x the aligned square's side.
    assert abs(matrix[0, 1]) < 1e-12 and abs(matrix[1, 0]) < 1e-12
    side_in_frame = 160 / matrix[0, 0]
    assert side_in_frame == pytest.approx(CONTEXT_SCALE * 112 * 2.0)
    # The centre of the aligned square maps onto the crop's centre.
    centre = A @ np.array([56.0, 56.0]) + b
    np.testing.assert_allclose(matrix[:, :2] @ centre + matrix[:, 2], [80, 80], atol=1e-9)


def test_cut_view_reproduces_an_aligned_face_placed_into_a_frame():
    face = data.astronaut()[40:250, 140:320]  # a real face, as the "aligned" picture
    face = cv2.resize(face, (112, 112), interpolation=cv2.INTER_AREA)
    A, b, points = _face_in_frame(angle=-12.0, scale=1.7, offset=(200.0, 90.0))
    forward = np.concatenate([A, b[:, None]], 1)
    frame = cv2.warpAffine(face, forward, (640, 360), flags=cv2.INTER_CUBIC)
    crop = cut_view(frame, points, FIVE, "aligned", 112)
    inner = (slice(8, -8), slice(8, -8))
    error = np.abs(crop[inner].astype(float) - face[inner].astype(float)).mean()
    assert error < 6, error
    # Teeth: a crop from landmarks moved by 10 pixels is clearly worse.
    shifted = cut_view(frame, points + 10, FIVE, "aligned", 112)
    assert np.abs(shifted[inner].astype(float) - face[inner].astype(float)).mean() > 2 * error


def test_shrinking_crops_average_rather_than_alias():
    # A one-pixel checkerboard shrunk 8x: area averaging gives flat grey, point sampling
    # would give black and white.
    board = (np.indices((896, 896)).sum(0) % 2 * 255).astype(np.uint8)
    frame = np.repeat(board[:, :, None], 3, 2)
    matrix = np.array([[1 / 8, 0, 0], [0, 1 / 8, 0]])
    crop = warp_to_crop(frame, matrix, 112)
    assert crop.shape == (112, 112, 3)
    assert abs(crop[4:-4, 4:-4].astype(float).mean() - 127.5) < 3
    assert crop[4:-4, 4:-4].std() < 10
    # Off the frame the crop is black, not an error.
    outside = warp_to_crop(frame, np.array([[1.0, 0, -2000], [0, 1.0, 0]]), 32)
    assert outside.max() == 0


def test_demo_video_faces_align_onto_the_demo_aligned_frames(demo_root):
    """BlazeFace on the demo's mp4s, aligned: the crops put the face where the demo's
    `cropped_aligned` JPEGs have it (the writer's true landmarks say where that is)."""
    import os

    from affectkit.data.synthetic import demo_landmarks
    from affectkit.inference.detection import BlazeFaceDetector
    from affectkit.inference.video import VideoReader

    args = dict(edition="abaw3", videos=6, frames=40, seed=3)  # as the demo_root fixture
    source_marks = demo_landmarks(**args)
    aligned_marks = demo_landmarks(view="cropped_aligned", **args)
    detector = BlazeFaceDetector()
    errors, pixel, pixel_truth, pixel_box = [], [], [], []
    inner = (slice(10, -10), slice(10, -10))
    for source, marks in source_marks.items():
        videos = sorted(v for v in os.listdir(os.path.join(demo_root, "cropped_aligned"))
                        if v == source or v.startswith(source + "_"))
        with VideoReader(os.path.join(demo_root, "videos", source + ".mp4")) as reader:
            for index, _, frame in reader:
                faces = detector(frame)
                for k, video in enumerate(videos):
                    jpeg = os.path.join(demo_root, "cropped_aligned", video, f"{index + 1:05d}.jpg")
                    truth = marks[index, k]
                    near = [f for f in faces if np.linalg.norm(f.landmarks[2] - truth[2]) < 20]
                    if not os.path.exists(jpeg):
                        continue
                    assert near, (video, index)  # every drawn face is found
                    face = near[0]
                    # Geometry: the true landmarks through our crop against the JPEG's.
                    matrix = view_matrix(face.landmarks, face.landmark_names, "aligned", 112)
                    ours = truth @ matrix[:, :2].T + matrix[:, 2]
                    errors.append(np.linalg.norm(ours - aligned_marks[source][index, k], axis=1).mean())
                    # Pixels, against the crop from the true landmarks and a plain box crop.
                    reference = cv2.imread(jpeg)[:, :, ::-1].astype(float)
                    crop = cut_view(frame, face.landmarks, face.landmark_names, "aligned", 112)
                    best = cut_view(frame, truth, FIVE, "aligned", 112)
                    x, y, w, h = face.box
                    box = warp_to_crop(frame, np.array([[112 / w, 0, -112 * x / w],
                                                        [0, 112 / h, -112 * y / h]]), 112)
                    for store, image in ((pixel, crop), (pixel_truth, best), (pixel_box, box)):
                        store.append(np.abs(image.astype(float) - reference)[inner].mean())
    assert len(errors) > 150
    # Within a few pixels of 112 (the demo's own residual pose is part of this).
    assert np.median(errors) < 3.5 and np.percentile(errors, 90) < 5.5, np.percentile(errors, [50, 90])
    # Close to the best crop the true landmarks give, far better than the detector's box.
    assert np.median(pixel) < 2.2 * np.median(pixel_truth), (np.median(pixel), np.median(pixel_truth))
    assert np.median(pixel) < 0.6 * np.median(pixel_box), (np.median(pixel), np.median(pixel_box))
