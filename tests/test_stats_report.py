"""Class frequencies, the results table and its figures."""

import csv
import json

import pytest
from PIL import Image

from vocabseg.data.labels import EVAL_LABELS
from vocabseg.data.stats import class_frequencies
from vocabseg.data.vocab import make_split
from vocabseg.errors import InputError
from vocabseg.report.figures import plot_class_frequency
from vocabseg.report.table import results_frame, write_report


def test_class_frequencies_from_json_areas(tmp_path):
    seg = lambda c, area, crowd=0: {"id": 1, "category_id": c, "area": area, "iscrowd": crowd}  # noqa: E731
    gt = {"annotations": [
        {"segments_info": [seg(7, 60), seg(26, 20), seg(26, 10), seg(26, 10, crowd=1)]},
        {"segments_info": [seg(7, 100), seg(24, 0 + 5)]},
    ]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    stats = class_frequencies(path)
    assert stats[7] == {"pixels": 160, "pixel_share": 160 / 205, "instances": 0}
    assert stats[26]["pixels"] == 40 and stats[26]["instances"] == 2  # crowd counts pixels, not instances
    assert stats[24]["instances"] == 1
    assert stats[33] == {"pixels": 0, "pixel_share": 0.0, "instances": 0}
    assert len(stats) == 19

    out = tmp_path / "freq.png"
    plot_class_frequency({"train": stats, "val": stats}, make_split("008"), out)
    assert Image.open(out).size[0] > 500


def _metrics(pq_all, pq_in, pq_out, approach, n_out=8):
    per_class = {str(lb.id): {"pq": pq_all, "sq": 0.9, "rq": 0.8} for lb in EVAL_LABELS}
    return {
        "All": {"pq": pq_all, "sq": 0.9, "rq": 0.8, "n": 19},
        "In": {"pq": pq_in, "sq": 0.9, "rq": 0.8, "n": 11},
        "Out": {"pq": pq_out, "sq": None if n_out == 0 else 0.5, "rq": None, "n": n_out},
        "per_class": per_class,
        "semantic": {"miou": 0.5},
        "run": {"approach": approach, "study": "s", "dataset": "d", "backbone": "-", "vocab": "008",
                "iterations": 100, "eval_vocab": "008"},
    }


def test_table_rows_in_given_order_x100_three_decimals(tmp_path):
    files = []
    for name, m in [("zeta", _metrics(0.58197, 0.63995, 0.50224, "zeta")),
                    ("alpha", _metrics(0.4, 0.5, None, "alpha", n_out=0))]:
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(m))
    md, csv_path, png = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "b.png"
    frame = write_report(files, md, csv_path, png, "Title")
    assert list(frame["approach"]) == ["zeta", "alpha"]
    text = md.read_text()
    assert "| zeta | 58.197 | 63.995 | 50.224 |" in text
    assert "| alpha | 40.000 | 50.000 | - |" in text  # a group without classes prints as '-'
    assert "## Per-class PQ" in text and "traffic light" in text
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["PQ Out"] == "50.224" and rows[1]["PQ Out"] == ""
    assert png.stat().st_size > 0


def test_unreadable_metrics_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        results_frame([bad])
    partial = tmp_path / "partial.json"
    partial.write_text("{}")
    with pytest.raises(InputError, match="partial.json.*All"):
        results_frame([partial])
