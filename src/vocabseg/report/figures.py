"""Figures: class-frequency histograms, the PQ bar chart and the In/Out trade-off.

The trade-off plot (:func:`plot_tradeoff`) is the study's question in one picture:
fine-tuning on the in-vocabulary classes raises PQ In (x) and, without care, lowers
PQ Out (y). The zero-shot model and the upper bound (fine-tuned on all classes,
configuration 000) are drawn with their own markers and lines through them, so an
approach above and right of the zero-shot lines beats it on both groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vocabseg.data.labels import EVAL_LABELS  # noqa: E402

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
    stats: Mapping[str, Mapping[int, Mapping[str, float]]], split: Mapping, out: Path
) -> None:
    """Draw pixel share and instance count per class for each set, in/out coloured.

    Args:
        stats: ``{"train": class_frequencies(...), "val": ...}``.
        split: a ``split.json`` dictionary (its ``out_ids`` are drawn in orange).
        out: PNG path.
    """
    out_ids = set(split["out_ids"])
    names = [lb.name for lb in EVAL_LABELS]
    colors = [OUT_COLOR if lb.id in out_ids else IN_COLOR for lb in EVAL_LABELS]
    fig, axes = plt.subplots(len(stats), 2, figsize=(13, 3.6 * len(stats)), squeeze=False)
    for row, (set_name, per_class) in enumerate(stats.items()):
        share = [100 * per_class[lb.id]["pixel_share"] for lb in EVAL_LABELS]
        inst = [per_class[lb.id]["instances"] for lb in EVAL_LABELS]
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
    """Axis range ``[min - 5, max + 5]`` of ``values`` (so points at PQ 0 or 100 stay
    visible); ``[0, 100]`` without values."""
    if not values:
        return 0.0, 100.0
    return min(values) - 5.0, max(values) + 5.0


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
    shown = set()
    for name, x, y, role in points:
        marker, color, line, legend = _ROLES[role]
        if line:
            ax.axvline(x, color=color, linestyle=line, linewidth=1, alpha=0.7)
            ax.axhline(y, color=color, linestyle=line, linewidth=1, alpha=0.7)
        ax.scatter([x], [y], marker=marker, s=160 if role == "zeroshot" else 60, color=color,
                   zorder=3, label=None if role in shown else legend)
        shown.add(role)
        ax.annotate(name, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
    if not points:
        ax.text(0.5, 0.5, "no approach has both a PQ In and a PQ Out", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlim(*_limits([p[1] for p in points]))
    ax.set_ylim(*_limits([p[2] for p in points]))
    ax.set_xlabel(f"PQ In (x100): in-vocabulary classes of configuration {eval_vocab}")
    ax.set_ylabel(f"PQ Out (x100): out-of-vocabulary classes of configuration {eval_vocab}")
    ax.set_title("In- vs out-of-vocabulary panoptic quality")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return points
