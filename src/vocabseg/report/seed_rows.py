"""The seed's own results (seed 000, "Results" table), one home for its numbers.

``seed_000.csv`` beside this module holds every row of the seed's FC-CLIP table that
has numbers: an id (what a study config's ``seed_row:`` names), the backbone, whether
the row was computed from one prediction set (``one_prediction``), PQ All / In / Out
(x100, as printed in the seed) and the seed's row label. The workflow reads the ids
from the same file to validate ``seed_row`` before any job starts.

Rows computed from one prediction set satisfy ``All = (11 In + 8 Out) / 19`` to three
decimals (11 in-classes, 8 out-classes of configuration 008); the seed's naive row does
too, as it is a class-wise combination of two results. The two intersection rows do
not (50.41 vs 50.35, 56.935 vs 56.901): one of their columns was not computed from the
same predictions as the others.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["SeedRow", "seed_rows", "seed_row"]

CSV_NAME = "seed_000.csv"


@dataclass(frozen=True)
class SeedRow:
    """One row of the seed's table; PQ values x100 as printed there."""

    id: str
    backbone: str
    one_prediction: bool
    pq_all: float
    pq_in: float
    pq_out: float
    label: str

    def cell(self) -> str:
        """``All / In / Out`` as the results table shows it (backbone added if not R50)."""
        text = f"{self.pq_all:.3f} / {self.pq_in:.3f} / {self.pq_out:.3f}"
        return text if self.backbone == "R50" else f"{text} ({self.backbone})"


@cache
def seed_rows() -> dict[str, SeedRow]:
    """Every seed row by id, in the seed's order."""
    text = resources.files(__package__).joinpath(CSV_NAME).read_text(encoding="utf-8")
    rows = {}
    for r in csv.DictReader(text.splitlines()):
        rows[r["id"]] = SeedRow(
            id=r["id"],
            backbone=r["backbone"],
            one_prediction=r["one_prediction"] == "yes",
            pq_all=float(r["pq_all"]),
            pq_in=float(r["pq_in"]),
            pq_out=float(r["pq_out"]),
            label=r["label"],
        )
    return rows


def seed_row(row_id: str) -> SeedRow | None:
    """The seed row ``row_id`` (None for ``"-"`` or ``""``: no seed row); KeyError if unknown."""
    if row_id in ("", "-"):
        return None
    return seed_rows()[row_id]
