"""Figures: class-frequency histograms and the PQ bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vocabseg.data.labels import EVAL_LABELS  # noqa: E402

__all__ = ["plot_class_frequency", "plot_pq_bars", "IN_COLOR", "OUT_COLOR"]

IN_COLOR = "#3b75af"
OUT_COLOR = "#e1812c"


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
