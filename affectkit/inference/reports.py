"""Reports of `affectkit predict` output: PNG plots of the predictions over time and the
annotated overlay video (`--overlay`).

The input is the frame table `predict` writes (one row per (frame, face); CSV or DataFrame):
`frame, timestamp, face_id, success, confidence, x, y, w, h, valence, arousal`, one
probability column per expression then `expression`, one per AU then `AU*_c`. Frames without
a face are rows with `success` 0 and NaN predictions; tasks the model does not predict have
no columns.

    plot_predictions(table, schema, out_dir, name)  -> <name>_va.png, _expression.png, _au.png
    draw_overlay(frame_rgb, rows, schema)          -> one annotated frame
    OverlayWriter(path, fps, size, schema)         -> annotated MP4, streamed frame by frame
    rows_by_frame(table)                           -> {frame: [row dict, ...]} for the writer

Long videos are binned along time to at most `max_columns` columns (mean of the values, the
most frequent expression), so a 100k-frame table plots in about a second.
"""

import os
import uuid

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

MAX_COLUMNS = 2000  # time bins of a plot, whatever the video's length
MAX_FACES = 6  # faces plotted (the ones with the most rows)
TOP_AUS = 3  # active AUs written next to a face in the overlay

FACE_COLOURS = [tuple(int(round(255 * c)) for c in rgb) for rgb in plt.get_cmap("tab10").colors]
NO_FACE_COLOUR = "#f0f0f0"


def face_colour(face_id):
    """RGB 0..255 colour of a face id, the same in the plots and the overlay video."""
    return FACE_COLOURS[int(face_id) % len(FACE_COLOURS)]


def _face_colour_mpl(face_id):
    return tuple(c / 255 for c in face_colour(face_id))


def expression_colours(count):
    """One matplotlib colour per expression class (tab10, tab20 past ten classes)."""
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


# ------------------------------------------------------------------ the frame table


def read_frame_table(frame_table):
    """The frame table as a DataFrame (a CSV path is read; a DataFrame is used as it is)."""
    if isinstance(frame_table, pd.DataFrame):
        return frame_table
    return pd.read_csv(frame_table)


def present_tasks(table, schema):
    """Which of `va`, `expr`, `au` have columns in the table, with the columns (schema order)."""
    tasks = {}
    if "valence" in table.columns and "arousal" in table.columns:
        tasks["va"] = ["valence", "arousal"]
    expr_columns = [name for name in schema.expressions if name in table.columns]
    if expr_columns or "expression" in table.columns:
        tasks["expr"] = expr_columns
    au_columns = [name for name in schema.aus if name in table.columns]
    if au_columns:
        tasks["au"] = au_columns
    return tasks


def _face_mask(table):
    """Rows that hold a face: `success` 1 (when present) and a face id >= 0."""
    face_id = pd.to_numeric(table["face_id"], errors="coerce") if "face_id" in table else None
    mask = np.ones(len(table), dtype=bool)
    if face_id is not None:
        mask &= (face_id.notna() & (face_id >= 0)).to_numpy()
    if "success" in table.columns:
        mask &= (pd.to_numeric(table["success"], errors="coerce").fillna(0) > 0).to_numpy()
    return mask


def _time_column(table):
    """`timestamp` when every row has one, else `frame`; returns (column name, axis label)."""
    if "timestamp" in table.columns:
        stamps = pd.to_numeric(table["timestamp"], errors="coerce")
        if len(stamps) and stamps.notna().all():
            return "timestamp", "time (s)"
    return "frame", "frame"


class TimeBins:
    """The video's time axis cut into at most `max_columns` bins of consecutive frames.

    `grid` holds the distinct times of all rows (no-face frames included), so a face's bins
    without rows stay empty (NaN): gaps in lines, bands and heatmaps.
    """

    def __init__(self, times, max_columns=MAX_COLUMNS):
        self.grid = np.unique(np.asarray(times, dtype=float))
        count = len(self.grid)
        self.count = max(1, min(count, int(max_columns)))
        self.bin_of_grid = np.arange(count) * self.count // max(count, 1)
        starts = np.searchsorted(self.bin_of_grid, np.arange(self.count))
        step = float(np.median(np.diff(self.grid))) if count > 1 else 1.0
        if count:
            self.edges = np.append(self.grid[starts], self.grid[-1] + step)
            sizes = np.bincount(self.bin_of_grid, minlength=self.count)
            self.centres = np.bincount(self.bin_of_grid, self.grid, self.count) / sizes
        else:
            self.edges = np.array([0.0, 1.0])
            self.centres = np.array([0.5])

    def bins_of(self, times):
        """Bin index of each time (times must come from the grid)."""
        return self.bin_of_grid[np.searchsorted(self.grid, np.asarray(times, dtype=float))]

    def mean(self, bins, values):
        """Per-bin NaN-ignoring mean of `values` `(rows, columns)`: `(count, columns)`, NaN
        where a bin has no value."""
        values = np.asarray(values, dtype=float).reshape(len(bins), -1)
        out = np.full((self.count, values.shape[1]), np.nan)
        for column in range(values.shape[1]):
            finite = np.isfinite(values[:, column])
            counts = np.bincount(bins[finite], minlength=self.count)
            sums = np.bincount(bins[finite], values[finite, column], minlength=self.count)
            np.divide(sums, counts, out=out[:, column], where=counts > 0)
        return out

    def mode(self, bins, classes, class_count):
        """Most frequent class per bin (`classes` >= 0), -1 where a bin has none."""
        keep = classes >= 0
        counts = np.bincount(bins[keep] * class_count + classes[keep],
                             minlength=self.count * class_count).reshape(self.count, class_count)
        return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)


def _faces(table, mask, max_faces):
    """Face ids with the most rows first (at most `max_faces`), and how many were left out."""
    ids = pd.to_numeric(table["face_id"], errors="coerce")[mask].astype(int)
    order = ids.value_counts(sort=True)
    order = order.sort_index().sort_values(ascending=False, kind="stable")
    faces = [int(f) for f in order.index]
    return faces[:max_faces], max(0, len(faces) - max_faces)


def _expression_classes(rows, expr_columns, schema):
    """Class index per row: from the probability columns (arg-max), else the `expression`
    name; -1 where neither says anything."""
    classes = np.full(len(rows), -1, dtype=int)
    if expr_columns:
        probs = rows[expr_columns].to_numpy(dtype=float)
        finite = np.isfinite(probs).any(axis=1)
        best = np.argmax(np.where(np.isfinite(probs), probs, -np.inf), axis=1)
        index = np.array([schema.expressions.index(c) for c in expr_columns])
        classes[finite] = index[best[finite]]
    elif "expression" in rows.columns:
        lookup = {name: i for i, name in enumerate(schema.expressions)}
        classes = rows["expression"].map(lookup).fillna(-1).to_numpy(dtype=int)
    return classes


# ------------------------------------------------------------------ plots


def _left_out_note(left_out):
    return f" ({left_out} more faces not shown)" if left_out else ""


def _no_face_note(ax):
    ax.text(0.5, 0.5, "no face found", ha="center", va="center", transform=ax.transAxes,
            color="0.4")


def plot_va_timeline(per_face, bins, faces, left_out, time_label, path, title=""):
    """Valence (top) and arousal (bottom) over time, one line per face, NaN gaps unbroken."""
    fig, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True, layout="constrained")
    for row, name in enumerate(("valence", "arousal")):
        ax = axes[row]
        for face in faces:
            ax.plot(bins.centres, per_face[face][:, row], lw=1, color=_face_colour_mpl(face),
                    label=f"face {face}")
        ax.axhline(0, color="k", lw=0.5, alpha=0.5)
        ax.set(ylim=(-1.05, 1.05), ylabel=name, xlim=(bins.edges[0], bins.edges[-1]))
        ax.grid(alpha=0.3)
    if faces:
        axes[0].legend(fontsize=8, loc="upper right", ncol=min(len(faces), 6))
    else:
        _no_face_note(axes[0])
    axes[0].set_title(f"{title}valence / arousal{_left_out_note(left_out)}")
    axes[1].set_xlabel(time_label)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_expression_timeline(per_face, bins, faces, left_out, class_names, time_label, path,
                             title=""):
    """Predicted expression over time as coloured bands, one row per face; no-face bins grey."""
    colours = expression_colours(len(class_names))
    rows = max(1, len(faces))
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.55 * rows), layout="constrained")
    ax.set_facecolor(NO_FACE_COLOUR)
    cmap = ListedColormap(colours).with_extremes(bad=NO_FACE_COLOUR)
    if faces:
        classes = np.stack([per_face[f] for f in faces]).astype(float)
        classes = np.ma.masked_less(classes, 0)
        ax.pcolormesh(bins.edges, np.arange(len(faces) + 1) - 0.5, classes, cmap=cmap,
                      vmin=-0.5, vmax=len(class_names) - 0.5, shading="flat")
        ax.set_yticks(range(len(faces)), [f"face {f}" for f in faces])
    else:
        ax.set_yticks([])
        _no_face_note(ax)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlim(bins.edges[0], bins.edges[-1])
    ax.set(xlabel=time_label, title=f"{title}expression{_left_out_note(left_out)}")
    handles = [Patch(color=c, label=n) for c, n in zip(colours, class_names)]
    handles.append(Patch(facecolor=NO_FACE_COLOUR, edgecolor="0.6", label="no face"))
    fig.legend(handles=handles, fontsize=8, loc="outside right upper")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_au_heatmap(per_face, bins, faces, left_out, au_names, time_label, path, title=""):
    """AU probability (0..1) heatmap, AUs (schema order) by time, one panel per face."""
    panels = max(1, len(faces))
    height = 0.8 + panels * (0.6 + 0.16 * len(au_names))
    fig, axes = plt.subplots(panels, 1, figsize=(11, height), sharex=True, squeeze=False,
                             layout="constrained")
    axes = axes[:, 0]
    cmap = plt.get_cmap("viridis").with_extremes(bad=NO_FACE_COLOUR)
    image = None
    for ax, face in zip(axes, faces):
        values = np.ma.masked_invalid(per_face[face].T)
        image = ax.pcolormesh(bins.edges, np.arange(len(au_names) + 1) - 0.5, values, cmap=cmap,
                              vmin=0, vmax=1, shading="flat")
        ax.set_yticks(range(len(au_names)), au_names, fontsize=7)
        ax.set_ylim(len(au_names) - 0.5, -0.5)
        ax.set_ylabel(f"face {face}", color=_face_colour_mpl(face))
    if not faces:
        axes[0].set_yticks([])
        _no_face_note(axes[0])
    axes[0].set_xlim(bins.edges[0], bins.edges[-1])
    axes[0].set_title(f"{title}action units (probability){_left_out_note(left_out)}")
    axes[-1].set_xlabel(time_label)
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, label="probability")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_predictions(frame_table, schema, out_dir, name, max_columns=MAX_COLUMNS,
                     max_faces=MAX_FACES):
    """Writes the plots of the tasks the table has into `out_dir`; returns the PNG paths.

    `<name>_va.png` (valence/arousal lines), `<name>_expression.png` (class bands) and
    `<name>_au.png` (AU heatmap), each only when its columns are present. The time axis is
    `timestamp` (s), or `frame` where timestamps are missing, binned to at most
    `max_columns` bins; the `max_faces` faces with the most rows are drawn.

    Args:
        frame_table: the DataFrame (or CSV path) `affectkit predict` writes for one video.
        schema: the `LabelSchema` naming the expression and AU columns.
        out_dir: folder for the PNGs (created if needed).
        name: file name stem, usually the video's.
    """
    table = read_frame_table(frame_table)
    if "frame" not in table.columns:
        raise ValueError(f"plot_predictions({name!r}): the frame table has no 'frame' column; "
                         f"columns are {list(table.columns)}.")
    tasks = present_tasks(table, schema)
    if not tasks:
        return []
    if "face_id" not in table.columns:  # a table of one face
        table = table.assign(face_id=0)
    os.makedirs(out_dir, exist_ok=True)
    time_column, time_label = _time_column(table)
    times = pd.to_numeric(table[time_column], errors="coerce").to_numpy(dtype=float)
    valid_time = np.isfinite(times)
    table, times = table[valid_time], times[valid_time]
    bins = TimeBins(times, max_columns)
    mask = _face_mask(table)
    faces, left_out = _faces(table, mask, max_faces)
    face_ids = pd.to_numeric(table["face_id"], errors="coerce").to_numpy()
    selections = {f: mask & (face_ids == f) for f in faces}
    face_bins = {f: bins.bins_of(times[selections[f]]) for f in faces}
    title = f"{name}: "
    paths = []
    if "va" in tasks:
        per_face = {f: bins.mean(face_bins[f], table.loc[selections[f], tasks["va"]])
                    for f in faces}
        paths.append(plot_va_timeline(per_face, bins, faces, left_out, time_label,
                                      os.path.join(out_dir, f"{name}_va.png"), title))
    if "expr" in tasks:
        count = len(schema.expressions)
        per_face = {f: bins.mode(face_bins[f],
                                 _expression_classes(table[selections[f]], tasks["expr"], schema),
                                 count)
                    for f in faces}
        paths.append(plot_expression_timeline(
            per_face, bins, faces, left_out, schema.expressions, time_label,
            os.path.join(out_dir, f"{name}_expression.png"), title))
    if "au" in tasks:
        per_face = {f: bins.mean(face_bins[f], table.loc[selections[f], tasks["au"]])
                    for f in faces}
        paths.append(plot_au_heatmap(per_face, bins, faces, left_out, tasks["au"], time_label,
                                     os.path.join(out_dir, f"{name}_au.png"), title))
    return paths


# ------------------------------------------------------------------ overlay


def rows_by_frame(frame_table):
    """`{frame: [row dict, ...]}` of a frame table, the rows `OverlayWriter.write` takes."""
    table = read_frame_table(frame_table)
    grouped = {}
    for row in table.to_dict("records"):
        grouped.setdefault(int(row["frame"]), []).append(row)
    return grouped


def _number(row, key):
    """`row[key]` as a finite float, or None."""
    try:
        value = float(row.get(key))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _is_face(row):
    if "success" in row and not (_number(row, "success") or 0) > 0:
        return False
    face_id = _number(row, "face_id")
    if "face_id" in row and (face_id is None or face_id < 0):
        return False
    box = [_number(row, k) for k in ("x", "y", "w", "h")]
    return all(v is not None for v in box) and box[2] > 0 and box[3] > 0


def _expression_of(row, schema):
    """(name, probability or None) of a face's expression, or None."""
    probs = [(name, _number(row, name)) for name in schema.expressions]
    probs = [(n, p) for n, p in probs if p is not None]
    name = row.get("expression")
    if isinstance(name, str) and name:
        return name, _number(row, name)
    if probs:
        return max(probs, key=lambda item: item[1])
    return None


def _active_aus(row, schema, top=TOP_AUS):
    """[(AU name, probability)] of the most probable present AUs (`AU*_c` 1, or p >= 0.5)."""
    active = []
    for name in schema.aus:
        prob = _number(row, name)
        present = _number(row, f"{name}_c")
        is_on = present > 0 if present is not None else (prob is not None and prob >= 0.5)
        if is_on:
            active.append((name, prob if prob is not None else 1.0))
    return sorted(active, key=lambda item: -item[1])[:top]


def _inside(image, x, width):
    """`x` moved left so that `width` pixels from it stay inside the image (if they fit)."""
    return max(0, min(x, image.shape[1] - width - 1))


def _text_box(image, text, origin, scale, thickness, colour, above=True):
    """Filled label with `text`, its lower-left (above) or upper-left corner at `origin`;
    returns its height."""
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, int(3 * scale))
    x, y = _inside(image, origin[0], width + 2 * pad), origin[1]
    top = y - height - baseline - 2 * pad if above else y
    cv2.rectangle(image, (x, top), (x + width + 2 * pad, top + height + baseline + 2 * pad),
                  colour, -1)
    text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(image, text, (x + pad, top + pad + height), cv2.FONT_HERSHEY_SIMPLEX, scale,
                text_colour, thickness, cv2.LINE_AA)
    return height + baseline + 2 * pad


def _signed_bar(image, name, value, origin, width, height, scale, colour):
    """`name` and `value` in [-1, 1] as text, then a bar centred at 0 filled towards it."""
    x, y = origin
    label = f"{name} {value:+.2f}" if value is not None else f"{name}   -  "
    (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    width = max(width, text_w + 6 + int(60 * scale / 0.35))
    x = _inside(image, x, width)
    cv2.rectangle(image, (x, y), (x + width, y + height), (30, 30, 30), -1)
    cv2.putText(image, label, (x + 2, y + (height + text_h) // 2), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 255, 255), 1, cv2.LINE_AA)
    left, right = x + text_w + 6, x + width - 2
    centre = (left + right) // 2
    cv2.rectangle(image, (left, y + 2), (right, y + height - 2), (110, 110, 110), 1)
    if value is not None:
        end = int(round(centre + np.clip(value, -1, 1) * (right - left) / 2))
        fill = (60, 200, 60) if value >= 0 else (230, 70, 60)
        cv2.rectangle(image, (min(centre, end), y + 3), (max(centre, end), y + height - 3),
                      fill, -1)
    cv2.line(image, (centre, y + 1), (centre, y + height - 1), colour, 1)


def draw_overlay(frame_rgb, rows, schema):
    """A copy of `frame_rgb` (H, W, 3 uint8) with each face of `rows` drawn on it.

    Per face: its box, a label above it (`face_id`, expression and its probability), and
    below it valence / arousal bars and the top active AUs. Rows without a face (`success`
    0, NaN box) draw nothing, so a no-face frame comes back unchanged.
    """
    image = np.array(frame_rgb, dtype=np.uint8, copy=True)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_overlay: expected an (H, W, 3) RGB frame, got {image.shape}.")
    frame_h = image.shape[0]
    scale = float(np.clip(frame_h / 1000, 0.35, 1.0))
    thickness = max(1, int(round(2 * scale)))
    for row in rows:
        if not _is_face(row):
            continue
        x, y, w, h = (int(round(_number(row, k))) for k in ("x", "y", "w", "h"))
        face_id = int(_number(row, "face_id") or 0)
        colour = face_colour(face_id)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness + 1)

        label = f"id {face_id}"
        expression = _expression_of(row, schema)
        if expression is not None:
            name, prob = expression
            label += f"  {name}" + (f" {prob:.2f}" if prob is not None else "")
        _text_box(image, label, (x, max(y, 0)), scale, thickness, colour, above=y > 20)

        line_y = y + h + thickness + 1
        bar_w = w
        bar_h = max(10, int(22 * scale))
        for short, key in (("V", "valence"), ("A", "arousal")):
            if key in row:
                _signed_bar(image, short, _number(row, key), (x, line_y), bar_w, bar_h,
                            scale * 0.8, colour)
                line_y += bar_h + 1
        aus = _active_aus(row, schema)
        if aus:
            text = " ".join(f"{n} {p:.2f}" for n, p in aus)
            _text_box(image, text, (x, line_y), scale * 0.8, 1, (30, 30, 30), above=False)
    return image


class OverlayWriter:
    """Streams annotated frames to an MP4 (`mp4v`); the file appears only at `close()`.

    Frames go to a temporary file in the same folder, renamed to `path` when closed; used as
    a context manager, an exception deletes the temporary file, so no half-written video is
    left. Odd frame sizes are padded to even (the MPEG-4 encoder needs even sizes);
    `encoded_size` says what the video holds.

    Example:
    >>> with OverlayWriter("out/clip_overlay.mp4", fps, (width, height), schema) as video:
    ...     for frame, image in enumerate(frames, start=1):
    ...         video.write(image, rows.get(frame, []))
    """

    def __init__(self, path, fps, size, schema):
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"OverlayWriter({path!r}): frame size {size} must be positive.")
        if not fps or not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"OverlayWriter({path!r}): fps {fps} must be positive.")
        self.path = os.path.abspath(path)
        self.size = (width, height)
        self.encoded_size = (width + width % 2, height + height % 2)
        self.schema = schema
        self.frames = 0
        folder, base = os.path.split(self.path)
        stem, ext = os.path.splitext(base)
        # Keeps the extension (OpenCV picks the container by it); not mkstemp, whose 0600
        # mode the finished video would keep.
        self.temp_path = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.partial{ext}")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise OSError(f"OverlayWriter: cannot write the overlay video {path!r}: {error}") \
                from error
        self._writer = cv2.VideoWriter(self.temp_path, cv2.VideoWriter_fourcc(*"mp4v"),
                                       float(fps), self.encoded_size)
        if not self._writer.isOpened():
            self._writer.release()
            self._writer = None
            self._remove_temp()
            raise OSError(f"OverlayWriter: OpenCV could not open an mp4v video writer for "
                          f"{path!r} ({width}x{height} at {fps} fps); the name should end in "
                          f".mp4 and the folder be writable.")

    def write(self, frame_rgb, rows):
        """Draws `rows` (the frame's per-face row dicts) on `frame_rgb` and appends it."""
        if self._writer is None:
            raise RuntimeError(f"OverlayWriter({self.path!r}): write() after close().")
        frame = np.asarray(frame_rgb)
        if frame.shape[:2] != (self.size[1], self.size[0]):
            raise ValueError(f"OverlayWriter({self.path!r}): frame of shape {frame.shape} for a "
                             f"{self.size[0]}x{self.size[1]} video.")
        image = draw_overlay(frame, rows, self.schema)
        pad_h, pad_w = self.encoded_size[1] - image.shape[0], self.encoded_size[0] - image.shape[1]
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self):
        """Finishes the video and moves it to `path`; returns `path`."""
        if self._writer is None:
            return self.path
        self._writer.release()
        self._writer = None
        if self.frames == 0:
            self._remove_temp()
            raise RuntimeError(f"OverlayWriter({self.path!r}): no frames written; no video made.")
        os.replace(self.temp_path, self.path)
        return self.path

    def abort(self):
        """Stops writing and deletes the temporary file; `path` is not touched."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._remove_temp()

    def _remove_temp(self):
        if os.path.exists(self.temp_path):
            os.remove(self.temp_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
