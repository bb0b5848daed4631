"""Video k-fold splits (affectkit.data.splits): folds partition the training videos by
source video, balanced by frames and seeded; the last fold is the validation set; the
fold's frame indexes."""

import numpy as np
import pytest

from affectkit.data.affwild2 import FrameIndex
from affectkit.data.splits import assign_folds, cross_validation_folds, fold_indexes, fold_split


def test_four_folds_partition_the_training_videos_and_the_fifth_is_validation():
    train = [f"t{i:02d}" for i in range(13)] + ["pair_left", "pair_right", "p2_left", "p2_right"]
    val = ["v0", "v1", "v2_left", "v2_right"]
    counts = {video: 100 + 7 * i for i, video in enumerate(train)}
    folds = cross_validation_folds(train, val, counts, seed=3)
    assert sorted(folds) == [1, 2, 3, 4, 5]
    training_folds = [folds[k] for k in (1, 2, 3, 4)]
    flat = [video for fold in training_folds for video in fold]
    assert sorted(flat) == sorted(train)  # every training video ...
    assert len(flat) == len(set(flat))  # ... in exactly one fold
    assert all(fold for fold in training_folds)
    assert folds[5] == sorted(val)
    for a, b in (("pair_left", "pair_right"), ("p2_left", "p2_right")):  # shared audio
        assert [a in fold for fold in training_folds] == [b in fold for fold in training_folds]
    sizes = [sum(counts[v] for v in fold) for fold in training_folds]
    assert max(sizes) - min(sizes) <= max(counts.values()) * 2  # balanced by frames
    assert cross_validation_folds(train, val, counts, seed=3) == folds  # seeded
    for k in range(1, 6):
        trained, held_out = fold_split(folds, k)
        assert set(trained).isdisjoint(held_out)
        assert sorted(trained + held_out) == sorted(train + val)
        assert held_out == folds[k]


def test_greedy_folds_match_a_hand_computation():
    # Sizes 9, 5, 4, 3 (the pair counts 2 + 1) into two folds, largest first to the lighter
    # fold: 9 -> A; 5 -> B; 4 -> B (5 < 9); 3 -> A (9 == 9: the first fold).
    counts = {"a": 9, "b": 5, "c": 4, "d_left": 2, "d_right": 1}
    folds = assign_folds(list(counts), counts, num_folds=2, seed=0)
    assert sorted(map(sorted, folds)) == [["a", "d_left", "d_right"], ["b", "c"]]


def test_fold_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="at least 4"):
        assign_folds(["a", "b", "c_left", "c_right"], num_folds=4)
    with pytest.raises(ValueError, match="both the training and the validation"):
        cross_validation_folds(["a", "b", "c", "d"], ["d"])
    with pytest.raises(ValueError, match="expected one of"):
        fold_split({1: ["a"], 5: ["b"]}, 3)


def test_fold_indexes_hold_out_training_videos_and_train_on_the_rest(demo_root):
    train = FrameIndex.from_affwild2(demo_root, "abaw3", "train", fill_missing_images=True)
    val = FrameIndex.from_affwild2(demo_root, "abaw3", "val", fill_missing_images=True)
    trained, held_out, folds = fold_indexes(train, val, fold=1, num_folds=3, seed=0)
    assert held_out.videos == folds[1] and set(folds[1]) < set(train.videos)
    assert trained.videos == sorted(folds[2] + val.videos)
    for index in (trained, held_out):  # every frame of its videos, each video contiguous
        for video in index.videos:
            source = train if video in train.videos else val
            rows = index.frames[index.frames["video"] == video]
            np.testing.assert_array_equal(
                rows["frame"], source.frames.loc[source.frames["video"] == video, "frame"])
            assert np.all(np.diff(rows.index) == 1)
    same_train, same_val, none = fold_indexes(train, val, fold=3, num_folds=3)
    assert (same_train, same_val, none) == (train, val, None)
