"""Figures: class-frequency histograms, the PQ bar chart and the In/Out trade-off.

The trade-off plot (:func:`plot_tradeoff`) is the study's question in one picture:
fine-tuning on the in-vocabulary classes raises PQ In (x) and, without care, lowers
PQ Out (y). The zero-shot model and the upper bound (fine-tuned on all classes,
configuration 000) are drawn with their own markers and lines through them, so an
approach above and right of the zero-shot lines beats it on both groups. With
bootstrap intervals in the frame (columns ``PQ In lo`` / ``hi``, ``PQ Out lo`` /
``hi``) every point gets horizontal and vertical error bars. Labels are placed
greedily where they overlap no other label, marker or the axes' edge (with a thin
leader line when pushed away from their point); both axes stay within [0, 100].
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vocabseg.data.labelset import LabelSet  # noqa: E402

__all__ = ["plot_class_frequency", "plot_pq_bars", "plot_tradeoff", "tradeoff_points", "IN_COLOR", "OUT_COLOR"]

IN_COLOR = "#3b75af"
OUT_COLOR = "#e1812c"
ZEROSHOT_COLOR = "#2a9d3a"
UPPER_COLOR = "#c0392b"

# role of a trade-off point -> (marker, colour, line style of its reference lines, legend text)
_ROLES = {
    "zeroshot": ("*", ZEROSHOT_COLOR, "--", "zero-shot reference"),
    "upper": ("D", UPPER_COLOR, ":", "upper bound (fine-tuned on 000)"),
    "other": ("o", IN_COLOR, None, "approach"),
}


def plot_class_frequency(
    stats: Mapping[str, Mapping[int, Mapping[str, float]]], split: Mapping, out: Path, labels: LabelSet | None = None
) -> None:
    """Draw pixel share and instance count per class for each set, in/out coloured.

    Args:
        stats: ``{"train": class_frequencies(...), "val": ...}``.
        split: a ``split.json`` dictionary (its ``out_ids`` are drawn in orange).
        out: PNG path.
        labels: the dataset's label set, whose evaluated classes are the bars (None: Cityscapes).
    """
    evaluated = (labels or LabelSet.cityscapes()).evaluated
    out_ids = set(split["out_ids"])
    names = [lb.name for lb in evaluated]
    colors = [OUT_COLOR if lb.id in out_ids else IN_COLOR for lb in evaluated]
    fig, axes = plt.subplots(len(stats), 2, figsize=(13, 3.6 * len(stats)), squeeze=False)
    for row, (set_name, per_class) in enumerate(stats.items()):
        share = [100 * per_class[lb.id]["pixel_share"] for lb in evaluated]
        inst = [per_class[lb.id]["instances"] for lb in evaluated]
        for ax, values, title in (
            (axes[row, 0], share, f"{set_name}: pixel share (%)"),
            (axes[row, 1], inst, f"{set_name}: instances"),
        ):
            ax.bar(range(len(names)), values, color=colors)
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (IN_COLOR, OUT_COLOR)]
    fig.legend(handles, ["in-vocabulary", "out-of-vocabulary"], loc="upper right")
    fig.suptitle(f"Class frequency, vocabulary configuration {split['vocab']}")
    fig.tight_layout(rect=(0, 0, 0.9, 0.96))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_pq_bars(approaches: Sequence[str], groups: Mapping[str, Sequence[float | None]], out: Path) -> None:
    """Grouped bar chart of PQ (x100) per approach for each group (All / In / Out)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(approaches) + 2), 4))
    width = 0.8 / max(1, len(groups))
    for k, (group, values) in enumerate(groups.items()):
        xs = [i + (k - (len(groups) - 1) / 2) * width for i in range(len(approaches))]
        heights = [0.0 if v is None or v != v else v for v in values]  # None / NaN: empty group
        ax.bar(xs, heights, width, label=f"PQ {group}")
    ax.set_xticks(range(len(approaches)), approaches, rotation=30, ha="right")
    ax.set_ylabel("PQ (x100)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _role(row: Mapping) -> str:
    """``"zeroshot"``, ``"upper"`` (kind finetune on vocabulary 000) or ``"other"``."""
    if row.get("kind") == "zeroshot":
        return "zeroshot"
    if row.get("kind") == "finetune" and str(row.get("vocab")) == "000":
        return "upper"
    return "other"


def tradeoff_points(frame: pd.DataFrame) -> list[tuple[str, float, float, str]]:
    """(approach, PQ In, PQ Out, role) of every row to plot, in frame order.

    Rows of kind ``oracle`` and rows without a PQ In or PQ Out (an empty group)
    are left out; role is ``"zeroshot"``, ``"upper"`` or ``"other"``.
    """
    points = []
    for _, row in frame.iterrows():
        if row.get("kind") == "oracle" or pd.isna(row["PQ In"]) or pd.isna(row["PQ Out"]):
            continue
        points.append((str(row["approach"]), float(row["PQ In"]), float(row["PQ Out"]), _role(row)))
    return points


def _limits(values: Sequence[float]) -> tuple[float, float]:
    """Axis range ``[min - 5, max + 5]`` of ``values`` clipped to the PQ range
    ``[0, 100]`` (markers are not clipped, so points at 0 or 100 stay visible);
    ``[0, 100]`` without values."""
    if not values:
        return 0.0, 100.0
    return max(0.0, min(values) - 5.0), min(100.0, max(values) + 5.0)


def _error_bars(frame: pd.DataFrame, points: Sequence[tuple], column: str) -> np.ndarray | None:
    """``column`` is ``"PQ In"`` (x) or ``"PQ Out"`` (y). (2, P) distances from each point down to ``<column> lo`` and up to ``<column> hi``,
    or None when the frame has no such interval columns."""
    if f"{column} lo" not in frame:
        return None
    rows = frame.set_index("approach")
    at = 1 if column == "PQ In" else 2  # the point's x or y
    errors = np.zeros((2, len(points)))
    for j, point in enumerate(points):
        lo, hi = rows.at[point[0], f"{column} lo"], rows.at[point[0], f"{column} hi"]
        if not (pd.isna(lo) or pd.isna(hi)):
            errors[:, j] = max(0.0, point[at] - lo), max(0.0, hi - point[at])
    return errors


# label offsets (points) tried in order: close to the point first, then further out
_LABEL_OFFSETS = [
    (dx * r, dy * r)
    for r in (5, 12, 22, 34, 48, 65, 85, 110, 140)
    for dx, dy in ((1, 1), (-1, 1), (1, -1), (-1, -1), (0, 1.4), (0, -1.6), (1.3, 0), (-1.3, 0),
                   (0.5, 1.3), (-0.5, 1.3), (0.5, -1.3), (-0.5, -1.3))
]


def _place_labels(ax, points: Sequence[tuple], fontsize: float = 8) -> None:
    """Annotate each point with its name where the label overlaps no earlier label,
    marker or the legend and stays inside the axes (the first offset of
    :data:`_LABEL_OFFSETS` if none does); far labels get a leader line."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame_box = ax.get_window_extent(renderer)
    taken = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    for _, x, y, _ in points:  # a small box around each marker
        px, py = ax.transData.transform((x, y))
        taken.append(matplotlib.transforms.Bbox.from_extents(px - 6, py - 6, px + 6, py + 6))

    def label_at(name: str, x: float, y: float, dx: float, dy: float, leader: bool):
        return ax.annotate(
            name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkB": 4} if leader else None,
        )

    def text_box(name: str, x: float, y: float, dx: float, dy: float):
        trial = label_at(name, x, y, dx, dy, leader=False)  # the extent of the text alone
        box = trial.get_window_extent(renderer).padded(1)
        trial.remove()
        return box

    for name, x, y, _ in points:
        offset = _LABEL_OFFSETS[0]  # where no place is free
        for dx, dy in _LABEL_OFFSETS:
            box = text_box(name, x, y, dx, dy)
            inside = frame_box.contains(box.x0, box.y0) and frame_box.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in taken):
                offset = (dx, dy)
                break
        taken.append(text_box(name, x, y, *offset))
        label_at(name, x, y, *offset, leader=abs(offset[0]) + abs(offset[1]) > 12)


def plot_tradeoff(frame: pd.DataFrame, out: Path) -> list[tuple[str, float, float, str]]:
    """PQ In (x) against PQ Out (y), one labelled point per approach (see module docstring).

    Args:
        frame: :func:`vocabseg.report.table.results_frame` (columns approach, kind,
            vocab, PQ In, PQ Out, eval vocab).
        out: PNG path.

    Returns:
        The plotted points, as :func:`tradeoff_points`.
    """
    points = tradeoff_points(frame)
    eval_vocab = frame["eval vocab"].iloc[0] if len(frame) and "eval vocab" in frame else "?"
    fig, ax = plt.subplots(figsize=(7, 5.5))
    xerr, yerr = _error_bars(frame, points, "PQ In"), _error_bars(frame, points, "PQ Out")
    shown = set()
    for j, (name, x, y, role) in enumerate(points):
        marker, color, line, legend = _ROLES[role]
        if line:
            ax.axvline(x, color=color, linestyle=line, linewidth=1, alpha=0.7)
            ax.axhline(y, color=color, linestyle=line, linewidth=1, alpha=0.7)
        if xerr is not None:
            ax.errorbar([x], [y], xerr=xerr[:, j : j + 1], yerr=yerr[:, j : j + 1], fmt="none",
                        ecolor=color, elinewidth=0.8, capsize=2, alpha=0.6, zorder=2, clip_on=False)
        ax.scatter([x], [y], marker=marker, s=160 if role == "zeroshot" else 60, color=color,
                   zorder=3, clip_on=False, label=None if role in shown else legend)
        shown.add(role)
    if not points:
        ax.text(0.5, 0.5, "no approach has both a PQ In and a PQ Out", ha="center", va="center",
                transform=ax.transAxes)
    spans = [(x - (0 if xerr is None else xerr[0, j]), x + (0 if xerr is None else xerr[1, j]),
              y - (0 if yerr is None else yerr[0, j]), y + (0 if yerr is None else yerr[1, j]))
             for j, (_, x, y, _) in enumerate(points)]
    ax.set_xlim(*_limits([v for s in spans for v in s[:2]]))
    ax.set_ylim(*_limits([v for s in spans for v in s[2:]]))
    ax.set_xlabel(f"PQ In (x100): in-vocabulary classes of configuration {eval_vocab}")
    ax.set_ylabel(f"PQ Out (x100): out-of-vocabulary classes of configuration {eval_vocab}")
    ax.set_title("In- vs out-of-vocabulary panoptic quality")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _place_labels(ax, points)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return points
