"""Training entry point, launched by the workflow as

    torchrun --standalone --nnodes=1 --nproc_per_node=N -m vocabseg.train --kind finetune ...

One process per GPU (gloo on CPU); without torchrun it runs as a single process.
Training state (checkpoints) goes to ``--state-dir`` and is resumed automatically;
``--out`` is written only when training is complete.

Kinds (the approach decides the task; every kind trains on ``--train-json``):

* ``finetune``: the set criterion on the ground truth of the ``--split``'s in-classes
  (all 19 without ``--split``); also the FTZS model, trained on the pseudo-labelled
  ground truth with all 19 classes, and the synthetic world's base model;
* ``distill``: the student learns the in-class ground truth with the 19-class text
  classifier while a frozen copy of ``--init`` (the zero-shot teacher) keeps its
  out-of-vocabulary queries, see :mod:`vocabseg.approaches.distill`;
* ``combined``: M1 (from ``--init``) and M2 (from ``--init-m2``, or a copy of M1)
  trained jointly on ``--train-json`` (the pseudo-labelled ground truth) with a loss
  on their ``--fusion``; with ``--m2-in-only`` M2 learns only the in-class segments
  (the lower bound's targets), see :mod:`vocabseg.approaches.combined`; writes both
  models into one checkpoint.

Reproducibility. The model is built from a generator seeded with the recipe's ``seed``
and the kind (:func:`~vocabseg.engine.trainer.seeded_construction`), so its initial
weights depend on nothing else. Every checkpoint is bound to :func:`training_inputs`:
the recipe, kind, fusion, M2's targets, model spec and content digests of the files and
folders in :data:`INPUT_FILES` / :data:`INPUT_FOLDERS`; a checkpoint of other inputs is
moved aside and training starts from scratch (see :func:`vocabseg.engine.trainer.train`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from vocabseg.errors import InputError, run_reporting_input_errors
from vocabseg.fileio import file_digest, folder_digest, read_json

KINDS = ("finetune", "distill", "combined")

#: Command-line files that determine a run: argument -> the name the log gives it when
#: it changes. Each is bound to the checkpoints by the sha256 of its bytes; a new input
#: file of the trainer (e.g. a second model to start from) adds one line.
INPUT_FILES = {
    "init": "starting weights",
    "init_m2": "starting weights of M2",
    "text": "text classifier",
    "split": "split",
    "train_json": "training ground truth JSON",
}
#: Command-line folders that determine a run: argument -> (name, whether file contents
#: are hashed). The training images are bound by their listing (relative paths and
#: sizes) only, which is cheap for thousands of photos.
INPUT_FOLDERS = {
    "train_folder": ("training ground truth PNGs", True),
    "image_root": ("training images", False),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vocabseg.train", description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=KINDS, required=True, help="the approach kind")
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--init", type=Path, default=None, help="weights to start from (the base model)")
    p.add_argument("--text", type=Path, required=True, help="cached text classifier of the training vocabulary")
    p.add_argument("--split", type=Path, default=None, help="split.json of the training vocabulary (default: every class)")
    p.add_argument("--labels", type=Path, default=None, help="labelset.json of the study's dataset (default: Cityscapes)")
    p.add_argument("--train-json", type=Path, required=True)
    p.add_argument("--train-folder", type=Path, required=True)
    p.add_argument("--image-root", type=Path, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--recipe", required=True, help="training recipe as JSON (trainer settings, augment, num_points)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--metrics-log", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--fusion", default=None, help="combined: the fusion of the two models' outputs")
    p.add_argument("--init-m2", type=Path, default=None, help="combined: M2's weights (default: a copy of M1)")
    p.add_argument("--m2-in-only", action="store_true", help="combined: M2 learns the in-class segments only")
    return p


def training_inputs(args: argparse.Namespace, recipe: dict) -> dict[str, str]:
    """Everything besides the trainer's settings that determines a run, by name.

    ``recipe``: the recipe keys the trainer's configuration does not hold
    (``augment``, ``num_points``). Values are strings: the kind, fusion and model spec
    themselves, sha256 digests of the :data:`INPUT_FILES` (and of a local
    ``clip_pretrained`` file) and of the :data:`INPUT_FOLDERS`; absent optional files are
    ``"-"``.
    """
    spec = json.loads(args.model)
    inputs = {
        "task kind": args.kind,
        "fusion": str(args.fusion),
        "M2 targets": "in-class only" if args.m2_in_only else "same as M1",
        "model spec": json.dumps(spec, sort_keys=True),
        **{f"recipe key {key}": json.dumps(value, sort_keys=True) for key, value in sorted(recipe.items())},
    }
    for arg, name in INPUT_FILES.items():
        path = getattr(args, arg)
        inputs[name] = "-" if path is None else file_digest(path)
    for arg, (name, contents) in INPUT_FOLDERS.items():
        inputs[name] = folder_digest(getattr(args, arg), contents=contents)
    clip = spec.get("clip_pretrained") if isinstance(spec, dict) else None
    if isinstance(clip, str) and Path(clip).is_file():
        inputs["CLIP weights"] = file_digest(clip)
    return inputs


def run(args: argparse.Namespace) -> None:
    import torch

    from vocabseg.approaches.study_model import ModelSpec, build_model, vocab_ids
    from vocabseg.approaches.combined import CombinedTask, InOnlyDataset, build_training_pair
    from vocabseg.approaches.distill import DistillTask, out_class_indices
    from vocabseg.approaches.fusion import check_fusion
    from vocabseg.approaches.finetune import FinetuneTask
    from vocabseg.data.labelset import read_labelset
    from vocabseg.data.panoptic_dataset import PanopticTrainDataset
    from vocabseg.data.transforms import AugmentConfig, TrainAugment
    from vocabseg.engine import TrainConfig, train
    from vocabseg.engine.trainer import seeded_construction
    from vocabseg.models.fcclip import load_text_classifier

    recipe = json.loads(args.recipe)
    extra = {key: recipe.pop(key) for key in ("augment", "num_points")}
    augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in extra["augment"].items()})
    num_points = int(extra["num_points"])
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig.from_dict(recipe)

    split = read_json(args.split) if args.split else None
    # finetune names the split's in-classes; distill and combined name all 19 (their ground
    # truth holds in-classes only, the out-classes come from the teacher)
    ids = vocab_ids(split if args.kind == "finetune" else None, read_labelset(args.labels))
    text = load_text_classifier(args.text)
    if len(text.num_synonyms) != len(ids):
        raise InputError(f"{args.text}: text classifier has {len(text.num_synonyms)} classes, vocabulary {len(ids)}")
    spec = ModelSpec.from_json(args.model)
    if args.kind == "distill" and (split is None or args.init is None):
        raise InputError("--kind distill needs --split (its out-classes are distilled) and --init (the teacher)")
    if args.kind == "combined":
        if args.fusion is None or (args.m2_in_only and split is None):
            raise InputError("--kind combined needs --fusion, and with --m2-in-only --split (M2 learns its in-classes)")
        check_fusion(args.fusion)
    dataset = PanopticTrainDataset(args.train_json, args.train_folder, args.image_root, ids, TrainAugment(augment))
    with seeded_construction(cfg.seed, "fcclip", args.kind):
        if args.kind == "finetune":
            task = FinetuneTask(build_model(spec, args.init), text, num_points=num_points)
        elif args.kind == "distill":
            model, teacher = build_model(spec, args.init), build_model(spec, args.init)
            task = DistillTask(model, teacher, text, out_class_indices(split, ids), num_points=num_points)
        else:
            if args.m2_in_only:
                dataset = InOnlyDataset(dataset, split["in_ids"])
            pair = build_training_pair(spec, args.init, args.init_m2, fusion=args.fusion)
            task = CombinedTask(pair, text, num_points=num_points, m2_in_only=args.m2_in_only)
    inputs = training_inputs(args, extra)
    train(task, dataset, cfg, out=args.out, state_dir=args.state_dir, metrics_log=args.metrics_log, inputs=inputs)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_input_errors(run, args)


if __name__ == "__main__":
    sys.exit(main())
