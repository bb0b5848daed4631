"""Aff-Wild2 readers, writers and `FrameIndex` against small hand-written files."""

import os

import numpy as np
import pandas as pd
import pytest

from affectkit.data.affwild2 import (
    AnnotationError,
    FrameIndex,
    frame_columns,
    image_names,
    list_frame_images,
    read_annotation_file,
    read_annotation_folder,
    read_mtl_file,
    write_annotation_file,
    write_mtl_file,
    write_mtl_submission,
    write_prediction_folder,
)
from affectkit.labels import get_schema

EXPR7 = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"
EXPR8 = EXPR7 + ",Other"
AUS8 = "AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU25"
AUS12 = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"

# Hand-written layouts: edition, split, VA folder, EXPR folder, AU folder (literal names).
LAYOUTS = [
    ("abaw1", "train", "VA_Set/Training_Set", "EXPR_Set/Training_Set", "AU_Set/Training_Set"),
    ("abaw2", "val", "VA_Set/Validation_Set", "EXPR_Set/Validation_Set",
     "AU_Set/Validation_Set"),
    ("abaw3", "train", "VA_Estimation_Challenge/Train_Set",
     "EXPR_Classification_Challenge/Train_Set", "AU_Detection_Challenge/Train_Set"),
    ("abaw5", "val", "VA_Estimation_Challenge/Validation_Set",
     "EXPR_Classification_Challenge/Validation_Set", "AU_Detection_Challenge/Validation_Set"),
    ("abaw6", "train", "VA_Estimation_Challenge/Train_Set",
     "EXPR_Recognition_Challenge/Train_Set", "AU_Detection_Challenge/Train_Set"),
]


def write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def touch_images(root, video, frames, view="cropped_aligned"):
    folder = os.path.join(str(root), view, video)
    os.makedirs(folder, exist_ok=True)
    for k in frames:
        open(os.path.join(folder, f"{k:05d}.jpg"), "wb").close()


def headers(edition):
    number = get_schema(edition).edition_number
    return (EXPR7 if number <= 2 else EXPR8), (AUS8 if number == 1 else AUS12)


def au_line(bits, k):
    """A hand-written AU line: `bits` for the first 4 AUs, then zeros up to k AUs."""
    return ",".join(str(b) for b in bits + [0] * (k - len(bits)))


def make_layout(root, layout):
    """vid_a: VA 4 frames, EXPR 6 frames; vid_b: EXPR 2 frames, AU 3 frames."""
    edition, split, va_dir, expr_dir, au_dir = layout
    expr_header, au_header = headers(edition)
    k = len(au_header.split(","))
    write(root / va_dir / "vid_a.txt", "valence,arousal\n0.5,-0.25\n-5,-5\n1,-1\n0.125,0.75\n")
    write(root / expr_dir / "vid_a.txt", f"{expr_header}\n0\n3\n-1\n6\n2\n1\n")
    write(root / expr_dir / "vid_b.txt", f"{expr_header}\r\n4\r\n5\r\n\r\n\r\n")  # CRLF + blanks
    au_rows = [au_line([1, 0, 0, 1], k), au_line([-1] * k, k), au_line([0, 1, 1, 0], k)]
    write(root / au_dir / "vid_b.txt", au_header + "\n" + "\n".join(au_rows) + "\n")
    for view in ("cropped_aligned", "cropped"):
        touch_images(root, "vid_a", [1, 2, 5], view)
        touch_images(root, "vid_b", [2], view)
    return str(root)


# ---------------------------------------------------------------------- per-task reader


def test_read_annotation_file_values_crlf_and_trailing_blanks(tmp_path):
    va = write(tmp_path / "va.txt", "valence,arousal\r\n0.5,-0.25\r\n-5,-5\r\n1,-1\r\n\r\n  \n")
    got = read_annotation_file(va, "va", "abaw1")
    assert got.dtype == np.float32 and got.shape == (3, 2)
    np.testing.assert_array_equal(got, [[0.5, -0.25], [-5, -5], [1, -1]])
    expr = write(tmp_path / "e.txt", f"{EXPR8}\n7\n-1\n0\n")
    got = read_annotation_file(expr, "expr", "abaw3")
    assert got.dtype == np.int8  # compact: Aff-Wild2 has 2.7 M frames
    np.testing.assert_array_equal(got, [7, -1, 0])
    au = write(tmp_path / "au.txt", f"{AUS8}\n1,0,0,1,0,0,1,0\n-1,-1,-1,-1,-1,-1,-1,-1\n")
    got = read_annotation_file(au, "au", "abaw1")
    assert got.dtype == np.int8 and got.shape == (2, 8)
    np.testing.assert_array_equal(got[0], [1, 0, 0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(got[1], [-1] * 8)


def test_read_annotation_folder_sorted_and_missing(tmp_path):
    write(tmp_path / "f" / "zz.txt", "valence,arousal\n0,0\n")
    write(tmp_path / "f" / "aa.txt", "valence,arousal\n0.5,0.5\n0.25,0\n")
    write(tmp_path / "f" / "notes.md", "ignored")
    got = read_annotation_folder(str(tmp_path / "f"), "va", "abaw3")
    assert list(got) == ["aa", "zz"]
    np.testing.assert_array_equal(got["aa"], [[0.5, 0.5], [0.25, 0]])
    missing = str(tmp_path / "VA_Set" / "Training_Set")
    with pytest.raises(AnnotationError, match="Training_Set") as err:
        read_annotation_folder(missing, "va", "abaw1")
    assert isinstance(err.value, FileNotFoundError)


# ---------------------------------------------------------------------- bad input

AU1_OK = "1,0,0,1,0,0,1,0"
BAD_FILES = [
    # name, task, edition, content, line, words the message must contain
    ("header.txt", "va", "abaw1", "valence;arousal\n0,0\n", 1, "valence,arousal"),
    ("abaw3hdr.txt", "expr", "abaw1", f"{EXPR8}\n1\n", 1, "ABAW3"),
    ("columns.txt", "va", "abaw1", "valence,arousal\n0,0\n0.1,0.2,0.3\n", 3, "expected 2"),
    ("fewer.txt", "va", "abaw3", "valence,arousal\n0,0\n0.1,0.2\n0.3\n", 4, "expected 2"),
    ("nan.txt", "va", "abaw1", "valence,arousal\n0,0\nzero,0.5\n", 3, "not a number"),
    ("nanlit.txt", "va", "abaw1", "valence,arousal\n0,0\n0,0\nnan,0.5\n", 4, "not a number"),
    ("range.txt", "va", "abaw2", "valence,arousal\n0,0\n1.7,0.2\n", 3, "[-1, 1]"),
    ("minus4.txt", "va", "abaw2", "valence,arousal\n-4,-5\n", 2, "-5"),
    ("gap.txt", "va", "abaw2", "valence,arousal\n0,0\n\n0,0\n", 3, "empty line"),
    ("expr9.txt", "expr", "abaw1", f"{EXPR7}\n0\n6\n9\n", 4, "0..6"),
    ("expr7.txt", "expr", "abaw2", f"{EXPR7}\n7\n", 2, "0..6"),
    ("exprf.txt", "expr", "abaw3", f"{EXPR8}\n1.5\n", 2, "integer"),
    ("au2.txt", "au", "abaw1", f"{AUS8}\n{AU1_OK}\n1,0,2,1,0,0,1,0\n", 3, "0 or 1"),
    ("au12.txt", "au", "abaw1", f"{AUS8}\n1,0,0,1,0,0,1,0,0,0,1,1\n", 2, "expected 8"),
    ("empty.txt", "va", "abaw1", "", 1, "empty file"),
    ("blank.txt", "au", "abaw3", "\n\n", 1, "empty file"),
    ("header_only.txt", "expr", "abaw3", f"{EXPR8}\n", 2, "no frame lines"),
]


@pytest.mark.parametrize("name,task,edition,content,line,words", BAD_FILES,
                         ids=[b[0] for b in BAD_FILES])
def test_bad_annotation_file_names_file_and_line(tmp_path, name, task, edition, content, line,
                                                 words):
    path = write(tmp_path / name, content)
    with pytest.raises(AnnotationError) as err:
        read_annotation_file(path, task, edition)
    message = str(err.value)
    assert path in message and f"line {line}:" in message and words in message, message
    assert "expected" in message


def test_missing_annotation_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_annotation_file(path, "va", "abaw3")


BAD_MTL = [
    ("image.txt", False, "v1/00001.jpg,0,0,1,{au}\nv1-00002.jpg,0,0,1,{au}\n", 3, "jpg"),
    ("zero.txt", False, "v1/00000.jpg,0,0,1,{au}\n", 2, "1-based"),
    ("cols.txt", False, "v1/00001.jpg,0,0,1,{au}\nv1/00002.jpg,0,0,1\n", 3, "expected 16"),
    ("va.txt", False, "v1/00001.jpg,0,0,1,{au}\nv1/00002.jpg,0,-1.5,1,{au}\n", 3, "[-1, 1]"),
    ("expr.txt", False, "v1/00001.jpg,0,0,8,{au}\n", 2, "0..7"),
    ("au.txt", False, "v1/00001.jpg,0,0,1,{au}\nv1/00002.jpg,0,0,1,{bad}\n", 3, "0 or 1"),
    ("dup.txt", False, "v1/00001.jpg,0,0,1,{au}\nv1/00001.jpg,0,0,1,{au}\n", 3, "line 2"),
    ("sub.txt", True, "v1/00001.jpg,0,0,1,{au}\nv1/00002.jpg,-5,-5,1,{au}\n", 3, "[-1, 1]"),
    ("subau.txt", True, "v1/00001.jpg,0,0,1,{miss}\n", 2, "0 or 1"),
]


@pytest.mark.parametrize("name,submission,body,line,words", BAD_MTL, ids=[b[0] for b in BAD_MTL])
def test_bad_mtl_file_names_file_and_line(tmp_path, name, submission, body, line, words):
    schema = get_schema("abaw3")
    header = "image,valence,arousal,expression,aus" if submission else "image,valence,arousal," \
        "expression," + AUS12
    body = body.format(au=",".join(["0"] * 12), bad=",".join(["0"] * 11 + ["3"]),
                       miss=",".join(["-1"] * 12))
    path = write(tmp_path / name, header + "\n" + body)
    with pytest.raises(AnnotationError) as err:
        read_mtl_file(path, schema, submission=submission)
    message = str(err.value)
    assert path in message and f"line {line}:" in message and words in message, message


def test_mtl_header_mismatch_is_explained(tmp_path):
    path = write(tmp_path / "sub.txt", "image,valence,arousal,expression,aus\nv/00001.jpg,0,0,0,"
                 + ",".join(["0"] * 12) + "\n")
    with pytest.raises(AnnotationError, match=r"sub.txt, line 1: .*submission=True"):
        read_mtl_file(path, "abaw4")
    assert len(read_mtl_file(path, "abaw4", submission=True)) == 1


# ---------------------------------------------------------------------- FrameIndex, per-task


@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"{x[0]}-{x[1]}" for x in LAYOUTS])
def test_from_affwild2_union_of_frames_and_markers(tmp_path, layout):
    edition, split = layout[:2]
    schema = get_schema(edition)
    k = schema.num_aus
    root = make_layout(tmp_path / "aff", layout)
    index = FrameIndex.from_affwild2(root, edition, split)
    f = index.frames
    assert list(f.columns) == frame_columns(schema)
    assert index.schema == schema and index.root == os.path.abspath(root)
    assert index.videos == ["vid_a", "vid_b"] and len(index) == 9
    assert f["video"].tolist() == ["vid_a"] * 6 + ["vid_b"] * 3
    assert f["frame"].tolist() == [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert f["frame"].dtype == np.int64 and f["expr"].dtype == np.int8
    assert f["valence"].dtype == np.float32 and f["has_image"].dtype == bool
    np.testing.assert_array_equal(
        f["valence"], [0.5, -5, 1, 0.125, -5, -5, -5, -5, -5])
    np.testing.assert_array_equal(
        f["arousal"], [-0.25, -5, -1, 0.75, -5, -5, -5, -5, -5])
    assert f["expr"].tolist() == [0, 3, -1, 6, 2, 1, 4, 5, -1]
    au = f[list(schema.aus)].to_numpy()
    assert all(f[a].dtype == np.int8 for a in schema.aus)
    assert f["image_frame"].dtype == np.int32 and "image_aligned" not in f  # paths on demand
    np.testing.assert_array_equal(au[:6], -1)  # vid_a has no AU file
    np.testing.assert_array_equal(au[6], [1, 0, 0, 1] + [0] * (k - 4))
    np.testing.assert_array_equal(au[7], [-1] * k)
    np.testing.assert_array_equal(au[8], [0, 1, 1, 0] + [0] * (k - 4))
    # Images: vid_a has 1, 2, 5; vid_b has 2. Nothing is dropped.
    assert f["has_image"].tolist() == [True, True, False, False, True, False, False, True, False]
    assert f["image_frame"].tolist() == [1, 2, -1, -1, 5, -1, -1, 2, -1]
    aligned = os.path.join(os.path.abspath(root), "cropped_aligned")
    assert index.image_paths("aligned")[:3] == [
        os.path.join(aligned, "vid_a", "00001.jpg"),
        os.path.join(aligned, "vid_a", "00002.jpg"),
        "",
    ]
    assert index.image_paths("cropped", [7]) == [os.path.join(
        os.path.abspath(root), "cropped", "vid_b", "00002.jpg")]
    # Both views hold the same images here, so their availability columns agree.
    assert f["has_image_cropped"].tolist() == f["has_image"].tolist()
    assert f["image_frame_cropped"].tolist() == f["image_frame"].tolist()

    labels = index.labels()
    assert labels["va"].dtype == np.float32 and labels["va"].shape == (9, 2)
    assert labels["expr"].dtype == np.int32 and labels["au"].dtype == np.float32
    assert labels["au"].shape == (9, k)
    assert set(index.labels(("expr",))) == {"expr"}


def test_summary_counts_and_nearest_fill(tmp_path):
    root = make_layout(tmp_path / "aff", LAYOUTS[2])
    index = FrameIndex.from_affwild2(root, "abaw3", "train")
    summary = index.summary()
    assert list(summary.index) == ["va", "expr", "au"]
    assert list(summary.columns) == ["videos", "frames", "missing_labels", "frames_without_image"]
    # va: vid_a frames 1, 3, 4 labelled (frame 2 is -5; 5, 6 only have EXPR); 3 and 4 lack images.
    assert summary.loc["va"].tolist() == [1, 3, 3, 2]
    # expr: vid_a 1, 2, 4, 5, 6 and vid_b 1, 2 labelled; vid_a 3 and vid_b 3 missing.
    # Without image: vid_a 4, 6 and vid_b 1.
    assert summary.loc["expr"].tolist() == [2, 7, 2, 3]
    # au: vid_b 1 and 3 labelled, 2 is -1; both lack images.
    assert summary.loc["au"].tolist() == [1, 2, 1, 2]

    filled = FrameIndex.from_affwild2(root, "abaw3", "train", fill_missing_images=True)
    f = filled.frames
    # vid_a images at 1, 2, 5: 3 -> 2, 4 -> 5, 6 -> 5; vid_b image at 2 only.
    assert f["image_frame"].tolist() == [1, 2, 2, 5, 5, 5, 2, 2, 2]
    assert f["has_image"].tolist() == index.frames["has_image"].tolist()
    assert filled.image_paths()[3].endswith(os.path.join("vid_a", "00005.jpg"))
    assert filled.image_paths("cropped")[8].endswith(os.path.join("cropped", "vid_b",
                                                                   "00002.jpg"))
    assert filled.summary().equals(summary)
    assert len(filled.with_images_only()) == 9
    only = index.with_images_only()
    assert only.frames["frame"].tolist() == [1, 2, 5, 2]
    assert only.frames.index.tolist() == [0, 1, 2, 3]


def test_nearest_fill_ties_take_the_earlier_frame(tmp_path):
    root = tmp_path / "aff"
    write(root / "VA_Estimation_Challenge" / "Validation_Set" / "v.txt",
          "valence,arousal\n" + "0,0\n" * 9)
    write(root / "VA_Estimation_Challenge" / "Validation_Set" / "noimg.txt",
          "valence,arousal\n0,0\n0,0\n")
    touch_images(root, "v", [3, 7])
    # Not frame images: a name that is not zero-padded, another extension, a stray file.
    for name in ("5.jpg", "00005.png", "000005.jpg", "notes.txt"):
        open(root / "cropped_aligned" / "v" / name, "wb").close()
    os.makedirs(root / "cropped_aligned" / "noimg")
    index = FrameIndex.from_affwild2(str(root), "abaw4", "val", fill_missing_images=True)
    f = index.frames
    assert f["video"].tolist() == ["noimg"] * 2 + ["v"] * 9
    # 1, 2 -> 3; 4 -> 3; 5 is a tie between 3 and 7 -> 3; 6 -> 7; 8, 9 -> 7.
    assert f["image_frame"].tolist() == [-1, -1, 3, 3, 3, 3, 3, 7, 7, 7, 7]
    assert index.image_paths()[:2] == ["", ""]
    assert index.summary().loc["va", "frames_without_image"] == 9
    assert index.with_images_only().videos == ["v"]


def test_list_frame_images_one_rule(tmp_path):
    folder = tmp_path / "cropped_aligned" / "v"
    os.makedirs(folder)
    names = ("00004.jpg", "00002.jpg", "123456.jpg",  # frame images
             "00001.JPG", "notes.txt", "0002.jpg", "00003.png", "00000.jpg", "5.jpg",
             "000006.jpg", "00007.jpg.partial", "٠٠٠٠٩.jpg")  # not frame images
    for name in names:
        open(folder / name, "wb").close()
    frames, paths = list_frame_images(folder)
    assert frames.dtype == np.int64 and frames.tolist() == [2, 4, 123456]
    assert paths == [os.path.join(str(folder), n) for n in ("00002.jpg", "00004.jpg",
                                                            "123456.jpg")]
    empty, none = list_frame_images(tmp_path / "no_such_folder")
    assert empty.tolist() == [] and none == []


def test_image_availability_is_per_view(tmp_path):
    root = tmp_path / "aff"
    write(root / "VA_Estimation_Challenge" / "Train_Set" / "v.txt",
          "valence,arousal\n" + "0,0\n" * 7)
    touch_images(root, "v", [1, 2, 3, 4, 5, 7], "cropped_aligned")  # no aligned 6
    touch_images(root, "v", [1, 2, 4, 5, 6, 7], "cropped")  # no cropped 3
    aligned_dir = os.path.join(str(root), "cropped_aligned", "v")
    cropped_dir = os.path.join(str(root), "cropped", "v")
    index = FrameIndex.from_affwild2(str(root), "abaw3", "train")
    f = index.frames
    assert f["has_image"].tolist() == [True] * 5 + [False, True]
    assert f["has_image_cropped"].tolist() == [True, True, False, True, True, True, True]
    assert f["image_frame"].tolist() == [1, 2, 3, 4, 5, -1, 7]
    assert f["image_frame_cropped"].tolist() == [1, 2, -1, 4, 5, 6, 7]
    aligned, cropped = index.image_paths("aligned"), index.image_paths("cropped")
    assert aligned[2] == os.path.join(aligned_dir, "00003.jpg")
    assert cropped[2] == "" and aligned[5] == ""
    assert cropped[5] == os.path.join(cropped_dir, "00006.jpg")
    assert index.with_images_only().frames["frame"].tolist() == [1, 2, 3, 4, 5, 7]
    assert index.with_images_only("cropped").frames["frame"].tolist() == [1, 2, 4, 5, 6, 7]
    assert index.summary().loc["va", "frames_without_image"] == 1
    assert index.summary("cropped").loc["va", "frames_without_image"] == 1
    # Filled per view: each view's nearest frame with an image in that view.
    filled = FrameIndex.from_affwild2(str(root), "abaw3", "train", fill_missing_images=True)
    g = filled.frames
    assert g["image_frame"].tolist() == [1, 2, 3, 4, 5, 5, 7]  # 6: tie 5 / 7 -> 5
    assert g["image_frame_cropped"].tolist() == [1, 2, 2, 4, 5, 6, 7]  # 3: tie 2 / 4 -> 2
    assert filled.image_paths("cropped")[2] == os.path.join(cropped_dir, "00002.jpg")
    assert filled.image_paths("aligned")[5] == os.path.join(aligned_dir, "00005.jpg")
    with pytest.raises(ValueError, match="view"):
        index.with_images_only("profile")


def test_absent_task_folder_is_skipped_and_none_raises(tmp_path):
    root = tmp_path / "aff"
    write(root / "EXPR_Recognition_Challenge" / "Train_Set" / "v.txt", f"{EXPR8}\n7\n0\n")
    with pytest.warns(UserWarning, match="cropped_aligned"):
        index = FrameIndex.from_affwild2(str(root), "abaw6", "train")
    assert index.frames["expr"].tolist() == [7, 0]
    np.testing.assert_array_equal(index.labels()["va"], -5)
    assert index.summary().loc["au", "videos"] == 0
    assert not index.frames["has_image"].any()  # no cropped_aligned folder at all
    with pytest.raises(FileNotFoundError) as err:
        FrameIndex.from_affwild2(str(root), "abaw6", "val")
    message = str(err.value)
    for tried in ("VA_Estimation_Challenge/Validation_Set", "AU_Detection_Challenge",
                  "EXPR_Recognition_Challenge/Validation_Set",
                  "EXPR_Classification_Challenge/Validation_Set"):
        assert tried in message, message
    with pytest.raises(AnnotationError, match="Training_Set"):
        FrameIndex.from_affwild2(str(root), "abaw1", "train")


def test_only_requested_tasks_are_read(tmp_path):
    root = make_layout(tmp_path / "aff", LAYOUTS[0])
    index = FrameIndex.from_affwild2(root, "abaw1", "train", tasks=("va",))
    assert index.videos == ["vid_a"] and len(index) == 4
    assert (index.frames["expr"] == -1).all()


def test_bad_file_inside_layout_is_named(tmp_path):
    root = make_layout(tmp_path / "aff", LAYOUTS[0])
    path = write(tmp_path / "aff" / "AU_Set" / "Training_Set" / "vid_c.txt",
                 f"{AUS8}\n{AU1_OK}\n{AU1_OK}\n1,0,2,1,0,0,1,0\n")
    with pytest.raises(AnnotationError) as err:
        FrameIndex.from_affwild2(root, "abaw1", "train")
    assert path in str(err.value) and "line 4:" in str(err.value)


def test_subset_and_constructor(tmp_path):
    root = make_layout(tmp_path / "aff", LAYOUTS[3])
    index = FrameIndex.from_affwild2(root, "abaw5", "val")
    sub = index.subset(["vid_b"])
    assert sub.videos == ["vid_b"] and len(sub) == 3 and sub.frames.index.tolist() == [0, 1, 2]
    assert sub.schema == index.schema and sub.root == index.root
    with pytest.raises(ValueError, match="vid_z"):
        index.subset(["vid_z"])
    with pytest.raises(ValueError, match="image_frame"):
        FrameIndex(index.frames.drop(columns=["image_frame"]), "abaw5", None)
    plain = FrameIndex(index.frames, "abaw5", None)
    assert plain.root is None and len(plain) == 9


# ---------------------------------------------------------------------- FrameIndex, MTL


def mtl_text(header_aus=AUS12):
    zeros = ",".join(["0"] * 12)
    return (
        f"image,valence,arousal,expression,{header_aus}\n"
        f"vid_b/00002.jpg,0.5,0.5,7,{zeros}\n"
        f"vid_a/00003.jpg,-5,-5,-1,{','.join(['-1'] * 12)}\n"
        "vid_a/00001.jpg,0.25,-0.75,2,1,0,0,0,0,0,0,0,0,0,0,1\n"
        f"vid_b/00001.jpg,1,-1,0,{zeros}\n"
    )


@pytest.mark.parametrize("edition,name", [("abaw3", "MTL_Challenge/validation_set.txt"),
                                          ("abaw4", "training_set_annotations.txt")])
def test_from_mtl_file_values_root_and_images(tmp_path, edition, name):
    root = tmp_path / "aff"
    path = write(root / name, mtl_text())
    touch_images(root, "vid_a", [1, 2])
    split = "val" if "validation" in name else "train"
    for index in (FrameIndex.from_mtl_file(path, edition, fill_missing_images=True),
                  FrameIndex.from_mtl(str(root), edition, split, fill_missing_images=True)):
        f = index.frames
        assert index.root == str(root) and list(f.columns) == frame_columns(edition)
        assert f["video"].tolist() == ["vid_a", "vid_a", "vid_b", "vid_b"]
        assert f["frame"].tolist() == [1, 3, 1, 2]
        np.testing.assert_array_equal(f["valence"], [0.25, -5, 1, 0.5])
        np.testing.assert_array_equal(f["arousal"], [-0.75, -5, -1, 0.5])
        assert f["expr"].tolist() == [2, -1, 0, 7]
        assert f["AU1"].tolist() == [1, -1, 0, 0] and f["AU26"].tolist() == [1, -1, 0, 0]
        assert f["has_image"].tolist() == [True, False, False, False]
        assert f["image_frame"].tolist() == [1, 2, -1, -1]
        assert index.image_paths("aligned", [1]) == [os.path.join(
            str(root), "cropped_aligned", "vid_a", "00002.jpg")]
    other = "train" if split == "val" else "val"
    with pytest.raises(FileNotFoundError, match="MTL"):
        FrameIndex.from_mtl(str(root), edition, other)


def test_read_mtl_file_keeps_file_order(tmp_path):
    path = write(tmp_path / "m.txt", mtl_text().replace("\n", "\r\n"))
    frames = read_mtl_file(path, "abaw3")
    assert list(frames.columns) == ["video", "frame", "valence", "arousal", "expr",
                                    *get_schema("abaw3").aus]
    assert frames["video"].tolist() == ["vid_b", "vid_a", "vid_a", "vid_b"]
    assert frames["frame"].tolist() == [2, 3, 1, 1]
    with pytest.raises(AnnotationError, match=r"m2.txt, line 1: .*expected 'image,valence"):
        read_mtl_file(write(tmp_path / "m2.txt", mtl_text(AUS8)), "abaw3")


# ---------------------------------------------------------------------- writers


def test_annotation_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    schema = get_schema("abaw2")
    va = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
    va[[3, 7]] = -5
    expr = rng.integers(-1, 7, 50)
    au = rng.integers(-1, 2, (50, 12))
    for task, values in (("va", va), ("expr", expr), ("au", au)):
        path = str(tmp_path / f"{task}.txt")
        write_annotation_file(path, task, values, schema)
        got = read_annotation_file(path, task, schema)
        np.testing.assert_array_equal(got, values)
    with open(tmp_path / "va.txt") as f:
        assert f.readline() == "valence,arousal\n"
    write_annotation_file(str(tmp_path / "short.txt"), "va", [[0.1, -5]], schema)
    with open(tmp_path / "short.txt") as f:
        assert f.read() == "valence,arousal\n0.1,-5\n"


def test_prediction_folder_round_trip_and_checks(tmp_path):
    schema = get_schema("abaw3")
    preds = {"v2": np.array([7, 0, 3]), "v1": np.array([1])}
    paths = write_prediction_folder(str(tmp_path / "expr"), "expr", preds, schema)
    assert [os.path.basename(p) for p in paths] == ["v1.txt", "v2.txt"]
    got = read_annotation_folder(str(tmp_path / "expr"), "expr", schema)
    assert list(got) == ["v1", "v2"]
    np.testing.assert_array_equal(got["v2"], [7, 0, 3])
    with pytest.raises(ValueError, match=r"vx.txt.*frame 2.*expected an integer"):
        write_prediction_folder(str(tmp_path / "expr"), "expr", {"vx": [1, -1]}, schema)
    with pytest.raises(ValueError, match="argmax"):
        write_prediction_folder(str(tmp_path / "expr"), "expr", {"vx": np.ones((2, 8))}, schema)
    with pytest.raises(ValueError, match=r"\(n, 12\)"):
        write_prediction_folder(str(tmp_path / "au"), "au", {"vx": np.ones((2, 8))}, schema)
    with pytest.raises(ValueError, match="nan"):
        write_prediction_folder(str(tmp_path / "va"), "va", {"vx": [[0.1, np.nan]]}, schema)


def test_mtl_files_round_trip(tmp_path):
    root = tmp_path / "aff"
    path = write(root / "MTL_Challenge" / "train_set.txt", mtl_text())
    touch_images(root, "vid_a", [1])
    index = FrameIndex.from_mtl_file(path, "abaw3")
    labels = index.labels()
    copy = str(tmp_path / "copy.txt")
    names = [f"{v}/{k:05d}.jpg" for v, k in zip(index.frames["video"], index.frames["frame"])]
    write_mtl_file(copy, names, labels["va"], labels["expr"], labels["au"], "abaw3")
    back = read_mtl_file(copy, "abaw3")
    pd.testing.assert_frame_equal(back, index.frames[back.columns.tolist()])

    rng = np.random.default_rng(1)
    va = rng.uniform(-1, 1, (4, 2)).astype(np.float32)
    expr = np.array([7, 0, 3, 1])
    au = rng.integers(0, 2, (4, 12))
    sub = str(tmp_path / "sub.txt")
    write_mtl_submission(sub, index, va, expr, au)
    with open(sub) as f:
        assert f.readline() == "image,valence,arousal,expression,aus\n"
        assert f.readline().startswith("vid_a/00001.jpg,")
    got = read_mtl_file(sub, "abaw3", submission=True)
    assert got["video"].tolist() == index.frames["video"].tolist()
    assert got["frame"].tolist() == index.frames["frame"].tolist()
    np.testing.assert_array_equal(got[["valence", "arousal"]].to_numpy(), va)
    np.testing.assert_array_equal(got["expr"], expr)
    np.testing.assert_array_equal(got[list(index.schema.aus)].to_numpy(), au)
    write_mtl_submission(str(tmp_path / "sub2.txt"), index.frames, va, expr, au, "abaw3")
    with pytest.raises(ValueError, match="row 1.*-5"):
        write_mtl_submission(sub, index, labels["va"], expr, au)
    with pytest.raises(ValueError, match="different lengths"):
        write_mtl_submission(sub, index, va[:3], expr, au)


def test_mtl_writer_rejects_bad_image_names_and_duplicates(tmp_path):
    path = str(tmp_path / "m.txt")
    va, expr, au = np.zeros((2, 2)), np.array([0, 1]), np.zeros((2, 12), int)
    assert image_names(pd.DataFrame({"video": ["a", "b"], "frame": [1, 12]})) == [
        "a/00001.jpg", "b/00012.jpg"]
    with pytest.raises(ValueError, match="row 1 image name 'a/00002.png'"):
        write_mtl_file(path, ["a/00001.jpg", "a/00002.png"], va, expr, au, "abaw4")
    with pytest.raises(ValueError, match="row 1 image 'a/00001.jpg' is already row 0"):
        write_mtl_file(path, ["a/00001.jpg", "a/00001.jpg"], va, expr, au, "abaw4")
    with pytest.raises(ValueError, match=r"row 1 \(a/00002.jpg\).*AU values 0,3"):
        write_mtl_file(path, ["a/00001.jpg", "a/00002.jpg"], va, expr,
                       np.array([[0] * 12, [0, 3] + [0] * 10]), "abaw4")
    assert not os.path.exists(path)
