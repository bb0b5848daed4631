"""Splits of Aff-Wild2 by video: k-fold cross-validation whose last fold is the official
validation set.

    assign_folds(videos, frame_counts, num_folds, seed)    training videos -> k folds
    cross_validation_folds(train, val, ..., num_folds)     {1..k-1: cut from the training
                                                            videos, k: the validation set}
    fold_split(folds, fold)                                 (videos trained on, held out)
    fold_indexes(train_index, val_index, fold, ...)         the same as `FrameIndex`es

Folds are cut by video, never by frame, and the face tracks `<name>_left` / `<name>_right`
of one source video (they share its audio and scene) always fall in the same fold. This is
the protocol of Liu et al. (ABAW5 2023, Table 2): four folds from the training videos, the
fifth the official validation set; fold k trains on the other four.
"""

import numpy as np
import pandas as pd

from affectkit.data.affwild2 import FrameIndex
from affectkit.features.audio import source_video_name


def assign_folds(videos, frame_counts=None, num_folds=4, seed=0):
    """Cuts videos into `num_folds` folds balanced by frames.

    Source videos (the `_left` / `_right` tracks of one video merged) are shuffled with
    `seed`, then each, largest first, goes to the fold with the fewest frames so far.

    Args:
        videos: video names.
        frame_counts: dict video -> frames (default 1 each: folds balanced by video count).
        num_folds: folds to cut.
        seed: shuffle seed (ties between equal sizes go by the shuffled order).
    Returns:
        list of `num_folds` sorted lists of video names; every video in exactly one.

    Example:
    >>> assign_folds(["a", "b", "c_left", "c_right"], num_folds=3)
    [['a'], ['b'], ['c_left', 'c_right']]
    """
    num_folds = int(num_folds)
    videos = sorted(set(videos))
    groups = {}
    for video in videos:
        groups.setdefault(source_video_name(video), []).append(video)
    if num_folds < 1 or len(groups) < num_folds:
        raise ValueError(
            f"{len(groups)} source videos cannot make {num_folds} folds; expected at least "
            f"{num_folds} videos (after merging _left/_right tracks) and num_folds >= 1."
        )
    counts = frame_counts or {}
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = np.array([sum(counts.get(v, 1) for v in groups[names[i]]) for i in order])
    folds = [[] for _ in range(num_folds)]
    totals = np.zeros(num_folds, np.int64)
    for position in np.argsort(-sizes, kind="stable"):
        fold = int(np.argmin(totals))
        folds[fold].extend(groups[names[order[position]]])
        totals[fold] += sizes[position]
    return [sorted(fold) for fold in folds]


def cross_validation_folds(train_videos, val_videos, frame_counts=None, num_folds=5, seed=0):
    """Folds `1 .. num_folds - 1` cut from the training videos (`assign_folds`), fold
    `num_folds` the official validation set.

    Returns:
        dict fold number -> sorted video names.

    Example:
    >>> cross_validation_folds(["a", "b"], ["v"], num_folds=3)
    {1: ['a'], 2: ['b'], 3: ['v']}
    """
    overlap = sorted(set(train_videos) & set(val_videos))
    if overlap:
        raise ValueError(f"Videos {overlap[:5]} are in both the training and the validation "
                         "set; expected disjoint splits.")
    if int(num_folds) < 2:
        raise ValueError(f"num_folds {num_folds!r}: expected at least 2 (one or more from the "
                         "training videos, the last the validation set).")
    folds = assign_folds(train_videos, frame_counts, int(num_folds) - 1, seed)
    table = {k + 1: fold for k, fold in enumerate(folds)}
    table[int(num_folds)] = sorted(set(val_videos))
    return table


def fold_split(folds, fold):
    """`(videos trained on, videos held out)` of fold `fold` of a fold table."""
    if fold not in folds:
        raise ValueError(f"Unknown fold {fold!r}: expected one of {sorted(folds)}.")
    train = sorted(v for k, videos in folds.items() if k != fold for v in videos)
    return train, list(folds[fold])


def fold_indexes(train_index, val_index, fold, num_folds=5, seed=0):
    """The frames fold `fold` trains on and is scored on, from the official splits.

    Fold `num_folds` is the official split itself (trains on `train_index`, scored on
    `val_index`); fold k < `num_folds` holds out a part of the training videos and trains
    on the rest together with the validation videos. Folds are balanced by frames.

    Args:
        train_index, val_index: `FrameIndex`es of the official training and validation sets.
        fold: 1 .. `num_folds`.
        num_folds: folds, the last the validation set (5 in Liu et al. 2023).
        seed: shuffle seed of `assign_folds`.
    Returns:
        `(train FrameIndex, held-out FrameIndex, folds)`, `folds` the table of
        `cross_validation_folds` (None for fold `num_folds`, which needs none).
    """
    if fold == int(num_folds):
        return train_index, val_index, None
    counts = train_index.frames.groupby("video").size().to_dict()
    folds = cross_validation_folds(train_index.videos, val_index.videos, counts, num_folds,
                                   seed)
    trained, held_out = fold_split(folds, fold)
    frames = pd.concat([train_index.frames, val_index.frames], ignore_index=True)
    everything = FrameIndex(frames, train_index.schema, train_index.root)
    return everything.subset(trained), everything.subset(held_out), folds
