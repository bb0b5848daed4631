"""PNG plots written next to a run's numbers: learning curves, expression confusion matrix,
per-AU F1, valence/arousal predicted against true, and region attention maps over faces."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from affectkit import metrics  # noqa: E402


def plot_learning_curves(history_csv, path):
    """Training losses and validation scores per epoch, one row of panels."""
    history = pd.read_csv(history_csv)
    history = history.reset_index(drop=True)
    x = np.arange(1, len(history) + 1)
    loss_cols = [c for c in history.columns if c.endswith("loss")]
    score_cols = [c for c in ("val_score", "val_va_score", "val_expr_score", "val_au_score")
                  if c in history.columns]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for col in loss_cols:
        axes[0].plot(x, history[col], marker=".", label=col)
    axes[0].set(title="training losses", xlabel="epoch (all stages)")
    for col in score_cols:
        axes[1].plot(x, history[col], marker=".", label=col)
    axes[1].set(title="validation (ABAW scores)", xlabel="epoch (all stages)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(y_true, y_pred, class_names, path):
    """Row-normalised expression confusion matrix (frames with label -1 left out)."""
    confusion = np.asarray(
        metrics.expr_metrics(y_true, y_pred, len(class_names))["confusion"], dtype=float
    )
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if normalised[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="expression confusion (row-normalised)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_au_f1(y_true, y_pred, au_names, path):
    """Per-AU binary F1 bars with their mean."""
    scores = metrics.au_metrics(y_true, y_pred)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(au_names, scores["f1_per_au"], color="tab:orange")
    ax.axhline(scores["f1"], color="k", ls="--", label=f"mean F1 {scores['f1']:.3f}")
    ax.set(ylim=(0, 1), ylabel="F1", title="per-AU F1 (validation)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_va(y_true, y_pred, path, frames=600):
    """Valence and arousal: scatter of predicted vs true, and both over the first frames."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [1, 2.5]})
    for row, name in enumerate(("valence", "arousal")):
        valid = y_true[:, row] != -5
        t, p = y_true[valid, row], y_pred[valid, row]
        axes[row, 0].scatter(t, p, s=3, alpha=0.4)
        axes[row, 0].plot([-1, 1], [-1, 1], "k--", lw=1)
        axes[row, 0].set(xlim=(-1, 1), ylim=(-1, 1), xlabel=f"true {name}",
                         ylabel=f"predicted {name}",
                         title=f"CCC {metrics.ccc(t, p):.3f}" if len(t) else "no labels")
        axes[row, 1].plot(t[:frames], label="true")
        axes[row, 1].plot(p[:frames], label="predicted")
        axes[row, 1].set(ylim=(-1.05, 1.05), xlabel="labelled frame", ylabel=name)
        axes[row, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run_plots(run_dir, schema, tasks, y_true, y_pred, scores=None):
    """Writes every plot that applies to the run's tasks into `run_dir`; returns the paths."""
    paths = []
    history = os.path.join(run_dir, "history.csv")
    if os.path.exists(history):
        paths.append(os.path.join(run_dir, "learning_curves.png"))
        plot_learning_curves(history, paths[-1])
    if "expr" in tasks:
        paths.append(os.path.join(run_dir, "confusion_matrix.png"))
        plot_confusion(y_true["expr"], y_pred["expr"], schema.expressions, paths[-1])
    if "au" in tasks:
        paths.append(os.path.join(run_dir, "au_f1.png"))
        plot_au_f1(y_true["au"], y_pred["au"], schema.aus, paths[-1])
    if "va" in tasks:
        paths.append(os.path.join(run_dir, "va.png"))
        plot_va(y_true["va"], y_pred["va"], paths[-1])
    return paths


def plot_attention_maps(images, maps, names, path, title="Region attention maps (0 blue .. 1 red)"):
    """One row per face: the face, then each region's attention map over it (as the
    region attention of Haider et al. 2022 / the ABAW3 multi-task winner gives them).

    Args:
        images: `(N, H, W, 3)` RGB in [0, 1].
        maps: `(N, h, w, R)` attention maps in [0, 1], stretched over the image.
        names: the R region names (column titles).
        path: PNG file to write.
        title: the figure's title.
    """
    images, maps = np.asarray(images), np.asarray(maps)
    if images.ndim != 4 or maps.ndim != 4 or len(images) != len(maps):
        raise ValueError(f"plot_attention_maps: images {images.shape} and maps {maps.shape}; "
                         "expected (N, H, W, 3) and (N, h, w, R) with the same N.")
    count, regions = len(images), maps.shape[-1]
    if len(names) != regions:
        raise ValueError(f"plot_attention_maps: {len(names)} names for {regions} maps.")
    fig, axes = plt.subplots(count, regions + 1, figsize=(1.1 * (regions + 1), 1.2 * count + 0.4),
                             squeeze=False)
    height, width = images.shape[1:3]
    for row in range(count):
        face = np.clip(images[row], 0, 1)
        axes[row, 0].imshow(face)
        for r in range(regions):
            ax = axes[row, r + 1]
            ax.imshow(face)
            ax.imshow(maps[row, ..., r], cmap="jet", alpha=0.5, vmin=0, vmax=1,
                      extent=(0, width, height, 0), interpolation="bilinear")
            if row == 0:
                ax.set_title(names[r], fontsize=7)
    axes[0, 0].set_title("face", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
