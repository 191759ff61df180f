"""Class frequencies, the results table and its figures (PQ bars, In/Out trade-off)."""

import csv
import json

import pytest
from PIL import Image

from vocabseg.data.labels import EVAL_LABELS
from vocabseg.data.stats import class_frequencies
from vocabseg.data.vocab import make_split
from vocabseg.errors import InputError
from vocabseg.cli import main
from vocabseg.report import figures
from vocabseg.report.figures import plot_class_frequency, plot_tradeoff, tradeoff_points
from vocabseg.report.seed_rows import seed_rows
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


def _metrics(pq_all, pq_in, pq_out, approach, n_out=8, kind="finetune", vocab="008", label=None, seed_row=None):
    per_class = {str(lb.id): {"pq": pq_all, "sq": 0.9, "rq": 0.8} for lb in EVAL_LABELS}
    return {
        "All": {"pq": pq_all, "sq": 0.9, "rq": 0.8, "n": 19},
        "In": {"pq": pq_in, "sq": 0.9, "rq": 0.8, "n": 11},
        "Out": {"pq": pq_out, "sq": None if n_out == 0 else 0.5, "rq": None, "n": n_out},
        "per_class": per_class,
        "semantic": {"miou": 0.5},
        "run": {"approach": approach, "kind": kind, "study": "s", "dataset": "d", "backbone": "-",
                "vocab": vocab, "iterations": 100, "eval_vocab": "008",
                **({} if label is None else {"label": label}),
                **({} if seed_row is None else {"seed_row": seed_row})},
    }


def _write(tmp_path, entries):
    """Write ``(file stem, metrics)`` pairs as JSON files; return their paths in order."""
    files = []
    for name, m in entries:
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(m))
    return files


def test_table_rows_in_given_order_x100_three_decimals(tmp_path):
    upper = "Upperbound: Full finetuning - 000 - 1000 iter"
    files = _write(tmp_path, [("zeta", _metrics(0.58197, 0.63995, 0.50224, "zeta", label=upper)),
                              ("alpha", _metrics(0.4, 0.5, None, "alpha", n_out=0))])
    md, csv_path, png = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "b.png"
    frame = write_report(files, md, csv_path, png, "Title")
    assert list(frame["approach"]) == ["zeta", "alpha"]
    text = md.read_text()
    assert "| approach | seed row | seed PQ All / In / Out | PQ | PQ In | PQ Out | SQ |" in text
    assert f"| zeta | {upper} | - | 58.197 | 63.995 | 50.224 |" in text
    assert "| alpha | - | - | 40.000 | 50.000 | - |" in text  # no label; a group without classes: '-'
    assert "## Per-class PQ" in text and "traffic light" in text
    assert "| approach | road |" in text  # the per-class table has no seed-row column
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0])[:4] == ["approach", "label", "seed PQ", "PQ"]
    assert rows[0]["label"] == upper and rows[1]["label"] == "-"
    assert rows[0]["PQ Out"] == "50.224" and rows[1]["PQ Out"] == ""
    assert png.stat().st_size > 0
    assert not (tmp_path / "tradeoff.png").exists()  # only written when asked for


def test_seed_column_shows_the_seed_rows_numbers_and_label(tmp_path):
    files = _write(tmp_path, [("naive", _metrics(0.5, 0.6, 0.3, "naive", seed_row="naive")),
                              ("zs", _metrics(0.4, 0.5, 0.3, "zs", seed_row="zeroshot_convnext_large", label="mine")),
                              ("kd", _metrics(0.4, 0.5, 0.3, "kd", seed_row="-"))])
    md = tmp_path / "t.md"
    write_report(files, md, tmp_path / "t.csv", tmp_path / "b.png", "Title")
    text = md.read_text()
    naive = seed_rows()["naive"].label
    assert f"| naive | {naive} | 50.350 / 65.575 / 29.416 | 50.000 | 60.000 | 30.000 |" in text
    assert "| zs | mine | 43.992 / 49.662 / 36.195 (ConvNeXt-L) | 40.000 |" in text  # own label wins
    assert "| kd | - | - | 40.000 |" in text
    bad = _write(tmp_path, [("x", _metrics(0.5, 0.6, 0.3, "x", seed_row="nope"))])
    with pytest.raises(InputError, match="x.json: run fact seed_row 'nope' is not a row of the seed's table"):
        write_report(bad, md, tmp_path / "t.csv", tmp_path / "b.png", "Title")


def test_seed_rows_of_one_prediction_set_satisfy_the_group_identity():
    """All = (11 In + 8 Out) / 19 to 3 decimals: a check that the numbers were copied
    right; the two intersection rows are the seed's known exceptions."""
    rows = seed_rows()
    assert len(rows) == 17 and rows["intersection_5_9"].label == "Intersection n°5 + n°9"
    for row in rows.values():
        identity = abs((11 * row.pq_in + 8 * row.pq_out) / 19 - row.pq_all) <= 0.0015
        assert identity == row.one_prediction, row.id
    assert round((11 * 65.575 + 8 * 29.416) / 19, 2) == rows["naive"].pq_all


def test_pipe_in_a_label_does_not_break_the_markdown_row(tmp_path):
    files = _write(tmp_path, [("a", _metrics(0.5, 0.5, 0.5, "a", label="x | y"))])
    write_report(files, tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "b.png", "T")
    assert "| a | x \\| y | - | 50.000 |" in (tmp_path / "t.md").read_text()


def _study(tmp_path):
    """Metrics of a small study: oracle, zero-shot, two upper bounds, a lower bound, an
    approach without Out classes."""
    return _write(tmp_path, [
        ("oracle", _metrics(1.0, 1.0, 1.0, "oracle", kind="oracle", vocab="-")),
        ("zeroshot", _metrics(0.40311, 0.48234, 0.29416, "zeroshot", kind="zeroshot", vocab="-")),
        ("upperbound", _metrics(0.58197, 0.63995, 0.50224, "upperbound", vocab="000")),
        ("upper_100", _metrics(0.5, 0.6, 0.4, "upper_100", vocab="000")),
        ("lowerbound", _metrics(0.37965, 0.65575, 0.0, "lowerbound")),
        ("no_out", _metrics(0.4, 0.5, None, "no_out", n_out=0)),
    ])


def test_tradeoff_points_skip_oracle_and_empty_groups_and_mark_references(tmp_path):
    points = tradeoff_points(results_frame(_study(tmp_path)))
    assert points == [
        ("zeroshot", 48.234, 29.416, "zeroshot"),
        ("upperbound", 63.995, 50.224, "upper"),
        ("upper_100", 60.0, 40.0, "upper"),  # every finetune on 000 is an upper bound
        ("lowerbound", 65.575, 0.0, "other"),
    ]


def test_tradeoff_figure_markers_lines_labels(tmp_path, monkeypatch):
    closed = []
    monkeypatch.setattr(figures.plt, "close", closed.append)  # keep the figure to inspect it
    out = tmp_path / "tradeoff.png"
    plot_tradeoff(results_frame(_study(tmp_path)), out)
    assert Image.open(out).size == (700, 550)
    (ax,) = closed[0].axes
    assert "configuration 008" in ax.get_xlabel() and ax.get_xlabel().startswith("PQ In")
    assert ax.get_ylabel().startswith("PQ Out")
    assert [t.get_text() for t in ax.texts] == ["zeroshot", "upperbound", "upper_100", "lowerbound"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "zero-shot reference", "upper bound (fine-tuned on 000)", "approach"]
    # dashed lines through the zero-shot point, dotted ones through each upper bound
    dashed = sorted(tuple(line.get_xdata()) + tuple(line.get_ydata())
                    for line in ax.lines if line.get_linestyle() == "--")
    assert dashed == [(0, 1, 29.416, 29.416), (48.234, 48.234, 0, 1)]
    assert sum(line.get_linestyle() == ":" for line in ax.lines) == 4
    assert ax.get_xlim() == (43.234, 70.575) and ax.get_ylim() == (0.0, 55.224)  # PQ never below 0


def test_tradeoff_without_out_groups_still_writes_a_figure(tmp_path):
    files = _write(tmp_path, [("a", _metrics(0.4, 0.5, None, "a", n_out=0))])
    out = tmp_path / "t.png"
    assert plot_tradeoff(results_frame(files), out) == []
    assert Image.open(out).size == (700, 550)


def test_report_command_writes_the_tradeoff(tmp_path):
    files = _study(tmp_path)
    args = ["report", "--metrics", *map(str, files), "--table-md", str(tmp_path / "t.md"),
            "--table-csv", str(tmp_path / "t.csv"), "--bars", str(tmp_path / "b.png")]
    assert main(args + ["--tradeoff", str(tmp_path / "to.png")]) == 0
    assert Image.open(tmp_path / "to.png").size == (700, 550)
    assert main(args) == 0  # --tradeoff is optional


def test_unreadable_metrics_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        results_frame([bad])
    partial = tmp_path / "partial.json"
    partial.write_text("{}")
    with pytest.raises(InputError, match="partial.json.*All"):
        results_frame([partial])


def _openworld_metrics(tmp_path, name, known_right, scores):
    """An open-world metrics file made by the real accumulator: 2 known classes, 1 unknown."""
    import numpy as np

    from vocabseg.openworld.metrics import OpenWorldAccumulator, write_openworld_metrics

    gt = np.array([[0, 0, 1, 1, 2, 2, 255, 255]])
    pred = np.array([[0, 0 if known_right else 1, 1, 1, 0, 1, 0, 0]])
    acc = OpenWorldAccumulator(2, 1, class_names=["road", "car", "bicycle"])
    acc.update(gt, semantic_pred=pred, unknown_score=np.array([scores]))
    path = tmp_path / f"{name}.json"
    write_openworld_metrics(acc.summarize(), path, run={"approach": name, "dataset": "synthcity", "unknown": "17 18"})
    return path


def test_openworld_table_follows_the_panoptic_one(tmp_path):
    perfect = _openworld_metrics(tmp_path, "contmav", True, [0.1, 0.2, 0.1, 0.3, 0.9, 0.8, 0.5, 0.5])
    inverted = _openworld_metrics(tmp_path, "contmav_focal", False, [0.9, 0.8, 0.9, 0.7, 0.1, 0.2, 0.5, 0.5])
    files = _write(tmp_path, [("a", _metrics(0.5, 0.5, 0.5, "a"))])
    md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    write_report(files, md, table_csv, tmp_path / "b.png", "T", openworld_files=[perfect, inverted])
    text = md.read_text()
    assert text.index("| a |") < text.index("## Open-world segmentation (ContMAV)")
    assert "| approach | mIoU known | AUPR | FPR95 | AUROC | OW mIoU | class sim | dataset | unknown |" in text
    # unknown pixels score above every known one: AUROC 1; the reverse: 0 (void ignored)
    assert "| contmav | 100.000 | 100.000 | 0.000 | 100.000 |" in text
    assert "| contmav_focal | 58.333 |" in text  # IoU 1/2 and 2/3: unknown-class pixels are not known errors
    # FPR95 100, AUROC 0; the unknown classes by name (the evaluator's), not the train-id fact
    assert "| 100.000 | 0.000 | - | - | synthcity | bicycle |" in text
    rows = list(csv.DictReader((tmp_path / "t_openworld.csv").open()))
    assert [r["approach"] for r in rows] == ["contmav", "contmav_focal"]


def test_openworld_only_study_has_no_panoptic_table(tmp_path):
    ow = _openworld_metrics(tmp_path, "contmav", True, [0.1, 0.2, 0.1, 0.3, 0.9, 0.8, 0.5, 0.5])
    md = tmp_path / "t.md"
    write_report([], md, tmp_path / "t.csv", tmp_path / "b.png", "BDD", tradeoff_png=tmp_path / "to.png",
                 openworld_files=[ow])
    text = md.read_text()
    assert "No panoptic approach in this study." in text and "| contmav | 100.000 |" in text
    assert "Per-class PQ" not in text and (tmp_path / "to.png").exists()
    panoptic = tmp_path / "p.json"
    panoptic.write_text("{}")
    with pytest.raises(InputError, match="p.json.*not an open-world"):
        write_report([], md, tmp_path / "x.csv", tmp_path / "b.png", "BDD", openworld_files=[panoptic])
