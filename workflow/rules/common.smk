# Config validation, path helpers and the approach registry lookups.
import csv
import functools
import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


class StrictYAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    Snakemake's own loader keeps the last of two equal keys without a word, so a
    study file with `iters` twice would silently train the second value.
    """

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are allowed to be overridden
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue  # unhashable: the base class reports it
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first[key] + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def check_configfiles(paths):
    """Re-read the study files Snakemake loaded, strictly: one line naming the file,
    line and problem (a duplicate key) instead of a silently kept last value."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as stream:
                yaml.load(stream, Loader=StrictYAMLLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            raise WorkflowError(
                f"config file {path}, line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
            ) from None


def config_error(err):
    """One line naming the offending config key and what was expected."""
    cause = err.__context__  # validate() raises from inside `except ValidationError`
    if not isinstance(cause, jsonschema.ValidationError):
        return str(err)
    cause = jsonschema.exceptions.best_match([cause])
    key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
    if cause.validator == "additionalProperties":
        allowed = ", ".join(sorted(cause.schema.get("properties", {}))) or "none"
        return f"config key {key}: {cause.message}; allowed keys here: {allowed}"
    return f"config key {key}: {cause.message}"


check_configfiles(workflow.configfiles)
try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as err:
    raise WorkflowError(config_error(err)) from None

STUDY = config["study"]
SEED = config["seed"]  # the one seed of every job (docs/reproducibility.md)
DATASET = config["dataset"]["name"]
KIND = config["dataset"]["kind"]
EVAL_VOCAB = config["eval_vocab"]
APPROACHES = config["approaches"]
# The seed's configurations (their classes: vocabseg.data.vocab.VOCAB_CONFIGS), the
# default of a Cityscapes-labelled study without vocab_configs.
SEED_VOCABS = tuple(f"{k:03d}" for k in range(9))
VOCAB_CONFIGS = config["vocab_configs"]

RAW = f"resources/{DATASET}/raw"
PREPARED = f"resources/{DATASET}/prepared"
SOURCE = f"{DATASET}-source"  # the synthetic world's source-style city ("COCO")
WEB = f"{DATASET}-web"  # target-style images only the tiny CLIP sees ("the web")
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
BENCH = f"benchmarks/{STUDY}"
LABELS = f"{RESULTS}/labelset.json"  # the dataset's classes, passed to every command
COCO = config["dataset"]["coco_panoptic"]


def check_coco_dataset():
    """A coco_panoptic study names a folder holding both splits' files (their content
    is checked by the prepare_coco job, the first to run)."""
    if COCO["root"] is None:
        raise WorkflowError(
            "config key dataset.coco_panoptic.root: the dataset folder is needed for "
            "dataset.kind coco_panoptic (docs/datasets.md, 'Your own dataset')"
        )
    for split in ("train", "val"):
        for key in ("images", "json", "png"):
            path = Path(COCO["root"]) / COCO[key].format(split=split)
            if not (path.is_file() if key == "json" else path.is_dir()):
                raise WorkflowError(
                    f"config key dataset.coco_panoptic.{key}: {path} ({split} split) not found"
                )
    if COCO["synonyms"] and not Path(COCO["synonyms"]).is_file():
        raise WorkflowError(
            f"config key dataset.coco_panoptic.synonyms: {COCO['synonyms']} not found"
        )


if KIND == "coco_panoptic":
    check_coco_dataset()


def labelset_args():
    """`vocabseg labelset` options: Cityscapes' table, or the prepared categories."""
    if KIND != "coco_panoptic":
        return ""
    args = f"--categories {PREPARED}/cityscapes_panoptic_train.json --dataset {DATASET}"
    return args + (f" --synonyms {shlex.quote(COCO['synonyms'])}" if COCO["synonyms"] else "")


CONDA_ENV = "../../envs/vocabseg.yaml"


def slurm_logs_per_study():
    """SLURM's own job logs per study (called on start, after the executor is made).

    The SLURM executor plugin writes each job's log to
    <slurm-logdir>/rule_<rule>/<wildcards>/<jobid>.log, the same folder for every study
    (the study is no wildcard) and reads slurm-logdir only once, when the executor is
    made. Before the first submission this puts the study below it:
    <slurm-logdir>/<study>/rule_<rule>/<wildcards>/<jobid>.log (one file per job id, so
    per attempt). No-op for other executors, or when the folder already names the study.
    """
    executor = getattr(workflow.scheduler, "_executor", None)
    logdir = getattr(executor, "slurm_logdir", None)
    if isinstance(logdir, Path) and STUDY not in logdir.parts:
        executor.slurm_logdir = logdir / STUDY


MODEL = config["model"]
TEXT = f"{RESULTS}/text/{MODEL['preset']}"
# The base model: the official checkpoint, or (synthetic world) pretrained here.
PRETRAIN_BASE = MODEL["weights"] is None
BASE_WEIGHTS = f"{RESULTS}/models/base/model.pt" if PRETRAIN_BASE else MODEL["weights"]
CLIP_WEIGHTS = f"{RESULTS}/pretrain/clip.pt" if PRETRAIN_BASE else None


# ---- downloads on the submit host (rules in fetch.smk; docs/clusters.md, "Offline
# compute nodes"): jobs read local files only, so compute nodes need no network ----
CLIP_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def clip_is_tag(pretrained):
    """model.clip_pretrained names an open_clip tag (null: the preset's), not a file."""
    if pretrained is None:
        return MODEL["preset"] != "tiny"  # the tiny CLIP has no tag: pretrained here
    is_file = "/" in pretrained or pretrained.endswith(CLIP_FILE_SUFFIXES)
    return not (is_file or Path(pretrained).exists())


if clip_is_tag(MODEL["clip_pretrained"]):
    # resources/weights/clip/<preset>.safetensors, <preset>-<tag>.safetensors for a named tag
    CLIP_FETCHED = "resources/weights/clip/{}.safetensors".format(
        "-".join(filter(None, (MODEL["preset"], MODEL["clip_pretrained"])))
    )
else:
    CLIP_FETCHED = None
# The CLIP weights every job's model JSON names (None: the preset's random init).
CLIP_FILE = CLIP_FETCHED or MODEL["clip_pretrained"] or CLIP_WEIGHTS
CLIP_INPUT = [CLIP_FILE] if CLIP_FILE else []
WEIGHTS_URL = MODEL.get("weights_url")
if WEIGHTS_URL and PRETRAIN_BASE:
    raise WorkflowError(
        "config key model.weights_url: needs model.weights, the file the checkpoint is saved to"
    )


def vocab_names():
    """The study's vocabulary configurations: "000" (nothing deleted, the vocabulary of
    every text classifier of all classes) and vocab_configs' keys, or the seed's."""
    if VOCAB_CONFIGS is None:
        if KIND == "coco_panoptic":
            raise WorkflowError(
                "config key vocab_configs: required for dataset.kind coco_panoptic (the seed's "
                "000-008 name Cityscapes classes), e.g. {mine: [<class name or id>, ...]}"
            )
        return list(SEED_VOCABS)
    if VOCAB_CONFIGS.get("000", []) != []:
        raise WorkflowError(
            "config key vocab_configs.000: the full vocabulary deletes nothing; give []"
        )
    return ["000", *(name for name in VOCAB_CONFIGS if name != "000")]


def check_vocab(key, name):
    """A configuration named at config key `key` is one of the study's."""
    if name not in VOCAB_NAMES:
        raise WorkflowError(
            f"config key {key}: {name!r} is not one of the study's vocabulary configurations "
            f"({', '.join(VOCAB_NAMES)}; config key vocab_configs)"
        )


VOCAB_NAMES = vocab_names()
VOCABULARIES = VOCAB_NAMES if config["vocabularies"] is None else config["vocabularies"]
for _i, _name in enumerate(VOCABULARIES):
    check_vocab(f"vocabularies.{_i}", _name)
check_vocab("eval_vocab", EVAL_VOCAB)
for _approach, _spec in APPROACHES.items():
    if "vocab" in _spec:
        check_vocab(f"approaches.{_approach}.vocab", _spec["vocab"])


def deleted_args(conf):
    """`vocabseg vocab-split --deleted` of a configuration ("" for the seed's table)."""
    if VOCAB_CONFIGS is None:
        return ""
    return " ".join(["--deleted", *(shlex.quote(str(c)) for c in VOCAB_CONFIGS.get(conf, []))])


wildcard_constraints:
    conf="|".join(re.escape(name) for name in sorted(set(VOCABULARIES) | {"000", EVAL_VOCAB})),
    city=f"{DATASET}|{SOURCE}|{WEB}",


def user_weight_files():
    """(config key, path) of every weights file the user supplies."""
    ow = config.get("openworld") or {}
    files = [
        ("model.weights", MODEL["weights"]),
        ("model.clip_pretrained", MODEL["clip_pretrained"]),  # or an open_clip tag
        ("openworld.model.pretrained", ow.get("model", {}).get("pretrained")),
    ]
    for name, spec in ow.get("variants", {}).items():
        pretrained = ((spec or {}).get("model") or {}).get("pretrained")
        files.append((f"openworld.variants.{name}.model.pretrained", pretrained))
    return [(key, path) for key, path in files if path]


def check_user_weights():
    """A user's weights file is never one the workflow writes: a rule making it would
    rerun over it (and Snakemake deletes a rerun or failed job's outputs)."""
    for key, path in user_weight_files():
        here = os.path.relpath(os.path.abspath(path))  # as the rules name their outputs
        makers = sorted(
            maker.name
            for maker in workflow.rules
            if maker.name != "official_weights" and maker.is_producer(here)
        )
        if makers or here.split(os.sep)[0] == "results":
            made_by = f"rule {', '.join(makers)}" if makers else "every output lives in results/"
            raise WorkflowError(
                f"config key {key}: {path} is a file the workflow itself writes ({made_by}) "
                "and may replace or delete; copy it elsewhere (e.g. resources/weights/) "
                "and name that copy"
            )


def approaches_of_kind(*kinds):
    """Rows (approaches and their replicates) of the given kinds, as a wildcard regex."""
    names = [row for row in ROWS if spec_of(row)["kind"] in kinds]
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def final_outputs():
    """Everything `snakemake` builds by default: splits, plots, metrics, the tables."""
    outputs = [f"{RESULTS}/table.md"]
    if APPROACHES:  # an open-world-only study has no panoptic predictions to show
        outputs.append(f"{RESULTS}/figures/panels")
    for conf in VOCABULARIES:
        outputs.append(f"{RESULTS}/vocab/{conf}/split.json")
        outputs.append(f"{RESULTS}/vocab/{conf}/class_frequency.png")
    return outputs


def run_facts(approach):
    """`--fact KEY=VALUE` arguments recorded in a row's metrics JSON (the approach fact
    is the row's name: `lowerbound.r1` for a replicate, which the report groups by)."""
    spec = spec_of(approach)
    facts = {
        "approach": approach,
        "kind": spec["kind"],
        "study": STUDY,
        "dataset": DATASET,
        "backbone": MODEL["preset"],
        "label": spec.get("label", "-"),
        "seed_row": spec.get("seed_row", "-"),
        "vocab": spec.get("vocab", "-"),
        "iterations": spec.get("iters", 0),
        "eval_vocab": EVAL_VOCAB,
    }
    return fact_args(facts)


def fact_args(facts):
    """`--fact KEY=VALUE` command-line arguments of a dict of run facts."""
    return " ".join(f"--fact {shlex.quote(f'{key}={value}')}" for key, value in facts.items())


def model_json():
    """The model block for the command line, naming the local CLIP weights file (the
    synthetic world's pretrained one, or the fetched open_clip weights) and no URL."""
    spec = {
        key: value for key, value in MODEL.items() if key not in ("weights_url", "weights_sha256")
    }
    spec["clip_pretrained"] = CLIP_FILE
    return json.dumps(spec)


def recipe_json(iters, replicate=0, **changes):
    """The training recipe of the study for `python -m vocabseg.train --recipe`.

    ``replicate`` selects the seed (:func:`replicate_seed`); ``changes`` replace
    training settings (e.g. the base model's learning rate).
    """
    t = config["training"]
    recipe = {
        key: t[key]
        for key in (
            "batch_size",
            "lr",
            "weight_decay",
            "clip_grad",
            "schedule",
            "warmup_iters",
            "checkpoint_every",
            "log_every",
            "num_points",
        )
    }
    recipe.update(changes, iters=iters, seed=replicate_seed(t.get("seed", SEED), replicate))
    recipe["augment"] = {
        "crop_size": t["crop"],
        "min_scale": t["min_scale"],
        "max_scale": t["max_scale"],
        "flip": t["flip"],
        "color_jitter": t["color_jitter"],
    }
    return json.dumps(recipe)


TRAINED = ("finetune", "pseudolabel", "distill")  # one model, trained by rule `train`
MODEL_KINDS = ("zeroshot", *TRAINED, "combined", "wiseft")  # kinds with weights
PREDICTED_KINDS = ("oracle", *MODEL_KINDS, "intersection")  # kinds with a prediction
# The seed's own results (one home: the package's CSV, also read by the report).
SEED_ROWS_CSV = Path(workflow.basedir) / "src/vocabseg/report/seed_000.csv"
with open(SEED_ROWS_CSV, encoding="utf-8") as seed_file:
    SEED_ROW_IDS = [row["id"] for row in csv.DictReader(seed_file)]


def check_references():
    """Approaches named by intersection / classwise / wiseft / combined entries exist
    (wiseft's and a combined start's are trained); seed_row ids are rows of the seed."""
    for name, spec in APPROACHES.items():
        row = spec.get("seed_row")
        if row is not None and row not in SEED_ROW_IDS:
            raise WorkflowError(
                f"config key approaches.{name}.seed_row: {row!r} is not a row of the seed's table "
                f"(one of {', '.join(SEED_ROW_IDS)})"
            )
        if spec["kind"] == "combined":
            check_combined_start(name, spec)
        for key in ("in", "out", "finetuned", "m1", "m2"):
            ref = spec.get(key)
            if ref is None:
                continue
            if ref not in APPROACHES or ref == name:
                raise WorkflowError(
                    f"config key approaches.{name}.{key}: no other approach named {ref!r}"
                )
            if key in ("finetuned", "m1", "m2") and APPROACHES[ref]["kind"] not in TRAINED:
                raise WorkflowError(
                    f"config key approaches.{name}.{key}: {ref!r} is of kind {APPROACHES[ref]['kind']}; "
                    f"expected one of the kinds {', '.join(TRAINED)}"
                )


def combined_start(spec):
    """Where a combined run's two models start (schema default: trained)."""
    return spec.get("start", "trained")


def check_combined_start(name, spec):
    """start trained needs m1 and m2; base_in_only starts from the base weights, so
    naming them would be ignored: an error."""
    named = [key for key in ("m1", "m2") if key in spec]
    if combined_start(spec) == "trained" and len(named) < 2:
        missing = "m2" if "m1" in named else "m1"
        raise WorkflowError(
            f"config key approaches.{name}.{missing}: start 'trained' needs m1 and m2, the trained "
            "approaches the two models start from (e.g. m1: ftzs, m2: lowerbound)"
        )
    if combined_start(spec) == "base_in_only" and named:
        raise WorkflowError(
            f"config key approaches.{name}.{named[0]}: start 'base_in_only' starts both models from "
            "the base weights; remove m1 / m2 or use start 'trained'"
        )


check_references()


# ---- replicates (docs/uncertainty.md, "Replicates"): every trained model once per seed.
# Replicate 0 is the study's own run under its own paths; replicate k >= 1 of approach
# `a` is the row `a.r<k>` (results/<study>/models/a.r1/model.pt, metrics/a.r1.json, ...):
# approach names cannot contain a dot, so the suffix is unambiguous, one wildcard
# carries it through every rule, and raising `replicates` keeps every existing output. ----
REPLICATES = config["replicates"]
REPLICA_NAME = re.compile(r"^(?P<base>[^.]+)\.r(?P<replicate>[1-9][0-9]*)$")


def replica(base, replicate):
    """Row name of replicate `replicate` of approach (or ContMAV variant) `base`."""
    return base if replicate == 0 else f"{base}.r{replicate}"


def base_and_replicate(row):
    """(approach, replicate index) of a row name: `ftzs.r2` -> (`ftzs`, 2), `ftzs` -> (`ftzs`, 0)."""
    match = REPLICA_NAME.match(row)
    return (match["base"], int(match["replicate"])) if match else (row, 0)


def replicate_seed(seed, replicate):
    """Training seed of a replicate: the study's own seed for replicate 0 (so a study
    with `replicates: 1` is the study it was before), for k >= 1 a 31-bit number drawn
    from sha256 of the seed and k, so that the replicates of two studies whose seeds
    differ by one never share a seed."""
    if replicate == 0:
        return seed
    digest = hashlib.sha256(f"vocabseg replicate {seed} {replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def spec_of(row):
    """The config entry of a row (an approach or one of its replicates)."""
    return APPROACHES[base_and_replicate(row)[0]]


def is_replicated(name, path=()):
    """An approach trains (or is built from a trained approach): one row per replicate.
    Zero-shot, the oracle and rows built only from them have one row."""
    if name in path:
        raise WorkflowError(
            f"config key approaches.{name}: built from itself ({' -> '.join((*path, name))})"
        )
    spec = APPROACHES[name]
    if spec["kind"] in (*TRAINED, "combined"):
        return True
    return any(
        is_replicated(spec[key], (*path, name)) for key in ("in", "out", "finetuned") if key in spec
    )


def replicas(name):
    """The rows of approach `name`: its replicates, or itself alone."""
    return [replica(name, r) for r in range(REPLICATES if is_replicated(name) else 1)]


def built_from(row, key):
    """The row that `row` is built from, of the approach named by its config key `key`
    (in, out, finetuned, m1, m2): the same replicate when that approach is replicated,
    else its one row (zero-shot is shared by every replicate)."""
    ref = spec_of(row)[key]
    return replica(ref, base_and_replicate(row)[1]) if is_replicated(ref) else ref


# every row of the table, in the config's order, the replicates of an approach together
ROWS = [row for name in APPROACHES for row in replicas(name)]


UNCERTAINTY = config["uncertainty"]


def uncertainty_refs(key, rows, default):
    """Reference rows of `uncertainty.<key>`: the configured names (each must be one of
    `rows`), or those of `default` that are rows of the study."""
    refs = UNCERTAINTY[key]
    if refs is None:
        return [name for name in default if name in rows]
    for ref in refs:
        if ref not in rows:
            raise WorkflowError(f"config key uncertainty.{key}: no row named {ref!r}")
    return refs


def uncertainty_args():
    """`vocabseg report` arguments of the `uncertainty` block (resamples, seed, level, score
    bins, reference rows)."""
    args = f"--resamples {UNCERTAINTY['resamples']} --seed {UNCERTAINTY['seed']} --level {UNCERTAINTY['level']}"
    args += f" --score-bins {UNCERTAINTY['score_bins']}"
    for flag, refs in (
        (
            "--references",
            uncertainty_refs("references", APPROACHES, ("zeroshot", "lowerbound", "upperbound")),
        ),
        (
            "--openworld-references",
            uncertainty_refs("openworld_references", OW_VARIANTS, ("contmav",)),
        ),
    ):
        if refs:
            args += f" {flag} " + " ".join(shlex.quote(r) for r in refs)
    return args


def combined_run(row):
    """Name of a combined training run: what identifies it (fusion, vocabulary,
    iterations, where the two models start; `.r<k>` for replicate k). Approaches that
    differ only in predict_with share it (and its single training job)."""
    spec = spec_of(row)
    start = f"{spec['m1']}+{spec['m2']}" if combined_start(spec) == "trained" else "base"
    run = f"{spec['fusion']}_{spec['vocab']}_{spec['iters']}_from_{start}"
    return replica(run, base_and_replicate(row)[1])


# run name -> the first row of that run (its spec and replicate define the training)
COMBINED_RUNS = {}
for row in ROWS:
    if spec_of(row)["kind"] == "combined":
        COMBINED_RUNS.setdefault(combined_run(row), row)


def combined_run_regex():
    """The combined run names as a wildcard regex."""
    return "|".join(re.escape(run) for run in COMBINED_RUNS) or "(?!)"


def combined_inputs(run):
    """Start weights, ground truth and classifiers of a combined training run."""
    row = COMBINED_RUNS[run]
    spec = spec_of(row)
    conf, trained = spec["vocab"], combined_start(spec) == "trained"
    return {
        "init": weights_of(built_from(row, "m1")) if trained else BASE_WEIGHTS,
        "init_m2": weights_of(built_from(row, "m2")) if trained else [],
        "text": f"{TEXT}/000.pt",
        "split": f"{RESULTS}/vocab/{conf}/split.json",
        "gt_json": f"{RESULTS}/pseudo/{conf}/train_panoptic.json",
        "gt_folder": f"{RESULTS}/pseudo/{conf}/train_panoptic",
    }


def weights_of(approach):
    """Final weights of a model row (the base model for zeroshot)."""
    kind = spec_of(approach)["kind"]
    if kind == "zeroshot":
        return BASE_WEIGHTS
    if kind == "combined":
        return f"{RESULTS}/models/combined/{combined_run(approach)}/model.pt"
    return f"{RESULTS}/models/{approach}/model.pt"


def train_split_of(approach):
    """split.json of the vocabulary an approach's ground truth came from ([] for the base model).

    Its in-classes join the base model's classes as "seen" in the geometric ensemble.
    """
    spec = spec_of(approach)
    if spec["kind"] == "wiseft":
        return train_split_of(spec["finetuned"])
    return [f"{RESULTS}/vocab/{spec['vocab']}/split.json"] if "vocab" in spec else []


def predicts_own_vocab(approach):
    """Whether an approach predicts only the in-classes of its vocabulary
    (`predict_classes: vocab`, the seed's lower bound) instead of every class."""
    return spec_of(approach).get("predict_classes", "all") == "vocab"


def predict_text_of(approach):
    """Text classifier an approach predicts with: its vocabulary's, or every class's."""
    if predicts_own_vocab(approach):
        return f"{TEXT}/{spec_of(approach)['vocab']}.pt"
    return f"{TEXT}/000.pt"


def train_inputs(approach):
    """Ground truth and text classifier of a trained approach (rule `train`)."""
    spec = spec_of(approach)
    conf, kind = spec["vocab"], spec["kind"]
    gt = f"{RESULTS}/pseudo/{conf}" if kind == "pseudolabel" else f"{RESULTS}/vocab/{conf}"
    return {
        "gt_json": f"{gt}/train_panoptic.json",
        "gt_folder": f"{gt}/train_panoptic",
        # finetune names its in-classes; FTZS and KD name all 19 (out-classes are learnt too)
        "text": f"{TEXT}/{conf if kind == 'finetune' else '000'}.pt",
        "split": f"{RESULTS}/vocab/{conf}/split.json",
    }


# Start of a training command: torchrun's launcher with one process per GPU (params.nproc),
# keeping the workers in the job's session (PBS/SLURM accounting, limits, kills), passing a
# preempted trainer's exit 143 on, and writing each run's output to its own numbered file
# next to {log} (<log>.run<N>.log; {log} links to the newest): see vocabseg.engine.launch.
TORCHRUN = (
    "python -m vocabseg.engine.launch --log {log}"
    " --standalone --nnodes=1 --nproc_per_node={params.nproc}"
)


def nproc(wildcards, resources):
    """Processes for torchrun: one per GPU, one on a CPU-only job."""
    return max(1, int(resources.gpu))


def minutes_per_attempt(minutes):
    """Time limit (resource `runtime`) of `minutes` times the attempt: a job killed at its
    limit is resubmitted (--retries) with more time and resumes from its checkpoint."""

    def runtime(wildcards, attempt):
        return minutes * attempt

    return runtime


def synth_size(city):
    """Size of a synthetic city: the study's (target style) or the pretraining source."""
    if city == SOURCE:
        return config["pretrain"]["source"]
    if city == WEB:
        size = config["dataset"]["synthetic"]
        return {**config["pretrain"]["web"], "height": size["height"], "width": size["width"]}
    return config["dataset"]["synthetic"]


def combined_args(approach):
    """`vocabseg predict` options of a combined approach ("" for single models)."""
    spec = spec_of(approach)
    if spec["kind"] != "combined":
        return ""
    return f"--combined {spec['fusion']} --predict-with {spec.get('predict_with', 'fused')}"


# ---- open-world segmentation (seed 003; rules in openworld.smk) ----
OW = config.get("openworld") or {}
OW_RESULTS = f"{RESULTS}/openworld"
OW_VARIANTS = OW.get("variants", {})
OW_ON_BDD = OW.get("dataset") == "bdd-anomaly"


@functools.cache
def openworld_labelset():
    """The label set whose train ids ContMAV learns: Cityscapes' (the synthetic city,
    Cityscapes, BDD-Anomaly), or the categories of a coco_panoptic study's val JSON
    (read here, so that openworld.unknown is checked before any job starts)."""
    from vocabseg.data.labelset import LabelSet, labelset_from_files
    from vocabseg.errors import InputError

    if KIND != "coco_panoptic" or OW_ON_BDD:
        return LabelSet.cityscapes()
    try:
        return labelset_from_files(DATASET, Path(COCO["root"]) / COCO["json"].format(split="val"))
    except InputError as err:
        raise WorkflowError(f"config key dataset.coco_panoptic.json: {err}") from None


def openworld_train_ids(refs, key):
    """Config entries (train ids or class names) as train ids of the label set; one
    line naming `key.<i>` for an entry that is neither."""
    from vocabseg.errors import InputError

    labels = openworld_labelset()
    try:
        return [labels.train_id(ref, f"{key}.{i}") for i, ref in enumerate(refs)]
    except InputError as err:
        raise WorkflowError(str(err)) from None


def openworld_unknown():
    """openworld.unknown as train ids of the label set (each entry a train id or a
    class name)."""
    labels = openworld_labelset()
    unknown = openworld_train_ids(OW["unknown"], "config key openworld.unknown")
    if len(set(unknown)) != len(unknown):
        raise WorkflowError(
            f"config key openworld.unknown: a class is named twice ({OW['unknown']})"
        )
    if len(unknown) == labels.num_classes:
        raise WorkflowError(
            "config key openworld.unknown: every class is unknown; keep at least one known"
        )
    return unknown, labels.num_classes


OW_UNKNOWN_IDS, OW_NUM_CLASSES = openworld_unknown() if OW else ([], 0)


def openworld_similar_args():
    """`contmav-eval --similar` of openworld.eval.similar, each pair as train ids of the
    label set ("" when unset: the evaluation's default)."""
    pairs = (OW.get("eval") or {}).get("similar")
    if pairs is None:
        return ""
    ids = [
        openworld_train_ids(pair, f"config key openworld.eval.similar.{i}")
        for i, pair in enumerate(pairs)
    ]
    for i, (unknown, known) in enumerate(ids):
        if unknown not in OW_UNKNOWN_IDS or known in OW_UNKNOWN_IDS:
            raise WorkflowError(
                f"config key openworld.eval.similar.{i}: {pairs[i]} must pair an unknown class "
                "(openworld.unknown) with a known one"
            )
    return " ".join(["--similar", *(f"{unknown}:{known}" for unknown, known in ids)])


OW_UNKNOWN = " ".join(str(i) for i in OW_UNKNOWN_IDS)
# the classes a model is trained on: every class but the unknown ones (1+19 on Cityscapes when none)
OW_KNOWN_ARG = "--known " + " ".join(
    str(i) for i in range(OW_NUM_CLASSES) if i not in OW_UNKNOWN_IDS
)
OW_MODEL = OW.get("model", {"preset": "paper"})
OW_RECIPE = OW.get("recipe", {})
if "epochs" in OW_RECIPE and "iters" in OW_RECIPE:
    raise WorkflowError("config key openworld.recipe: give only one of epochs, iters")
OW_EVAL = {"size": [512, 1024], "cluster_stride": 4, **OW.get("eval", {})}  # the schema's defaults
OW_BDD_VARIANT = OW.get("bdd_variant", "1+16")
if OW_ON_BDD and not OW.get("bdd100k"):
    raise WorkflowError(
        "config key openworld.bdd100k: the BDD100K folder (images/10k, labels/sem_seg/masks) "
        "is needed for openworld.dataset bdd-anomaly"
    )
if OW_ON_BDD:
    # built from the user's BDD100K folder; the images with unknown classes are the test split
    OW_IMAGES = OW_LABELS = f"resources/bdd-anomaly-{OW_BDD_VARIANT}"
    OW_EVAL_SPLIT = "test"
else:
    # the study's own dataset (synthetic city, Cityscapes, COCO-panoptic): photos in the raw
    # download, train-id labels in the prepared folder
    OW_IMAGES, OW_LABELS = RAW, PREPARED
    OW_EVAL_SPLIT = "val"


def ow_roots(split):
    """`contmav-*` image and label folder options of a split."""
    return f"--image-root {OW_IMAGES}/leftImg8bit/{split} --label-root {OW_LABELS}/gtFine/{split}"


# every ContMAV row: each variant once per replicate (`contmav.r1`, ...), as the FC-CLIP rows
OW_ROWS = [replica(variant, r) for variant in OW_VARIANTS for r in range(REPLICATES)]


def ow_variant_json(variant, part):
    """A variant row's model settings (over openworld.model) or loss settings (over
    openworld.loss) as JSON."""
    spec = OW_VARIANTS[base_and_replicate(variant)[0]] or {}
    if part == "model":
        return json.dumps({**OW_MODEL, **spec.get("model", {})})
    return json.dumps({**OW.get("loss", {}), **spec.get("loss", {})})


def ow_facts(variant):
    """`--fact KEY=VALUE` arguments recorded in a ContMAV variant's metrics JSON."""
    facts = {
        "approach": variant,
        "kind": "contmav",
        "study": STUDY,
        "dataset": f"bdd-anomaly {OW_BDD_VARIANT}" if OW_ON_BDD else DATASET,
        "unknown": OW_UNKNOWN or "-",
        "epochs": OW_RECIPE.get("epochs", ""),
    }
    return fact_args(facts)


def openworld_metrics():
    """The ContMAV metrics files of the second results table (none without `openworld`)."""
    return [f"{OW_RESULTS}/metrics/{row}.json" for row in OW_ROWS]


def ow_recipe_json(variant):
    """The ContMAV recipe of a variant row: the seed (an explicit openworld.recipe.seed
    wins over the study's) of the row's replicate (:func:`replicate_seed`)."""
    recipe = {"seed": SEED, **OW_RECIPE}
    recipe["seed"] = replicate_seed(recipe["seed"], base_and_replicate(variant)[1])
    return json.dumps(recipe)
