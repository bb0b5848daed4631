"""`affectkit predict`: faces found, rows kept, ids stable, files written, bad input reported.

Inputs are videos synthesised from a real photograph (scikit-image's astronaut) moving,
changing size and leaving the frame, whose true face box is known for every frame.
"""

import itertools
import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data

from affectkit.data.moving_photos import ASTRONAUT_FACE, MovingPhoto, write_moving_photo_video
from affectkit.inference.tracking import box_iou
from affectkit.inference.video import VideoReader
from affectkit.labels import get_schema


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small MTANet-style model (ABAW3 schema, all three tasks) saved as .keras."""
    from affectkit.models.affect_model import AffectModel

    model = AffectModel.from_preset(
        "zhang2020_mtanet", schema="abaw3", image_size=32,
        backbone={"depths": [1, 1, 1, 1], "stem_width": 8, "widths": [8, 8, 16, 16]},
        neck={"width": 16})
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def leaving_video(tmp_path_factory):
    """The astronaut crossing the frame, growing, and leaving it on the right."""
    path = str(tmp_path_factory.mktemp("videos") / "leaving.mp4")
    photo = MovingPhoto(data.astronaut(), ASTRONAUT_FACE, start=(140, 150), end=(760, 170),
                        scale=(0.6, 1.0))
    truth = write_moving_photo_video(path, [photo], frames=48, size=(480, 270), fps=24)
    return path, truth


def _matched_iou(table, truth):
    merged = table[table.success == 1].merge(truth, on="frame", suffixes=("", "_true"))
    return np.array([box_iou(r[["x", "y", "w", "h"]].to_numpy(float),
                             r[["x_true", "y_true", "w_true", "h_true"]].to_numpy(float))
                     for _, r in merged.iterrows()])


@pytest.mark.parametrize("every", [1, 4])
def test_faces_found_near_the_truth_and_no_face_frames_kept(tiny_model, leaving_video, every):
    from affectkit.inference.predictor import FacePredictor, prediction_columns

    path, truth = leaving_video
    predictor = FacePredictor(tiny_model, every=every, batch_size=8)
    table = predictor.predict_video(path)
    assert list(table.columns) == prediction_columns(get_schema("abaw3"), ("va", "expr", "au"))
    # One row per frame (one face at most here), frames 1..N in order, none dropped.
    assert table["frame"].tolist() == list(range(1, 49))
    found = table.set_index("frame")["success"]
    visible = truth.set_index("frame")["visible"]
    assert found[visible].mean() >= 0.9
    gone = truth.frame[truth.x > 480].tolist()  # the face entirely outside the frame
    assert gone and (found[gone] == 0).all()
    assert table.loc[table.success == 0, ["valence", "Neutral", "AU1"]].isna().all().all()
    assert (table.loc[table.success == 0, "confidence"] == 0).all()
    iou = _matched_iou(table, truth[truth.visible])
    assert np.median(iou) > 0.6, np.round(iou, 2)
    # One person, one id while in view.
    assert table.loc[table.success == 1, "face_id"].nunique() == 1
    # Predictions are well formed.
    faces = table[table.success == 1]
    probabilities = faces[list(get_schema("abaw3").expressions)].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-4)
    assert faces["expression"].isin(get_schema("abaw3").expressions).all()
    assert set(faces["AU1_c"].unique()) <= {0, 1}


def test_two_faces_keep_their_ids(tiny_model, tmp_path):
    from affectkit.inference.predictor import FacePredictor

    path = str(tmp_path / "two.mp4")
    head = (120, 20, 210, 230)  # the astronaut's head and shoulders
    photos = [MovingPhoto(data.astronaut(), ASTRONAUT_FACE, start=(110, 140), end=(150, 130),
                          scale=(0.7, 0.9), region=head),
              MovingPhoto(data.astronaut(), ASTRONAUT_FACE, start=(370, 140), end=(330, 150),
                          scale=(0.9, 0.7), mirror=True, region=head)]
    truth = write_moving_photo_video(path, photos, frames=30, size=(480, 270))
    table = FacePredictor(tiny_model, every=3).predict_video(path)
    faces = table[table.success == 1]
    assert (faces.groupby("frame").size() == 2).mean() > 0.9
    # Each id follows one photo: the one whose true box it overlaps.
    for face_id, rows in faces.groupby("face_id"):
        owners = []
        for _, row in rows.iterrows():
            candidates = truth[truth.frame == row.frame]
            ious = [box_iou(row[["x", "y", "w", "h"]].to_numpy(float), c[["x", "y", "w", "h"]].to_numpy(float))
                    for _, c in candidates.iterrows()]
            owners.append(int(np.argmax(ious)))
        assert len(set(owners)) == 1, (face_id, owners)
    assert faces["face_id"].nunique() == 2


def _write_images(folder):
    face = data.astronaut()
    os.makedirs(folder, exist_ok=True)
    cv2.imwrite(os.path.join(folder, "a_colour.jpg"), face[:, :, ::-1])
    cv2.imwrite(os.path.join(folder, "b_grey.png"), cv2.cvtColor(face, cv2.COLOR_RGB2GRAY))
    rgba = np.concatenate([face[:, :, ::-1], np.full(face.shape[:2] + (1,), 255, np.uint8)], 2)
    cv2.imwrite(os.path.join(folder, "c_alpha.png"), rgba)
    cv2.imwrite(os.path.join(folder, "d_no_face.png"), data.coffee()[:, :, ::-1])


def test_predict_images_rows_per_image(tiny_model, tmp_path):
    from affectkit.inference.predictor import predict_images

    _write_images(tmp_path / "photos")
    files = sorted(str(p) for p in (tmp_path / "photos").iterdir())
    table = predict_images(tiny_model, files)
    assert table.groupby("file").size().to_dict() == dict.fromkeys(files, 1)
    success = dict(zip(table.file.map(os.path.basename), table.success))
    assert success == {"a_colour.jpg": 1, "b_grey.png": 1, "c_alpha.png": 1, "d_no_face.png": 0}


def _affectkit(*args):
    return subprocess.run([sys.executable, "-m", "affectkit.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_command_writes_files_skips_done_ones_and_reports_bad_input(tiny_model, leaving_video,
                                                                    tmp_path):
    from affectkit.inference.predictor import prediction_columns

    folder = tmp_path / "inputs"
    _write_images(folder)
    video, _ = leaving_video
    os.symlink(video, folder / "leaving.mp4")
    (folder / "broken.mp4").write_text("not a video\n")
    (folder / "e_broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    out = tmp_path / "out"
    result = _affectkit("predict", "--model", tiny_model, "--input", str(folder), "--out",
                        str(out), "--plots", "--overlay", "--every", "2")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "broken.mp4" in result.stdout + result.stderr
    assert "e_broken.jpg" in result.stdout  # skipped, the folder's other images kept
    table = pd.read_csv(out / "leaving.csv")
    assert list(table.columns) == prediction_columns(get_schema("abaw3"), ("va", "expr", "au"))
    assert table.frame.tolist() == list(range(1, 49))
    images = pd.read_csv(out / "inputs.csv")
    assert len(images) == 4 and images.success.sum() == 3
    assert sorted(os.listdir(out / "plots")) == sorted(
        f"{name}_{kind}.png" for name in ("inputs", "leaving") for kind in ("va", "expression", "au"))
    capture = cv2.VideoCapture(str(out / "overlay" / "leaving.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 48
    assert not [f for f in os.listdir(out) if f.endswith(".part")]
    # Run again: the finished inputs are skipped, the broken one fails again.
    again = _affectkit("predict", "--model", tiny_model, "--input", str(folder), "--out", str(out))
    assert again.returncode == 2
    assert again.stdout.count("Already done (skipped)") == 2


def test_submission_files_for_aff_wild2_names(tiny_model, tmp_path):
    from affectkit.data import affwild2
    from affectkit.inference.prediction_files import write_submission

    schema = get_schema("abaw3")
    columns = ["valence", "arousal", *schema.expressions, *schema.aus]

    def rows(frame, face_id, x, value):
        base = {"frame": frame, "face_id": face_id, "success": 1, "x": x, "y": 10, "w": 50, "h": 50}
        return {**base, **dict.fromkeys(columns, value)}

    # Two people (frames 1-4, frame 3 has the left one only) and one person with a gap.
    pair = pd.DataFrame([rows(f, 0, 10, 0.1) for f in (1, 2, 3, 4)]
                        + [rows(f, 1, 300, 0.9) for f in (1, 2, 4)])
    single = pd.DataFrame([rows(1, 0, 10, 0.2), {"frame": 2, "success": 0}, rows(3, 0, 12, 0.4)])
    written = write_submission(str(tmp_path / "sub"), {"pair": pair, "solo": single}, schema,
                               ("va", "expr", "au"))
    va = affwild2.read_annotation_folder(written["va"], "va", schema)
    assert sorted(va) == ["pair_left", "pair_right", "solo"]
    np.testing.assert_allclose(va["pair_left"], 0.1, atol=1e-6)
    np.testing.assert_allclose(va["pair_right"], 0.9, atol=1e-6)
    assert len(va["pair_right"]) == 4  # frame 3 filled from a neighbour
    np.testing.assert_allclose(va["solo"][:, 0], [0.2, 0.2, 0.4], atol=1e-6)
    assert os.path.isfile(written["mtl"])


def test_clip_model_reads_each_track_in_clips_of_its_length(leaving_video, tmp_path):
    """phan2022's clip model: every face row gets the prediction of its own clip step."""
    from affectkit.inference.predictor import FacePredictor
    from affectkit.models.affect_model import AffectModel
    from tests.test_affect_model import TINY

    model = AffectModel.from_preset("phan2022_regnet_transformer",
                                    **dict(TINY["phan2022_regnet_transformer"], sequence_length=8))
    path = str(tmp_path / "clips.keras")
    model.save(path)
    video, truth = leaving_video
    predictor = FacePredictor(path, batch_size=4)
    calls = []
    call = predictor._call
    predictor._call = lambda batch: calls.append(batch.shape) or call(batch)
    table = predictor.predict_video(video)
    assert table["frame"].tolist() == list(range(1, 49))
    faces = table[table.success == 1]
    assert "valence" not in table and "AU1" not in table
    np.testing.assert_allclose(faces[list(get_schema("abaw3").expressions)].sum(1), 1, atol=1e-4)
    # Clips of 8 frames of one track: ceil(run / 8) calls per run of consecutive frames.
    runs = np.split(faces.frame.to_numpy(), np.flatnonzero(np.diff(faces.frame) > 1) + 1)
    assert len(calls) == sum(-(-len(r) // 8) for r in runs)
    assert all(shape == (1, 8, 32, 32, 3) for shape in calls)
    # No look-ahead past a clip: the video cut right after the first clip gives that clip
    # the same values.
    end = int(runs[0][7]) if len(runs[0]) >= 8 else int(runs[0][-1])
    with VideoReader(video) as reader:
        cut = [row for rows in predictor.iter_rows(itertools.islice(reader, end)) for row in rows]
    cut = predictor.table(cut)
    names = list(get_schema("abaw3").expressions)
    np.testing.assert_allclose(cut[names].to_numpy(float)[cut.success == 1][:8],
                               faces[names].to_numpy(float)[:8], atol=1e-5)


def test_demo_videos_give_submission_files_named_as_the_annotations(tiny_model, demo_root,
                                                                   tmp_path):
    """The demo mp4s (two-person sources hold `_left` and `_right`): every annotated video
    gets a prediction file with one line per frame, and the two faces keep their ids."""
    from affectkit.data import affwild2
    from affectkit.inference.prediction_files import predict_to_files
    from affectkit.inference.predictor import FacePredictor

    schema = get_schema("abaw3")
    predictor = FacePredictor(tiny_model, every=2)
    summary = predict_to_files(predictor, [os.path.join(demo_root, "videos")], str(tmp_path),
                               submission=True, progress=False)
    assert not summary.failed
    va = affwild2.read_annotation_folder(summary.files["submission"]["va"], "va", schema)
    faces = sorted(os.listdir(os.path.join(demo_root, "cropped_aligned")))
    assert sorted(va) == faces
    for video, values in va.items():
        assert len(values) == 40 and np.all(np.abs(values) <= 1)
    for source in {f.rsplit("_", 1)[0] for f in faces if f.endswith(("_left", "_right"))}:
        table = pd.read_csv(tmp_path / f"{source}.csv")
        found = table[table.success == 1]
        assert (found.groupby("frame").size() == 2).mean() > 0.9
        # The left face keeps one id all along (no swaps between the two people).
        left = found.loc[found.groupby("frame")["x"].idxmin(), "face_id"]
        assert left.nunique() == 1
