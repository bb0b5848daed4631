"""Aff-Wild2 files: folder layout per edition, annotation readers and writers, `FrameIndex`.

Layout (REFERENCE section 2):

    <root>/cropped_aligned/<video>/<n:05d>.jpg      aligned 112x112 faces, n 1-based
    <root>/cropped/<video>/<n:05d>.jpg              faces with context
    <root>/<task folder>/<split folder>/<video>.txt per-task, per-video annotations
    <root>/<MTL file>                              MTL single file (ABAW3/4)
    <root>/videos/<video>.mp4                      source videos (`_left`/`_right` share one)
"""

import os

import numpy as np

from affectkit.labels import get_schema

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


def _format_rows(task, values):
    values = np.asarray(values)
    if task == "va":
        values = values.reshape(-1, 2)
        return [f"{v:g},{a:g}" for v, a in values]
    if task == "expr":
        return [str(int(e)) for e in values.reshape(-1)]
    values = values.reshape(len(values), -1)
    return [",".join(str(int(x)) for x in row) for row in values]


def write_annotation_file(path, task, values, schema):
    """Writes one per-video file in the official format (also used for predictions).

    Args:
        path: the `<video>.txt` to write; parent folders are created.
        task: `"va"`, `"expr"` or `"au"`.
        values: one row per frame, frame 1 first: `(n, 2)` valence/arousal,
            `(n,)` expression indices or `(n, num_aus)` 0/1 values. Missing
            markers are written as they are.
        schema: `LabelSchema` or edition name (chooses the header).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lines = [annotation_header(task, schema)] + _format_rows(task, values)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_mtl_file(path, images, va, expr, au, schema, submission=False):
    """Writes an MTL annotation file, or with `submission=True` an MTL submission file.

    Args:
        path: file to write; parent folders are created.
        images: `video/00001.jpg` names, one per row.
        va: `(n, 2)` valence, arousal. expr: `(n,)` indices. au: `(n, num_aus)` 0/1.
        schema: `LabelSchema` or edition name.
        submission: header `image,valence,arousal,expression,aus` instead of the
            annotation header with AU names.
    """
    schema = get_schema(schema)
    header = MTL_SUBMISSION_HEADER if submission else mtl_header(schema)
    va = np.asarray(va).reshape(-1, 2)
    expr = np.asarray(expr).reshape(-1)
    au = np.asarray(au).reshape(len(au), -1)
    if not (len(images) == len(va) == len(expr) == len(au)):
        raise ValueError(
            f"write_mtl_file({path}): images, va, expr and au have different lengths "
            f"({len(images)}, {len(va)}, {len(expr)}, {len(au)})."
        )
    lines = [header]
    for image, (v, a), e, row in zip(images, va, expr, au):
        aus = ",".join(str(int(x)) for x in row)
        lines.append(f"{image},{v:g},{a:g},{int(e)},{aus}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def frame_file_name(frame):
    """`00001.jpg` for 1-based frame number 1."""
    return f"{int(frame):05d}.jpg"
