"""Figures: every plotting helper of the kit, each returning a ``matplotlib.figure.Figure``
built without pyplot state (works under any backend, in notebooks and worker processes).

Confusion matrices (Figure 4), metric curves (Figure 5), training-loss curves (the evidence
that each CropNet experiment learned), image grids and CGPO tiles (Figures 1-3), and the
t-SNE panels (Figure 6).
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mer_utils.errors import ConfigError, EvaluationError


def wrap_title(title: str, width: int = 70) -> str:
    """``title`` broken into lines of at most ``width`` characters."""
    return textwrap.fill(title, width)


def save_figure(fig, path_stem: str | os.PathLike) -> Path:
    """Save a matplotlib figure as ``<stem>.png`` (150 dpi) and return the path."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    path = stem.with_name(stem.name + ".png")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def image_grid(images: Mapping[str, np.ndarray], columns: int | None = None, title: str = "", side: float = 2.4):
    """A figure of RGB (or grey) uint8 images, one titled panel each, ``columns`` per row."""
    from matplotlib.figure import Figure

    if not images:
        raise ConfigError("image_grid: no images to show")
    columns = columns or min(len(images), 5)
    rows = math.ceil(len(images) / columns)
    fig = Figure(layout="constrained", figsize=(side * columns, side * rows + (0.5 if title else 0)))
    for index, (name, image) in enumerate(images.items()):
        ax = fig.add_subplot(rows, columns, index + 1)
        ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(wrap_title(title), fontsize=10)
    return fig


def draw_tiles(image: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], title: str = ""):
    """``image`` with the CGPO tiles (x0, y0, x1, y1) drawn on it, numbered z1..z9."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(layout="constrained", figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    ax.imshow(image)
    colours = [f"C{i}" for i in range(10)]
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        colour = colours[index % len(colours)]
        inset = 1.5 * (index % 3)  # keeps the shared edges of overlapping tiles visible
        ax.add_patch(Rectangle((x0 + inset, y0 + inset), x1 - x0 - 2 * inset, y1 - y0 - 2 * inset,
                               fill=False, edgecolor=colour, linewidth=1.6))
        ax.text(x0 + 4 + inset, y0 + 14 + inset, f"z{index + 1}", color=colour, fontsize=9, weight="bold")
    ax.axis("off")
    if title:
        ax.set_title(wrap_title(title, 55), fontsize=10)
    return fig


def plot_confusion_matrix(confusion_matrix, classes: Sequence[str], title: str = "",
                          path: str | os.PathLike | None = None):
    """Confusion-matrix figure: colour = row-normalised rate, cells show count and rate.

    Builds a ``matplotlib.figure.Figure`` directly (no pyplot state, works under any
    backend); saves it as PNG when ``path`` is given. Rows with no samples show "-".
    """
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion_matrix, dtype=float)
    k = len(classes)
    if matrix.shape != (k, k):
        raise EvaluationError(f"confusion matrix of shape {matrix.shape} for {k} classes")
    support = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, support, out=np.zeros_like(matrix), where=support > 0)
    side = 1.2 + 0.9 * k
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="rate (row-normalised)")
    for i in range(k):
        for j in range(k):
            rate = f"{rates[i, j]:.0%}" if support[i, 0] > 0 else "-"
            ax.text(j, i, f"{int(matrix[i, j])}\n{rate}", ha="center", va="center",
                    fontsize=9, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_confusion(experiment, title: str, path_stem: str | os.PathLike | None = None):
    """The confusion matrix (rows true, columns predicted) of an ExperimentResult or a
    metrics dict, saved as ``<stem>.png`` when ``path_stem`` is given (Figure 4)."""
    metrics = getattr(experiment, "metrics", experiment)
    fig = plot_confusion_matrix(metrics["confusion"], metrics["classes"], title=wrap_title(title, 45))
    if path_stem is not None:
        save_figure(fig, path_stem)
    return fig


def plot_curve(table: pd.DataFrame, x: str, columns: Sequence[str], title: str, xlabel: str = "",
               ylabel: str = "score", chance: Mapping[str, float] | None = None):
    """Lines of ``columns`` against column ``x`` of ``table`` (Figure 5: UF1 and UAR against
    N_key), with ``chance`` (label -> level, e.g. "chance UF1 (uniform random guess)") as
    dashed horizontal lines. A table of one row is drawn as its point, and the axis says so."""
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for column in columns:
        ax.plot(table[x], table[column], marker="o", label=column)
    for index, (label, level) in enumerate((chance or {}).items()):
        ax.axhline(level, color="0.5", linestyle=("--", ":", "-.")[index % 3], linewidth=1, label=label)
    ax.set_xlabel((xlabel or x) + (" (one value run: a point, not a curve)" if len(table) == 1 else ""))
    ax.set_ylabel(ylabel)
    ax.set_xticks(list(table[x]))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(wrap_title(title, 55), fontsize=10)
    return fig


def plot_epoch_losses(losses: Sequence[float], title: str, path: str | Path | None = None,
                      ylabel: str = "training loss (mean over the epoch's batches)"):
    """One run's training loss per epoch (notebook 03's fold, notebook 08's model), saved as
    PNG when ``path`` is given."""
    fig = plot_loss_curves({"training loss": losses}, title, ylabel=ylabel)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_loss_curves(curves: Mapping[str, Sequence[float]], title: str, ylabel: str = "mean training loss over folds"):
    """Mean training loss per epoch (over the LOSO folds) of several experiments, one line
    each: the evidence of how far every CropNet row of a table was trained in its epochs,
    which were fixed before the run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(layout="constrained", figsize=(6.5, 4.0))
    ax = fig.add_subplot()
    for name, losses in curves.items():
        if len(losses):
            ax.plot(range(1, len(losses) + 1), losses, marker="." if len(losses) > 12 else "o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    ax.set_title(wrap_title(title, 60), fontsize=10)
    return fig


def tsne_figure(embeddings: Mapping[str, np.ndarray], labels: Sequence[str], classes: Sequence[str], title: str):
    """Figure 6: one scatter panel per preprocessing method, points coloured by class."""
    from matplotlib.figure import Figure

    labels = np.asarray(labels)
    columns = 2 if len(embeddings) > 1 else 1
    rows = math.ceil(len(embeddings) / columns)
    fig = Figure(layout="constrained", figsize=(4.2 * columns, 3.9 * rows + 0.4))
    for index, (name, points) in enumerate(embeddings.items()):
        ax = fig.add_subplot(rows, columns, index + 1)
        for k, cls in enumerate(classes):
            chosen = labels == cls
            ax.scatter(points[chosen, 0], points[chosen, 1], s=14, color=f"C{k}", label=f"{cls} ({chosen.sum()})")
        ax.set_title(f"({chr(65 + index)}) {name}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(wrap_title(title), fontsize=10)
    return fig


def prediction_figure(prediction, crops: dict[str, np.ndarray], title: str = "",
                      frame_numbers: Sequence[int] | None = None):
    """Notebook 08: the aligned frames given (e.g. onset, apex, offset) of an
    ``inference.ClipPrediction``, the spotting curve
    with the apex marked, the preprocessed image (at the cache's size; CropNet resizes it to
    its input side), and the class probabilities.
    ``frame_numbers``: the clip's own frame numbers of a video's frames 0, 1, ... (for the axis)."""
    from matplotlib.figure import Figure

    panels = len(crops) + 3
    fig = Figure(layout="constrained", figsize=(2.6 * panels, 2.9))
    axes = fig.subplots(1, panels)
    for ax, (name, image) in zip(axes, crops.items()):
        ax.imshow(image)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    ax = axes[len(crops)]
    spotted = prediction.curve
    number = (lambda n: frame_numbers[n]) if frame_numbers is not None else (lambda n: n)  # noqa: E731
    if spotted is not None:
        x = [number(n) for n in spotted.frame_numbers]
        ax.plot(x, spotted.raw, color="0.6", label="d(t)")
        ax.plot(x, spotted.smoothed, color="C0", linestyle=":", label="smoothed")
        ax.axvline(number(prediction.apex), color="C3", linestyle="--", label=f"apex {number(prediction.apex)}")
        ax.legend(fontsize=7)
    ax.set_title(f"apex ({prediction.apex_source})", fontsize=9)
    ax.set_xlabel("frame", fontsize=8)
    ax = axes[len(crops) + 1]
    ax.imshow(prediction.image)
    ax.set_title(f"preprocessed image, {prediction.image.shape[1]} px", fontsize=9)
    ax.axis("off")
    ax = axes[len(crops) + 2]
    names = list(prediction.probabilities)
    values = [prediction.probabilities[n] for n in names]
    ax.barh(names, values, color=["C3" if n == prediction.label else "C0" for n in names])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(f"predicted: {prediction.label}", fontsize=9)
    ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def influence_figure(influence: pd.DataFrame, label: str, title: str = ""):
    """Bars: the drop of the predicted class's probability when each CGPO image is blanked."""
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", figsize=(6.5, 3.0))
    ax = fig.add_subplot()
    drops = influence["drop"]
    ax.bar(influence.index, drops, color=["C3" if d > 0 else "C0" for d in drops])
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_ylabel(f"drop of p({label})")
    ax.set_title(title or f"blanking each CGPO image: change of p({label})", fontsize=10)
    return fig
