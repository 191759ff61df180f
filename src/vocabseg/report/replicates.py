"""Training replicates in the results tables (``replicates:`` of the study config).

Replicate 0 of approach ``a`` is the row ``a``; replicate k >= 1 is the row ``a.rk``
(``workflow/rules/common.smk`` names them; approach and variant names hold no dot).
Approaches that train nothing (zero-shot, the oracle) have one row.

With replicates the table shows one line per approach. A metric cell is ``mean ± std``
over the approach's rows (the sample standard deviation, ddof 1: the spread due to the
training seed), or ``value [lo, hi]`` (the image bootstrap interval) for an approach
with one row. A reference mark means: the paired bootstrap interval of the difference
to that reference excludes 0 **with the same sign in every replicate** (replicate k of
a row against replicate k of the reference; a row without replicate k uses its one row).
The CSV keeps every replicate's value and intervals (``docs/uncertainty.md``).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from vocabseg.errors import InputError
from vocabseg.evaluation.bootstrap import BootstrapSettings, bootstrap_rows

__all__ = [
    "base_and_replicate", "has_replicates", "replicate_bootstrap", "replicate_summary", "replicate_marks",
    "spread_as_interval",
]

#: ``ftzs.r2``: replicate 2 of approach ``ftzs`` (replicate 0 carries no suffix)
REPLICA_NAME = re.compile(r"^(?P<base>[^.]+)\.r(?P<replicate>[1-9][0-9]*)$")


def base_and_replicate(row: str) -> tuple[str, int]:
    """(approach, replicate index) of a row name: ``ftzs.r2`` -> (``ftzs``, 2), ``ftzs`` -> (``ftzs``, 0)."""
    match = REPLICA_NAME.match(row)
    return (match["base"], int(match["replicate"])) if match else (row, 0)


def has_replicates(rows: Iterable[str]) -> bool:
    """Whether any row name is a replicate k >= 1."""
    return any(base_and_replicate(str(row))[1] > 0 for row in rows)


def _rows_by_approach(rows: Iterable[str]) -> dict[str, dict[int, str]]:
    """``{approach: {replicate: row}}`` in the rows' order; every approach needs its replicate 0."""
    grouped: dict[str, dict[int, str]] = {}
    for row in rows:
        base, k = base_and_replicate(str(row))
        if k in grouped.setdefault(base, {}):
            raise InputError(f"two table rows named {row!r}")
        grouped[base][k] = str(row)
    for base, replicates in grouped.items():
        if 0 not in replicates:
            raise InputError(f"row {next(iter(replicates.values()))!r} has no replicate-0 row {base!r}")
    return grouped


def replicate_bootstrap(
    stats: Mapping[str, object], references: Sequence[str], settings: BootstrapSettings = BootstrapSettings()
) -> pd.DataFrame:
    """:func:`bootstrap_rows` once per replicate index k: every approach's row of replicate
    k (its replicate 0 where it has no replicate k) against the references' rows of
    replicate k, all on the same resampled images.

    Args:
        stats: ``{row name: per-image statistics}`` of every row (``a``, ``a.r1``, ...).
        references: approach names (not row names).
        settings: resamples, seed and level (the same draws for every k).

    Returns:
        The long frame of :func:`bootstrap_rows` (``approach`` = the approach's name)
        plus ``replicate`` (k) and ``row``: the row the result is of, or ``""`` where the
        approach has no replicate k (such pairs, e.g. zero-shot against replicate 2 of the
        lower bound, only enter :func:`replicate_marks`).
    """
    grouped = _rows_by_approach(stats)
    count = 1 + max(max(replicates) for replicates in grouped.values())
    frames = []
    for k in range(count):
        chosen = {base: replicates.get(k, replicates[0]) for base, replicates in grouped.items()}
        boot = bootstrap_rows({base: stats[row] for base, row in chosen.items()}, references, settings)
        frames.append(boot.assign(replicate=k, row=[grouped[base].get(k, "") for base in boot["approach"]]))
    return pd.concat(frames, ignore_index=True)


def replicate_marks(boot: pd.DataFrame, references: Sequence[str], marks: Sequence[str]) -> dict[tuple[str, str], str]:
    """``{(approach, metric): marks}``: the mark of each reference whose paired interval
    (rows of :func:`replicate_bootstrap`) excludes 0 with the same sign in every replicate."""
    pairs = boot[boot["reference"] != ""]
    if pairs.empty:
        return {}
    grouped = pairs.groupby(["approach", "metric", "reference"], sort=False)
    above = grouped["lo"].apply(lambda lo: bool((lo > 0).all()))
    below = grouped["hi"].apply(lambda hi: bool((hi < 0).all()))
    significant = above | below
    out: dict[tuple[str, str], str] = {}
    for mark, reference in zip(marks, references):
        for (approach, metric, ref), yes in significant.items():
            if yes and ref == reference:
                out[(approach, metric)] = out.get((approach, metric), "") + mark
    return out


def replicate_summary(
    frame: pd.DataFrame, value_columns: Sequence[str], interval_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per approach, in the frame's order, from the frame's rows (``approach`` =
    row names): the replicate-0 row's other columns, each value column ``C`` replaced by
    its mean over the approach's rows, plus ``C std`` (ddof 1; NaN for one row) and
    ``replicates`` (the number of rows). The ``interval_columns`` (``C lo``, ``C hi``, ...)
    are kept for an approach with one row and empty (NaN) otherwise."""
    grouped = _rows_by_approach(frame["approach"])
    indexed = frame.set_index("approach", drop=False)
    rows = []
    for base, replicates in grouped.items():
        members = indexed.loc[list(replicates.values())]
        row = indexed.loc[replicates[0]].copy()
        row["approach"], row["replicates"] = base, len(replicates)
        for column in value_columns:
            values = pd.to_numeric(members[column], errors="coerce").to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            row[column] = round(float(finite.mean()), 3) if finite.size else None
            row[f"{column} std"] = round(float(finite.std(ddof=1)), 3) if finite.size > 1 else None
        if len(replicates) > 1:
            for column in interval_columns:
                row[column] = None
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def spread_as_interval(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``summary`` with ``C lo`` / ``C hi`` = mean -/+ std for every approach with
    replicates (error bars of the trade-off plot); one-row approaches keep their interval."""
    out = summary.copy()
    replicated = out["replicates"] > 1
    for column in columns:
        mean = pd.to_numeric(out[column], errors="coerce")
        std = pd.to_numeric(out[f"{column} std"], errors="coerce")
        for side, sign in (("lo", -1), ("hi", 1)):
            name = f"{column} {side}"
            current = out[name] if name in out else pd.Series(np.nan, index=out.index)
            out[name] = np.where(replicated, mean + sign * std, pd.to_numeric(current, errors="coerce"))
    return out
