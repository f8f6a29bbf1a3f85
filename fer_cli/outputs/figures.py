"""The figures: training curves, confusion matrices, recall, reliability, coverage, thumbnails.

Each function takes the plain numbers the tables and JSON reports hold and returns a matplotlib
``Figure``; ``save_png`` writes one atomically. Figures are made as ``Figure`` objects and
rendered by the Agg canvas directly, never through ``matplotlib.pyplot``: no backend is chosen,
no display is needed or opened, and nothing global (pyplot's figure list) grows run after run.

``save_png`` stores the numbers a figure shows in the PNG itself (a ``Description`` text chunk,
JSON), so a picture can be checked against the report it came from.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _matplotlib_home() -> None:
    """Matplotlib keeps a font cache under ~/.config (or $MPLCONFIGDIR); where that cannot be written (a read-only
    or missing HOME, a service account) it logs a long warning of its own. fer then gives it a temporary folder,
    quietly: the figures are the same, only the first one of the run is slower."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=base):
            pass
    except (OSError, RuntimeError):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="fer-matplotlib-")


_matplotlib_home()

import matplotlib  # noqa: E402 (after its home is settled)
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..files import remove_orphans, temporary_sibling  # noqa: E402

# Names come from outside (files, models, classes): "$x$" in one is text, never TeX math, which can fail to
# parse and lose a whole report. Every text this process draws is taken as it is.
matplotlib.rcParams["text.parse_math"] = False

DPI = 100
TRAIN_COLOUR, VAL_COLOUR, BEST_COLOUR = "#1f77b4", "#d62728", "#2ca02c"


def save_png(figure: Figure, path: str | os.PathLike, data=None) -> Path:
    """Write ``figure`` to ``path`` whole (a temporary sibling renamed over it), ``data`` in its metadata."""
    path = Path(path)
    remove_orphans(path)
    temporary = temporary_sibling(path)
    metadata = {"Software": "fer_cli"}
    if data is not None:
        metadata["Description"] = json.dumps(data)
    try:
        FigureCanvasAgg(figure).print_png(temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def to_rgb(figure: Figure) -> np.ndarray:
    """The figure as an (H, W, 3) uint8 array (what TensorBoard's add_image takes)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# --- training ------------------------------------------------------------------------------------


def training_curves(history: list[dict], title: str = "") -> Figure:
    """Loss, accuracy (training and validation) and learning rate per epoch; the best epoch marked."""
    epochs = [row["epoch"] for row in history]
    best = [row for row in history if row.get("best") in (True, "True")]
    best = best[-1] if best else None
    marker = "o" if len(history) <= 30 else None
    # Fixed margins rather than a layout engine: this is redrawn every epoch, and measuring the
    # labels to place the panels took half its time.
    figure = Figure(figsize=(12, 3.6), dpi=DPI)
    figure.subplots_adjust(left=0.05, right=0.985, bottom=0.14, top=0.82, wspace=0.22)
    loss, accuracy, lr = figure.subplots(1, 3)
    for ax, key, name in ((loss, "loss", "loss"), (accuracy, "accuracy", "accuracy")):
        ax.plot(
            epochs, [row[f"train_{key}"] for row in history], marker=marker, ms=3, color=TRAIN_COLOUR, label="train"
        )
        ax.plot(epochs, [row[f"val_{key}"] for row in history], marker=marker, ms=3, color=VAL_COLOUR, label="val")
        ax.set_title(name)
    lr.plot(epochs, [row.get("lr", np.nan) for row in history], marker=marker, ms=3, color="#555555")
    lr.set_title("learning rate (at the epoch's end)")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (loss, accuracy, lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best is not None:
            ax.axvline(best["epoch"], color=BEST_COLOUR, ls="--", lw=1)
    if best is not None:
        accuracy.plot([best["epoch"]], [best["val_accuracy"]], "*", ms=14, color=BEST_COLOUR, label="best (saved)")
        accuracy.annotate(
            f"{best['val_accuracy']:.1%} (epoch {best['epoch']})",
            (best["epoch"], best["val_accuracy"]),
            textcoords="offset points",
            xytext=(-6 if best["epoch"] > (epochs[0] + epochs[-1]) / 2 else 6, -16),
            ha="right" if best["epoch"] > (epochs[0] + epochs[-1]) / 2 else "left",
            color=BEST_COLOUR,
        )
    accuracy.legend(loc="lower right", fontsize="small")
    loss.legend(loc="upper right", fontsize="small")
    figure.suptitle(title)
    return figure


def draw_training_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """``training_curves`` written to ``path`` (what ``fer train`` does after every epoch)."""
    return save_png(training_curves(history, title), path)


# --- scoring on labelled images ------------------------------------------------------------------


def confusion_heatmap(matrix: list[list[int]], class_names: list[str], title: str) -> Figure:
    """Rows: true class, columns: predicted; colour and percentage normalised by row (the recall on
    the diagonal), the count under it."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(totals, 1)
    n = len(class_names)
    side = 1.1 + 0.75 * n
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            colour = "white" if shares[i, j] > 0.55 else "black"
            weight = "bold" if i == j else "normal"
            ax.text(
                j, i - 0.12, f"{shares[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=9, weight=weight
            )
            ax.text(j, i + 0.22, f"{counts[i, j]:,}", ha="center", va="center", color=colour, fontsize=7)
    ax.set_xticks(range(n), class_names, rotation=40, ha="right")
    ax.set_yticks(range(n), [f"{name} ({int(t):,})" for name, t in zip(class_names, totals[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (images)")
    ax.set_title(title, fontsize=10)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    return figure


def recall_by_class(
    entries: list[tuple[str, list[float]]], class_names: list[str], supports: list[int], models: int
) -> Figure:
    """Grouped bars: for each class, the recall of every model and vote side by side (the first
    ``models`` entries are models, plain; the rest votes, hatched)."""
    n, m = len(class_names), len(entries)
    figure = Figure(figsize=(min(13.0, max(8.0, 1.0 * n + 0.15 * n * m)), 4.4), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    width = 0.8 / m
    colours = _colours(m)
    for k, (name, recalls) in enumerate(entries):
        x = np.arange(n) - 0.4 + width * (k + 0.5)
        ax.bar(x, recalls, width, label=name, color=colours[k], hatch="//" if k >= models else None)
    ax.set_xticks(range(n), [f"{name}\n({s:,})" for name, s in zip(class_names, supports)])
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("recall (share of the class found)")
    ax.yaxis.set_major_formatter(_percent)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(m, 4), loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax.set_title("Recall per class, every model and vote (images per class under the name)", fontsize=10)
    return figure


def reliability_diagrams(entries: list[tuple[str, list[dict], float]]) -> Figure:
    """One panel per model: accuracy against confidence per confidence bin, the diagonal where
    they would be equal, and how many answers each bin holds; the ECE in each title."""
    m = len(entries)
    figure = Figure(figsize=(3.6 * m + 0.4, 4.4), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(figure.subplots(2, m, sharex=True, height_ratios=(3, 1), squeeze=False))
    for k, (name, bins, ece) in enumerate(entries):
        top, bottom = axes[0, k], axes[1, k]
        lower = np.array([b["lower"] for b in bins])
        widths = np.array([b["upper"] - b["lower"] for b in bins])
        accuracy = np.array([b["accuracy"] for b in bins])
        confidence = np.array([b["confidence"] for b in bins])
        top.bar(lower, accuracy, widths, align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
        top.bar(
            lower, confidence - accuracy, widths, bottom=accuracy, align="edge", color="#dd8452", alpha=0.45,
            edgecolor="#dd8452", label="gap to confidence",
        )  # fmt: skip
        top.plot([0, 1], [0, 1], "k--", lw=1)
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(f"{name}\nECE {ece:.3f}", fontsize=10)
        top.grid(alpha=0.3)
        if k == 0:
            top.set_ylabel("accuracy in the bin")
            top.legend(fontsize="x-small", loc="upper left")
        bottom.bar(lower, [b["count"] for b in bins], widths, align="edge", color="#888888", edgecolor="white")
        bottom.set_xlabel("confidence")
        if k == 0:
            bottom.set_ylabel("answers")
    return figure


def coverage_curves(entries: list[tuple[str, list[dict]]], models: int) -> Figure:
    """Accuracy on the images kept against the share kept, when the least confident are left out;
    the confidence threshold that keeps each share marked on the first entry's curve."""
    figure = Figure(figsize=(8.5, 5.0), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    colours = _colours(len(entries))
    for k, (name, curve) in enumerate(entries):
        ax.plot(
            [p["kept"] for p in curve], [p["accuracy"] for p in curve], color=colours[k], lw=1.8,
            ls="-" if k < models else "--", label=name,
        )  # fmt: skip
    if entries:
        name, curve = entries[0]
        for point in curve[4::5]:
            ax.plot(point["kept"], point["accuracy"], "o", color=colours[0], ms=4)
            ax.annotate(
                f"conf. ≥ {point['threshold']:.2f}", (point["kept"], point["accuracy"]), textcoords="offset points",
                xytext=(4, 6), fontsize=8, color=colours[0],
            )  # fmt: skip
    ax.set_xlim(1.02, 0.0)  # keeping less to the right
    ax.set_xlabel("share of images kept (the least confident left out)")
    ax.set_ylabel("accuracy on the images kept")
    ax.xaxis.set_major_formatter(_percent)
    ax.yaxis.set_major_formatter(_percent)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(
        "What a confidence threshold buys (thresholds marked on the first curve)",
        fontsize=10,
    )
    return figure


def thumbnail_grid(rows: list[tuple[str, list[tuple[np.ndarray, str]]]], title: str, columns: int) -> Figure:
    """A row of captioned thumbnails per group (e.g. per true class); empty cells stay blank."""
    rows = rows or [("", [])]
    figure = Figure(figsize=(1.35 * columns + 1.3, 1.55 * len(rows) + 0.5), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (name, cells) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(cells):
                pixels, caption = cells[c]
                ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255)
                ax.set_xlabel(caption, fontsize=7, labelpad=2)
            if c == 0:
                ax.set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
        if not cells:
            axes[r, 0].text(0.5, 0.5, "none", ha="center", va="center", color="#888888", transform=axes[r, 0].transAxes)
    figure.suptitle(title, fontsize=10)
    return figure


# --- predictions on unlabelled images ------------------------------------------------------------


def label_counts(class_names: list[str], counts: list[int], title: str) -> Figure:
    """How many faces each label was given."""
    figure = Figure(figsize=(max(6.0, 0.9 * len(class_names) + 1.5), 3.8), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    bars = ax.bar(range(len(class_names)), counts, color=_colours(len(class_names)))
    total = max(sum(counts), 1)
    for bar, count in zip(bars, counts):
        ax.annotate(
            f"{count:,}\n{count / total:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            textcoords="offset points", xytext=(0, 2), ha="center", va="bottom", fontsize=8,
        )  # fmt: skip
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_ylabel("faces")
    ax.set_ylim(0, max(counts + [1]) * 1.25)
    ax.set_title(title, fontsize=10)
    return figure


def confidence_histograms(class_names: list[str], confidences: list[list[float]], bins: int = 20) -> Figure:
    """The confidences given, all faces and per predicted label (stacked), in equal-width bins."""
    figure = Figure(figsize=(8.0, 3.8), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    edges = np.linspace(0.0, 1.0, bins + 1)
    shown = [(name, values) for name, values in zip(class_names, confidences) if values]
    if shown:
        ax.hist(
            [values for _, values in shown], edges, stacked=True, label=[name for name, _ in shown],
            color=[_colours(len(class_names))[class_names.index(name)] for name, _ in shown],
        )  # fmt: skip
        ax.legend(fontsize="small", title="predicted", title_fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("faces")
    ax.set_title("Confidence of the predictions, by predicted label", fontsize=10)
    return figure


def _colours(n: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10" if n <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(n)]


def _percent(value, _position=None) -> str:
    return f"{value:.0%}"
