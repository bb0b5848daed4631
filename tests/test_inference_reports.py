"""Plots of predictions over time and the overlay video (`affectkit.inference.reports`), on
synthetic frame tables shaped like `affectkit predict`'s CSV."""

import os
import time

import cv2
import numpy as np
import pandas as pd
import pytest

from affectkit.inference import reports
from affectkit.labels import get_schema

SCHEMA = get_schema("abaw3")
FRAME_SIZE = (320, 240)  # width, height
BOXES = {0: (40, 30, 50, 60), 1: (200, 40, 60, 70)}  # face_id: x, y, w, h


def synthetic_frame_table(frames=120, tasks=("va", "expr", "au"), fps=25.0, seed=0):
    """Two faces: face 0 everywhere but a gap (30-40 % of the video, no face at all there),
    face 1 in the second half; one `success` 0 row per frame without a face."""
    rng = np.random.default_rng(seed)
    rows = []
    for frame in range(1, frames + 1):
        t = (frame - 1) / fps
        phase = frame / frames
        present = [f for f, on in ((0, not 0.3 <= phase < 0.4), (1, phase >= 0.5)) if on]
        if not present:
            rows.append({"frame": frame, "timestamp": t, "face_id": -1, "success": 0,
                         "confidence": np.nan})
            continue
        for face in present:
            x, y, w, h = BOXES[face]
            row = {"frame": frame, "timestamp": t, "face_id": face, "success": 1,
                   "confidence": 0.9, "x": x, "y": y, "w": w, "h": h}
            if "va" in tasks:
                row["valence"] = float(np.sin(2 * np.pi * phase + face))
                row["arousal"] = float(0.8 * np.cos(3 * np.pi * phase + face))
            if "expr" in tasks:
                logits = rng.normal(size=SCHEMA.num_expressions)
                logits[int(phase * 4 + 2 * face) % SCHEMA.num_expressions] += 4
                probs = np.exp(logits) / np.exp(logits).sum()
                row.update(zip(SCHEMA.expressions, probs))
                row["expression"] = SCHEMA.expressions[int(np.argmax(probs))]
            if "au" in tasks:
                centres = np.linspace(0, 1, SCHEMA.num_aus)
                probs = 1 / (1 + np.exp(-8 * np.cos(2 * np.pi * (phase - centres) + face)))
                row.update(zip(SCHEMA.aus, probs))
                row.update({f"{au}_c": int(p >= 0.5) for au, p in zip(SCHEMA.aus, probs)})
            rows.append(row)
    return pd.DataFrame(rows)


def read_png(path):
    image = cv2.imread(path)
    assert image is not None, f"{path} is not a readable image"
    return image


def check_png(path, min_width=500, max_side=4000):
    image = read_png(path)
    height, width = image.shape[:2]
    assert min_width <= width <= max_side and 100 <= height <= max_side, image.shape
    assert image.std() > 5, "an empty figure"
    return image


def test_all_tasks_give_three_plots(tmp_path):
    paths = reports.plot_predictions(synthetic_frame_table(), SCHEMA, str(tmp_path), "clip")
    names = [os.path.basename(p) for p in paths]
    assert names == ["clip_va.png", "clip_expression.png", "clip_au.png"]
    for path in paths:
        check_png(path)
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_only_present_tasks_are_plotted(tmp_path):
    table = synthetic_frame_table(tasks=("va",))
    paths = reports.plot_predictions(table, SCHEMA, str(tmp_path), "va_only")
    assert [os.path.basename(p) for p in paths] == ["va_only_va.png"]
    assert os.listdir(tmp_path) == ["va_only_va.png"]
    check_png(paths[0])

    table = synthetic_frame_table(tasks=("expr", "au"))
    paths = reports.plot_predictions(table, SCHEMA, str(tmp_path / "ea"), "ea")
    assert [os.path.basename(p) for p in paths] == ["ea_expression.png", "ea_au.png"]

    no_tasks = table[["frame", "timestamp", "face_id", "success", "x", "y", "w", "h"]]
    assert reports.plot_predictions(no_tasks, SCHEMA, str(tmp_path / "none"), "n") == []
    assert not (tmp_path / "none").exists()


def test_csv_without_timestamps_and_expression_names_only(tmp_path):
    table = synthetic_frame_table().drop(columns=["timestamp", *SCHEMA.expressions])
    csv = tmp_path / "clip.csv"
    table.to_csv(csv, index=False)  # face_id -1 stays; NaN predictions are empty cells
    paths = reports.plot_predictions(str(csv), SCHEMA, str(tmp_path / "plots"), "clip")
    assert len(paths) == 3
    for path in paths:
        check_png(path)


def test_a_video_without_any_face_still_plots(tmp_path):
    table = synthetic_frame_table(frames=20)
    table = table.assign(success=0, face_id=-1)
    paths = reports.plot_predictions(table, SCHEMA, str(tmp_path), "empty")
    assert len(paths) == 3
    for path in paths:
        check_png(path)


def test_time_bins_keep_gaps_and_cap_the_columns():
    bins = reports.TimeBins(np.arange(1, 11), max_columns=20)
    assert bins.count == 10 and len(bins.edges) == 11
    present = np.array([1, 2, 3, 8, 9, 10])
    means = bins.mean(bins.bins_of(present), present.astype(float))[:, 0]
    assert np.allclose(means[[0, 1, 2, 7, 8, 9]], present)
    assert np.isnan(means[3:7]).all()  # no-face frames stay gaps

    long = reports.TimeBins(np.arange(100_000) / 30.0, max_columns=2000)
    assert long.count == 2000 and len(long.centres) == 2000
    assert long.edges[0] == 0 and long.edges[-1] == pytest.approx(100_000 / 30.0)
    values = np.arange(100_000, dtype=float)
    means = long.mean(long.bins_of(np.arange(100_000) / 30.0), values)[:, 0]
    assert means[0] == pytest.approx(24.5) and np.isfinite(means).all()

    classes = np.array([2, 2, 1, -1])
    assert list(reports.TimeBins([0, 1], 1).mode(np.zeros(4, int), classes, 3)) == [2]


def test_long_video_plots_quickly(tmp_path):
    frames, fps = 100_000, 30.0
    short = synthetic_frame_table(frames=200, fps=fps)
    repeats = frames // 200
    table = pd.concat([short] * repeats, ignore_index=True)
    table["frame"] = np.repeat(np.arange(repeats) * 200, len(short)) + table["frame"]
    table["timestamp"] = (table["frame"] - 1) / fps
    assert table["frame"].max() == frames
    start = time.perf_counter()
    paths = reports.plot_predictions(table, SCHEMA, str(tmp_path), "long")
    elapsed = time.perf_counter() - start
    assert len(paths) == 3
    for path in paths:
        check_png(path, max_side=2000)
    assert elapsed < 20, f"{len(table)} rows took {elapsed:.1f} s"


def face_rows(table, frame):
    return reports.rows_by_frame(table)[frame]


def test_draw_overlay_draws_around_the_box_only():
    table = synthetic_frame_table(frames=100)
    frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 128, np.uint8)
    rows = [r for r in face_rows(table, 10) if r["face_id"] == 0]
    x, y, w, h = BOXES[0]
    drawn = reports.draw_overlay(frame, rows, SCHEMA)
    assert drawn.shape == frame.shape and drawn.dtype == np.uint8
    assert (frame == 128).all(), "the input frame was changed"
    changed = (drawn != frame).any(axis=2)
    assert changed[y - 1:y + h + 2, x - 1:x + w + 2].any()
    assert changed[y, x:x + w].all(), "the box's top edge"
    assert not changed[FRAME_SIZE[1] - 60:, FRAME_SIZE[0] - 100:].any(), "far corner drawn on"
    rows_below = np.nonzero(changed[y + h + 2:, x:x + w].any(axis=1))[0]
    assert len(rows_below), "no valence/arousal bars or AUs under the box"


def test_draw_overlay_leaves_no_face_frames_unchanged():
    table = synthetic_frame_table(frames=100)
    rows = face_rows(table, 35)  # inside the gap
    assert len(rows) == 1 and rows[0]["success"] == 0
    frame = np.random.default_rng(1).integers(0, 255, (FRAME_SIZE[1], FRAME_SIZE[0], 3),
                                              dtype=np.uint8)
    assert np.array_equal(reports.draw_overlay(frame, rows, SCHEMA), frame)
    assert np.array_equal(reports.draw_overlay(frame, [], SCHEMA), frame)


def test_draw_overlay_with_va_only():
    table = synthetic_frame_table(frames=100, tasks=("va",))
    frame = np.zeros((FRAME_SIZE[1], FRAME_SIZE[0], 3), np.uint8)
    drawn = reports.draw_overlay(frame, face_rows(table, 80), SCHEMA)  # both faces
    for x, y, w, h in BOXES.values():
        assert (drawn[y, x:x + w] != 0).any()


def decode(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def test_overlay_writer_writes_every_frame(tmp_path):
    table = synthetic_frame_table(frames=24)
    rows = reports.rows_by_frame(table)
    path = tmp_path / "out" / "clip_overlay.mp4"
    with reports.OverlayWriter(str(path), 25.0, FRAME_SIZE, SCHEMA) as video:
        for frame in range(1, 25):
            image = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 10 * frame % 255, np.uint8)
            video.write(image, rows.get(frame, []))
    assert os.listdir(path.parent) == ["clip_overlay.mp4"]
    plain = tmp_path / "plain"
    plain.write_text("")
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    frames = decode(str(path))
    assert len(frames) == 24
    assert frames[0].shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3)
    x, y, w, h = BOXES[0]
    top_edge_bgr = frames[0][y, x + 5:x + w - 5].astype(int).mean(axis=0)
    assert np.abs(top_edge_bgr - reports.face_colour(0)[::-1]).max() < 40  # RGB in, BGR out


def test_overlay_writer_pads_odd_sizes(tmp_path):
    path = tmp_path / "odd.mp4"
    with reports.OverlayWriter(str(path), 10, (65, 47), SCHEMA) as video:
        assert video.encoded_size == (66, 48)
        for _ in range(3):
            video.write(np.zeros((47, 65, 3), np.uint8), [])
    frames = decode(str(path))
    assert len(frames) == 3 and frames[0].shape == (48, 66, 3)


def test_failure_inside_the_writer_leaves_no_file(tmp_path):
    path = tmp_path / "clip_overlay.mp4"
    with pytest.raises(RuntimeError, match="decode failed"):
        with reports.OverlayWriter(str(path), 25.0, FRAME_SIZE, SCHEMA) as video:
            video.write(np.zeros((FRAME_SIZE[1], FRAME_SIZE[0], 3), np.uint8), [])
            raise RuntimeError("decode failed")
    assert os.listdir(tmp_path) == []

    with pytest.raises(ValueError, match="frame of shape"):
        with reports.OverlayWriter(str(path), 25.0, FRAME_SIZE, SCHEMA) as video:
            video.write(np.zeros((10, 10, 3), np.uint8), [])
    assert os.listdir(tmp_path) == []

    video = reports.OverlayWriter(str(path), 25.0, FRAME_SIZE, SCHEMA)
    with pytest.raises(RuntimeError, match="no frames"):
        video.close()
    assert os.listdir(tmp_path) == []


def test_unopenable_overlay_paths_name_the_path(tmp_path):
    path = tmp_path / "clip_overlay.xyz"
    with pytest.raises(OSError, match="clip_overlay.xyz"):
        reports.OverlayWriter(str(path), 25.0, FRAME_SIZE, SCHEMA)
    assert os.listdir(tmp_path) == []

    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="a_file"):
        reports.OverlayWriter(str(tmp_path / "a_file" / "clip.mp4"), 25.0, FRAME_SIZE, SCHEMA)
    with pytest.raises(ValueError, match="size"):
        reports.OverlayWriter(str(tmp_path / "clip.mp4"), 25.0, (0, 240), SCHEMA)
