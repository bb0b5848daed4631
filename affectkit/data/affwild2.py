"""Aff-Wild2 files: folder layout per edition, annotation readers and writers, `FrameIndex`.

Readers validate strictly: a bad file raises `AnnotationError` naming the file, the
1-based line (the header is line 1, frame k is line k + 1) and what was expected.

Layout (REFERENCE section 2):

    <root>/cropped_aligned/<video>/<n:05d>.jpg      aligned 112x112 faces, n 1-based
                                                   (the "aligned" view)
    <root>/cropped/<video>/<n:05d>.jpg              faces with context (the "cropped" view)
    <root>/<task folder>/<split folder>/<video>.txt per-task, per-video annotations
    <root>/<MTL file>                              MTL single file (ABAW3/4)
    <root>/videos/<video>.mp4                      source videos (`_left`/`_right` share one)

A frame image is a file named exactly `frame_file_name(n)` (`list_frame_images`); which
frames have one is worked out per view, since a frame can be missing in one view only.
"""

import csv
import io
import os
import re
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from affectkit.labels import EDITIONS, get_schema

TASKS = ("va", "expr", "au")

# Per-task folders: ABAW1/2 "*_Set", ABAW3+ "*_Challenge"; ABAW6 renamed the EXPR one.
_TASK_DIRS_ABAW12 = {"va": "VA_Set", "expr": "EXPR_Set", "au": "AU_Set"}
_TASK_DIRS_ABAW3 = {
    "va": "VA_Estimation_Challenge",
    "expr": "EXPR_Classification_Challenge",
    "au": "AU_Detection_Challenge",
}
_SPLIT_DIRS_ABAW12 = {"train": "Training_Set", "val": "Validation_Set"}
_SPLIT_DIRS_ABAW3 = {"train": "Train_Set", "val": "Validation_Set"}
_MTL_FILES_ABAW3 = {
    "train": "MTL_Challenge/train_set.txt",
    "val": "MTL_Challenge/validation_set.txt",
}
_MTL_FILES_ABAW4 = {
    "train": "training_set_annotations.txt",
    "val": "validation_set_annotations.txt",
}
MTL_SUBMISSION_HEADER = "image,valence,arousal,expression,aus"

# Image views: name -> folder of the layout.
VIEW_FOLDERS = {"aligned": "cropped_aligned", "cropped": "cropped"}
VIEWS = tuple(VIEW_FOLDERS)

# Face geometry of the views (REFERENCE section 7), shared by the demo writer and by
# `affectkit.inference`, which cuts the same views out of new videos. `cropped_aligned`
# faces are aligned by a similarity transform from five landmarks to ArcFace's 112x112
# template: pixel positions in a 112-pixel image, named as seen in the image (`left_eye`
# has the smaller x). `mouth` is the centre of the mouth (BlazeFace gives that point only).
ALIGNED_LANDMARKS_112 = {
    "left_eye": (38.2946, 51.6963),
    "right_eye": (73.5318, 51.5014),
    "nose": (56.0252, 71.7366),
    "mouth_left": (41.5493, 92.3655),
    "mouth_right": (70.7299, 92.2041),
    "mouth": (56.1396, 92.2848),
}
# The `cropped` view: an upright square on the centre of the aligned square, CONTEXT_SCALE
# times its side (the face with some context around it).
CONTEXT_SCALE = 1.5


def aligned_landmarks(size, names=("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")):
    """Template positions `(len(names), 2)` of the named landmarks in a `size`-pixel aligned face.

    >>> aligned_landmarks(224, ["nose"]).round(2).tolist()
    [[112.05, 143.47]]
    """
    return np.array([ALIGNED_LANDMARKS_112[n] for n in names], np.float64) * (size / 112.0)


def _check_split(split):
    if split not in ("train", "val"):
        raise ValueError(f"Unknown split {split!r}: expected 'train' or 'val'.")


def task_dir_names(edition, task):
    """Folder names a task's annotations may live in for an edition, preferred first.

    ABAW6 renamed `EXPR_Classification_Challenge` to `EXPR_Recognition_Challenge`;
    readers accept both for ABAW3 and later.
    """
    schema = get_schema(edition)
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: expected one of {TASKS}.")
    if schema.edition_number <= 2:
        return (_TASK_DIRS_ABAW12[task],)
    if task == "expr":
        names = ("EXPR_Classification_Challenge", "EXPR_Recognition_Challenge")
        return names[::-1] if schema.edition_number >= 6 else names
    return (_TASK_DIRS_ABAW3[task],)


def split_dir_name(edition, split):
    """`Training_Set`/`Validation_Set` (ABAW1/2) or `Train_Set`/`Validation_Set` (ABAW3+)."""
    _check_split(split)
    schema = get_schema(edition)
    table = _SPLIT_DIRS_ABAW12 if schema.edition_number <= 2 else _SPLIT_DIRS_ABAW3
    return table[split]


def annotation_dir(edition, task, split):
    """Relative path of the preferred per-task annotation folder, e.g. `VA_Set/Training_Set`."""
    return os.path.join(task_dir_names(edition, task)[0], split_dir_name(edition, split))


def mtl_file_names(split):
    """Relative paths of the MTL single file of a split, ABAW3 name first, then ABAW4's."""
    _check_split(split)
    return (_MTL_FILES_ABAW3[split], _MTL_FILES_ABAW4[split])


def mtl_file_name(edition, split):
    """The MTL file name an edition uses (ABAW4 and later use the ABAW4 names)."""
    abaw3_name, abaw4_name = mtl_file_names(split)
    return abaw4_name if get_schema(edition).edition_number >= 4 else abaw3_name


def annotation_header(task, schema):
    """Header line of a per-video annotation file of `task` in `schema`'s edition."""
    schema = get_schema(schema)
    if task == "va":
        return ",".join(schema.va_names)
    if task == "expr":
        return ",".join(schema.expressions)
    if task == "au":
        return ",".join(schema.aus)
    raise ValueError(f"Unknown task {task!r}: expected one of {TASKS}.")


def mtl_header(schema):
    """Header line of the MTL single annotation file."""
    schema = get_schema(schema)
    return ",".join(("image", "valence", "arousal", "expression") + tuple(schema.aus))


def frame_file_name(frame):
    """`00001.jpg` for 1-based frame number 1."""
    return f"{int(frame):05d}.jpg"


def image_names(frames):
    """`video/00001.jpg` names (MTL file format) of a DataFrame's `video` and `frame` columns.

    Args:
        frames: DataFrame with `video` and `frame` columns (e.g. `FrameIndex.frames`).
    Returns:
        list of str, one per row.
    """
    videos = np.asarray(frames["video"], dtype=object).tolist()
    numbers = np.asarray(frames["frame"], np.int64).tolist()
    return [f"{video}/{number:05d}.jpg" for video, number in zip(videos, numbers)]


# ---------------------------------------------------------------------- errors

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


class AnnotationError(ValueError):
    """A bad annotation or prediction file; the message names the file, line and expectation."""


class AnnotationNotFoundError(AnnotationError, FileNotFoundError):
    """A missing annotation file or folder (both an `AnnotationError` and a `FileNotFoundError`)."""


# ---------------------------------------------------------------------- frame columns


class ViewColumns(NamedTuple):
    """The `FrameIndex.frames` columns of one view's images.

    Attributes:
        path: an optional column of the image used for the frame in this view (absolute
            path, `""` when none); indexes read from Aff-Wild2 derive it on demand
            (`FrameIndex.image_paths`) instead of holding a string per frame.
        has_image: the frame's own image exists in this view's folder.
        image_frame: the frame whose image is used (the frame itself, the nearest one with
            an image when filled, or -1).
    """

    path: str
    has_image: str
    image_frame: str


VIEW_COLUMNS = {
    "aligned": ViewColumns("image_aligned", "has_image", "image_frame"),
    "cropped": ViewColumns("image_cropped", "has_image_cropped", "image_frame_cropped"),
}
IMAGE_COLUMNS = ("has_image", "image_frame", "has_image_cropped", "image_frame_cropped")


def frame_columns(schema):
    """The `FrameIndex.frames` column names, in order, for a schema (or edition name)."""
    schema = get_schema(schema)
    return ["video", "frame", "valence", "arousal", "expr", *schema.aus, *IMAGE_COLUMNS]


def view_columns(view):
    """The `ViewColumns` of a view: `"aligned"` (`cropped_aligned/`) or `"cropped"` (`cropped/`).

    Example:
    >>> view_columns("cropped").has_image
    'has_image_cropped'
    """
    if view not in VIEW_COLUMNS:
        raise ValueError(f"Unknown view {view!r}: expected one of {VIEWS}.")
    return VIEW_COLUMNS[view]


def _check_task(task):
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: expected one of {TASKS}.")
    return task


def _check_tasks(tasks):
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    for task in tasks:
        _check_task(task)
    if not tasks:
        raise ValueError(f"No task given: expected some of {TASKS}.")
    return tasks


# ---------------------------------------------------------------------- value rules


_VALUE_NAMES = {"va": "valence,arousal", "expr": "expression", "au": "AU values"}


def _num_columns(task, schema):
    return {"va": 2, "expr": 1, "au": schema.num_aus}[task]


def _line_description(task, schema):
    if task == "va":
        return "2 numbers 'valence,arousal'"
    if task == "expr":
        return "one expression index"
    return f"{schema.num_aus} AU values ({','.join(schema.aus)})"


def _expectation(task, schema, strict=False):
    """What valid values of a task are; `strict` (predictions) allows no missing marker."""
    if task == "va":
        marker = "" if strict else f" or exactly the missing marker {schema.va_missing:g}"
        return f"valence and arousal in [-1, 1]{marker}"
    if task == "expr":
        last = schema.num_expressions - 1
        marker = "" if strict else f" or {schema.expr_missing} (missing)"
        return (f"an integer expression index in 0..{last} "
                f"({schema.expressions[0]}..{schema.expressions[-1]}, {schema.edition}){marker}")
    marker = "" if strict else f" or {schema.au_missing} (missing)"
    return f"AU values 0 or 1{marker}"


def _bad_rows(task, values, schema, strict=False):
    """Boolean mask of the rows of a float array `(n, c)` that break the task's value rules."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    with np.errstate(invalid="ignore"):
        if task == "va":
            ok = (values >= -1.0) & (values <= 1.0)
            missing = values == schema.va_missing
        elif task == "expr":
            ok = (values == np.floor(values)) & (values >= 0) & (values < schema.num_expressions)
            missing = values == schema.expr_missing
        else:
            ok = (values == 0) | (values == 1)
            missing = values == schema.au_missing
    if not strict:
        ok |= missing
    return ~ok.all(axis=1)


def _format_row(values):
    return ",".join(f"{x:.10g}" for x in np.asarray(values, np.float64).reshape(-1))


def _cast_task(task, values):
    if task == "va":
        return np.asarray(values, np.float32).reshape(-1, 2)
    if task == "expr":
        return np.asarray(values, np.int8).reshape(-1)
    return np.asarray(values, np.int8).reshape(len(values), -1)


# ---------------------------------------------------------------------- parsing


def _read_text(path, what):
    if os.path.isdir(path):
        raise AnnotationError(f"{path}: is a folder, expected {what}.")
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            return f.read()
    except FileNotFoundError:
        raise AnnotationNotFoundError(f"{path}: no such file, expected {what}.") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({exc}), expected {what}.") from None


def _split_header(path, text, expected, line_what):
    """Returns `(header, body)`; body is every line after the header, trailing blanks removed."""
    text = text.rstrip()
    if not text:
        raise AnnotationError(
            f"{path}, line 1: empty file, expected the header {expected!r} "
            f"and then one line per frame ({line_what})."
        )
    end = text.find("\n")
    header, body = (text, "") if end < 0 else (text[:end], text[end + 1 :])
    if not body:
        raise AnnotationError(
            f"{path}, line 2: no frame lines after the header, expected one line per "
            f"frame ({line_what})."
        )
    return header, body


def _check_header(path, header, expected, alternatives):
    """`alternatives()`: (description, header) pairs named in the message when they match."""
    fields = [name.strip() for name in header.split(",")]
    if fields == expected.split(","):
        return
    hint = ""
    for description, other in alternatives():
        if fields == other.split(","):
            hint = f" (the file has the {description} header)"
            break
    raise AnnotationError(
        f"{path}, line 1: header {header.strip()!r}, expected {expected!r}{hint}."
    )


def _header_alternatives(task):
    """(description, header) of every edition's header of `task`, then of the other tasks."""
    out = []
    for t in (task,) + tuple(x for x in TASKS if x != task):
        headers = {}
        for edition in EDITIONS:
            headers.setdefault(annotation_header(t, edition), []).append(edition.upper())
        for header, editions in headers.items():
            out.append((f"{'/'.join(editions)} {t}", header))
    return out


def _raise_first_bad_line(path, body, ncols, text_columns, what):
    for i, line in enumerate(body.split("\n")):
        where = f"{path}, line {i + 2}"
        if not line.strip():
            raise AnnotationError(f"{where}: empty line, expected {what}.")
        fields = line.split(",")
        if len(fields) != ncols:
            raise AnnotationError(
                f"{where}: {len(fields)} comma-separated values in {line.strip()!r}, "
                f"expected {ncols} ({what})."
            )
        for field in fields[text_columns:]:
            if not _NUMBER.match(field):
                raise AnnotationError(
                    f"{where}: {field.strip()!r} is not a number, expected {what}."
                )
    raise AnnotationError(
        f"{path}: could not be parsed, expected {what} on each line after the header."
    )


def _parse_table(path, body, ncols, text_columns, what):
    """Parses the lines after the header (fast pandas path); on failure reports the bad line.

    Returns:
        `(texts, numbers)`: a list of str per text column, and the other columns as a
        float64 array `(n, ncols - text_columns)`.
    """
    n = body.count("\n") + 1
    dtype = {i: (str if i < text_columns else np.float64) for i in range(ncols)}
    try:
        table = pd.read_csv(
            io.StringIO(body), header=None, dtype=dtype, na_filter=False,
            skip_blank_lines=False, quoting=csv.QUOTE_NONE, engine="c",
        )
        ok = table.shape == (n, ncols)
        if ok:
            columns = [table[c].to_numpy(np.float64) for c in table.columns[text_columns:]]
            numbers = np.stack(columns, axis=1)
            ok = not np.isnan(numbers).any()
    except Exception:  # noqa: BLE001 - any parser failure: locate the bad line below
        ok = False
    if not ok:
        _raise_first_bad_line(path, body, ncols, text_columns, what)
    texts = [table[c].tolist() for c in table.columns[:text_columns]]
    return texts, numbers


def _check_task_values(path, task, values, schema, strict=False, row_offset=2):
    """Raises on the first line whose values break the rules; returns nothing."""
    bad = _bad_rows(task, values, schema, strict)
    if bad.any():
        i = int(np.argmax(bad))
        raise AnnotationError(
            f"{path}, line {i + row_offset}: {_VALUE_NAMES[task]} {_format_row(values[i])}, "
            f"expected {_expectation(task, schema, strict)}."
        )


# ---------------------------------------------------------------------- readers


def read_annotation_file(path, task, schema):
    """Reads one per-video annotation (or prediction) file; frame k is line k after the header.

    Args:
        path: the `<video>.txt` file.
        task: `"va"`, `"expr"` or `"au"`.
        schema: `LabelSchema` or edition name; the header must be exactly
            `annotation_header(task, schema)`.
    Returns:
        one row per frame: va `(n, 2)` float32, expr `(n,)` int8, au `(n, num_aus)` int8,
        missing markers (-5, -1) kept.
    Raises:
        AnnotationError: naming the file and 1-based line, for a wrong header, column
            count, non-number, out-of-range value or empty file
            (`AnnotationNotFoundError` for a missing file).
    """
    schema = get_schema(schema)
    _check_task(task)
    path = os.fspath(path)
    expected = annotation_header(task, schema)
    line_what = _line_description(task, schema)
    text = _read_text(path, f"a {schema.edition} {task} annotation file")
    header, body = _split_header(path, text, expected, line_what)
    _check_header(path, header, expected, lambda: _header_alternatives(task))
    _, values = _parse_table(path, body, _num_columns(task, schema), 0, line_what)
    _check_task_values(path, task, values, schema)
    return _cast_task(task, values)


def read_annotation_folder(folder, task, schema):
    """Reads every `*.txt` of a per-task folder (annotations or predictions).

    Args:
        folder: e.g. `<root>/VA_Estimation_Challenge/Train_Set`.
        task: `"va"`, `"expr"` or `"au"`.
        schema: `LabelSchema` or edition name.
    Returns:
        dict video name -> array as from `read_annotation_file`, sorted by video.
        An existing folder without `*.txt` files gives an empty dict.
    """
    folder = os.fspath(folder)
    _check_task(task)
    if not os.path.isdir(folder):
        kind = "not a folder" if os.path.exists(folder) else "no such annotation folder"
        raise AnnotationNotFoundError(
            f"{folder}: {kind}, expected a folder of per-video {task} files (<video>.txt)."
        )
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.name.endswith(".txt") and e.is_file())
    return {
        name[: -len(".txt")]: read_annotation_file(os.path.join(folder, name), task, schema)
        for name in names
    }


def read_mtl_file(path, schema, submission=False):
    """Reads an MTL annotation file, or with `submission=True` an MTL submission file.

    Lines are `video/00001.jpg,valence,arousal,expression,AU...`. Annotation files keep
    the missing markers; submission files are predictions and may hold none (valence and
    arousal in [-1, 1], expression in 0..C-1, AUs 0/1).

    Args:
        path: the file (`MTL_Challenge/train_set.txt`, `training_set_annotations.txt`, ...).
        schema: `LabelSchema` or edition name (AU names and number of classes).
        submission: expect the header `image,valence,arousal,expression,aus` instead of
            `mtl_header(schema)`.
    Returns:
        DataFrame with columns `video` (str), `frame` (int64), `valence`, `arousal`
        (float32), `expr` (int8) and one int8 column per AU of `schema.aus`, in file order.
    """
    schema = get_schema(schema)
    path = os.fspath(path)
    aus = list(schema.aus)
    expected = MTL_SUBMISSION_HEADER if submission else mtl_header(schema)
    ncols = 4 + len(aus)
    line_what = f"{ncols} values 'video/00001.jpg,valence,arousal,expression,{len(aus)} AUs'"
    kind = "MTL submission" if submission else "MTL annotation"
    text = _read_text(path, f"a {schema.edition} {kind} file")
    header, body = _split_header(path, text, expected, line_what)

    def alternatives():
        return [("MTL submission (pass submission=True)", MTL_SUBMISSION_HEADER)] + [
            (f"{e.upper()} MTL annotation", mtl_header(e)) for e in EDITIONS
        ]

    _check_header(path, header, expected, alternatives)
    (images,), values = _parse_table(path, body, ncols, 1, line_what)
    video, frame = _split_image_names(images)
    bad = frame < 1
    if bad.any():
        i = int(np.argmax(bad))
        raise AnnotationError(
            f"{path}, line {i + 2}: image name {images[i]!r}, expected "
            "'<video>/<frame>.jpg' with a 1-based frame number such as 'video1/00001.jpg'."
        )
    checks = (("va", values[:, 0:2]), ("expr", values[:, 2:3]), ("au", values[:, 3:]))
    failures = []
    for task, task_values in checks:
        bad = _bad_rows(task, task_values, schema, submission)
        if bad.any():
            failures.append((int(np.argmax(bad)), task, task_values))
    if failures:
        i, task, task_values = min(failures, key=lambda item: item[0])
        _check_task_values(path, task, task_values[i : i + 1], schema, submission, i + 2)

    frames = pd.DataFrame({
        "video": video,
        "frame": frame,
        "valence": values[:, 0].astype(np.float32),
        "arousal": values[:, 1].astype(np.float32),
        "expr": values[:, 2].astype(np.int8),
        **{name: values[:, 3 + j].astype(np.int8) for j, name in enumerate(aus)},
    })
    duplicate = _first_duplicate(video, frame)
    if duplicate is not None:
        i, j = duplicate
        raise AnnotationError(
            f"{path}, line {i + 2}: image {images[i]!r} is already on line {j + 2}, "
            "expected each frame once."
        )
    return frames


def _first_duplicate(video, frame):
    """`(i, j)`: the first row i whose (video, frame) already is on row j < i; else None."""
    if len(frame) == 0:
        return None
    codes = pd.factorize(np.asarray(video, dtype=object))[0].astype(np.int64)
    keys = codes * (int(frame.max()) + 1) + frame
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if not (counts > 1).any():
        return None
    duplicated = np.ones(len(keys), bool)
    duplicated[first] = False
    i = int(np.argmax(duplicated))
    return i, int(np.argmax(keys == keys[i]))


def _split_image_names(names):
    """Video names (object array) and frame numbers (-1 where malformed) of `video/00001.jpg`."""
    parts = [str(name).strip().rpartition("/") for name in names]
    video = np.array([p[0] for p in parts], dtype=object)
    stems = [p[2][:-4] if p[1] and p[0] and p[2].endswith(".jpg") else "" for p in parts]
    frame = np.array([int(x) if x.isdigit() and x.isascii() else -1 for x in stems], np.int64)
    return video, frame


# ---------------------------------------------------------------------- writers


def _prepare_values(task, values, schema, where, strict=False, row_names=None):
    """Checks the shape and values of one task's rows; returns them as a numpy array.

    `row_names` (e.g. MTL image names) name a bad row in the message; by default
    row i is frame i + 1 of a per-video file.
    """
    _check_task(task)
    values = np.asarray(values)
    if values.dtype == bool:
        values = values.astype(np.int64)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"{where}: {task} values must be numbers, got dtype {values.dtype}.")
    width = _num_columns(task, schema)
    if task == "expr" and values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if task == "expr" and values.ndim != 1:
        raise ValueError(
            f"{where}: expr values of shape {values.shape}, expected class indices of shape "
            "(n,) (take the argmax of class probabilities first, e.g. inference.decode_outputs)."
        )
    if task != "expr" and (values.ndim != 2 or values.shape[1] != width):
        raise ValueError(
            f"{where}: {task} values of shape {values.shape}, expected (n, {width}) "
            f"({_line_description(task, schema)})."
        )
    if len(values) == 0:
        raise ValueError(f"{where}: no frames to write, expected at least one {task} row.")
    bad = _bad_rows(task, values, schema, strict)
    if bad.any():
        i = int(np.argmax(bad))
        row = f"frame {i + 1}" if row_names is None else row_names[i]
        raise ValueError(
            f"{where}: row {i} ({row}) has {_VALUE_NAMES[task]} {_format_row(values[i])}, "
            f"expected {_expectation(task, schema, strict)}."
        )
    return values


def _format_floats(values):
    """Per value the shortest of `%.6g`, `%.9g`, `%.17g` that reads back to the same value."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    numbers = values.tolist()
    text = [f"{x:.6g}" for x in numbers]
    for digits in (9, 17):
        wrong = np.flatnonzero(np.array(text, np.float64).astype(values.dtype) != values)
        if not len(wrong):
            break
        for i in wrong.tolist():
            text[i] = f"{numbers[i]:.{digits}g}"
    return text


def _format_ints(values):
    """Decimal strings of an integer array (object array of the same shape), via a lookup."""
    values = np.asarray(values).astype(np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if high - low < 4096:
        lookup = np.array([str(v) for v in range(low, high + 1)], dtype=object)
        return lookup[values - low]
    unique, inverse = np.unique(values, return_inverse=True)
    lookup = np.array([str(v) for v in unique.tolist()], dtype=object)
    return lookup[inverse.reshape(values.shape)]


def _format_int_rows(values):
    """Comma-joined rows of an integer matrix (list of str); each distinct row formatted once."""
    values = np.asarray(values).astype(np.int64)
    k = values.shape[1]
    low = int(values.min())
    base = int(values.max()) - low + 1
    if base**k >= 2**62:
        return [",".join(row) for row in _format_ints(values).tolist()]
    code = (values - low) @ (base ** np.arange(k, dtype=np.int64))
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    text = np.array([",".join(map(str, row)) for row in values[first].tolist()], dtype=object)
    return text[inverse.reshape(-1)].tolist()


def _task_text_columns(task, values):
    """One list of str per output column group (va: 2 columns, expr: 1, au: 1 joined)."""
    if task == "va":
        return [_format_floats(values[:, 0]), _format_floats(values[:, 1])]
    if task == "expr":
        return [_format_ints(values).tolist()]
    return [_format_int_rows(values)]


def _write_lines(path, header, columns):
    lines = columns[0] if len(columns) == 1 else [",".join(row) for row in zip(*columns)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="\n") as f:
        f.write(header + "\n" + "\n".join(lines) + "\n")


def _write_task_file(path, task, values, schema, strict):
    schema = get_schema(schema)
    path = os.fspath(path)
    values = _prepare_values(task, values, schema, path, strict)
    _write_lines(path, annotation_header(task, schema), _task_text_columns(task, values))


def write_annotation_file(path, task, values, schema):
    """Writes one per-video file in the official format (also used for predictions).

    Args:
        path: the `<video>.txt` to write; parent folders are created.
        task: `"va"`, `"expr"` or `"au"`.
        values: one row per frame, frame 1 first: `(n, 2)` valence/arousal,
            `(n,)` expression indices or `(n, num_aus)` 0/1 values. Missing
            markers are written as they are; any other invalid value raises.
        schema: `LabelSchema` or edition name (chooses the header).
    """
    _write_task_file(path, task, values, schema, strict=False)


def write_prediction_folder(folder, task, predictions, schema):
    """Writes predictions as per-video files `<folder>/<video>.txt` in the official format.

    Args:
        folder: output folder (created).
        task: `"va"`, `"expr"` or `"au"`.
        predictions: dict video -> one row per frame, frame 1 first (shapes as in
            `write_annotation_file`); predictions may hold no missing marker.
        schema: `LabelSchema` or edition name.
    Returns:
        list of the written paths, sorted by video.
    """
    schema = get_schema(schema)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for video in sorted(predictions):
        path = os.path.join(folder, f"{video}.txt")
        _write_task_file(path, task, predictions[video], schema, strict=True)
        paths.append(path)
    return paths


def write_mtl_file(path, images, va, expr, au, schema, submission=False):
    """Writes an MTL annotation file, or with `submission=True` an MTL submission file.

    Args:
        path: file to write; parent folders are created.
        images: `video/00001.jpg` names, one per row.
        va: `(n, 2)` valence, arousal. expr: `(n,)` indices. au: `(n, num_aus)` 0/1.
        schema: `LabelSchema` or edition name.
        submission: header `image,valence,arousal,expression,aus` instead of the
            annotation header with AU names; a submission may hold no missing marker.
    """
    schema = get_schema(schema)
    path = os.fspath(path)
    images = [str(image) for image in images]
    lengths = [len(images)] + [len(np.asarray(x)) for x in (va, expr, au)]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"write_mtl_file({path}): images, va, expr and au have different lengths "
            f"({', '.join(map(str, lengths))})."
        )
    video, frame = _split_image_names(images)
    bad = frame < 1
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"write_mtl_file({path}): row {i} image name {images[i]!r}, expected "
            "'<video>/<frame>.jpg' with a 1-based frame number such as 'video1/00001.jpg'."
        )
    duplicate = _first_duplicate(video, frame)
    if duplicate is not None:
        i, j = duplicate
        raise ValueError(
            f"write_mtl_file({path}): row {i} image {images[i]!r} is already row {j}, "
            "expected each frame once."
        )
    columns = [images]
    for task, values in (("va", va), ("expr", expr), ("au", au)):
        where = f"write_mtl_file({path})"
        values = _prepare_values(task, values, schema, where, submission, images)
        columns += _task_text_columns(task, values)
    header = MTL_SUBMISSION_HEADER if submission else mtl_header(schema)
    _write_lines(path, header, columns)


def write_mtl_submission(path, index_or_frames, va, expr, au, schema=None):
    """Writes an MTL submission file for the frames of a `FrameIndex` (or DataFrame).

    Args:
        path: file to write.
        index_or_frames: `FrameIndex` or DataFrame with `video` and `frame` columns;
            its rows give the image names `video/00001.jpg`, in order.
        va, expr, au: predictions, rows aligned with the frames (see `write_mtl_file`).
        schema: `LabelSchema` or edition name; defaults to the index's schema.
    """
    frames = index_or_frames
    if isinstance(index_or_frames, FrameIndex):
        frames = index_or_frames.frames
        schema = index_or_frames.schema if schema is None else schema
    if schema is None:
        raise ValueError("write_mtl_submission: pass `schema` when giving a DataFrame.")
    write_mtl_file(path, image_names(frames), va, expr, au, schema, submission=True)


# ---------------------------------------------------------------------- images


def list_frame_images(folder):
    """The frame images of one video folder (`<root>/<view folder>/<video>`), by frame number.

    The one rule of which files are frame images, shared by `FrameIndex` and feature
    extraction: a file named exactly `frame_file_name(n)`, i.e. `f"{n:05d}.jpg"` for a
    1-based frame number n (`00001.jpg`, `123456.jpg`). Any other name is not a frame
    image: `1.jpg`, `0002.jpg`, `000005.jpg` (not the zero-padded name), `00001.JPG`,
    `00003.png`, `00000.jpg` (frame 0), `notes.txt`. A missing folder has no images.
    One directory listing per folder, no per-frame `os.path.exists` or `stat`.

    Args:
        folder: one video's folder of one view.
    Returns:
        `(frames, paths)`: int64 `(n,)` frame numbers, ascending, and the list of their
        paths (`folder` joined with the file name).

    Example:
    >>> frames, paths = list_frame_images("/data/affwild2/cropped/1-30-1280x720")  # doctest: +SKIP
    """
    folder = os.fspath(folder)
    try:
        stems = [name[:-4] for name in os.listdir(folder) if name.endswith(".jpg")]
    except (FileNotFoundError, NotADirectoryError):
        stems = []
    stems = [
        stem for stem in stems
        if stem.isascii() and stem.isdigit()
        and (len(stem) == 5 or (len(stem) > 5 and stem[0] != "0")) and stem != "00000"
    ]
    numbers = np.array(stems, dtype=np.int64) if stems else np.zeros(0, np.int64)
    order = np.argsort(numbers, kind="stable")
    prefix = os.path.join(folder, "")
    return numbers[order], [prefix + stems[i] + ".jpg" for i in order.tolist()]


def video_names(root, edition=None, split="all"):
    """Video names of an Aff-Wild2 folder: every video folder of `cropped_aligned/` or
    `cropped/` (`"all"`), or the videos of a split's annotation folders (`"train"` /
    `"val"`, which need `edition`)."""
    root = os.path.abspath(os.fspath(root))
    if split == "all":
        names = set()
        for view_folder in VIEW_FOLDERS.values():
            folder = os.path.join(root, view_folder)
            if os.path.isdir(folder):
                with os.scandir(folder) as entries:
                    names.update(e.name for e in entries if e.is_dir())
        return sorted(names)
    if split not in ("train", "val"):
        raise ValueError(f"Unknown split {split!r}: expected 'train', 'val' or 'all'.")
    if edition is None:
        raise ValueError(
            f"split={split!r} needs the ABAW edition (folder names differ by edition); "
            "pass edition=..., or split='all'."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a folder without images is reported later
        return FrameIndex.from_affwild2(root, edition, split).videos


def _match_images(frames, available, fill):
    """`(has_image, image_frame)` of one video's sorted frames given its sorted image frames."""
    m = len(available)
    if m == 0:
        return np.zeros(len(frames), bool), np.full(len(frames), -1, np.int64)
    pos = np.searchsorted(available, frames)
    right = available[np.minimum(pos, m - 1)]
    has_image = right == frames
    if not fill:
        return has_image, np.where(has_image, frames, -1)
    left = available[np.maximum(pos - 1, 0)]
    left_gap = np.where(pos > 0, frames - left, np.iinfo(np.int64).max)
    right_gap = np.where(pos < m, right - frames, np.iinfo(np.int64).max)
    return has_image, np.where(left_gap <= right_gap, left, right)


def _image_columns(videos, frames, root, fill):
    """The image columns (`IMAGE_COLUMNS`) of rows sorted by video then frame, per view:
    each view's availability comes from its own folder (`VIEW_FOLDERS`)."""
    n = len(frames)
    starts = np.flatnonzero(np.r_[True, videos[1:] != videos[:-1]]) if n else np.zeros(0, int)
    stops = np.r_[starts[1:], n].astype(int)
    columns = {}
    for view, columns_of_view in VIEW_COLUMNS.items():
        has_image = np.zeros(n, bool)
        image_frame = np.full(n, -1, np.int32)
        folder = None if root is None else os.path.join(root, VIEW_FOLDERS[view])
        if folder is not None and n and os.path.isdir(folder):
            for start, stop in zip(starts.tolist(), stops.tolist()):
                available, _ = list_frame_images(os.path.join(folder, str(videos[start])))
                has, used = _match_images(frames[start:stop], available, fill)
                has_image[start:stop], image_frame[start:stop] = has, used
        columns[columns_of_view.has_image] = has_image
        columns[columns_of_view.image_frame] = image_frame
    return {name: columns[name] for name in IMAGE_COLUMNS}


def _warn_if_no_images(root, stacklevel=3):
    aligned = os.path.join(root, "cropped_aligned")
    if not os.path.isdir(aligned):
        warnings.warn(
            f"{aligned}: no such folder; every frame is flagged has_image=False.",
            stacklevel=stacklevel,
        )


def _build_frames(video, frame, va, expr, au, schema, root, fill):
    """The `FrameIndex.frames` DataFrame from label arrays sorted by video then frame."""
    video = np.asarray(video, dtype=object)
    frame = np.asarray(frame, np.int64)
    columns = {
        "video": video,
        "frame": frame,
        "valence": np.asarray(va[:, 0], np.float32),
        "arousal": np.asarray(va[:, 1], np.float32),
        "expr": np.asarray(expr, np.int8),
    }
    for j, name in enumerate(schema.aus):
        columns[name] = np.asarray(au[:, j], np.int8)
    columns.update(_image_columns(video, frame, root, fill))
    return pd.DataFrame(columns, copy=False)


def _union_frames(per_task, schema):
    """Per-task dicts video -> rows (frame k = row k-1) to arrays over the union of frames."""
    videos = sorted(set().union(*per_task.values()))
    position = {video: i for i, video in enumerate(videos)}
    lengths = np.zeros(len(videos), np.int64)
    for arrays in per_task.values():
        for video, rows in arrays.items():
            lengths[position[video]] = max(lengths[position[video]], len(rows))
    offsets = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    video = np.repeat(np.asarray(videos, dtype=object), lengths)
    frame = np.arange(total, dtype=np.int64) - np.repeat(offsets, lengths) + 1
    labels = {
        "va": np.full((total, 2), schema.va_missing, np.float32),
        "expr": np.full(total, schema.expr_missing, np.int8),
        "au": np.full((total, schema.num_aus), schema.au_missing, np.int8),
    }
    for task, arrays in per_task.items():
        if not arrays:
            continue
        names = list(arrays)
        counts = np.array([len(arrays[v]) for v in names], np.int64)
        starts = offsets[[position[v] for v in names]]
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        labels[task][np.repeat(starts, counts) + within] = np.concatenate(
            [arrays[v] for v in names]
        )
    return video, frame, labels


def _mtl_root(path):
    """`<root>` of `<root>/MTL_Challenge/train_set.txt` or `<root>/training_set_annotations.txt`."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == os.path.dirname(_MTL_FILES_ABAW3["train"]):
        return os.path.dirname(folder)
    return folder


# ---------------------------------------------------------------------- FrameIndex


class FrameIndex:
    """One row per frame of Aff-Wild2, all tasks, missing markers kept.

    `frames` columns, in order: `video` (str), `frame` (int64, 1-based), `valence`,
    `arousal` (float32, -5 missing), `expr` (int8, -1 missing), one int8 column per AU
    of `schema.aus` (-1 missing), then the image columns of each view (`view_columns`):

        view        path             has_image            image_frame
        "aligned"   image_aligned    has_image            image_frame
        "cropped"   image_cropped    has_image_cropped    image_frame_cropped

    `path`: absolute path of the view's jpg used for the frame, `""` when none;
    `has_image`: the frame's own image (`list_frame_images`) exists in the view's folder
    (`cropped_aligned/` or `cropped/`); `image_frame`: the frame whose image is used,
    `frame` itself, the nearest frame of the video with an image in that view when built
    with `fill_missing_images=True` (ties: the earlier one), or -1. Each view's columns
    come from its own folder, so a frame missing in `cropped/` only is flagged there only;
    `has_image` and `image_frame` without a suffix are the aligned view's. Rows are sorted
    by video then frame. Frames without an image are kept and flagged, never dropped.

    Args:
        frames: DataFrame with the columns above (extra columns are kept).
        schema: `LabelSchema` or edition name.
        root: the Aff-Wild2 folder the paths point into, or None.

    Example:
    >>> index = FrameIndex.from_affwild2("/data/affwild2", "abaw3", "train")  # doctest: +SKIP
    >>> index.summary()                                    # per-task counts  # doctest: +SKIP
    >>> y = index.with_images_only().labels(("va", "expr"))  # doctest: +SKIP
    """

    def __init__(self, frames, schema, root=None):
        schema = get_schema(schema)
        if not isinstance(frames, pd.DataFrame):
            raise TypeError(f"FrameIndex: frames must be a pandas DataFrame, got {type(frames)}.")
        expected = frame_columns(schema)
        missing = [c for c in expected if c not in frames.columns]
        if missing:
            raise ValueError(
                f"FrameIndex: frames lack the column(s) {', '.join(missing)}; "
                f"expected {', '.join(expected)} ({schema.edition})."
            )
        self.frames = frames
        self.schema = schema
        self.root = None if root is None else os.fspath(root)
        self.sources = None  # what a constructor read: task (or "mtl") -> folder or file

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_affwild2(cls, root, edition, split, tasks=TASKS, fill_missing_images=False):
        """Reads the per-task, per-video annotation folders of a split.

        Frames are the union over tasks per video: a frame labelled for one task only
        gets the missing markers of the others. A task whose folder is absent is skipped
        (`summary()` shows it with 0 videos); if no task folder exists this raises.

        Args:
            root: Aff-Wild2 folder holding the task folders and `cropped_aligned/`.
            edition: edition name or `LabelSchema` (folder names, headers, AUs).
            split: `"train"` or `"val"`.
            tasks: tasks to read, any of `("va", "expr", "au")`.
            fill_missing_images: point frames without an image at the nearest frame of
                the same video that has one, in each view separately.
        """
        schema = get_schema(edition)
        tasks = _check_tasks(tasks)
        split_dir = split_dir_name(schema, split)
        root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(root):
            raise AnnotationNotFoundError(f"{root}: no such Aff-Wild2 folder.")
        found, tried = {}, []
        for task in tasks:
            for name in task_dir_names(schema, task):
                folder = os.path.join(root, name, split_dir)
                tried.append(folder)
                if os.path.isdir(folder):
                    found[task] = folder
                    break
        if not found:
            raise AnnotationNotFoundError(
                f"{root}: no {schema.edition} {split} annotation folder for "
                f"{', '.join(tasks)}; tried {', '.join(tried)}."
            )
        per_task = {task: read_annotation_folder(f, task, schema) for task, f in found.items()}
        if not any(per_task.values()):
            raise AnnotationError(
                f"{root}: no <video>.txt annotation files in {', '.join(found.values())}."
            )
        video, frame, labels = _union_frames(per_task, schema)
        _warn_if_no_images(root)
        frames = _build_frames(
            video, frame, labels["va"], labels["expr"], labels["au"], schema, root,
            fill_missing_images,
        )
        index = cls(frames, schema, root)
        index.sources = dict(found)
        return index

    @classmethod
    def from_mtl_file(cls, path, edition, root=None, fill_missing_images=False):
        """Reads an MTL single annotation file (ABAW3 or ABAW4 format).

        Args:
            path: the MTL file.
            edition: edition name or `LabelSchema`.
            root: Aff-Wild2 folder of `cropped_aligned/`; defaults to `<root>` for
                `<root>/MTL_Challenge/train_set.txt` or `<root>/training_set_annotations.txt`.
            fill_missing_images: as in `from_affwild2`.
        """
        schema = get_schema(edition)
        path = os.path.abspath(os.fspath(path))
        root = _mtl_root(path) if root is None else os.path.abspath(os.fspath(root))
        table = read_mtl_file(path, schema)
        table = table.sort_values(["video", "frame"], kind="stable").reset_index(drop=True)
        _warn_if_no_images(root)
        frames = _build_frames(
            table["video"].to_numpy(dtype=object), table["frame"].to_numpy(),
            table[["valence", "arousal"]].to_numpy(np.float32), table["expr"].to_numpy(),
            table[list(schema.aus)].to_numpy(np.int64), schema, root, fill_missing_images,
        )
        index = cls(frames, schema, root)
        index.sources = {"mtl": path}
        return index

    @classmethod
    def from_mtl(cls, root, edition, split, fill_missing_images=False):
        """Finds the MTL file of a split under `root` (ABAW3 or ABAW4 name) and reads it."""
        root = os.path.abspath(os.fspath(root))
        preferred = mtl_file_name(edition, split)
        names = [preferred] + [n for n in mtl_file_names(split) if n != preferred]
        tried = [os.path.join(root, name) for name in names]
        for path in tried:
            if os.path.isfile(path):
                return cls.from_mtl_file(path, edition, root, fill_missing_images)
        raise AnnotationNotFoundError(
            f"{root}: no MTL annotation file for the {split} split; tried {', '.join(tried)}."
        )

    # ------------------------------------------------------------------ views

    def __len__(self):
        return len(self.frames)

    def __repr__(self):
        return (f"FrameIndex({len(self)} frames, {len(self.videos)} videos, "
                f"{self.schema.edition}, root={self.root!r})")

    @property
    def videos(self):
        """Sorted list of the video names."""
        return sorted(pd.unique(self.frames["video"]).tolist())

    def labels(self, tasks=TASKS):
        """Label arrays with missing markers kept.

        Returns:
            dict: `va` `(n, 2)` float32, `expr` `(n,)` int32, `au` `(n, num_aus)` float32.
        """
        out = {}
        for task in _check_tasks(tasks):
            if task == "va":
                out["va"] = self.frames[["valence", "arousal"]].to_numpy(np.float32)
            elif task == "expr":
                out["expr"] = self.frames["expr"].to_numpy(np.int32)
            else:
                out["au"] = self.frames[list(self.schema.aus)].to_numpy(np.float32)
        return out

    def image_paths(self, view="aligned", rows=None):
        """The image path used for each row in `view` (`""` where none), as a list: every
        row, or the row numbers `rows`.

        Derived on demand, `<root>/<view folder>/<video>/<image_frame:05d>.jpg` (the one
        file name `list_frame_images` takes), so an index of millions of frames holds no
        string per frame; frames given with their own path column (`ViewColumns.path`)
        keep those paths."""
        columns = view_columns(view)
        frames = self.frames
        rows = slice(None) if rows is None else np.asarray(rows, np.int64)
        if columns.path in frames.columns:
            return frames[columns.path].to_numpy()[rows].tolist()
        used = frames[columns.image_frame].to_numpy()[rows]
        if self.root is None:
            return [""] * len(used)
        videos = frames["video"].to_numpy()[rows]
        folder = os.path.join(self.root, VIEW_FOLDERS[view], "")
        return [f"{folder}{video}{os.sep}{frame:05d}.jpg" if frame >= 0 else ""
                for video, frame in zip(videos.tolist(), used.tolist())]

    def _labelled(self, task):
        """Rows with a complete label of `task` (va: both values; au: every AU)."""
        f = self.frames
        if task == "va":
            values = f[["valence", "arousal"]].to_numpy(np.float64)
            return (values != self.schema.va_missing).all(axis=1)
        if task == "expr":
            return f["expr"].to_numpy() != self.schema.expr_missing
        return (f[list(self.schema.aus)].to_numpy() != self.schema.au_missing).all(axis=1)

    def subset(self, videos):
        """A `FrameIndex` of the given videos' rows (unknown names raise)."""
        videos = [videos] if isinstance(videos, str) else list(videos)
        unknown = sorted(set(videos) - set(self.videos))
        if unknown:
            raise ValueError(
                f"FrameIndex.subset: unknown video(s) {', '.join(unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''}; expected names from `videos`."
            )
        keep = self.frames["video"].isin(videos).to_numpy()
        return self._view(keep)

    def with_images_only(self, view="aligned"):
        """A `FrameIndex` of the rows with an image to use in `view` (its `image_frame >= 0`)."""
        return self._view(self.frames[view_columns(view).image_frame].to_numpy() >= 0)

    def _view(self, keep):
        index = FrameIndex(self.frames[keep].reset_index(drop=True), self.schema, self.root)
        index.sources = self.sources
        return index

    def summary(self, view="aligned"):
        """Per-task counts, one row per task (`va`, `expr`, `au`).

        A frame is labelled for a task when its label is complete (va: valence and
        arousal both not -5; expr: not -1; au: every AU not -1). Columns:
        `videos`: videos with at least one labelled frame; `frames`: labelled frames;
        `missing_labels`: the other rows of those videos (frames whose label of the task
        is missing or partial, so `frames + missing_labels` is the row count of those
        videos); `frames_without_image`: labelled frames whose own image is absent in
        `view` (`"aligned"` or `"cropped"`), whether or not they were filled.
        """
        video = self.frames["video"]
        has_image = self.frames[view_columns(view).has_image].to_numpy(bool)
        rows = []
        for task in TASKS:
            labelled = self._labelled(task)
            videos = pd.unique(video[labelled])
            in_videos = video.isin(videos).to_numpy()
            rows.append({
                "task": task,
                "videos": len(videos),
                "frames": int(labelled.sum()),
                "missing_labels": int((in_videos & ~labelled).sum()),
                "frames_without_image": int((labelled & ~has_image).sum()),
            })
        return pd.DataFrame(rows).set_index("task")
