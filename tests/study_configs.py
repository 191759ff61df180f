"""Small study configs shared by the workflow, PBS and SLURM tests."""

TINY = {
    "study": "tiny",
    "title": "tiny synthetic study",
    "dataset": {
        "name": "tinycity",
        "kind": "synthetic",
        "synthetic": {"train": 4, "val": 3, "height": 64, "width": 128, "seed": 2},
    },
    "vocabularies": ["000", "008"],
    "eval_vocab": "008",
    "approaches": {"oracle": {"kind": "oracle"}},
}
