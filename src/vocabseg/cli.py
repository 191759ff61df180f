"""The ``vocabseg`` command line: one subcommand per workflow step.

Every Snakemake rule is a one-line call of one of these subcommands, so all logic
lives in importable, tested Python. Bad input ends with one ``error: ...`` line
naming the file or key, exit status 1, and no traceback.

Each subcommand is declared where it runs: ``_NAME_arguments(p)`` adds its options
to its subparser, and ``@subcommand("NAME", _NAME_arguments, help=...)`` registers
the ``cmd_NAME`` function below it. ``vocabseg --help`` lists the subcommands in
the order they are defined here; ``tests/test_cli_surface.py`` pins every
subcommand's options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Sequence

from vocabseg.errors import InputError, run_reporting_input_errors
from vocabseg.fileio import read_json


@dataclass(frozen=True)
class Subcommand:
    """One ``vocabseg NAME``: its one-line help, the function that declares its
    arguments on the subparser, and the function that runs it on the parsed namespace."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


#: every subcommand, in the order ``vocabseg --help`` lists them (the order of definition)
_COMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, add_arguments: Callable[[argparse.ArgumentParser], None], *, help: str
) -> Callable[[Callable[[argparse.Namespace], None]], Callable[[argparse.Namespace], None]]:
    """Register the decorated ``cmd_*`` function as ``vocabseg NAME``, with the
    arguments that ``add_arguments`` (defined beside it) declares."""

    def register(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        if name in _COMMANDS:
            raise ValueError(f"subcommand {name!r} registered twice")
        _COMMANDS[name] = Subcommand(name, help, add_arguments, run)
        return run

    return register


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--train", type=int, default=24)
    p.add_argument("--val", type=int, default=8)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=("target", "source"), default="target")


@subcommand("synth", _synth_arguments, help="write the synthetic city in Cityscapes layout")
def cmd_synth(a: argparse.Namespace) -> None:
    from vocabseg.data.synth import generate_city

    paths = generate_city(
        a.root,
        split_sizes={"train": a.train, "val": a.val},
        height=a.height,
        width=a.width,
        seed=a.seed,
        style=a.style,
    )
    print(f"wrote {len(paths)} images ({a.style} style) to {a.root}")


def _download_cityscapes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=Path, required=True)
    p.add_argument("--zips", type=Path, default=None, help="folder holding (or receiving) the zip files")
    p.add_argument("--credentials", type=Path, default=None, help='JSON file {"username": ..., "password": ...}')
    p.add_argument("--package", nargs="+", default=["gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"])
    p.add_argument(
        "--staging",
        type=Path,
        default=None,
        help="work here and rename to --dest when every package is in; kept after a failure for the next run",
    )
    p.add_argument(
        "--network-attempts", type=int, default=3, help="tries per package when the network fails (30 s, 60 s, ... apart)"
    )


@subcommand("download-cityscapes", _download_cityscapes_arguments, help="download and extract Cityscapes packages")
def cmd_download_cityscapes(a: argparse.Namespace) -> None:
    from vocabseg.data.download import download_cityscapes

    download_cityscapes(
        a.dest,
        a.package,
        zips_dir=a.zips,
        credentials_file=a.credentials,
        staging=a.staging,
        network_attempts=a.network_attempts,
    )


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--threads", type=int, default=1)


@subcommand("prepare", _prepare_arguments, help="trainId label images and COCO-panoptic ground truth")
def cmd_prepare(a: argparse.Namespace) -> None:
    from vocabseg.data.prepare import prepare_dataset

    prepare_dataset(a.raw, a.out, tuple(a.splits), threads=a.threads)
    print(f"prepared {', '.join(a.splits)} of {a.raw} in {a.out}")


def _prepare_coco_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="the dataset folder (dataset.coco_panoptic.root)")
    p.add_argument("--images", default="images/{split}", help="photo folder of a split, relative to --root")
    p.add_argument("--json", default="annotations/panoptic_{split}.json", help="panoptic JSON of a split")
    p.add_argument("--png", default="annotations/panoptic_{split}", help="panoptic PNG folder of a split")
    p.add_argument("--raw-out", type=Path, required=True, help="receives leftImg8bit/<split>, links to the photos")
    p.add_argument("--out", type=Path, required=True, help="the prepared panoptic JSON and PNGs")
    p.add_argument("--splits", nargs="+", default=["train", "val"])


@subcommand(
    "prepare-coco",
    _prepare_coco_arguments,
    help="check a COCO-panoptic dataset (every problem listed) and prepare it",
)
def cmd_prepare_coco(a: argparse.Namespace) -> None:
    from vocabseg.data.coco_panoptic import CocoLayout, prepare_coco_panoptic

    counts = prepare_coco_panoptic(CocoLayout(a.root, a.images, a.json, a.png), a.raw_out, a.out, tuple(a.splits))
    print(f"prepared {a.root}: " + ", ".join(f"{split} {n} images" for split, n in counts.items()))


def _build_bdd_anomaly_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bdd100k", type=Path, required=True, help="BDD100K folder (images/10k + labels/sem_seg/masks)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variant", choices=("1+16", "1+17"), required=True, help="1+17: bicycle stays known")
    p.add_argument("--threads", type=int, default=1)


@subcommand(
    "build-bdd-anomaly",
    _build_bdd_anomaly_arguments,
    help="BDD-Anomaly (Hendrycks et al.) from a BDD100K download",
)
def cmd_build_bdd_anomaly(a: argparse.Namespace) -> None:
    from vocabseg.data.bdd_anomaly import build_bdd_anomaly

    summary = build_bdd_anomaly(a.bdd100k, a.out, a.variant, threads=a.threads)
    print(f"BDD-Anomaly {a.variant} in {a.out}: " + ", ".join(f"{k} {v}" for k, v in summary["images"].items()))


def _labels_argument(p: argparse.ArgumentParser) -> None:
    """``--labels``: the study's ``labelset.json`` (read by :func:`_labels`)."""
    p.add_argument("--labels", type=Path, default=None,
                   help="labelset.json of the study's dataset (vocabseg labelset; default: Cityscapes)")


def _labels(a: argparse.Namespace):
    from vocabseg.data.labelset import read_labelset

    return read_labelset(a.labels)


def _labelset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="labelset.json to write")
    p.add_argument("--categories", type=Path, default=None,
                   help="COCO-panoptic JSON whose 'categories' are the classes (default: Cityscapes)")
    p.add_argument("--synonyms", type=Path, default=None,
                   help="prompt names per class, lines '<category id>:<name>,<synonym>,...' (with --categories)")
    p.add_argument("--dataset", default=None, help="the dataset's name (with --categories)")


@subcommand("labelset", _labelset_arguments, help="the study's classes (ids, names, things, synonyms) as labelset.json")
def cmd_labelset(a: argparse.Namespace) -> None:
    from vocabseg.data.labelset import LabelSet, labelset_from_files

    if a.categories is None:
        if a.synonyms is not None or a.dataset is not None:
            raise InputError("--synonyms and --dataset need --categories (Cityscapes has its own)")
        labels = LabelSet.cityscapes()
    else:
        labels = labelset_from_files(a.dataset or a.categories.stem, a.categories, a.synonyms)
    labels.write(a.out)
    print(f"{labels.dataset}: {labels.num_classes} evaluated classes ({len(labels.thing_ids)} things) -> {a.out}")


def _vocab_split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", required=True)
    p.add_argument("--deleted", nargs="*", default=None, metavar="CLASS",
                   help="the configuration's deleted classes, ids or names (default: the seed's 000-008)")
    _labels_argument(p)
    p.add_argument("--train-json", type=Path, required=True)
    p.add_argument("--train-folder", type=Path, required=True)
    p.add_argument("--split-out", type=Path, required=True)
    p.add_argument("--gt-json-out", type=Path, required=True)
    p.add_argument("--gt-folder-out", type=Path, required=True)


@subcommand("vocab-split", _vocab_split_arguments, help="split.json and training ground truth of a configuration")
def cmd_vocab_split(a: argparse.Namespace) -> None:
    from vocabseg.data.vocab import write_vocab_split

    split = write_vocab_split(
        a.train_json, a.train_folder, a.conf, a.split_out, a.gt_json_out, a.gt_folder_out,
        labels=_labels(a), deleted=a.deleted,
    )
    print(f"configuration {a.conf}: in {split['in_names']}, out {split['out_names']}")


def _class_frequency_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-json", type=Path, required=True)
    p.add_argument("--val-json", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _labels_argument(p)


@subcommand("class-frequency", _class_frequency_arguments, help="class-frequency histograms, in/out coloured")
def cmd_class_frequency(a: argparse.Namespace) -> None:
    from vocabseg.data.stats import class_frequencies
    from vocabseg.report.figures import plot_class_frequency

    split, labels = read_json(a.split), _labels(a)
    stats = {"train": class_frequencies(a.train_json, labels), "val": class_frequencies(a.val_json, labels)}
    plot_class_frequency(stats, split, a.out, labels)


def _pretrain_clip_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", type=Path, nargs="+", required=True, help="cities to train on (Cityscapes layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--height", type=int, default=256, help="training image size: the study's image size")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)


@subcommand(
    "pretrain-clip",
    _pretrain_clip_arguments,
    help="region-text pretraining of the tiny CLIP (synthetic world)",
)
def cmd_pretrain_clip(a: argparse.Namespace) -> None:
    from vocabseg.pretrain.clip_regions import pretrain_clip_regions

    metrics = pretrain_clip_regions(
        a.raw, a.out, steps=a.steps, image_size=(a.height, a.width), seed=a.seed, threads=a.threads
    )
    print(f"pretrained CLIP: val region accuracy {metrics['val_region_accuracy']}")


def _fetch_clip_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--out", type=Path, required=True, help="the safetensors file the jobs read")


@subcommand("fetch-clip", _fetch_clip_arguments, help="download the study's pretrained CLIP weights (checksum verified)")
def cmd_fetch_clip(a: argparse.Namespace) -> None:
    from vocabseg.approaches.study_model import ModelSpec
    from vocabseg.fetch import fetch_clip

    fetch_clip(ModelSpec.from_json(a.model), a.out)


def _fetch_url_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="model.weights_url")
    p.add_argument("--sha256", default=None, help="model.weights_sha256")
    p.add_argument("--out", type=Path, required=True, help="model.weights")


@subcommand("fetch-url", _fetch_url_arguments, help="download the official FC-CLIP checkpoint (resumable, checksum verified)")
def cmd_fetch_url(a: argparse.Namespace) -> None:
    from vocabseg.fetch import fetch_url

    fetch_url(a.url, a.out, a.sha256)


def _text_embeddings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--split", type=Path, default=None, help="split.json: its in-classes (default: every class)")
    p.add_argument("--out", type=Path, required=True)
    _labels_argument(p)


@subcommand("text-embeddings", _text_embeddings_arguments, help="cache the text classifier of a vocabulary")
def cmd_text_embeddings(a: argparse.Namespace) -> None:
    from vocabseg.approaches.study_model import ModelSpec, build_backbone, class_names, text_classifier_for, vocab_ids
    from vocabseg.models.fcclip import save_text_classifier

    labels = _labels(a)
    ids = vocab_ids(read_json(a.split) if a.split else None, labels)
    spec = ModelSpec.from_json(a.model)
    backbone = build_backbone(spec)
    embeddings, num_synonyms = text_classifier_for(backbone, ids, labels)
    save_text_classifier(a.out, embeddings, num_synonyms, class_names(ids, labels), spec.config().clip_model)
    print(f"text classifier: {len(ids)} classes, {embeddings.shape[0]} synonyms -> {a.out}")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--text", type=Path, required=True, help="text classifier of the predicted classes")
    p.add_argument("--train-split", type=Path, default=None, help="split.json the model was trained on")
    p.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="SPLIT",
        help="predict only the in-classes of this split.json (--text is that split's classifier); default: every class",
    )
    p.add_argument("--gt-json", type=Path, required=True, help="prepared panoptic JSON listing the images")
    p.add_argument("--image-root", type=Path, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-folder", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--combined", metavar="FUSION", default=None, help="--weights is a combined checkpoint")
    p.add_argument("--predict-with", choices=("fused", "m1", "m2"), default="fused", help="with --combined")
    _labels_argument(p)


@subcommand("predict", _predict_arguments, help="FC-CLIP panoptic predictions on a split")
def cmd_predict(a: argparse.Namespace) -> None:
    import torch

    from vocabseg.approaches.combined import build_combined
    from vocabseg.approaches.study_model import ModelSpec, build_model, class_names, vocab_ids
    from vocabseg.approaches.predict import image_list, predict_panoptic
    from vocabseg.models.fcclip import load_text_classifier

    if a.threads:
        torch.set_num_threads(a.threads)
    spec, labels = ModelSpec.from_json(a.model), _labels(a)
    trained_on = vocab_ids(read_json(a.train_split), labels) if a.train_split else []
    class_ids = vocab_ids(read_json(a.classes) if a.classes else None, labels)
    text = load_text_classifier(a.text)
    if text.class_names != class_names(class_ids, labels):
        what = f"the in-classes of {a.classes}" if a.classes else "every class of the label set"
        raise InputError(f"{a.text}: text classifier of other classes than {what}")
    if a.combined:
        model = build_combined(spec, a.weights, fusion=a.combined, predict_with=a.predict_with)
    else:
        model = build_model(spec, a.weights)
    n = predict_panoptic(
        model,
        text,
        class_ids,
        spec.seen(trained_on, labels),
        image_list(a.gt_json, a.image_root),
        a.out_json,
        a.out_folder,
        batch_size=a.batch_size,
        labels=labels,
    )
    print(f"predicted {n} images")


def _oracle_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", type=Path, required=True)
    p.add_argument("--gt-folder", type=Path, required=True)
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-folder", type=Path, required=True)


@subcommand("oracle", _oracle_arguments, help="ground truth written as a prediction (chain check)")
def cmd_oracle(a: argparse.Namespace) -> None:
    from vocabseg.approaches.oracle import write_oracle_predictions

    n = write_oracle_predictions(a.gt_json, a.gt_folder, a.out_json, a.out_folder)
    print(f"oracle: {n} images")


def _pseudolabel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", type=Path, required=True, help="the configuration's training ground truth")
    p.add_argument("--gt-folder", type=Path, required=True)
    p.add_argument("--teacher-json", type=Path, required=True, help="the zero-shot prediction of the training images")
    p.add_argument("--teacher-folder", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True, help="split.json of the configuration")
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-folder", type=Path, required=True)
    p.add_argument("--threshold", type=float, default=0.5, help="minimum teacher score of a pseudo segment")
    p.add_argument("--min-pixels", type=int, default=16, help="minimum pixels a pseudo segment keeps")
    _labels_argument(p)


@subcommand(
    "pseudolabel",
    _pseudolabel_arguments,
    help="FTZS ground truth: in-class GT + the teacher's out-class segments",
)
def cmd_pseudolabel(a: argparse.Namespace) -> None:
    from vocabseg.approaches.pseudolabel import build_pseudo_labels

    stats = build_pseudo_labels(
        a.gt_json, a.gt_folder, a.teacher_json, a.teacher_folder, read_json(a.split),
        a.out_json, a.out_folder, threshold=a.threshold, min_pixels=a.min_pixels, labels=_labels(a),
    )
    print("pseudo-labels: " + ", ".join(f"{k} {v}" for k, v in stats.items()))


def _intersect_arguments(p: argparse.ArgumentParser) -> None:
    from vocabseg.approaches.intersection import OVERLAP_RULES

    p.add_argument("--in-json", type=Path, required=True, help="prediction supplying the in-classes")
    p.add_argument("--in-folder", type=Path, required=True)
    p.add_argument("--out-json", type=Path, required=True, help="prediction supplying the out-classes")
    p.add_argument("--out-folder", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True, help="split.json defining in and out")
    p.add_argument("--merged-json", type=Path, required=True)
    p.add_argument("--merged-folder", type=Path, required=True)
    p.add_argument("--overlap", choices=OVERLAP_RULES, default="in",
                   help="which segment keeps a pixel both kept segments cover: the in model's, the out "
                        "model's, or the one with the higher score")


@subcommand(
    "intersect",
    _intersect_arguments,
    help="in-class segments of one prediction + out-class segments of another",
)
def cmd_intersect(a: argparse.Namespace) -> None:
    from vocabseg.approaches.intersection import intersect_predictions

    n = intersect_predictions(
        a.in_json, a.in_folder, a.out_json, a.out_folder, read_json(a.split), a.merged_json, a.merged_folder,
        overlap=a.overlap,
    )
    print(f"intersection ({a.overlap} wins overlaps): {n} images")


def _wiseft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--zeroshot", type=Path, required=True)
    p.add_argument("--finetuned", type=Path, required=True)
    p.add_argument("--alpha", type=float, required=True, help="weight of the fine-tuned model, in [0, 1]")
    p.add_argument("--out", type=Path, required=True)


@subcommand("wiseft", _wiseft_arguments, help="WiSE-FT: interpolate zero-shot and fine-tuned weights")
def cmd_wiseft(a: argparse.Namespace) -> None:
    from vocabseg.approaches.study_model import ModelSpec
    from vocabseg.approaches.wiseft import wiseft_checkpoint

    report = wiseft_checkpoint(a.zeroshot, a.finetuned, a.alpha, a.out, spec=ModelSpec.from_json(a.model))
    print(f"WiSE-FT alpha {a.alpha}: {len(report.interpolated)} tensors interpolated, {len(report.copied)} copied")


def _evaluate_panoptic_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", type=Path, required=True)
    p.add_argument("--gt-folder", type=Path, required=True)
    p.add_argument("--pred-json", type=Path, required=True)
    p.add_argument("--pred-folder", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", type=Path, default=None, help="split.json giving the In and Out groups")
    p.add_argument("--threads", type=int, default=1, help="worker processes (the job's threads)")
    _fact_argument(p)
    p.add_argument("--images-out", type=Path, default=None, help=".npz: per-image, per-class counts (for the bootstrap)")


@subcommand(
    "evaluate-panoptic",
    _evaluate_panoptic_arguments,
    help="PQ/SQ/RQ as cityscapesscripts, plus In/Out and mIoU",
)
def cmd_evaluate_panoptic(a: argparse.Namespace) -> None:
    from vocabseg.evaluation.panoptic import evaluate_panoptic_images

    split = read_json(a.split) if a.split else None
    results, per_image = evaluate_panoptic_images(
        a.gt_json, a.gt_folder, a.pred_json, a.pred_folder, split=split, threads=a.threads
    )
    if a.images_out:
        per_image.save(a.images_out)
    _write_panoptic_metrics(results, a.fact, a.out)


def _classwise_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in-metrics", type=Path, required=True, help="metrics JSON scoring the in-classes")
    p.add_argument("--out-metrics", type=Path, required=True, help="metrics JSON scoring the out-classes")
    p.add_argument("--split", type=Path, required=True, help="split.json defining in and out")
    p.add_argument("--out", type=Path, required=True)
    _fact_argument(p)
    p.add_argument("--in-images", type=Path, default=None, help=".npz per-image counts of the in approach")
    p.add_argument("--out-images", type=Path, default=None, help=".npz per-image counts of the out approach")
    p.add_argument("--images-out", type=Path, default=None, help=".npz: their class-wise combination (for the bootstrap)")
    _labels_argument(p)


@subcommand(
    "classwise",
    _classwise_arguments,
    help="per-class results of two metrics files, in-classes from one (the seed's naive row)",
)
def cmd_classwise(a: argparse.Namespace) -> None:
    from vocabseg.approaches.classwise import classwise_from_files, classwise_images_from_files

    labels = _labels(a)
    if a.images_out:
        classwise_images_from_files(a.in_images, a.out_images, a.split, labels).save(a.images_out)
    _write_panoptic_metrics(classwise_from_files(a.in_metrics, a.out_metrics, a.split, labels), a.fact, a.out)


def _write_panoptic_metrics(results: dict, facts: list[str], out: Path) -> None:
    """Write a panoptic results dict with its run facts; print its groups' PQ."""
    from vocabseg.evaluation.panoptic import write_metrics

    if facts:
        results["run"] = dict(_parse_fact(f) for f in facts)
    write_metrics(results, out)
    groups = [g for g in ("All", "Things", "Stuff", "In", "Out") if g in results]
    for g in groups:
        r = results[g]
        pq = "-" if r["pq"] is None else f"{100 * r['pq']:.3f}"
        print(f"{g:7s} PQ {pq:>8s}  n {r['n']}")


def _semantic_split_arguments(p: argparse.ArgumentParser) -> None:
    """The images and train-id labels of a split, as the ContMAV commands read them."""
    p.add_argument("--image-root", type=Path, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--label-root", type=Path, required=True, help="gtFine/<split> folder with *_labelTrainIds.png")


def _known_unknown_arguments(p: argparse.ArgumentParser) -> None:
    """``--known`` or ``--unknown``, read by :func:`_known_ids`."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--known", type=int, nargs="+", default=None, metavar="TRAIN_ID",
                       help="known classes (train ids of --labels, in this order)")
    group.add_argument("--unknown", type=int, nargs="+", default=None, metavar="TRAIN_ID",
                       help="unknown classes; the known ones are the label set's other train ids")
    _labels_argument(p)


def _known_ids(a: argparse.Namespace, num_classes: int) -> list[int]:
    """The known train ids of ``--known`` or the complement of ``--unknown`` among the
    label set's ``num_classes``."""
    from vocabseg.openworld.train import known_from_unknown

    if (a.known is None) == (a.unknown is None):
        raise InputError("give exactly one of --known and --unknown (train ids)")
    return list(a.known) if a.known is not None else known_from_unknown(a.unknown, num_classes)


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{flag}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise InputError(f"{flag}: expected a JSON object, got {text!r}")
    return value


def _contmav_weights_arguments(p: argparse.ArgumentParser) -> None:
    _semantic_split_arguments(p)
    _known_unknown_arguments(p)
    p.add_argument("--out", type=Path, required=True)


@subcommand(
    "contmav-weights",
    _contmav_weights_arguments,
    help="ContMAV median-frequency class weights of a training split (JSON)",
)
def cmd_contmav_weights(a: argparse.Namespace) -> None:
    from vocabseg.openworld.train import write_class_weights

    num_classes = _labels(a).num_classes
    stats = write_class_weights(a.image_root, a.label_root, _known_ids(a, num_classes), a.out, num_classes)
    weights = ", ".join(f"{w:.3g}" for w in stats["weights"])
    print(f"median-frequency weights of {stats['n_images']} images -> {a.out}: [{weights}]")


def _contmav_train_arguments(p: argparse.ArgumentParser) -> None:
    _semantic_split_arguments(p)
    _known_unknown_arguments(p)
    p.add_argument("--weights", type=Path, default=None, help="class weights of contmav-weights (default: unweighted)")
    p.add_argument("--model", default='{"preset": "paper"}',
                   help='model JSON: {"preset": "paper"|"tiny", "trufor": true, ...ContMAVConfig keys}')
    p.add_argument("--variant", default="{}",
                   help='loss JSON: {"semantic": "ce"|"focal"|"focal_dice", "extra": "none"|"infonce"|"synco", ...}')
    p.add_argument("--recipe", default="{}",
                   help='training JSON over the paper recipe: {"epochs": 500, "batch_size": 8, "lr": 0.004, '
                        '"augment": {"crop_size": [512, 1024]}, ...}')
    p.add_argument("--out", type=Path, required=True, help="the exported model (written when training is complete)")
    p.add_argument("--state-dir", type=Path, required=True, help="checkpoints (not a Snakemake output)")
    p.add_argument("--metrics-log", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")


@subcommand(
    "contmav-train",
    _contmav_train_arguments,
    help="train a ContMAV variant (resumable; torchrun -m vocabseg.cli for DDP)",
)
def cmd_contmav_train(a: argparse.Namespace) -> None:
    import torch

    from vocabseg.openworld.train import train_contmav

    if a.threads:
        torch.set_num_threads(a.threads)
    num_classes = _labels(a).num_classes
    train_contmav(
        image_root=a.image_root,
        label_root=a.label_root,
        known_train_ids=_known_ids(a, num_classes),
        num_classes=num_classes,
        class_weights=a.weights,
        model=_json_arg(a.model, "--model"),
        variant=_json_arg(a.variant, "--variant"),
        recipe=_json_arg(a.recipe, "--recipe"),
        out=a.out,
        state_dir=a.state_dir,
        metrics_log=a.metrics_log,
    )


def _similar_pairs(pairs: list[str]) -> dict[int, int]:
    """``--similar UNKNOWN:KNOWN ...`` as {unknown train id: known train id}."""
    try:
        return dict((int(u), int(k)) for u, k in (pair.split(":") for pair in pairs))
    except ValueError:
        raise InputError(f"--similar: expected UNKNOWN:KNOWN train-id pairs such as 16:14, got {pairs}") from None


def _contmav_eval_arguments(p: argparse.ArgumentParser) -> None:
    from vocabseg.openworld.metrics import SCORE_BINS

    p.add_argument("--model", type=Path, required=True, help="the model file of contmav-train")
    _semantic_split_arguments(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--unknown", type=int, nargs="+", default=None, metavar="TRAIN_ID",
                   help="unknown classes (default: every train id the model does not know)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="resize images (and labels, nearest) before inference, e.g. 512 1024")
    p.add_argument("--delta", type=float, default=0.6, help="unknown threshold on s_unk")
    p.add_argument("--eta", type=float, default=0.5, help="clustering distance of new classes")
    p.add_argument("--no-cluster", action="store_true", help="skip the open-world clustering")
    p.add_argument("--cluster-stride", type=int, default=4,
                   help="cluster the unknown pixels of every S-th row/column online, then give each unknown "
                        "pixel its nearest discovered class (1: every pixel, the paper's rule; slow)")
    p.add_argument("--similar", nargs="+", default=None, metavar="UNKNOWN:KNOWN",
                   help="class-similarity pairs of train ids, e.g. 16:14 (default: the paper's train -> truck, "
                        "motorcycle -> car on Cityscapes, none on another label set)")
    p.add_argument("--max-classes", type=int, default=256,
                   help="stop discovering classes once this many exist (0: no limit)")
    p.add_argument("--score-bins", type=int, default=SCORE_BINS,
                   help="bins of the streamed unknown-score histograms the AUPR / AUROC / FPR95 come from "
                        "(16 bytes each; the metrics file states the bound on the binning error)")
    p.add_argument("--exact-scores", action="store_true",
                   help="keep every pixel's score for exact curves (memory grows with the split: 9+ bytes/pixel)")
    p.add_argument("--device", default=None,
                   help="torch device of the network (default: the job's GPU when there is one, else cpu)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--images-out", type=Path, default=None,
                   help=".npz: per-image counts for the bootstrap (scores at the resolution of the metrics, sparse)")
    _fact_argument(p)
    _labels_argument(p)


@subcommand(
    "contmav-eval",
    _contmav_eval_arguments,
    help="open-world metrics of an exported ContMAV model on a split (JSON)",
)
def cmd_contmav_eval(a: argparse.Namespace) -> None:
    import torch

    from vocabseg.openworld.evaluate import evaluate_contmav

    if a.threads:
        torch.set_num_threads(a.threads)
    results = evaluate_contmav(
        a.model,
        a.image_root,
        a.label_root,
        a.out,
        unknown_train_ids=a.unknown,
        size=a.size,
        delta=a.delta,
        eta=a.eta,
        cluster=not a.no_cluster,
        cluster_stride=a.cluster_stride,
        max_classes=a.max_classes or None,
        similar_targets=None if a.similar is None else _similar_pairs(a.similar),
        score_bins=None if a.exact_scores else a.score_bins,
        facts=dict(_parse_fact(f) for f in a.fact),
        device=a.device,
        images_out=a.images_out,
        labels=_labels(a),
    )

    def pct(value: object) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    anomaly, ow = results["anomaly"], results["open_world"] or {}
    print(
        f"mIoU known {pct(results['known']['miou'])}  AUROC {pct(anomaly['auroc'])}  AUPR {pct(anomaly['aupr'])}"
        f"  FPR95 {pct(anomaly['fpr95'])}  OW mIoU {pct(ow.get('miou'))}  -> {a.out}"
    )
    if anomaly["method"] == "binned":
        bound = {key: "-" if v is None else f"{100 * v:.1e}" for key, v in anomaly["error_bound"].items()}
        print(f"binned scores ({anomaly['bins']} bins): |binned - exact| <= AUROC {bound['auroc']}"
              f"  AUPR {bound['aupr']}  FPR95 {bound['fpr95']} (points)")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    from vocabseg.evaluation.bootstrap import BOOTSTRAP_SCORE_BINS

    p.add_argument("--metrics", type=Path, nargs="*", default=[],
                   help="evaluate-panoptic metrics: the panoptic table (none in an open-world-only study)")
    p.add_argument("--table-md", type=Path, required=True)
    p.add_argument("--table-csv", type=Path, required=True)
    p.add_argument("--bars", type=Path, required=True)
    p.add_argument("--tradeoff", type=Path, default=None, help="PNG: PQ In vs PQ Out, one point per approach")
    p.add_argument("--title", default="vocabseg results")
    p.add_argument("--openworld", type=Path, nargs="*", default=[], help="contmav-eval metrics: the open-world table")
    p.add_argument("--images", type=Path, nargs="*", default=[],
                   help="per-image statistics (.npz of evaluate-panoptic), one per --metrics file: adds intervals")
    p.add_argument("--references", nargs="*", default=[], help="approaches every row is compared with (paired)")
    p.add_argument("--openworld-images", type=Path, nargs="*", default=[],
                   help="per-image statistics of contmav-eval, one per --openworld file: adds intervals")
    p.add_argument("--openworld-references", nargs="*", default=[], help="variants every open-world row is compared with")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap resampling seed")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--score-bins", type=int, default=BOOTSTRAP_SCORE_BINS,
                   help="at most this many unknown-score bins (edges from each row's pooled scores) in the "
                        "resampled AUPR / AUROC / FPR95 of the open-world rows")
    _labels_argument(p)


@subcommand("report", _report_arguments, help="results table (Markdown, CSV) and PQ bar chart")
def cmd_report(a: argparse.Namespace) -> None:
    from vocabseg.report.table import write_report

    from vocabseg.evaluation.bootstrap import BootstrapSettings

    frame = write_report(
        a.metrics, a.table_md, a.table_csv, a.bars, a.title, tradeoff_png=a.tradeoff, openworld_files=a.openworld,
        image_stats=a.images, references=a.references,
        openworld_image_stats=a.openworld_images, openworld_references=a.openworld_references,
        bootstrap=BootstrapSettings(resamples=a.resamples, seed=a.seed, level=a.level, score_bins=a.score_bins),
        labels=_labels(a),
    )
    print(f"{len(frame)} rows written to {a.table_md}")


def _panels_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", type=Path, required=True, help="prepared validation panoptic JSON")
    p.add_argument("--gt-folder", type=Path, required=True)
    p.add_argument("--image-root", type=Path, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--pred", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "FOLDER"),
                   help="one approach's panoptic JSON and PNG folder, titled NAME; repeat, in display order")
    p.add_argument("--count", type=int, default=3, help="the first COUNT images of --gt-json")
    p.add_argument("--columns", type=int, default=3, help="cells per grid row")
    p.add_argument("--max-width", type=int, default=512, help="wider images are downscaled to this width")
    p.add_argument("--out-dir", type=Path, required=True, help="receives panel_<image_id>.png")
    _labels_argument(p)


@subcommand("panels", _panels_arguments, help="qualitative panels: photo, ground truth and each approach's overlay")
def cmd_panels(a: argparse.Namespace) -> None:
    from vocabseg.report.panels import Prediction, write_panels

    preds = [Prediction(name, Path(json_path), Path(folder)) for name, json_path, folder in a.pred]
    written = write_panels(
        a.gt_json, a.gt_folder, a.image_root, preds, a.out_dir,
        count=a.count, columns=a.columns, max_width=a.max_width, labels=_labels(a),
    )
    print(f"{len(written)} panels written to {a.out_dir}")


def _fact_argument(p: argparse.ArgumentParser) -> None:
    """``--fact KEY=VALUE`` (repeatable), parsed by :func:`_parse_fact`."""
    p.add_argument("--fact", action="append", default=[], metavar="KEY=VALUE", help="run fact stored under 'run'")


def _parse_fact(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"--fact {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The ``vocabseg`` parser: one subparser per registered :class:`Subcommand`."""
    parser = argparse.ArgumentParser(prog="vocabseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS.values():
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_input_errors(_COMMANDS[args.command].run, args)


if __name__ == "__main__":
    sys.exit(main())
