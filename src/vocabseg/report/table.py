"""results/<study>/table.md and table.csv from the metrics JSON files of a study.

One row per approach, in the order given (the study config's order, which follows
the seed's results table): the approach, the seed row it reproduces (run fact
``label``, or else the label of its run fact ``seed_row``; ``-`` if none), the seed's
own PQ All / In / Out for that row (:mod:`vocabseg.report.seed_rows`), PQ All / In / Out, SQ and RQ (All), all x100 with 3
decimals as in the seed table, then the run facts (study, dataset, backbone,
vocabulary configuration, iterations). Below the main table, per-class PQ. A group
without any class (``n == 0``) prints as ``-``. The CSV holds the same rows with
every column (``label`` and ``kind`` included), the figures are the PQ bar chart
and, optionally, the In/Out trade-off plot.

With per-image statistics (``--images``, the ``.npz`` files of ``vocabseg
evaluate-panoptic``), every metric cell of the main table also shows its bootstrap
interval, ``value [lo, hi]``, and a mark per reference row whose paired difference
excludes 0 (:mod:`vocabseg.evaluation.bootstrap`; ``docs/uncertainty.md``). The CSV
then has, for each metric column C, ``C lo`` and ``C hi`` and, for each reference r,
``C vs r`` (the difference on all images) with ``C vs r lo`` and ``C vs r hi``.

With training replicates (rows ``a``, ``a.r1``, ... of :mod:`vocabseg.report.replicates`)
the Markdown has one line per approach with ``mean ± std`` cells, marked where the
paired interval excludes 0 with one sign in every replicate, and the CSV one line per
replicate (columns ``approach``, ``replicate``, its intervals, ``C mean``, ``C std``).

A second table (open-world semantic segmentation, seed 003) follows when metrics files
of ``vocabseg contmav-eval`` are given: one row per ContMAV variant with known-class
mIoU, AUPR, FPR95 and AUROC of the unknown score, the open-world mIoU of the
discovered classes and the class-similarity accuracy, x100, each with its interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from vocabseg.data.labelset import LabelSet
from vocabseg.errors import InputError
from vocabseg.evaluation.bootstrap import BootstrapSettings, bootstrap_rows
from vocabseg.openworld.metrics import OpenWorldImageStats, openworld_table_row
from vocabseg.evaluation.panoptic import PerImageStats
from vocabseg.fileio import read_json, write_text_atomic
from vocabseg.report.figures import plot_pq_bars, plot_tradeoff
from vocabseg.report.replicates import (
    base_and_replicate,
    has_replicates,
    replicate_bootstrap,
    replicate_marks,
    replicate_summary,
    spread_as_interval,
)
from vocabseg.report.seed_rows import seed_row

__all__ = [
    "load_metrics", "results_frame", "interval_columns", "interval_cells", "replicate_cells", "openworld_frame",
    "write_report",
]

_FACTS = ("study", "dataset", "backbone", "vocab", "iterations")
#: metric columns of the main table -> metric of the bootstrap (a path into the metrics JSON)
METRIC_COLUMNS = {
    "PQ": "All/pq", "PQ In": "In/pq", "PQ Out": "Out/pq", "SQ": "All/sq", "RQ": "All/rq", "mIoU": "semantic/miou",
}
#: metric columns of the open-world table -> metric of the bootstrap
OPENWORLD_COLUMNS = {
    "mIoU known": "known/miou", "AUPR": "anomaly/aupr", "FPR95": "anomaly/fpr95", "AUROC": "anomaly/auroc",
    "OW mIoU": "open_world/miou", "class sim": "class_similarity/accuracy",
}
#: the mark of a significant paired difference to the 1st, 2nd, ... reference row
MARKS = ("*", "†", "‡", "§")


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


def results_frame(metrics_files: Sequence[Path], labels: LabelSet | None = None) -> pd.DataFrame:
    """One row per metrics file: approach, seed label, PQ/SQ/RQ x100, the run facts and
    the PQ of every evaluated class of ``labels`` (None: Cityscapes)."""
    evaluated = (labels or LabelSet.cityscapes()).evaluated
    rows = []
    for path in metrics_files:
        m = load_metrics(path)
        run = m.get("run", {})
        try:
            seed = seed_row(str(run.get("seed_row", "-")))
        except KeyError:
            raise InputError(f"{path}: run fact seed_row {run['seed_row']!r} is not a row of the seed's table") from None
        label = str(run.get("label", "-"))
        row = {
            "approach": run.get("approach", Path(path).stem),
            "label": seed.label if seed and label == "-" else label,
            "seed PQ": seed.cell() if seed else "-",
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
        for lb in evaluated:
            row[f"pq/{lb.name}"] = _x100(m["per_class"].get(str(lb.id)), "pq")
        rows.append(row)
    columns = ["approach", "label", "seed PQ", "PQ", "PQ In", "PQ Out", "SQ", "RQ", "mIoU", *_FACTS, "kind", "eval vocab"]
    return pd.DataFrame(rows, columns=[*columns, *(f"pq/{lb.name}" for lb in evaluated)])


def interval_columns(
    frame: pd.DataFrame, boot: pd.DataFrame, references: Sequence[str], metric_columns: dict = METRIC_COLUMNS
) -> pd.DataFrame:
    """``frame`` with the bootstrap columns of every metric column C, all x100:
    ``C lo``, ``C hi`` and, per reference r, ``C vs r``, ``C vs r lo``, ``C vs r hi``.

    ``boot`` is the long frame of :func:`vocabseg.evaluation.bootstrap.bootstrap_rows`;
    ``metric_columns`` maps the frame's columns to its metrics.
    """
    indexed = boot.set_index(["approach", "metric", "reference"])
    columns: dict[str, list] = {}
    for column, metric in metric_columns.items():
        keys = [("", ("lo", "hi"), f"{column} ")]
        keys += [(r, ("estimate", "lo", "hi"), f"{column} vs {r} ") for r in references]
        for reference, fields, prefix in keys:
            for field in fields:
                name = (prefix + ("" if field == "estimate" else field)).strip()
                columns[name] = [
                    _x100_of(indexed, (approach, metric, reference), field) for approach in frame["approach"]
                ]
    return frame.assign(**columns)


def _x100_of(indexed: pd.DataFrame, key: tuple[str, str, str], field: str) -> float | None:
    if key not in indexed.index:
        return None
    value = indexed.at[key, field]
    return None if pd.isna(value) else round(100.0 * float(value), 3)


def interval_cells(
    frame: pd.DataFrame, references: Sequence[str], metric_columns: dict = METRIC_COLUMNS
) -> pd.DataFrame:
    """Metric columns as Markdown cells ``value [lo, hi]`` plus the marks of the
    references whose paired difference interval excludes 0 (see :data:`MARKS`)."""
    cells = {}
    for column in metric_columns:
        cells[column] = [
            _value_with_interval(row, column)
            + "".join(mark for mark, r in zip(MARKS, references) if _excludes_zero(row, f"{column} vs {r}"))
            for _, row in frame.iterrows()
        ]
    return frame.assign(**cells)


def _value_with_interval(row: pd.Series, column: str) -> str:
    """``value [lo, hi]`` (``value`` without an interval, ``-`` without a value)."""
    value, lo, hi = row[column], row.get(f"{column} lo"), row.get(f"{column} hi")
    if value is None or pd.isna(value):
        return "-"
    text = f"{value:.3f}"
    if lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi)):
        text += f" [{lo:.1f}, {hi:.1f}]"
    return text


def _excludes_zero(row: pd.Series, prefix: str) -> bool:
    lo, hi = row.get(f"{prefix} lo"), row.get(f"{prefix} hi")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return False
    return lo > 0 or hi < 0


def replicate_cells(
    summary: pd.DataFrame, marks: dict[tuple[str, str], str], metric_columns: dict = METRIC_COLUMNS
) -> pd.DataFrame:
    """Metric columns of a :func:`~vocabseg.report.replicates.replicate_summary` as
    Markdown cells: ``mean ± std`` for an approach with replicates, ``value [lo, hi]``
    for one with a single row, plus its marks (``{(approach, metric): marks}`` of
    :func:`~vocabseg.report.replicates.replicate_marks`)."""
    cells = {}
    for column, metric in metric_columns.items():
        cells[column] = []
        for _, row in summary.iterrows():
            std = row.get(f"{column} std")
            if row["replicates"] > 1 and not (row[column] is None or pd.isna(row[column])):
                text = f"{row[column]:.3f}" + ("" if std is None or pd.isna(std) else f" ± {std:.2f}")
            else:
                text = _value_with_interval(row, column)
            cells[column].append(text + ("" if text == "-" else marks.get((row["approach"], metric), "")))
    return summary.assign(**cells)


def _with_intervals(
    frame: pd.DataFrame, stats_files: Sequence[Path], references: Sequence[str], settings: BootstrapSettings,
    metric_columns: dict, load=PerImageStats.load,
) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """``frame`` with :func:`interval_columns` from the per-image statistics files (one
    per row, loaded by ``load``), the long bootstrap frame and the legend sentence;
    ``(frame, None, "")`` without files. Rows of replicates (``a.r1``) are compared with
    the references' rows of the same replicate (:func:`replicate_bootstrap`)."""
    if not stats_files:
        return frame, None, ""
    if len(stats_files) != len(frame):
        raise InputError(f"{len(stats_files)} per-image statistics files for {len(frame)} table rows")
    if len(references) > len(MARKS):
        raise InputError(f"at most {len(MARKS)} reference rows can be marked, got {list(references)}")
    stats = {name: load(path) for name, path in zip(frame["approach"], stats_files)}
    if has_replicates(frame["approach"]):
        boot = replicate_bootstrap(stats, references, settings)
        per_row = boot[boot["row"] != ""].assign(approach=lambda b: b["row"])
    else:
        boot = per_row = bootstrap_rows(stats, references, settings)
    n_images = next(iter(stats.values())).image_ids.size
    legend = _interval_legend(n_images, references, settings, has_replicates(frame["approach"]))
    return interval_columns(frame, per_row, references, metric_columns), boot, " " + legend


def _interval_legend(n_images: int, references: Sequence[str], settings: BootstrapSettings, replicated: bool) -> str:
    level = f"{100 * settings.level:g} %"
    interval = (
        f"{level} bootstrap interval over the {n_images} validation images "
        f"({settings.resamples} resamples, seed {settings.seed}; image sampling only, not training noise)"
    )
    if replicated:
        text = f"An approach with one model (nothing trained) shows value [lo, hi], its {interval}."
    else:
        text = f"[lo, hi]: {interval}."
    if references:
        marks = ", ".join(f"{m} {r}" for m, r in zip(MARKS, references))
        every = ", with the same sign in every replicate" if replicated else ""
        text += f" Marks: the paired {level} interval of the difference to that row excludes 0{every} ({marks})."
    return text


def _by_approach(
    frame: pd.DataFrame, boot: pd.DataFrame | None, references: Sequence[str], metric_columns: dict,
    value_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """(table frame, its Markdown cells, CSV frame, legend) of one table's rows.

    Without replicates: the frame, :func:`interval_cells` and the frame. With replicates:
    one row per approach (:func:`replicate_summary` of the metric and ``value_columns``),
    :func:`replicate_cells`, and the frame per row with ``approach`` the approach's name,
    ``replicate`` its index and ``C mean`` / ``C std`` of every metric column C."""
    if not has_replicates(frame["approach"]):
        return frame, interval_cells(frame, references, metric_columns), frame, ""
    intervals = [
        f"{column}{suffix}"
        for column in metric_columns
        for suffix in (" lo", " hi", *(f" vs {r}{side}" for r in references for side in ("", " lo", " hi")))
    ]
    summary = replicate_summary(frame, [*metric_columns, *value_columns], intervals)
    marks = replicate_marks(boot, references, MARKS) if boot is not None else {}
    named = [base_and_replicate(str(row)) for row in frame["approach"]]
    table_csv = frame.assign(approach=[base for base, _ in named])
    table_csv.insert(1, "replicate", [k for _, k in named])
    for column in metric_columns:
        for stat, source in (("mean", column), ("std", f"{column} std")):
            table_csv[f"{column} {stat}"] = table_csv["approach"].map(dict(zip(summary["approach"], summary[source])))
    count = int(summary["replicates"].max())
    legend = (
        f" Cells: mean ± std over the {count} training replicates (seeds) of an approach; "
        "every replicate's value and intervals are in the CSV."
    )
    return summary, replicate_cells(summary, marks, metric_columns), table_csv, legend


def openworld_frame(metrics_files: Sequence[Path]) -> pd.DataFrame:
    """One row per ``contmav-eval`` metrics file (see :func:`openworld_table_row`),
    plus the run facts dataset and unknown classes (their names, as the evaluator wrote
    them; the ``--fact unknown=`` train ids for a file without names)."""
    rows = []
    for path in metrics_files:
        m = read_json(path)
        if "anomaly" not in m or "known" not in m:
            raise InputError(f"{path}: not an open-world metrics JSON (no 'anomaly' / 'known' entry)")
        row = openworld_table_row(m)
        if row["approach"] == "-":
            row["approach"] = Path(path).stem
        run = m.get("run", {})
        names = (m.get("classes") or {}).get("unknown")
        unknown = ", ".join(names) if names else run.get("unknown", "")
        row.update({"dataset": run.get("dataset", ""), "unknown": unknown, "epochs": run.get("epochs", "")})
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
    image_stats: Sequence[Path] = (),
    references: Sequence[str] = (),
    bootstrap: BootstrapSettings = BootstrapSettings(),
    openworld_image_stats: Sequence[Path] = (),
    openworld_references: Sequence[str] = (),
    labels: LabelSet | None = None,
) -> pd.DataFrame:
    """Write the Markdown table, the CSV, the PQ bar chart and (if a path is given)
    the In/Out trade-off plot; return the CSV's frame. ``openworld_files`` (ContMAV metrics)
    add the open-world table to the Markdown and ``<table_csv stem>_openworld.csv``.
    ``image_stats`` (one per metrics file) add bootstrap intervals and paired
    comparisons with the ``references`` rows (at most four); ``openworld_image_stats``
    and ``openworld_references`` do the same for the open-world table."""
    labels = labels or LabelSet.cityscapes()
    rows, boot, legend = _with_intervals(
        results_frame(metrics_files, labels), image_stats, references, bootstrap, METRIC_COLUMNS
    )
    per_class = ["approach", *[f"pq/{lb.name}" for lb in labels.evaluated]]
    frame, cells, frame_csv, replicates_legend = _by_approach(rows, boot, references, METRIC_COLUMNS, per_class[1:])
    main = ["approach", "seed row", "seed PQ All / In / Out", "PQ", "PQ In", "PQ Out", "SQ", "RQ", "mIoU", *_FACTS, "eval vocab"]
    eval_vocab = frame["eval vocab"].iloc[0] if len(frame) else ""
    text = "\n\n".join(
        [f"# {title}", "No panoptic approach in this study."]
        if frame.empty
        else [
            f"# {title}",
            f"PQ, SQ, RQ and mIoU x100 on the validation set (all {labels.num_classes} classes). "
            f"In / Out: the in- and out-of-vocabulary classes of configuration {eval_vocab}. "
            "Seed row: the row of the seed's results table the approach reproduces; seed PQ: "
            "that row's numbers in the seed (Cityscapes, R50 unless noted), beside ours." + replicates_legend + legend,
            _markdown(cells.rename(columns={"label": "seed row", "seed PQ": "seed PQ All / In / Out"}), main),
            "## Per-class PQ" + (" (mean over replicates)" if replicates_legend else ""),
            _markdown(frame.rename(columns=lambda c: c.removeprefix("pq/")), [c.removeprefix("pq/") for c in per_class]),
        ]
    )
    if openworld_files:
        ow_rows = openworld_frame(openworld_files)
        shown = list(ow_rows.columns)
        ow_rows, ow_boot, ow_legend = _with_intervals(
            ow_rows, openworld_image_stats, openworld_references, bootstrap, OPENWORLD_COLUMNS,
            lambda path: OpenWorldImageStats.load(path).grouped(bootstrap.score_bins),  # one row's full counts at a time
        )
        _, ow_cells, ow_csv_frame, ow_replicates_legend = _by_approach(
            ow_rows, ow_boot, openworld_references, OPENWORLD_COLUMNS
        )
        text += "\n\n" + "\n\n".join(
            [
                "## Open-world segmentation (ContMAV)",
                "Known: mIoU x100 over the known classes. AUPR, FPR95 (at 95 % TPR) and AUROC x100 of the "
                "unknown score, positives = pixels of the unknown classes, void ignored. OW mIoU: the "
                "discovered classes against their best-matching ground-truth class." + ow_replicates_legend + ow_legend
                + (f" Intervals of AUPR, FPR95 and AUROC resample per-image score counts at the resolution of the "
                   f"values, grouped into at most {bootstrap.score_bins} bins." if ow_legend else ""),
                _markdown(ow_cells, shown),
            ]
        )
        ow_csv = Path(table_csv).with_name(Path(table_csv).stem + "_openworld.csv")
        write_text_atomic(ow_csv_frame.to_csv(index=False, float_format="%.3f"), ow_csv)
    write_text_atomic(text + "\n", table_md)
    write_text_atomic(frame_csv.to_csv(index=False, float_format="%.3f"), table_csv)
    plot_pq_bars(
        list(frame["approach"]),
        {"All": list(frame["PQ"]), "In": list(frame["PQ In"]), "Out": list(frame["PQ Out"])},
        Path(bars_png),
    )
    if tradeoff_png is not None:
        # with replicates, the error bars of a replicated approach are mean -/+ std
        plot_tradeoff(spread_as_interval(frame, ["PQ In", "PQ Out"]) if replicates_legend else frame, Path(tradeoff_png))
    return frame_csv
