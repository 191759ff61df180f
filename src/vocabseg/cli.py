"""The ``vocabseg`` command line: one subcommand per workflow step.

Every Snakemake rule is a one-line call of one of these subcommands, so all logic
lives in importable, tested Python. Bad input ends with one ``error: ...`` line
naming the file or key, exit status 1, and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from vocabseg.errors import InputError, run_reporting_input_errors
from vocabseg.fileio import read_json

_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}


def _command(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    _COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


@_command
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


@_command
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


@_command
def cmd_prepare(a: argparse.Namespace) -> None:
    from vocabseg.data.prepare import prepare_dataset

    prepare_dataset(a.raw, a.out, tuple(a.splits), threads=a.threads)
    print(f"prepared {', '.join(a.splits)} of {a.raw} in {a.out}")


@_command
def cmd_build_bdd_anomaly(a: argparse.Namespace) -> None:
    from vocabseg.data.bdd_anomaly import build_bdd_anomaly

    summary = build_bdd_anomaly(a.bdd100k, a.out, a.variant, threads=a.threads)
    print(f"BDD-Anomaly {a.variant} in {a.out}: " + ", ".join(f"{k} {v}" for k, v in summary["images"].items()))


@_command
def cmd_vocab_split(a: argparse.Namespace) -> None:
    from vocabseg.data.vocab import write_vocab_split

    split = write_vocab_split(a.train_json, a.train_folder, a.conf, a.split_out, a.gt_json_out, a.gt_folder_out)
    print(f"configuration {a.conf}: in {split['in_names']}, out {split['out_names']}")


@_command
def cmd_class_frequency(a: argparse.Namespace) -> None:
    from vocabseg.data.stats import class_frequencies
    from vocabseg.report.figures import plot_class_frequency

    split = read_json(a.split)
    stats = {"train": class_frequencies(a.train_json), "val": class_frequencies(a.val_json)}
    plot_class_frequency(stats, split, a.out)


@_command
def cmd_pretrain_clip(a: argparse.Namespace) -> None:
    from vocabseg.pretrain.clip_regions import pretrain_clip_regions

    metrics = pretrain_clip_regions(
        a.raw, a.out, steps=a.steps, image_size=(a.height, a.width), seed=a.seed, threads=a.threads
    )
    print(f"pretrained CLIP: val region accuracy {metrics['val_region_accuracy']}")


@_command
def cmd_text_embeddings(a: argparse.Namespace) -> None:
    from vocabseg.approaches.study_model import ModelSpec, build_backbone, class_names, text_classifier_for, vocab_ids
    from vocabseg.models.fcclip import save_text_classifier

    ids = vocab_ids(read_json(a.split) if a.split else None)
    spec = ModelSpec.from_json(a.model)
    backbone = build_backbone(spec)
    embeddings, num_synonyms = text_classifier_for(backbone, ids)
    save_text_classifier(a.out, embeddings, num_synonyms, class_names(ids), spec.config().clip_model)
    print(f"text classifier: {len(ids)} classes, {embeddings.shape[0]} synonyms -> {a.out}")


@_command
def cmd_predict(a: argparse.Namespace) -> None:
    import torch

    from vocabseg.approaches.combined import build_combined
    from vocabseg.approaches.study_model import ModelSpec, build_model, vocab_ids
    from vocabseg.approaches.predict import image_list, predict_panoptic
    from vocabseg.models.fcclip import load_text_classifier

    if a.threads:
        torch.set_num_threads(a.threads)
    spec = ModelSpec.from_json(a.model)
    trained_on = vocab_ids(read_json(a.train_split)) if a.train_split else []
    if a.combined:
        model = build_combined(spec, a.weights, fusion=a.combined, predict_with=a.predict_with)
    else:
        model = build_model(spec, a.weights)
    n = predict_panoptic(
        model,
        load_text_classifier(a.text),
        vocab_ids(None),
        spec.seen(trained_on),
        image_list(a.gt_json, a.image_root),
        a.out_json,
        a.out_folder,
        batch_size=a.batch_size,
    )
    print(f"predicted {n} images")


@_command
def cmd_oracle(a: argparse.Namespace) -> None:
    from vocabseg.approaches.oracle import write_oracle_predictions

    n = write_oracle_predictions(a.gt_json, a.gt_folder, a.out_json, a.out_folder)
    print(f"oracle: {n} images")


@_command
def cmd_pseudolabel(a: argparse.Namespace) -> None:
    from vocabseg.approaches.pseudolabel import build_pseudo_labels

    stats = build_pseudo_labels(
        a.gt_json, a.gt_folder, a.teacher_json, a.teacher_folder, read_json(a.split),
        a.out_json, a.out_folder, threshold=a.threshold, min_pixels=a.min_pixels,
    )
    print("pseudo-labels: " + ", ".join(f"{k} {v}" for k, v in stats.items()))


@_command
def cmd_intersect(a: argparse.Namespace) -> None:
    from vocabseg.approaches.intersection import intersect_predictions

    n = intersect_predictions(
        a.in_json, a.in_folder, a.out_json, a.out_folder, read_json(a.split), a.merged_json, a.merged_folder,
        overlap=a.overlap,
    )
    print(f"intersection ({a.overlap} wins overlaps): {n} images")


@_command
def cmd_wiseft(a: argparse.Namespace) -> None:
    from vocabseg.approaches.study_model import ModelSpec
    from vocabseg.approaches.wiseft import wiseft_checkpoint

    report = wiseft_checkpoint(a.zeroshot, a.finetuned, a.alpha, a.out, spec=ModelSpec.from_json(a.model))
    print(f"WiSE-FT alpha {a.alpha}: {len(report.interpolated)} tensors interpolated, {len(report.copied)} copied")


@_command
def cmd_evaluate_panoptic(a: argparse.Namespace) -> None:
    from vocabseg.evaluation.panoptic import evaluate_panoptic_images

    split = read_json(a.split) if a.split else None
    results, per_image = evaluate_panoptic_images(
        a.gt_json, a.gt_folder, a.pred_json, a.pred_folder, split=split, threads=a.threads
    )
    if a.images_out:
        per_image.save(a.images_out)
    _write_panoptic_metrics(results, a.fact, a.out)


@_command
def cmd_classwise(a: argparse.Namespace) -> None:
    from vocabseg.approaches.classwise import classwise_from_files, classwise_images_from_files

    if a.images_out:
        classwise_images_from_files(a.in_images, a.out_images, a.split).save(a.images_out)
    _write_panoptic_metrics(classwise_from_files(a.in_metrics, a.out_metrics, a.split), a.fact, a.out)


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


@_command
def cmd_report(a: argparse.Namespace) -> None:
    from vocabseg.report.table import write_report

    from vocabseg.evaluation.bootstrap import BootstrapSettings

    frame = write_report(
        a.metrics, a.table_md, a.table_csv, a.bars, a.title, tradeoff_png=a.tradeoff, openworld_files=a.openworld,
        image_stats=a.images, references=a.references,
        openworld_image_stats=a.openworld_images, openworld_references=a.openworld_references,
        bootstrap=BootstrapSettings(resamples=a.resamples, seed=a.seed, level=a.level),
    )
    print(f"{len(frame)} rows written to {a.table_md}")


@_command
def cmd_panels(a: argparse.Namespace) -> None:
    from vocabseg.report.panels import Prediction, write_panels

    preds = [Prediction(name, Path(json_path), Path(folder)) for name, json_path, folder in a.pred]
    written = write_panels(
        a.gt_json, a.gt_folder, a.image_root, preds, a.out_dir,
        count=a.count, columns=a.columns, max_width=a.max_width,
    )
    print(f"{len(written)} panels written to {a.out_dir}")


def _known_ids(a: argparse.Namespace) -> list[int]:
    """The known train ids of ``--known`` or the complement of ``--unknown``."""
    from vocabseg.openworld.train import known_from_unknown

    if (a.known is None) == (a.unknown is None):
        raise InputError("give exactly one of --known and --unknown (train ids)")
    return list(a.known) if a.known is not None else known_from_unknown(a.unknown)


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{flag}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise InputError(f"{flag}: expected a JSON object, got {text!r}")
    return value


@_command
def cmd_contmav_weights(a: argparse.Namespace) -> None:
    from vocabseg.openworld.train import write_class_weights

    stats = write_class_weights(a.image_root, a.label_root, _known_ids(a), a.out)
    weights = ", ".join(f"{w:.3g}" for w in stats["weights"])
    print(f"median-frequency weights of {stats['n_images']} images -> {a.out}: [{weights}]")


@_command
def cmd_contmav_train(a: argparse.Namespace) -> None:
    import torch

    from vocabseg.openworld.train import train_contmav

    if a.threads:
        torch.set_num_threads(a.threads)
    train_contmav(
        image_root=a.image_root,
        label_root=a.label_root,
        known_train_ids=_known_ids(a),
        class_weights=a.weights,
        model=_json_arg(a.model, "--model"),
        variant=_json_arg(a.variant, "--variant"),
        recipe=_json_arg(a.recipe, "--recipe"),
        out=a.out,
        state_dir=a.state_dir,
        metrics_log=a.metrics_log,
    )


@_command
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
        score_bins=a.score_bins,
        facts=dict(_parse_fact(f) for f in a.fact),
        images_out=a.images_out,
        image_bins=a.image_bins,
    )

    def pct(value: object) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    anomaly, ow = results["anomaly"], results["open_world"] or {}
    print(
        f"mIoU known {pct(results['known']['miou'])}  AUROC {pct(anomaly['auroc'])}  AUPR {pct(anomaly['aupr'])}"
        f"  FPR95 {pct(anomaly['fpr95'])}  OW mIoU {pct(ow.get('miou'))}  -> {a.out}"
    )


def _parse_fact(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"--fact {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    from vocabseg.approaches.intersection import OVERLAP_RULES

    parser = argparse.ArgumentParser(prog="vocabseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    P = Path

    p = sub.add_parser("synth", help="write the synthetic city in Cityscapes layout")
    p.add_argument("--root", type=P, required=True)
    p.add_argument("--train", type=int, default=24)
    p.add_argument("--val", type=int, default=8)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=("target", "source"), default="target")

    p = sub.add_parser("download-cityscapes", help="download and extract Cityscapes packages")
    p.add_argument("--dest", type=P, required=True)
    p.add_argument("--zips", type=P, default=None, help="folder holding (or receiving) the zip files")
    p.add_argument("--credentials", type=P, default=None, help='JSON file {"username": ..., "password": ...}')
    p.add_argument("--package", nargs="+", default=["gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"])
    p.add_argument(
        "--staging",
        type=P,
        default=None,
        help="work here and rename to --dest when every package is in; kept after a failure for the next run",
    )
    p.add_argument(
        "--network-attempts", type=int, default=3, help="tries per package when the network fails (30 s, 60 s, ... apart)"
    )

    p = sub.add_parser("prepare", help="trainId label images and COCO-panoptic ground truth")
    p.add_argument("--raw", type=P, required=True)
    p.add_argument("--out", type=P, required=True)
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("build-bdd-anomaly", help="BDD-Anomaly (Hendrycks et al.) from a BDD100K download")
    p.add_argument("--bdd100k", type=P, required=True, help="BDD100K folder (images/10k + labels/sem_seg/masks)")
    p.add_argument("--out", type=P, required=True)
    p.add_argument("--variant", choices=("1+16", "1+17"), required=True, help="1+17: bicycle stays known")
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("vocab-split", help="split.json and training ground truth of a configuration")
    p.add_argument("--conf", required=True)
    p.add_argument("--train-json", type=P, required=True)
    p.add_argument("--train-folder", type=P, required=True)
    p.add_argument("--split-out", type=P, required=True)
    p.add_argument("--gt-json-out", type=P, required=True)
    p.add_argument("--gt-folder-out", type=P, required=True)

    p = sub.add_parser("class-frequency", help="class-frequency histograms, in/out coloured")
    p.add_argument("--train-json", type=P, required=True)
    p.add_argument("--val-json", type=P, required=True)
    p.add_argument("--split", type=P, required=True)
    p.add_argument("--out", type=P, required=True)

    p = sub.add_parser("pretrain-clip", help="region-text pretraining of the tiny CLIP (synthetic world)")
    p.add_argument("--raw", type=P, nargs="+", required=True, help="cities to train on (Cityscapes layout)")
    p.add_argument("--out", type=P, required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--height", type=int, default=256, help="training image size: the study's image size")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("text-embeddings", help="cache the text classifier of a vocabulary")
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--split", type=P, default=None, help="split.json: its in-classes (default: all 19)")
    p.add_argument("--out", type=P, required=True)

    p = sub.add_parser("predict", help="FC-CLIP panoptic predictions on a split")
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--weights", type=P, required=True)
    p.add_argument("--text", type=P, required=True, help="text classifier of all 19 classes")
    p.add_argument("--train-split", type=P, default=None, help="split.json the model was trained on")
    p.add_argument("--gt-json", type=P, required=True, help="prepared panoptic JSON listing the images")
    p.add_argument("--image-root", type=P, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--out-json", type=P, required=True)
    p.add_argument("--out-folder", type=P, required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--combined", metavar="FUSION", default=None, help="--weights is a combined checkpoint")
    p.add_argument("--predict-with", choices=("fused", "m1", "m2"), default="fused", help="with --combined")

    p = sub.add_parser("oracle", help="ground truth written as a prediction (chain check)")
    p.add_argument("--gt-json", type=P, required=True)
    p.add_argument("--gt-folder", type=P, required=True)
    p.add_argument("--out-json", type=P, required=True)
    p.add_argument("--out-folder", type=P, required=True)

    p = sub.add_parser("pseudolabel", help="FTZS ground truth: in-class GT + the teacher's out-class segments")
    p.add_argument("--gt-json", type=P, required=True, help="the configuration's training ground truth")
    p.add_argument("--gt-folder", type=P, required=True)
    p.add_argument("--teacher-json", type=P, required=True, help="the zero-shot prediction of the training images")
    p.add_argument("--teacher-folder", type=P, required=True)
    p.add_argument("--split", type=P, required=True, help="split.json of the configuration")
    p.add_argument("--out-json", type=P, required=True)
    p.add_argument("--out-folder", type=P, required=True)
    p.add_argument("--threshold", type=float, default=0.5, help="minimum teacher score of a pseudo segment")
    p.add_argument("--min-pixels", type=int, default=16, help="minimum pixels a pseudo segment keeps")

    p = sub.add_parser("intersect", help="in-class segments of one prediction + out-class segments of another")
    p.add_argument("--in-json", type=P, required=True, help="prediction supplying the in-classes")
    p.add_argument("--in-folder", type=P, required=True)
    p.add_argument("--out-json", type=P, required=True, help="prediction supplying the out-classes")
    p.add_argument("--out-folder", type=P, required=True)
    p.add_argument("--split", type=P, required=True, help="split.json defining in and out")
    p.add_argument("--merged-json", type=P, required=True)
    p.add_argument("--merged-folder", type=P, required=True)
    p.add_argument("--overlap", choices=OVERLAP_RULES, default="in",
                   help="which segment keeps a pixel both kept segments cover: the in model's, the out "
                        "model's, or the one with the higher score")

    p = sub.add_parser("wiseft", help="WiSE-FT: interpolate zero-shot and fine-tuned weights")
    p.add_argument("--model", required=True, help="the study's model block as JSON")
    p.add_argument("--zeroshot", type=P, required=True)
    p.add_argument("--finetuned", type=P, required=True)
    p.add_argument("--alpha", type=float, required=True, help="weight of the fine-tuned model, in [0, 1]")
    p.add_argument("--out", type=P, required=True)

    p = sub.add_parser("evaluate-panoptic", help="PQ/SQ/RQ as cityscapesscripts, plus In/Out and mIoU")
    p.add_argument("--gt-json", type=P, required=True)
    p.add_argument("--gt-folder", type=P, required=True)
    p.add_argument("--pred-json", type=P, required=True)
    p.add_argument("--pred-folder", type=P, required=True)
    p.add_argument("--out", type=P, required=True)
    p.add_argument("--split", type=P, default=None, help="split.json giving the In and Out groups")
    p.add_argument("--threads", type=int, default=1, help="worker processes (the job's threads)")
    p.add_argument("--fact", action="append", default=[], metavar="KEY=VALUE", help="run fact stored under 'run'")
    p.add_argument("--images-out", type=P, default=None, help=".npz: per-image, per-class counts (for the bootstrap)")

    p = sub.add_parser("classwise", help="per-class results of two metrics files, in-classes from one (the seed's naive row)")
    p.add_argument("--in-metrics", type=P, required=True, help="metrics JSON scoring the in-classes")
    p.add_argument("--out-metrics", type=P, required=True, help="metrics JSON scoring the out-classes")
    p.add_argument("--split", type=P, required=True, help="split.json defining in and out")
    p.add_argument("--out", type=P, required=True)
    p.add_argument("--fact", action="append", default=[], metavar="KEY=VALUE", help="run fact stored under 'run'")
    p.add_argument("--in-images", type=P, default=None, help=".npz per-image counts of the in approach")
    p.add_argument("--out-images", type=P, default=None, help=".npz per-image counts of the out approach")
    p.add_argument("--images-out", type=P, default=None, help=".npz: their class-wise combination (for the bootstrap)")

    def known_unknown(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--known", type=int, nargs="+", default=None, metavar="TRAIN_ID",
                           help="known classes (Cityscapes train ids, in this order)")
        group.add_argument("--unknown", type=int, nargs="+", default=None, metavar="TRAIN_ID",
                           help="unknown classes; the known ones are the other train ids 0..18")

    p = sub.add_parser("contmav-weights", help="ContMAV median-frequency class weights of a training split (JSON)")
    p.add_argument("--image-root", type=P, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--label-root", type=P, required=True, help="gtFine/<split> folder with *_labelTrainIds.png")
    known_unknown(p)
    p.add_argument("--out", type=P, required=True)

    p = sub.add_parser("contmav-train", help="train a ContMAV variant (resumable; torchrun -m vocabseg.cli for DDP)")
    p.add_argument("--image-root", type=P, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--label-root", type=P, required=True, help="gtFine/<split> folder with *_labelTrainIds.png")
    known_unknown(p)
    p.add_argument("--weights", type=P, default=None, help="class weights of contmav-weights (default: unweighted)")
    p.add_argument("--model", default='{"preset": "paper"}',
                   help='model JSON: {"preset": "paper"|"tiny", "trufor": true, ...ContMAVConfig keys}')
    p.add_argument("--variant", default="{}",
                   help='loss JSON: {"semantic": "ce"|"focal"|"focal_dice", "extra": "none"|"infonce"|"synco", ...}')
    p.add_argument("--recipe", default="{}",
                   help='training JSON over the paper recipe: {"epochs": 500, "batch_size": 8, "lr": 0.004, '
                        '"augment": {"crop_size": [512, 1024]}, ...}')
    p.add_argument("--out", type=P, required=True, help="the exported model (written when training is complete)")
    p.add_argument("--state-dir", type=P, required=True, help="checkpoints (not a Snakemake output)")
    p.add_argument("--metrics-log", type=P, required=True)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")

    p = sub.add_parser("contmav-eval", help="open-world metrics of an exported ContMAV model on a split (JSON)")
    p.add_argument("--model", type=P, required=True, help="the model file of contmav-train")
    p.add_argument("--image-root", type=P, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--label-root", type=P, required=True, help="gtFine/<split> folder with *_labelTrainIds.png")
    p.add_argument("--out", type=P, required=True)
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
    p.add_argument("--max-classes", type=int, default=256,
                   help="stop discovering classes once this many exist (0: no limit)")
    p.add_argument("--score-bins", type=int, default=None, help="histogram anomaly curves (large splits)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--images-out", type=P, default=None, help=".npz: per-image counts (for the bootstrap)")
    p.add_argument("--image-bins", type=int, default=1000, help="score histogram bins per image in --images-out")
    p.add_argument("--fact", action="append", default=[], metavar="KEY=VALUE", help="run fact stored under 'run'")

    p = sub.add_parser("report", help="results table (Markdown, CSV) and PQ bar chart")
    p.add_argument("--metrics", type=P, nargs="+", required=True)
    p.add_argument("--table-md", type=P, required=True)
    p.add_argument("--table-csv", type=P, required=True)
    p.add_argument("--bars", type=P, required=True)
    p.add_argument("--tradeoff", type=P, default=None, help="PNG: PQ In vs PQ Out, one point per approach")
    p.add_argument("--title", default="vocabseg results")
    p.add_argument("--openworld", type=P, nargs="*", default=[], help="contmav-eval metrics: the open-world table")
    p.add_argument("--images", type=P, nargs="*", default=[],
                   help="per-image statistics (.npz of evaluate-panoptic), one per --metrics file: adds intervals")
    p.add_argument("--references", nargs="*", default=[], help="approaches every row is compared with (paired)")
    p.add_argument("--openworld-images", type=P, nargs="*", default=[],
                   help="per-image statistics of contmav-eval, one per --openworld file: adds intervals")
    p.add_argument("--openworld-references", nargs="*", default=[], help="variants every open-world row is compared with")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap resampling seed")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")

    p = sub.add_parser("panels", help="qualitative panels: photo, ground truth and each approach's overlay")
    p.add_argument("--gt-json", type=P, required=True, help="prepared validation panoptic JSON")
    p.add_argument("--gt-folder", type=P, required=True)
    p.add_argument("--image-root", type=P, required=True, help="leftImg8bit/<split> folder")
    p.add_argument("--pred", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "FOLDER"),
                   help="one approach's panoptic JSON and PNG folder, titled NAME; repeat, in display order")
    p.add_argument("--count", type=int, default=3, help="the first COUNT images of --gt-json")
    p.add_argument("--columns", type=int, default=3, help="cells per grid row")
    p.add_argument("--max-width", type=int, default=512, help="wider images are downscaled to this width")
    p.add_argument("--out-dir", type=P, required=True, help="receives panel_<image_id>.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_input_errors(_COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
