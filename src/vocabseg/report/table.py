"""results/<study>/table.md and table.csv from the metrics JSON files of a study.

One row per approach, in the order given (the study config's order, which follows
the seed's results table): the approach, the seed row it reproduces (run fact
``label``, ``-`` if none), PQ All / In / Out, SQ and RQ (All), all x100 with 3
decimals as in the seed table, then the run facts (study, dataset, backbone,
vocabulary configuration, iterations). Below the main table, per-class PQ. A group
without any class (``n == 0``) prints as ``-``. The CSV holds the same rows with
every column (``label`` and ``kind`` included), the figures are the PQ bar chart
and, optionally, the In/Out trade-off plot.

A second table (open-world semantic segmentation, seed 003) follows when metrics files
of ``vocabseg contmav-eval`` are given: one row per ContMAV variant with known-class
mIoU, AUPR, FPR95 and AUROC of the unknown score and the open-world mIoU of the
discovered classes, x100.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from vocabseg.data.labels import EVAL_LABELS
from vocabseg.errors import InputError
from vocabseg.evaluation.openworld import openworld_table_row
from vocabseg.fileio import read_json, write_text_atomic
from vocabseg.report.figures import plot_pq_bars, plot_tradeoff

__all__ = ["load_metrics", "results_frame", "openworld_frame", "write_report"]

_FACTS = ("study", "dataset", "backbone", "vocab", "iterations")


def load_metrics(path: Path) -> dict:
    """Read one metrics JSON; raise :class:`InputError` naming it if unreadable."""
    data = read_json(path)
    for key in ("All", "per_class"):
        if key not in data:
            raise InputError(f"{path}: metrics JSON has no {key!r} entry")
    return data


def _x100(group: dict | None, key: str) -> float | None:
    if not group or group.get(key) is None:
        return None
    return round(100.0 * group[key], 3)


def results_frame(metrics_files: Sequence[Path]) -> pd.DataFrame:
    """One row per metrics file: approach, seed label, PQ/SQ/RQ x100 and the run facts."""
    rows = []
    for path in metrics_files:
        m = load_metrics(path)
        run = m.get("run", {})
        row = {
            "approach": run.get("approach", Path(path).stem),
            "label": str(run.get("label", "-")),
            "PQ": _x100(m["All"], "pq"),
            "PQ In": _x100(m.get("In"), "pq"),
            "PQ Out": _x100(m.get("Out"), "pq"),
            "SQ": _x100(m["All"], "sq"),
            "RQ": _x100(m["All"], "rq"),
            "mIoU": _x100(m.get("semantic"), "miou"),
        }
        row.update({fact: run.get(fact, "") for fact in _FACTS})
        row["kind"] = run.get("kind", "")
        row["eval vocab"] = run.get("eval_vocab", "")
        for lb in EVAL_LABELS:
            row[f"pq/{lb.name}"] = _x100(m["per_class"].get(str(lb.id)), "pq")
        rows.append(row)
    columns = ["approach", "label", "PQ", "PQ In", "PQ Out", "SQ", "RQ", "mIoU", *_FACTS, "kind", "eval vocab"]
    return pd.DataFrame(rows, columns=[*columns, *(f"pq/{lb.name}" for lb in EVAL_LABELS)])


def openworld_frame(metrics_files: Sequence[Path]) -> pd.DataFrame:
    """One row per ``contmav-eval`` metrics file (see :func:`openworld_table_row`),
    plus the run facts dataset and unknown classes."""
    rows = []
    for path in metrics_files:
        m = read_json(path)
        if "anomaly" not in m or "known" not in m:
            raise InputError(f"{path}: not an open-world metrics JSON (no 'anomaly' / 'known' entry)")
        row = openworld_table_row(m)
        if row["approach"] == "-":
            row["approach"] = Path(path).stem
        run = m.get("run", {})
        row.update({"dataset": run.get("dataset", ""), "unknown": run.get("unknown", ""), "epochs": run.get("epochs", "")})
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|")  # a pipe would end the cell

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def write_report(
    metrics_files: Sequence[Path],
    table_md: Path,
    table_csv: Path,
    bars_png: Path,
    title: str,
    tradeoff_png: Path | None = None,
    openworld_files: Sequence[Path] = (),
) -> pd.DataFrame:
    """Write the Markdown table, the CSV, the PQ bar chart and (if a path is given)
    the In/Out trade-off plot; return the frame. ``openworld_files`` (ContMAV metrics)
    add the open-world table to the Markdown and ``<table_csv stem>_openworld.csv``."""
    frame = results_frame(metrics_files)
    main = ["approach", "seed row", "PQ", "PQ In", "PQ Out", "SQ", "RQ", "mIoU", *_FACTS, "eval vocab"]
    per_class = ["approach", *[f"pq/{lb.name}" for lb in EVAL_LABELS]]
    eval_vocab = frame["eval vocab"].iloc[0] if len(frame) else ""
    text = "\n\n".join(
        [f"# {title}", "No panoptic approach in this study."]
        if frame.empty
        else [
            f"# {title}",
            "PQ, SQ, RQ and mIoU x100 on the validation set (all 19 classes). "
            f"In / Out: the in- and out-of-vocabulary classes of configuration {eval_vocab}. "
            "Seed row: the row of the seed's results table the approach reproduces.",
            _markdown(frame.rename(columns={"label": "seed row"}), main),
            "## Per-class PQ",
            _markdown(frame.rename(columns=lambda c: c.removeprefix("pq/")), [c.removeprefix("pq/") for c in per_class]),
        ]
    )
    if openworld_files:
        ow = openworld_frame(openworld_files)
        text += "\n\n" + "\n\n".join(
            [
                "## Open-world segmentation (ContMAV)",
                "Known: mIoU x100 over the known classes. AUPR, FPR95 (at 95 % TPR) and AUROC x100 of the "
                "unknown score, positives = pixels of the unknown classes, void ignored. OW mIoU: the "
                "discovered classes against their best-matching ground-truth class.",
                _markdown(ow, list(ow.columns)),
            ]
        )
        ow_csv = Path(table_csv).with_name(Path(table_csv).stem + "_openworld.csv")
        write_text_atomic(ow.to_csv(index=False, float_format="%.3f"), ow_csv)
    write_text_atomic(text + "\n", table_md)
    write_text_atomic(frame.to_csv(index=False, float_format="%.3f"), table_csv)
    plot_pq_bars(
        list(frame["approach"]),
        {"All": list(frame["PQ"]), "In": list(frame["PQ In"]), "Out": list(frame["PQ Out"])},
        Path(bars_png),
    )
    if tradeoff_png is not None:
        plot_tradeoff(frame, Path(tradeoff_png))
    return frame
