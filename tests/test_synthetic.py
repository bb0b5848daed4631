"""Synthetic Aff-Wild2 data: layout, headers, visible AUs, geometry and true landmarks, label
statistics, audio, determinism.

The checks parse the written files directly (plain text, cv2, the ffmpeg binary) and hold
them against hand-written expectations (REFERENCE sections 1-2), not against the reader.
"""

import glob
import hashlib
import os
import subprocess

import cv2
import numpy as np
import pytest

from affectkit.data import synthetic
from affectkit.data.affwild2 import CONTEXT_SCALE, aligned_landmarks
from affectkit.data.synthetic import (
    AU_REGIONS,
    DRAWN_AUS,
    FaceIdentity,
    HeadPose,
    demo_landmarks,
    draw_face,
    random_identity,
    simulate_affect,
    write_demo_dataset,
)
from affectkit.labels import EDITIONS, get_schema

FPS = 30
FRAMES = 60
SAMPLE_RATE = 16000

EXPRESSIONS7 = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"
AUS12 = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
# edition -> (task folder, train split folder, val split folder), headers, MTL files
LAYOUT = {
    "abaw1": {
        "dirs": {
            "va": ("VA_Set", "Training_Set", "Validation_Set"),
            "expr": ("EXPR_Set", "Training_Set", "Validation_Set"),
            "au": ("AU_Set", "Training_Set", "Validation_Set"),
        },
        "headers": {
            "va": "valence,arousal",
            "expr": EXPRESSIONS7,
            "au": "AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU25",
        },
        "mtl": ("MTL_Challenge/train_set.txt", "MTL_Challenge/validation_set.txt"),
    },
    "abaw3": {
        "dirs": {
            "va": ("VA_Estimation_Challenge", "Train_Set", "Validation_Set"),
            "expr": ("EXPR_Classification_Challenge", "Train_Set", "Validation_Set"),
            "au": ("AU_Detection_Challenge", "Train_Set", "Validation_Set"),
        },
        "headers": {"va": "valence,arousal", "expr": EXPRESSIONS7 + ",Other", "au": AUS12},
        "mtl": ("MTL_Challenge/train_set.txt", "MTL_Challenge/validation_set.txt"),
    },
    "abaw4": {
        "dirs": {
            "va": ("VA_Estimation_Challenge", "Train_Set", "Validation_Set"),
            "expr": ("EXPR_Classification_Challenge", "Train_Set", "Validation_Set"),
            "au": ("AU_Detection_Challenge", "Train_Set", "Validation_Set"),
        },
        "headers": {"va": "valence,arousal", "expr": EXPRESSIONS7 + ",Other", "au": AUS12},
        "mtl": ("training_set_annotations.txt", "validation_set_annotations.txt"),
    },
}


def _task_dir(root, edition, task, split):
    folder, train, val = LAYOUT[edition]["dirs"][task]
    return os.path.join(root, folder, train if split == "train" else val)


def _read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def _read_table(path):
    """(header, rows as lists of strings) of a comma-separated annotation file."""
    lines = _read_lines(path)
    return lines[0], [line.split(",") for line in lines[1:]]


def _split_of(name):
    return "train" if name.startswith("demo_train") else "val"


def _decode_audio(path):
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path,
               "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    result = subprocess.run(command, capture_output=True, check=True)
    return np.frombuffer(result.stdout, np.int16).astype(np.float64)


@pytest.fixture(scope="module")
def abaw3(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "abaw3")
    summary = write_demo_dataset(root, edition="abaw3", videos=8, frames=FRAMES, seed=1)
    return root, summary


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """4 videos x 30 frames in the ABAW1 and ABAW4 layouts."""
    out = {}
    for edition in ("abaw1", "abaw4"):
        root = str(tmp_path_factory.mktemp("synthetic") / edition)
        out[edition] = (root, write_demo_dataset(root, edition=edition, videos=4, frames=30, seed=2))
    return out


# ---------------------------------------------------------------------------------------
# Layout and headers
# ---------------------------------------------------------------------------------------


def _check_layout(root, summary, edition, frames):
    layout = LAYOUT[edition]
    videos = summary["videos"]["train"] + summary["videos"]["val"]
    assert len(videos) == sum(summary["videos_per_split"].values())
    for name in videos:
        split = _split_of(name)
        aligned = sorted(os.listdir(os.path.join(root, "cropped_aligned", name)))
        context = sorted(os.listdir(os.path.join(root, "cropped", name)))
        assert aligned == context
        assert all(f.endswith(".jpg") and len(f) == 9 for f in aligned)
        numbers = [int(f[:5]) for f in aligned]
        assert min(numbers) >= 1 and max(numbers) <= frames
        face = cv2.imread(os.path.join(root, "cropped_aligned", name, aligned[0]))
        assert face.shape == (112, 112, 3)
        wide = cv2.imread(os.path.join(root, "cropped", name, aligned[0]))
        assert wide.shape == (160, 160, 3)
        tasks = summary["tasks"][name]
        assert tasks, name
        for task in ("va", "expr", "au"):
            path = os.path.join(_task_dir(root, edition, task, split), name + ".txt")
            assert os.path.exists(path) == (task in tasks), (path, tasks)
            if task in tasks:
                lines = _read_lines(path)
                assert lines[0] == layout["headers"][task]
                assert len(lines) == frames + 1  # line k after the header is frame k
        source = name[: -len("_left")] if name.endswith("_left") else name
        source = source[: -len("_right")] if source.endswith("_right") else source
        assert os.path.exists(os.path.join(root, "videos", source + ".mp4"))
    mp4s = sorted(os.listdir(os.path.join(root, "videos")))
    assert not any(m.endswith(("_left.mp4", "_right.mp4")) for m in mp4s)
    au_header = layout["headers"]["au"]
    for split, mtl in zip(("train", "val"), layout["mtl"]):
        header, rows = _read_table(os.path.join(root, mtl))
        assert header == "image,valence,arousal,expression," + au_header
        assert rows and all(len(row) == 4 + au_header.count(",") + 1 for row in rows)
        for row in rows[:: max(1, len(rows) // 25)]:  # MTL rows name existing images
            video, image = row[0].split("/")
            assert _split_of(video) == split
            assert os.path.exists(os.path.join(root, "cropped_aligned", video, image))


def test_layout_abaw3(abaw3):
    root, summary = abaw3
    assert summary["videos_per_split"] == {"train": 6, "val": 2}
    _check_layout(root, summary, "abaw3", FRAMES)


@pytest.mark.parametrize("edition", ["abaw1", "abaw4"])
def test_layout_other_editions(small, edition):
    root, summary = small[edition]
    assert summary["videos_per_split"] == {"train": 3, "val": 1}
    _check_layout(root, summary, edition, 30)


def test_left_right_pair_shares_one_video(abaw3):
    root, summary = abaw3
    for split in ("train", "val"):
        names = summary["videos"][split]
        lefts = [n for n in names if n.endswith("_left")]
        assert lefts, f"no _left/_right pair in {split}"
        source = lefts[0][: -len("_left")]
        assert source + "_right" in names
        assert summary["sources"][source] == [source + "_left", source + "_right"]
    # Both faces are side by side in the source video; each crop is its own half.
    source = [n for n in summary["videos"]["train"] if n.endswith("_left")][0][: -len("_left")]
    capture = cv2.VideoCapture(os.path.join(root, "videos", source + ".mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == FRAMES and frames[0].shape == (160, 320, 3)
    for side, half in (("_left", slice(0, 160)), ("_right", slice(160, 320))):
        other = slice(160, 320) if side == "_left" else slice(0, 160)
        jpgs = sorted(glob.glob(os.path.join(root, "cropped", source + side, "*.jpg")))
        n = int(os.path.basename(jpgs[len(jpgs) // 2])[:5])
        crop = cv2.imread(jpgs[len(jpgs) // 2]).astype(np.float64)
        same = np.abs(crop - frames[n - 1][:, half]).mean()
        different = np.abs(crop - frames[n - 1][:, other]).mean()
        assert same < 10 and same < 0.5 * different, (side, same, different)


def test_every_edition_au_is_drawn():
    for edition in EDITIONS:
        assert set(get_schema(edition).aus) <= set(DRAWN_AUS)


# ---------------------------------------------------------------------------------------
# Faces: each AU is a visible change in its region
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("identity_seed", [None, 3, 7, 11])
def test_each_au_changes_its_region(identity_seed):
    identity = FaceIdentity() if identity_seed is None else random_identity(np.random.default_rng(identity_seed))
    size = 112
    neutral = draw_face({}, identity, HeadPose(), None, size).astype(np.int32)
    for au in DRAWN_AUS:
        face = draw_face({au: 1.0}, identity, HeadPose(), None, size).astype(np.int32)
        diff = np.abs(face - neutral).sum(axis=2)
        x0, y0, x1, y1 = (int(round(v * size)) for v in AU_REGIONS[au])
        inside = diff[y0:y1, x0:x1]
        changed = (inside > 30).sum()
        assert changed >= 12, f"{au}: only {changed} pixels change in its region"
        assert inside.sum() >= 0.75 * diff.sum(), f"{au}: the change is mostly outside its region"
        half = draw_face({au: 0.5}, identity, HeadPose(), None, size).astype(np.int32)
        assert 0 < np.abs(half - neutral).sum() < diff.sum() * 1.01, f"{au}: intensity has no graded effect"


def test_draw_face_pose_mask_and_errors():
    rng = np.random.default_rng(0)
    image, mask = draw_face({"AU12": 1}, pose=HeadPose(angle=15, scale=0.8, dx=0.05), rng=rng,
                            size=64, return_mask=True)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and mask.shape == (64, 64)
    assert 0.2 < (mask > 127).mean() < 0.9
    with pytest.raises(ValueError, match="AU99"):
        draw_face({"AU99": 1.0})


# ---------------------------------------------------------------------------------------
# Geometry: aligned views on the ArcFace template, true landmarks
# ---------------------------------------------------------------------------------------

GEOMETRY_ARGS = {"edition": "abaw3", "videos": 4, "frames": 30, "seed": 0, "fps": 10}


@pytest.fixture(scope="module")
def geometry(tmp_path_factory):
    """4 videos x 30 frames (10 fps) and their true landmarks in the source and aligned views."""
    root = str(tmp_path_factory.mktemp("synthetic") / "geometry")
    summary = write_demo_dataset(root, **GEOMETRY_ARGS)
    return (root, summary, demo_landmarks(**GEOMETRY_ARGS),
            demo_landmarks(view="cropped_aligned", **GEOMETRY_ARGS))


def _similarity(src, dst):
    """scikit-image's least-squares similarity src -> dst (an estimator independent of affectkit)."""
    transform = pytest.importorskip("skimage.transform")
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        return transform.SimilarityTransform.from_estimate(src, dst)
    tf = transform.SimilarityTransform()
    assert tf.estimate(src, dst)
    return tf


def _decode(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_demo_landmarks_layout_and_views(geometry):
    _, summary, source, aligned = geometry
    assert sorted(source) == sorted(aligned) == sorted(summary["sources"])
    for name, videos in summary["sources"].items():
        assert source[name].shape == aligned[name].shape == (30, len(videos), 5, 2)
        for i in range(len(videos)):
            p = source[name][:, i]
            assert (p[..., 0] > 160 * i).all() and (p[..., 0] < 160 * (i + 1)).all(), (name, i)
            assert (p[..., 1] > 0).all() and (p[..., 1] < 160).all(), (name, i)
            # Image sides: left_eye, right_eye, nose, mouth_left, mouth_right.
            q = aligned[name][:, i]
            assert (q[:, 0, 0] < q[:, 1, 0]).all() and (q[:, 3, 0] < q[:, 4, 0]).all()
            assert (q[:, :2, 1].max(1) < q[:, 2, 1]).all() and (q[:, 2, 1] < q[:, 3:, 1].min(1)).all()
    # Deterministic; "cropped" is the source shifted by the face's column.
    again = demo_landmarks(**GEOMETRY_ARGS)
    cropped = demo_landmarks(view="cropped", **GEOMETRY_ARGS)
    for name in source:
        np.testing.assert_array_equal(source[name], again[name])
        for i in range(source[name].shape[1]):
            np.testing.assert_allclose(cropped[name][:, i], source[name][:, i] - (160 * i, 0))
    with pytest.raises(ValueError, match="view"):
        demo_landmarks(view="frame", **GEOMETRY_ARGS)
    with pytest.raises(ValueError, match="videos"):
        demo_landmarks(videos=1)


def test_aligned_landmarks_follow_the_arcface_template(geometry):
    _, _, source, aligned = geometry
    template = aligned_landmarks(112)
    errors, context_scales, eye_distances = [], [], []
    for name in source:
        for i in range(source[name].shape[1]):
            # The true landmarks in the aligned crop: on the template up to the residual pose
            # and the identity's proportions (eye spacing, nose length, mouth width).
            errors.append(np.linalg.norm(aligned[name][:, i] - template, axis=-1))
            eye_distances.append(np.linalg.norm(aligned[name][:, i, 1] - aligned[name][:, i, 0], axis=-1).mean())
            for t in range(30):
                # One similarity (the face matrix) per frame maps the aligned view to the source.
                tf = _similarity(aligned[name][t, i], source[name][t, i])
                assert np.abs(tf(aligned[name][t, i]) - source[name][t, i]).max() < 1e-6
                context_scales.append(160 / (112 * tf.scale))
    errors = np.concatenate(errors)
    assert errors.mean() < 4 and errors.max() < 10, (errors.mean(), errors.max())
    assert np.ptp(eye_distances) > 1, eye_distances  # each identity keeps its proportions
    # The `cropped` view (the face's column) is about CONTEXT_SCALE aligned sides.
    assert abs(np.mean(context_scales) - CONTEXT_SCALE) < 0.15, np.mean(context_scales)


def test_landmark_alignment_of_the_video_reproduces_aligned_crops(geometry):
    """Warping the mp4 frame by a similarity from the true landmarks gives the aligned JPEG."""
    root, summary, source, aligned = geometry
    template = aligned_landmarks(112)
    same, other, to_template = {}, {}, {}
    for name, videos in summary["sources"].items():
        frames = _decode(os.path.join(root, "videos", name + ".mp4"))
        assert len(frames) == 30
        for i, video in enumerate(videos):
            same[video], other[video], to_template[video] = [], [], []
            for t in range(30):
                path = os.path.join(root, "cropped_aligned", video, f"{t + 1:05d}.jpg")
                if not os.path.exists(path):
                    continue
                jpg = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY).astype(np.float64)

                def mad(u, target):
                    tf = _similarity(source[name][u, i], target)
                    view = cv2.warpAffine(frames[u], tf.params[:2], (112, 112), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REFLECT)
                    return np.abs(cv2.cvtColor(view, cv2.COLOR_BGR2GRAY) - jpg).mean()

                u = (t + 15) % 30
                same[video].append(mad(t, aligned[name][t, i]))
                other[video].append(mad(u, aligned[name][u, i]))  # another frame, 1.5 s away
                to_template[video].append(mad(t, template))
    report = {v: "same %.2f (max %.2f), other frame %.2f, to template %.2f" % (
        np.mean(same[v]), np.max(same[v]), np.mean(other[v]), np.mean(to_template[v])) for v in same}
    for video in same:
        # Lossy mp4 and sensor noise drawn separately for each view: about 3-5 grey levels.
        assert np.mean(same[video]) < 6.5 and np.max(same[video]) < 9, report
        assert np.mean(other[video]) > 2 * np.mean(same[video]), report
    # Aligning to the template itself leaves the residual pose: closer than another frame.
    assert np.mean(sum(to_template.values(), [])) < 0.6 * np.mean(sum(other.values(), [])), report


# ---------------------------------------------------------------------------------------
# Labels: prototypes, smooth valence, segments, missing markers
# ---------------------------------------------------------------------------------------


def test_expressions_follow_facs_prototypes():
    track = simulate_affect(9000, "abaw3", np.random.default_rng(0), fps=FPS)
    names = get_schema("abaw3").expressions
    on = track.au_intensity >= synthetic.AU_ON_THRESHOLD
    col = {au: i for i, au in enumerate(DRAWN_AUS)}
    checks = {"Happiness": ("AU6", "AU12"), "Sadness": ("AU1", "AU4", "AU15"),
              "Surprise": ("AU1", "AU2", "AU25", "AU26"), "Anger": ("AU4", "AU7"), "Disgust": ("AU10",)}
    for expression, aus in checks.items():
        rows = track.expression == names.index(expression)
        assert rows.sum() > 200, expression
        for au in aus:
            p_in, p_out = on[rows, col[au]].mean(), on[~rows, col[au]].mean()
            assert p_in > 0.6 and p_in > 2 * p_out, (expression, au, p_in, p_out)
    # Not deterministic: AUs show up outside their prototypes, and now and then do not show.
    happy = track.expression == names.index("Happiness")
    assert 0.02 < on[~happy, col["AU12"]].mean() and on[happy, col["AU12"]].mean() < 0.99
    assert set(np.unique(track.expression)) == set(range(8))


def test_happiness_frames_show_au6_and_au12_in_files(abaw3):
    root, _ = abaw3
    header, rows = _read_table(os.path.join(root, LAYOUT["abaw3"]["mtl"][0]))
    names = header.split(",")
    table = np.array([[float(x) for x in row[1:]] for row in rows])
    expr = table[:, names.index("expression") - 1]
    au6 = table[:, names.index("AU6") - 1]
    au12 = table[:, names.index("AU12") - 1]
    labelled = (au6 >= 0) & (expr >= 0)
    happy = labelled & (expr == 4)
    assert happy.sum() >= 10
    for au in (au6, au12):
        assert au[happy].mean() > au[labelled].mean() + 0.2


def test_values_in_range_and_valence_smooth(abaw3):
    root, summary = abaw3
    steps, spreads = [], []
    for name in summary["videos"]["train"] + summary["videos"]["val"]:
        split = _split_of(name)
        if "va" in summary["tasks"][name]:
            _, rows = _read_table(os.path.join(_task_dir(root, "abaw3", "va", split), name + ".txt"))
            va = np.array(rows, np.float64)
            missing = (va == -5).all(axis=1)
            assert ((va == -5).any(axis=1) == missing).all()  # -5 on both or neither
            assert (np.abs(va[~missing]) <= 1).all()
            v = va[:, 0]
            ok = ~missing[1:] & ~missing[:-1]
            steps.append(np.abs(np.diff(v))[ok])
            spreads.append(v[~missing])
        if "expr" in summary["tasks"][name]:
            _, rows = _read_table(os.path.join(_task_dir(root, "abaw3", "expr", split), name + ".txt"))
            expr = np.array(rows, np.int64).ravel()
            assert set(np.unique(expr)) <= set(range(-1, 8))
            labelled = expr[expr >= 0]
            runs = 1 + np.count_nonzero(np.diff(labelled))
            assert len(labelled) / runs >= 8, f"{name}: expression segments too short"
        if "au" in summary["tasks"][name]:
            _, rows = _read_table(os.path.join(_task_dir(root, "abaw3", "au", split), name + ".txt"))
            au = np.array(rows, np.int64)
            assert au.shape[1] == 12
            assert set(np.unique(au)) <= {-1, 0, 1}
            assert (((au == -1).any(axis=1)) == (au == -1).all(axis=1)).all()
    mean_step = np.concatenate(steps).mean()
    pooled = np.concatenate(spreads)
    shuffled = np.abs(pooled - np.random.default_rng(0).permutation(pooled)).mean()
    assert mean_step < 0.03 and mean_step < 0.2 * shuffled, (mean_step, shuffled)


def test_missing_labels_and_missing_images(abaw3):
    root, summary = abaw3
    videos = summary["videos"]["train"] + summary["videos"]["val"]
    # Some videos are annotated for some tasks only (the second of each split for VA only).
    assert summary["tasks"]["demo_train_001"] == ["va"]
    assert any(len(tasks) < 3 for tasks in summary["tasks"].values())
    markers = {"va": 0, "expr": 0, "au": 0}
    lines = {"va": 0, "expr": 0, "au": 0}
    for name in videos:
        for task in summary["tasks"][name]:
            _, rows = _read_table(os.path.join(_task_dir(root, "abaw3", task, _split_of(name)), name + ".txt"))
            lines[task] += len(rows)
            marker = "-5" if task == "va" else "-1"
            markers[task] += sum(row[0] == marker for row in rows)
    for task in markers:
        assert 0 < markers[task] / lines[task] < 0.15, (task, markers[task], lines[task])
    # Frames without an image, in both frame folders, while the annotation line stays.
    missing = 0
    for name in videos:
        present = {int(f[:5]) for f in os.listdir(os.path.join(root, "cropped_aligned", name))}
        assert present == {int(f[:5]) for f in os.listdir(os.path.join(root, "cropped", name))}
        missing += FRAMES - len(present)
        assert summary["missing_images"][name] == FRAMES - len(present)
    assert 0 < missing / (FRAMES * len(videos)) < 0.15


# ---------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------


def test_audio_loudness_follows_arousal(abaw3):
    root, summary = abaw3
    rms_all, arousal_all = [], []
    for source, names in summary["sources"].items():
        if not all("va" in summary["tasks"][name] for name in names):
            continue
        arousal = []
        for name in names:
            _, rows = _read_table(os.path.join(_task_dir(root, "abaw3", "va", _split_of(name)), name + ".txt"))
            arousal.append(np.array(rows, np.float64)[:, 1])
        arousal = np.array(arousal)
        labelled = (arousal != -5).all(axis=0)
        pcm = _decode_audio(os.path.join(root, "videos", source + ".mp4"))
        per_frame = SAMPLE_RATE / FPS
        assert abs(len(pcm) - FRAMES * per_frame) < 0.1 * SAMPLE_RATE
        rms = np.array([np.sqrt(np.mean(pcm[int(k * per_frame) : int((k + 1) * per_frame)] ** 2))
                        for k in range(FRAMES)])
        rms_all.append(rms[labelled])
        arousal_all.append(arousal.mean(axis=0)[labelled])
    assert len(rms_all) >= 3
    r = np.corrcoef(np.concatenate(rms_all), np.concatenate(arousal_all))[0, 1]
    assert r > 0.5, r


def test_synthesize_audio_envelope():
    arousal = np.linspace(-1, 1, 300)
    pcm = synthetic.synthesize_audio(arousal, fps=25, rng=np.random.default_rng(0)).astype(np.float64)
    assert len(pcm) == 300 * SAMPLE_RATE // 25
    rms = np.sqrt((pcm.reshape(300, SAMPLE_RATE // 25) ** 2).mean(axis=1))
    assert np.corrcoef(rms, arousal)[0, 1] > 0.9
    assert rms[-20:].mean() > 5 * rms[:20].mean()


# ---------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------


def _digests(root):
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def test_same_seed_same_bytes(tmp_path):
    args = dict(edition="abaw3", videos=4, frames=16)
    write_demo_dataset(str(tmp_path / "a"), seed=11, **args)
    write_demo_dataset(str(tmp_path / "b"), seed=11, **args)
    write_demo_dataset(str(tmp_path / "c"), seed=12, **args)
    a, b, c = (_digests(str(tmp_path / k)) for k in "abc")
    kinds = {os.path.splitext(k)[1] for k in a}
    assert {".txt", ".jpg", ".mp4"} <= kinds
    assert a == b  # annotation files, JPEGs and (with the bundled ffmpeg) mp4 files
    txt = [k for k in a if k.endswith(".txt") and k in c]
    jpg = [k for k in a if k.endswith(".jpg") and k in c]
    assert any(a[k] != c[k] for k in txt)
    assert sum(a[k] != c[k] for k in jpg) > 0.9 * len(jpg)


def test_rewrite_replaces_stale_files(tmp_path):
    root = str(tmp_path / "d")
    write_demo_dataset(root, videos=2, frames=12, seed=0, write_videos=False)
    stale = os.path.join(root, "cropped_aligned", "demo_train_000", "99999.jpg")
    open(stale, "wb").close()
    summary = write_demo_dataset(root, videos=2, frames=12, seed=0, write_videos=False)
    assert not os.path.exists(stale)
    assert summary["paths"]["videos"] is None and not os.path.exists(os.path.join(root, "videos"))


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="videos"):
        write_demo_dataset(str(tmp_path), videos=1)
    with pytest.raises(ValueError, match="edition"):
        write_demo_dataset(str(tmp_path), edition="abaw9")
