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


def random_layout(rng, gaps=True):
    """Per-row video ids and frame numbers of 1-6 videos of 1-25 rows; ids in a random
    (unsorted) order; each video starts at frame 1-3 and, with `gaps`, about one step in
    five skips 1-4 frame numbers."""
    n_videos = int(rng.integers(1, 7))
    names = rng.permutation([f"v{k}" for k in range(n_videos)])
    videos, frames = [], []
    for name in names:
        length = int(rng.integers(1, 26))
        steps = np.where(rng.random(length) < (0.2 if gaps else 0.0),
                         rng.integers(2, 6, length), 1)
        steps[0] = rng.integers(1, 4)
        videos += [name] * length
        frames += np.cumsum(steps).tolist()
    return np.array(videos, object), np.array(frames, np.int64)


def run_bounds(videos, frames):
    """Row -> (first row, last row) of its run of consecutive frames, by a plain loop."""
    first, last = [0] * len(videos), [0] * len(videos)
    for i in range(len(videos)):
        joins = i > 0 and videos[i] == videos[i - 1] and frames[i] == frames[i - 1] + 1
        first[i] = first[i - 1] if joins else i
    for i in reversed(range(len(videos))):
        joins = (i + 1 < len(videos) and videos[i + 1] == videos[i]
                 and frames[i + 1] == frames[i] + 1)
        last[i] = last[i + 1] if joins else i
    return first, last


# ------------------------------------------------------------------------- index properties


def test_video_runs_split_at_videos_and_gaps():
    starts, stops = sequences.video_runs(["a", "a", "a", "a", "b", "b", "c"],
                                         [1, 2, 5, 6, 3, 4, 9])
    assert starts.tolist() == [0, 2, 4, 6] and stops.tolist() == [2, 4, 6, 7]
    rng = np.random.default_rng(4)
    for _ in range(300):
        videos, frames = random_layout(rng)
        first, last = run_bounds(videos, frames)
        starts, stops = sequences.video_runs(videos, frames)
        assert starts.tolist() == sorted(set(first))
        assert (stops - 1).tolist() == sorted(set(last))
    starts, stops = sequences.video_runs(np.array([], object), np.array([], np.int64))
    assert starts.tolist() == [] and stops.tolist() == []


def test_windows_never_look_ahead_nor_across_videos_or_gaps():
    rng = np.random.default_rng(0)
    for _ in range(300):
        videos, frames = random_layout(rng)
        window = int(rng.integers(1, 12))
        rows = sequences.window_indices(videos, frames, window)
        first, _ = run_bounds(videos, frames)
        assert rows.shape == (len(videos), window)
        for i, v in enumerate(videos):
            expected = [max(i - (window - 1 - k), first[i]) for k in range(window)]
            assert rows[i].tolist() == expected
            assert rows[i, -1] == i
            assert all(videos[r] == v and r <= i for r in rows[i])
            # Within the window's distinct rows the frame numbers step by exactly one.
            distinct = sorted(set(rows[i].tolist()))
            assert [frames[r] for r in distinct] == list(
                range(frames[distinct[0]], frames[i] + 1))


def test_window_padding_repeats_the_first_frame_of_a_video_or_after_a_gap():
    videos = np.array(["b"] * 3 + ["a"] * 5, object)
    frames = np.array([1, 2, 3, 1, 2, 3, 4, 5])
    rows = sequences.window_indices(videos, frames, 4)
    assert rows[0].tolist() == [0, 0, 0, 0]
    assert rows[2].tolist() == [0, 0, 1, 2]
    assert rows[3].tolist() == [3, 3, 3, 3]
    assert rows[7].tolist() == [4, 5, 6, 7]
    # Video "a" with a gap between frames 2 and 10: frame 10 starts afresh.
    gapped = sequences.window_indices(videos, np.array([1, 2, 3, 1, 2, 10, 11, 12]), 4)
    assert gapped[5].tolist() == [5, 5, 5, 5]
    assert gapped[7].tolist() == [5, 5, 6, 7]
    assert gapped[4].tolist() == [3, 3, 3, 4]


def test_segments_properties_over_random_layouts():
    rng = np.random.default_rng(1)
    for _ in range(300):
        videos, frames = random_layout(rng)
        length = int(rng.integers(1, 9))
        stride = int(rng.integers(1, length + 1))
        seg = sequences.segment_indices(videos, frames, length, stride)
        first, last = run_bounds(videos, frames)
        assert seg.rows.shape == seg.valid.shape == (len(seg), length)
        covered = set()
        previous_run = None
        for s in range(len(seg)):
            run = first[seg.rows[s, 0]]
            start = run + seg.position[s] * stride
            assert seg.video[s] == videos[run]
            assert seg.starts_video[s] == (seg.position[s] == 0) == (run != previous_run)
            previous_run = run
            for k in range(length):
                row = start + k
                if row <= last[run]:
                    assert seg.valid[s, k] and seg.rows[s, k] == row
                    covered.add(row)
                else:  # padding repeats the run's last row
                    assert not seg.valid[s, k] and seg.rows[s, k] == last[run]
            valid_frames = frames[seg.rows[s][seg.valid[s]]]
            assert (np.diff(valid_frames) == 1).all()  # never spans a gap
        assert covered == set(range(len(videos)))
        # Runs in row order, and no segment starts after the run is fully covered.
        for run in sorted(set(first)):
            n = last[run] - run + 1
            count = sum(first[seg.rows[s, 0]] == run for s in range(len(seg)))
            assert count == 1 + -(-max(n - length, 0) // stride)


def test_segments_cover_every_frame_once_when_stride_equals_length():
    rng = np.random.default_rng(2)
    for _ in range(300):
        videos, frames = random_layout(rng)
        length = int(rng.integers(1, 9))
        seg = sequences.segment_indices(videos, frames, length)
        valid_rows = seg.rows[seg.valid]
        assert sorted(valid_rows.tolist()) == list(range(len(videos)))
        # Padding only at the end of a run's last segment.
        for s in range(len(seg)):
            flags = seg.valid[s].tolist()
            assert flags == sorted(flags, reverse=True)


def test_segments_break_at_gaps_by_hand():
    seg = sequences.segment_indices(["a"] * 7 + ["b"] * 2, [1, 2, 3, 4, 8, 9, 10, 1, 2], 3)
    assert seg.rows.tolist() == [[0, 1, 2], [3, 3, 3], [4, 5, 6], [7, 8, 8]]
    assert seg.valid.sum(axis=1).tolist() == [3, 1, 3, 2]
    assert seg.starts_video.tolist() == [True, False, True, True]
    assert seg.position.tolist() == [0, 1, 0, 0]
    assert seg.video.tolist() == ["a", "a", "a", "b"]


def test_non_contiguous_videos_unsorted_frames_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="'a'.*not contiguous"):
        sequences.window_indices(np.array(["a", "b", "a"], object), [1, 1, 2], 2)
    with pytest.raises(ValueError, match="video 'a' have frames 3 then 2"):
        sequences.segment_indices(["a"] * 3, [1, 3, 2], length=2)
    with pytest.raises(ValueError, match="frames 2 then 2"):
        sequences.video_runs(["a", "a"], [2, 2])
    with pytest.raises(ValueError, match="one per row"):
        sequences.window_indices(["a", "a"], [1], 2)
    with pytest.raises(ValueError, match="stride"):
        sequences.segment_indices(["a"] * 4, [1, 2, 3, 4], length=2, stride=3)
    with pytest.raises(ValueError, match="window"):
        sequences.window_indices(["a"], [1], 0)


def test_shuffle_segments_is_seeded_permutation():
    videos = np.repeat(["a", "b", "c"], [7, 3, 9]).astype(object)
    frames = np.concatenate([np.arange(1, 8), np.arange(1, 4), np.arange(1, 10)])
    seg = sequences.segment_indices(videos, frames, 2)
    one = sequences.shuffle_segments(seg, 5)
    two = sequences.shuffle_segments(seg, 5)
    other = sequences.shuffle_segments(seg, 6)
    np.testing.assert_array_equal(one.rows, two.rows)
    assert not np.array_equal(one.rows, other.rows)
    assert sorted(map(tuple, one.rows.tolist())) == sorted(map(tuple, seg.rows.tolist()))


def test_stream_order_keeps_each_run_consecutive_in_one_slot():
    rng = np.random.default_rng(3)
    for _ in range(100):
        videos, frames = random_layout(rng)
        seg = sequences.segment_indices(videos, frames, int(rng.integers(1, 6)))
        streams = int(rng.integers(1, 5))
        order = sequences.stream_order(seg, streams).reshape(-1, streams)
        real = order[order >= 0]
        assert sorted(real.tolist()) == list(range(len(seg)))
        for slot in range(streams):
            column = [s for s in order[:, slot] if s >= 0]
            assert (order[len(column):, slot] == -1).all()  # fillers only at the end
            for a, b in zip(column, column[1:]):
                if not seg.starts_video[b]:  # within a run: the next segment
                    assert b == a + 1 and seg.video[a] == seg.video[b]
                    assert seg.valid[a].all()
                    assert frames[seg.rows[b, 0]] == frames[seg.rows[a, -1]] + 1


# ------------------------------------------------------------------------- datasets


def make_index(seed=0, layout=(("v_a", 9, {3, 4}), ("v_b", 4, set()), ("v_c", 6, {1})),
               cropped_missing=None):
    """A FrameIndex from a hand-made table: (video, frames, frames without an image), where
    frames is a count n (frames 1..n) or a list of frame numbers (gaps allowed). The
    cropped view lacks the same frames, or those of `cropped_missing` (video -> set)."""
    rng = np.random.default_rng(seed)
    rows = []
    for video, numbers, missing in layout:
        numbers = range(1, numbers + 1) if isinstance(numbers, int) else numbers
        lacking = missing if cropped_missing is None else cropped_missing.get(video, set())
        for k in numbers:
            rows.append((video, k, k not in missing, k not in lacking))
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
    for view, flag, has, used in (("aligned", 2, "has_image", "image_frame"),
                                  ("cropped", 3, "has_image_cropped", "image_frame_cropped")):
        frames[f"image_{view}"] = [f"/x/{view}/{r[0]}/{r[1]:05d}.jpg" if r[flag] else ""
                                   for r in rows]
        frames[has] = np.array([r[flag] for r in rows], bool)
        frames[used] = np.array([r[1] if r[flag] else -1 for r in rows], np.int64)
    return FrameIndex(frames[frame_columns(SCHEMA)], SCHEMA)


def index_arrays(index):
    """`(videos, frames)` of an index's rows."""
    return index.frames["video"].to_numpy(), index.frames["frame"].to_numpy()


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
    windows = sequences.window_indices(*index_arrays(index), 4)[targets]
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
    seg = sequences.segment_indices(*index_arrays(index), 4)
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
    n_segments = len(sequences.segment_indices(*index_arrays(index), 3))

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


GAPPED = (("v_a", [1, 2, 3, 7, 8, 12], {8}), ("v_b", [1, 2, 3, 4, 6, 7, 8, 9], set()))


def test_window_dataset_over_an_index_with_gaps():
    index = make_index(layout=GAPPED)
    videos, frames = index_arrays(index)
    first, _ = run_bounds(videos, frames)
    feats = row_features(index)
    (x,), _ = collect(sequences.window_dataset(index, feats, tasks="expr", window=3,
                                               batch_size=64, missing_images="fill"))
    got = x.numpy()[:, :, 0].astype(int)
    targets = np.flatnonzero(index.frames["image_frame"].to_numpy() >= 0)
    expected = [[max(i - (2 - k), first[i]) for k in range(3)] for i in targets]
    assert got.tolist() == expected
    # By hand: v_a frame 7 (row 3) starts afresh after the gap 3 -> 7, frame 12 (row 5)
    # after 8 -> 12 (frame 8, row 4, has no image and is no target); v_b frame 6 (row 10)
    # after 4 -> 6.
    assert got[:5].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [3, 3, 3], [5, 5, 5]]
    assert got[8].tolist() == [7, 8, 9] and got[9].tolist() == [10, 10, 10]


def test_segment_dataset_over_an_index_with_gaps():
    index = make_index(layout=GAPPED)
    videos, frames = index_arrays(index)
    first, last = run_bounds(videos, frames)
    feats = row_features(index)
    # Reference by a loop over runs: chunks of 2, the last padded with the run's last row.
    rows, starts = [], []
    for run in sorted(set(first)):
        for start in range(run, last[run] + 1, 2):
            rows.append([min(start + k, last[run]) for k in range(2)])
            starts.append(start == run)
    assert rows == [[0, 1], [2, 2], [3, 4], [5, 5], [6, 7], [8, 9], [10, 11], [12, 13]]
    ds = sequences.segment_dataset(index, {"f": feats}, tasks="expr", length=2, batch_size=3,
                                   with_info=True)
    xs, ys = collect(ds)
    got = np.concatenate([x["f"].numpy()[:, :, 0] for x in xs]).astype(int)
    assert got.tolist() == rows
    assert np.concatenate([x["starts_video"].numpy() for x in xs]).tolist() == starts
    expr = np.concatenate([y["expr"].numpy() for y in ys])
    labels = index.labels("expr")["expr"]
    has_image = index.frames["has_image"].to_numpy()
    for s, segment in enumerate(rows):
        for k, row in enumerate(segment):
            padded = k > 0 and segment[k] == segment[k - 1]
            want = labels[row] if has_image[row] and not padded else -1
            assert expr[s, k] == want
    # Streams: a stateful model's slot restarts at every run, never carrying across a gap.
    streams = sequences.segment_dataset(index, {"f": feats}, tasks="expr", length=2,
                                        batch_size=2, order="streams", with_info=True)
    for x, _ in streams:
        for slot, segment in enumerate(x["segment"].numpy()):
            if segment >= 0:
                assert x["starts_video"].numpy()[slot] == starts[segment]


def test_datasets_follow_the_image_availability_of_their_view():
    # v_a lacks aligned frames 3, 4 and cropped frame 5 only; v_c lacks aligned frame 1.
    index = make_index(cropped_missing={"v_a": {5}})
    feats = row_features(index)
    aligned = index.frames["has_image"].to_numpy()
    cropped = index.frames["has_image_cropped"].to_numpy()
    assert (aligned != cropped).sum() == 4
    for view, mask in (("aligned", aligned), ("cropped", cropped)):
        (x,), (y,) = collect(sequences.window_dataset(index, feats, tasks="expr", window=2,
                                                      batch_size=64, view=view))
        np.testing.assert_array_equal(x.numpy()[:, -1, 0].astype(int), np.flatnonzero(mask))
        np.testing.assert_array_equal(y["expr"].numpy(),
                                      label_arrays(index, "expr", view=view)["expr"])
        seg = sequences.segment_indices(*index_arrays(index), 4)
        labels = sequences.segment_labels(index, seg, "expr", view=view)["expr"]
        expected = np.where(mask, index.labels("expr")["expr"], -1)[seg.rows]
        expected[~seg.valid] = -1
        np.testing.assert_array_equal(labels, expected)
        (_, ), (y,) = collect(sequences.segment_dataset(index, feats, tasks="expr", length=4,
                                                        batch_size=64, view=view))
        np.testing.assert_array_equal(y["expr"].numpy(), expected)
    with pytest.raises(ValueError, match="view"):
        sequences.window_dataset(index, feats, view="profile")
