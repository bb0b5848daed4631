"""Clips of consecutive frames (affectkit.data.clips): rows, clips and labels against hand
computations on a tiny Aff-Wild2 layout, decoded pixels, seeded shuffles that keep labels
with their frames, per-frame prediction against a NumPy reference, and clip-shaped labels
scored like frames (scikit-learn)."""

import os

import cv2
import keras
import numpy as np
import pytest
from sklearn.metrics import f1_score

from affectkit import metrics
from affectkit.data import clips as clip_data
from affectkit.data.affwild2 import FrameIndex, annotation_dir, write_annotation_file
from affectkit.labels import get_schema

SCHEMA = get_schema("abaw3")


def write_tiny_layout(root):
    """Two videos: `a` (7 frames, frame 2 unlabelled, frame 3 without image), `b` (3 frames,
    frame 3 unlabelled). Frame k of `a` is grey 20 k, of `b` 200 + 10 k."""
    folder = os.path.join(root, annotation_dir(SCHEMA, "expr", "train"))
    os.makedirs(folder)
    write_annotation_file(os.path.join(folder, "a.txt"), "expr",
                          np.array([0, -1, 2, 3, 4, 5, 6]), SCHEMA)
    write_annotation_file(os.path.join(folder, "b.txt"), "expr", np.array([7, 1, -1]), SCHEMA)
    for video, frames, grey in (("a", (1, 2, 4, 5, 6, 7), lambda k: 20 * k),
                                ("b", (1, 2, 3), lambda k: 200 + 10 * k)):
        os.makedirs(os.path.join(root, "cropped_aligned", video))
        for k in frames:
            image = np.full((16, 16, 3), grey(k), np.uint8)
            cv2.imwrite(os.path.join(root, "cropped_aligned", video, f"{k:05d}.jpg"), image)


@pytest.fixture()
def tiny_root(tmp_path):
    root = str(tmp_path / "data")
    write_tiny_layout(root)
    return root


def tiny_index(root, fill):
    return FrameIndex.from_affwild2(root, SCHEMA, "train", tasks=("expr",),
                                    fill_missing_images=fill)


def grey_levels(images):
    return np.rint(np.asarray(images).mean(axis=(-3, -2, -1)) * 255).astype(int)


def frames_of(clips):
    return list(zip(clips.index.frames["video"], clips.index.frames["frame"]))


def collect(ds):
    batches = list(ds)
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1]["expr"].numpy() for b in batches])
    return images, labels


def test_labelled_clips_never_join_frames_across_the_ones_left_out(tiny_root):
    clips = clip_data.clip_segments(tiny_index(tiny_root, fill=False), 3, frames="labelled",
                                    tasks=("expr",))
    # Frames with a label and their own image: a1 | a4 a5 a6 a7 | b1 b2 (a2 is unlabelled,
    # a3 has no image: a1 stands alone). Clips of 3, each run's last clip padded with its
    # last frame.
    assert frames_of(clips) == [("a", 1), ("a", 4), ("a", 5), ("a", 6), ("a", 7), ("b", 1),
                                ("b", 2)]
    assert clips.segments.rows.tolist() == [[0, 0, 0], [1, 2, 3], [4, 4, 4], [5, 6, 6]]
    assert clips.segments.valid.sum(axis=1).tolist() == [1, 3, 1, 2]
    labels = clip_data.clip_labels(clips, ("expr",))["expr"]
    assert labels.tolist() == [[0, -1, -1], [3, 4, 5], [6, -1, -1], [7, 1, -1]]

    images, yielded = collect(clip_data.clip_dataset(clips, ("expr",), image_size=16,
                                                     batch_size=3))
    assert images.shape == (4, 3, 16, 16, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert grey_levels(images).tolist() == [[20] * 3, [80, 100, 120], [140] * 3,
                                            [210, 220, 220]]
    assert yielded.tolist() == labels.tolist()


def test_all_frames_clips_run_over_whole_videos_with_filled_images(tiny_root):
    clips = clip_data.clip_segments(tiny_index(tiny_root, fill=True), 3, frames="all")
    assert frames_of(clips) == [("a", k) for k in range(1, 8)] + [("b", k) for k in (1, 2, 3)]
    assert clips.segments.rows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 6, 6], [7, 8, 9]]
    # a2 and b3 are unlabelled, a3 has no image of its own: all three count in nothing.
    labels = clip_data.clip_labels(clips, ("expr",))["expr"]
    assert labels.tolist() == [[0, -1, -1], [3, 4, 5], [6, -1, -1], [7, 1, -1]]
    images, yielded = collect(clip_data.clip_dataset(clips, ("expr",), image_size=16,
                                                     batch_size=2))
    # a3 reads a2's image (the nearest; the earlier one on a tie).
    assert grey_levels(images).tolist() == [[20, 40, 40], [80, 100, 120], [140] * 3,
                                            [210, 220, 230]]
    assert yielded.tolist() == labels.tolist()

    # Without filled images, a3 has nothing to read: a gap, which no clip spans.
    unfilled = clip_data.clip_segments(tiny_index(tiny_root, fill=False), 3, frames="all")
    assert ("a", 3) not in frames_of(unfilled)
    assert unfilled.segments.rows.tolist() == [[0, 1, 1], [2, 3, 4], [5, 5, 5], [6, 7, 8]]


def test_training_stride_shuffle_cache_and_resize(tiny_root):
    clips = clip_data.clip_segments(tiny_index(tiny_root, fill=True), 3, stride=2)
    # a1..a7 from rows 0, 2, 4 (the last reaching a7), b1..b3 once.
    assert clips.segments.rows.tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [7, 8, 9]]
    labels = clip_data.clip_labels(clips, ("expr",))["expr"]
    # The clips start at a1 (grey 20), a3 (a2's image, 40), a5 (100) and b1 (210).
    firsts = {20: 0, 40: 1, 100: 2, 210: 3}

    def epochs(seed, count=2):
        ds = clip_data.clip_dataset(clips, ("expr",), image_size=16, batch_size=4,
                                    training=True, shuffle_seed=seed, cache=True)
        return [collect(ds) for _ in range(count)]

    orders = []
    for seed in (0, 1):
        first_run = epochs(seed)
        for images, yielded in first_run:
            order = [firsts[g] for g in grey_levels(images)[:, 0].tolist()]
            assert sorted(order) == [0, 1, 2, 3]
            # Labels travel with their frames.
            assert yielded.tolist() == labels[order].tolist()
            orders.append(order)
        # Seeded: the same seed gives the same sequence of orders.
        again = epochs(seed)
        assert [y.tolist() for _, y in again] == [y.tolist() for _, y in first_run]
    assert len({tuple(order) for order in orders}) > 1

    small, _ = collect(clip_data.clip_dataset(clips, ("expr",), image_size=8, batch_size=4))
    assert small.shape == (4, 3, 8, 8, 3)
    assert grey_levels(small)[0].tolist() == [20, 40, 40]


@keras.saving.register_keras_serializable(package="affectkit_tests")
class FramePlusClipMean(keras.layers.Layer):
    """Per frame: its mean pixel, and its mean pixel plus 10 x the clip's mean pixel."""

    def call(self, frames):
        per_frame = keras.ops.mean(frames, axis=(2, 3, 4))[..., None]  # (B, T, 1)
        clip = keras.ops.mean(per_frame, axis=1, keepdims=True)
        return keras.ops.concatenate([per_frame, per_frame + 10.0 * clip], axis=-1)


def test_predict_clip_frames_gives_every_frame_one_prediction_with_its_clip(tiny_root):
    index = tiny_index(tiny_root, fill=True)
    frames = keras.Input((3, 16, 16, 3), name="frames")
    model = keras.Model(frames, {"expr": FramePlusClipMean()(frames)})
    outputs = clip_data.predict_clip_frames(model, index, ("expr",), batch_size=3)

    # NumPy reference: clips a1-a3, a4-a6, a7 (padded with a7), b1-b3; a3 shows a2's grey.
    grey = {("a", k): 20 * k for k in range(1, 8)}
    grey[("a", 3)] = 40
    grey.update({("b", k): 200 + 10 * k for k in (1, 2, 3)})
    clips = [[("a", 1), ("a", 2), ("a", 3)], [("a", 4), ("a", 5), ("a", 6)], [("a", 7)] * 3,
             [("b", 1), ("b", 2), ("b", 3)]]
    expected = {}
    for clip in clips:
        clip_mean = np.mean([grey[f] for f in clip]) / 255
        for f in clip:
            expected[f] = [grey[f] / 255, grey[f] / 255 + 10 * clip_mean]
    rows = list(zip(index.frames["video"], index.frames["frame"]))
    assert outputs["expr"].shape == (10, 2)
    np.testing.assert_allclose(outputs["expr"], [expected[f] for f in rows], atol=2e-3)


def test_errors_name_what_was_expected(tiny_root):
    index = tiny_index(tiny_root, fill=False)
    with pytest.raises(ValueError, match="frames="):
        clip_data.clip_segments(index, 3, frames="everything")
    frames = keras.Input((3, 16, 16, 3))
    model = keras.Model(frames, {"expr": FramePlusClipMean()(frames)})
    with pytest.raises(ValueError, match="'a' frame 3 has no aligned image.*fill_missing"):
        clip_data.predict_clip_frames(model, index, ("expr",))
    images = keras.Input((16, 16, 3))
    flat = keras.Model(images, {"expr": keras.layers.Dense(2)(images)})
    with pytest.raises(ValueError, match=r"input \(batch, length, size, size, 3\)"):
        clip_data.predict_clip_frames(flat, index, ("expr",))
    unlabelled = FrameIndex(index.frames.assign(expr=-1), SCHEMA, index.root)
    with pytest.raises(ValueError, match="a label of expr"):
        clip_data.clip_segments(unlabelled, 3, frames="labelled", tasks=("expr",))


def test_clip_labels_score_like_their_frames():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, size=(6, 16))
    labels[-1, 10:] = -1  # padding
    labels[1, ::5] = -1  # unlabelled frames
    probabilities = rng.random((6, 16, 8))
    scores = metrics.abaw_scores("expr", SCHEMA, labels, probabilities)
    valid = labels != -1
    expected = f1_score(labels[valid], probabilities.argmax(-1)[valid], average="macro",
                        labels=list(range(8)), zero_division=0)
    assert scores["score"] == pytest.approx(expected)
