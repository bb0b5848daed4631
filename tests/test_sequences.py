"""Windows and segments: index properties over many random video layouts, and the tf.data
builders' shapes, label alignment, missing markers, padding and seeded order.

References are plain Python loops over the rows, independent of the vectorised code.
"""

import numpy as np
import pandas as pd
import pytest

from affectkit.data import sequences
from affectkit.data.affwild2 import FrameIndex, frame_columns
from affectkit.data.pipeline import frame_rows, label_arrays
from affectkit.labels import get_schema

SCHEMA = get_schema("abaw3")
K = SCHEMA.num_aus


def random_layout(rng):
    """Per-row video ids of 1-6 videos of 1-25 rows; ids in a random (unsorted) order."""
    n_videos = int(rng.integers(1, 7))
    names = rng.permutation([f"v{k}" for k in range(n_videos)])
    lengths = rng.integers(1, 26, n_videos)
    return np.repeat(names, lengths).astype(object)


def video_bounds(videos):
    """Row -> (first row, last row) of its video, by a plain loop."""
    first, last = {}, {}
    for i, v in enumerate(videos):
        first.setdefault(v, i)
        last[v] = i
    return first, last


# ------------------------------------------------------------------------- index properties


def test_windows_never_look_ahead_nor_across_videos():
    rng = np.random.default_rng(0)
    for _ in range(300):
        videos = random_layout(rng)
        window = int(rng.integers(1, 12))
        rows = sequences.window_indices(videos, window)
        first, _ = video_bounds(videos)
        assert rows.shape == (len(videos), window)
        for i, v in enumerate(videos):
            expected = [max(i - (window - 1 - k), first[v]) for k in range(window)]
            assert rows[i].tolist() == expected
            assert rows[i, -1] == i
            assert all(videos[r] == v and r <= i for r in rows[i])


def test_window_padding_repeats_the_video_first_frame():
    videos = np.array(["b"] * 3 + ["a"] * 5, object)
    rows = sequences.window_indices(videos, 4)
    assert rows[0].tolist() == [0, 0, 0, 0]
    assert rows[2].tolist() == [0, 0, 1, 2]
    assert rows[3].tolist() == [3, 3, 3, 3]
    assert rows[7].tolist() == [4, 5, 6, 7]


def test_segments_properties_over_random_layouts():
    rng = np.random.default_rng(1)
    for _ in range(300):
        videos = random_layout(rng)
        length = int(rng.integers(1, 9))
        stride = int(rng.integers(1, length + 1))
        seg = sequences.segment_indices(videos, length, stride)
        first, last = video_bounds(videos)
        assert seg.rows.shape == seg.valid.shape == (len(seg), length)
        covered = set()
        previous_video = None
        for s in range(len(seg)):
            v = seg.video[s]
            start = first[v] + seg.position[s] * stride
            assert seg.starts_video[s] == (seg.position[s] == 0) == (v != previous_video)
            previous_video = v
            for k in range(length):
                row = start + k
                if row <= last[v]:
                    assert seg.valid[s, k] and seg.rows[s, k] == row
                    covered.add(row)
                else:  # padding repeats the video's last row
                    assert not seg.valid[s, k] and seg.rows[s, k] == last[v]
            assert all(videos[r] == v for r in seg.rows[s])
        assert covered == set(range(len(videos)))
        # Video order is row order, and no segment starts after the video is fully covered.
        for v in set(videos):
            n = last[v] - first[v] + 1
            count = int((seg.video == v).sum())
            assert count == 1 + -(-max(n - length, 0) // stride)


def test_segments_cover_every_frame_once_when_stride_equals_length():
    rng = np.random.default_rng(2)
    for _ in range(300):
        videos = random_layout(rng)
        length = int(rng.integers(1, 9))
        seg = sequences.segment_indices(videos, length)
        valid_rows = seg.rows[seg.valid]
        assert sorted(valid_rows.tolist()) == list(range(len(videos)))
        # Padding only at the end of a video's last segment.
        for s in range(len(seg)):
            flags = seg.valid[s].tolist()
            assert flags == sorted(flags, reverse=True)


def test_non_contiguous_videos_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="'a'.*not contiguous"):
        sequences.window_indices(np.array(["a", "b", "a"], object), 2)
    with pytest.raises(ValueError, match="stride"):
        sequences.segment_indices(["a"] * 4, length=2, stride=3)
    with pytest.raises(ValueError, match="window"):
        sequences.window_indices(["a"], 0)


def test_shuffle_segments_is_seeded_permutation():
    seg = sequences.segment_indices(np.repeat(["a", "b", "c"], [7, 3, 9]).astype(object), 2)
    one = sequences.shuffle_segments(seg, 5)
    two = sequences.shuffle_segments(seg, 5)
    other = sequences.shuffle_segments(seg, 6)
    np.testing.assert_array_equal(one.rows, two.rows)
    assert not np.array_equal(one.rows, other.rows)
    assert sorted(map(tuple, one.rows.tolist())) == sorted(map(tuple, seg.rows.tolist()))


def test_stream_order_keeps_each_video_consecutive_in_one_slot():
    rng = np.random.default_rng(3)
    for _ in range(100):
        videos = random_layout(rng)
        seg = sequences.segment_indices(videos, int(rng.integers(1, 6)))
        streams = int(rng.integers(1, 5))
        order = sequences.stream_order(seg, streams).reshape(-1, streams)
        real = order[order >= 0]
        assert sorted(real.tolist()) == list(range(len(seg)))
        for slot in range(streams):
            column = [s for s in order[:, slot] if s >= 0]
            assert (order[len(column):, slot] == -1).all()  # fillers only at the end
            for a, b in zip(column, column[1:]):
                if not seg.starts_video[b]:  # within a video: the next segment
                    assert b == a + 1 and seg.video[a] == seg.video[b]


# ------------------------------------------------------------------------- datasets


def make_index(seed=0, layout=(("v_a", 9, {3, 4}), ("v_b", 4, set()), ("v_c", 6, {1}))):
    """A FrameIndex from a hand-made table: (video, frames, frames without an image)."""
    rng = np.random.default_rng(seed)
    rows = []
    for video, n, missing in layout:
        have = [k for k in range(1, n + 1) if k not in missing]
        for k in range(1, n + 1):
            image_frame = k if k in have else -1
            rows.append((video, k, k not in missing, image_frame))
    n = len(rows)
    frames = pd.DataFrame({
        "video": [r[0] for r in rows],
        "frame": np.array([r[1] for r in rows], np.int64),
        "valence": rng.uniform(-1, 1, n).astype(np.float32),
        "arousal": rng.uniform(-1, 1, n).astype(np.float32),
        "expr": rng.integers(0, SCHEMA.num_expressions, n).astype(np.int64),
    })
    frames.loc[[1, 7], ["valence", "arousal"]] = -5.0
    frames.loc[[0, 5, 12], "expr"] = -1
    au = rng.integers(0, 2, (n, K))
    au[[2, 10]] = -1
    for j, name in enumerate(SCHEMA.aus):
        frames[name] = au[:, j].astype(np.int64)
    frames["image_aligned"] = [f"/x/{r[0]}/{r[1]:05d}.jpg" if r[2] else "" for r in rows]
    frames["image_cropped"] = frames["image_aligned"]
    frames["has_image"] = np.array([r[2] for r in rows], bool)
    frames["image_frame"] = np.array([r[3] for r in rows], np.int64)
    return FrameIndex(frames[frame_columns(SCHEMA)], SCHEMA)


def row_features(index, dim=3):
    """Features that name their row: column 0 is the row number."""
    n = len(index.frames)
    return np.stack([np.arange(n)] + [np.arange(n) * 0.5 + j for j in range(1, dim)],
                    1).astype(np.float32)


def collect(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x)
        ys.append(y)
    return xs, ys


def test_window_dataset_shapes_and_alignment_with_label_arrays():
    index = make_index()
    feats = row_features(index)
    probs = np.eye(7, dtype=np.float32)[np.arange(len(index)) % 7]
    tasks = ("va", "expr", "au")
    ds = sequences.window_dataset(index, {"probs": probs, "feat": feats}, tasks=tasks,
                                  window=4, windowed=["probs"], batch_size=5)
    x_spec, _ = ds.element_spec
    assert x_spec["probs"].shape.as_list() == [None, 4, 7]
    assert x_spec["feat"].shape.as_list() == [None, 3]
    xs, ys = collect(ds)
    assert xs[0]["probs"].shape == (5, 4, 7) and xs[0]["feat"].shape == (5, 3)
    assert ys[0]["va"].shape == (5, 2) and ys[0]["expr"].shape == (5,)
    assert ys[0]["au"].shape == (5, K)
    assert ys[0]["expr"].dtype.name == "int32" and ys[0]["au"].dtype.name == "float32"
    expected = label_arrays(index, tasks)
    for task in tasks:
        got = np.concatenate([y[task].numpy() for y in ys])
        np.testing.assert_array_equal(got, expected[task])
    # Missing markers survive.
    got_va = np.concatenate([y["va"].numpy() for y in ys])
    assert (got_va == -5).any() and (np.concatenate([y["au"] for y in ys]) == -1).any()
    # Targets are the frames with an image, in order; windows hold their previous rows.
    targets = frame_rows(index).index.to_numpy()
    feat_rows = np.concatenate([x["feat"].numpy()[:, 0] for x in xs]).astype(int)
    np.testing.assert_array_equal(feat_rows, targets)
    windows = sequences.window_indices(index.frames["video"].to_numpy(), 4)[targets]
    got_probs = np.concatenate([x["probs"].numpy() for x in xs])
    np.testing.assert_array_equal(got_probs, probs[windows])


def test_window_dataset_single_source_and_fill_policy():
    index = make_index()
    feats = row_features(index)
    ds = sequences.window_dataset(index, feats, tasks="expr", window=3, batch_size=64,
                                  missing_images="fill")
    (x,), (y,) = collect(ds)
    # With "fill", targets are frames with image_frame >= 0 (the index has no filling here).
    mask = index.frames["image_frame"].to_numpy() >= 0
    assert x.shape == (mask.sum(), 3, 3)
    np.testing.assert_array_equal(y["expr"].numpy(), label_arrays(index, "expr", "fill")["expr"])
    # A frame without an image still appears as context of the next one (row 3 of v_a).
    target = int(np.flatnonzero(mask)[3])  # frame 6 of v_a, row 5
    assert x.numpy()[3, :, 0].tolist() == [target - 2, target - 1, target]


def test_window_dataset_seeded_shuffle_and_window_choice():
    index = make_index()
    feats = row_features(index)

    def epochs(seed, window=4):
        ds = sequences.window_dataset(index, feats, tasks="va", window=window, batch_size=4,
                                      training=True, shuffle_seed=seed)
        return [[(x.numpy()[:, -1, 0].tolist(), x.shape[1]) for x, _ in ds] for _ in range(2)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    assert first == again
    assert first != other
    assert first[0] != first[1]  # reshuffled each epoch
    rows = sorted(r for batch, _ in first[0] for r in batch)
    assert rows == frame_rows(index).index.tolist()
    varying = sequences.window_dataset(index, feats, tasks="va", window=[2, 4, 8])
    assert varying.element_spec[0].shape.as_list() == [None, None, 3]
    sizes = [size for batch in epochs(3, window=[2, 4, 8]) for _, size in batch]
    assert set(sizes) <= {2, 4, 8} and len(set(sizes)) > 1
    assert sizes == [size for batch in epochs(3, window=[2, 4, 8]) for _, size in batch]


def test_window_dataset_balances_expressions():
    layout = (("v_a", 400, set()), ("v_b", 200, set()))
    index = make_index(layout=layout)
    expr = np.where(np.arange(600) % 10 < 8, 0, 1)  # 80 % class 0, 20 % class 1
    expr[::50] = -1  # 2 % unlabelled
    index.frames["expr"] = expr.astype(np.int64)
    feats = row_features(index)
    ds = sequences.window_dataset(index, feats, tasks="expr", window=2, batch_size=100,
                                  balance="expr", shuffle_seed=4, repeat=True)
    drawn = np.concatenate([y["expr"].numpy() for _, y in ds.take(40)])
    labelled = drawn[drawn >= 0]
    assert abs((labelled == 1).mean() - 0.5) < 0.03
    assert abs((drawn == -1).mean() - 0.02) < 0.01
    # Seeded: the same draws again from a new dataset.
    again = sequences.window_dataset(index, feats, tasks="expr", window=2, batch_size=100,
                                     balance="expr", shuffle_seed=4, repeat=True)
    np.testing.assert_array_equal(
        drawn, np.concatenate([y["expr"].numpy() for _, y in again.take(40)]))


def expected_segment_labels(index, length, task):
    """Labels per segment step by a plain loop: markers on padding and frames without image."""
    frames = index.frames
    marker = {"va": -5.0, "expr": -1, "au": -1}[task]
    out = []
    for video in pd.unique(frames["video"]):
        rows = np.flatnonzero(frames["video"].to_numpy() == video)
        for start in range(0, len(rows), length):
            segment = []
            for k in range(length):
                if start + k < len(rows) and frames["has_image"].iloc[rows[start + k]]:
                    segment.append(index.labels(task)[task][rows[start + k]])
                else:
                    segment.append(np.full_like(index.labels(task)[task][0], marker))
            out.append(segment)
    return np.array(out)


def test_segment_dataset_shapes_labels_and_padding():
    index = make_index()
    feats = row_features(index)
    ds = sequences.segment_dataset(index, feats, length=4, batch_size=2)
    xs, ys = collect(ds)
    assert xs[0].shape == (2, 4, 3)
    assert ys[0]["va"].shape == (2, 4, 2) and ys[0]["expr"].shape == (2, 4)
    assert ys[0]["au"].shape == (2, 4, K)
    seg = sequences.segment_indices(index.frames["video"].to_numpy(), 4)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x in xs]), feats[seg.rows])
    for task in ("va", "expr", "au"):
        got = np.concatenate([y[task].numpy() for y in ys])
        np.testing.assert_array_equal(got, expected_segment_labels(index, 4, task))
        np.testing.assert_array_equal(got, sequences.segment_labels(index, seg, task)[task])
    # v_b (4 frames) is exactly one segment; v_c (6 frames) pads 2 steps with its last row.
    expr = np.concatenate([y["expr"].numpy() for y in ys])
    assert (expr[-1, 2:] == -1).all()


def test_segment_dataset_orders_and_info():
    index = make_index()
    feats = row_features(index)
    n_segments = len(sequences.segment_indices(index.frames["video"].to_numpy(), 3))

    def order(seed, kind="shuffle"):
        ds = sequences.segment_dataset(index, {"f": feats}, tasks="expr", length=3,
                                       batch_size=2, order=kind, shuffle_seed=seed,
                                       with_info=True)
        return [x["segment"].numpy().tolist() for x, _ in ds]

    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(sum(order(1), [])) == list(range(n_segments))
    assert sum(order(0, "video"), []) == list(range(n_segments))
    ds = sequences.segment_dataset(index, {"f": feats}, tasks="expr", length=3, batch_size=2,
                                   order="streams", with_info=True)
    for x, y in ds:
        filler = x["segment"].numpy() < 0
        assert not x["valid"].numpy()[filler].any()
        assert (y["expr"].numpy()[filler] == -1).all()
        assert x["starts_video"].numpy()[filler].all()
        assert x["f"].shape == (2, 3, 3)


def test_a_keras_model_trains_on_windows_of_varying_size():
    import keras
    import tensorflow as tf

    index = make_index()
    probs = np.random.default_rng(0).random((len(index), 7)).astype(np.float32)
    ds = sequences.window_dataset(index, {"probs": probs, "feat": row_features(index)},
                                  tasks="expr", window=[2, 4], windowed=["probs"],
                                  batch_size=4, training=True)
    ds = ds.map(lambda x, y: (x, {"expr": tf.ones_like(y["expr"])}))  # no missing marker
    probs_in = keras.Input((None, 7), name="probs")
    feat_in = keras.Input((3,), name="feat")
    pooled = keras.layers.GlobalAveragePooling1D()(probs_in)
    hidden = keras.layers.Concatenate()([pooled, feat_in])
    expr = keras.layers.Dense(8, activation="softmax", name="expr")(hidden)
    model = keras.Model({"probs": probs_in, "feat": feat_in}, {"expr": expr})
    model.compile("adam", {"expr": "sparse_categorical_crossentropy"})
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
