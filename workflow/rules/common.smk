# Config validation, path helpers and the approach registry lookups.
import json

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


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


try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as err:
    raise WorkflowError(config_error(err)) from None

STUDY = config["study"]
DATASET = config["dataset"]["name"]
KIND = config["dataset"]["kind"]
EVAL_VOCAB = config["eval_vocab"]
APPROACHES = config["approaches"]

RAW = f"resources/{DATASET}/raw"
PREPARED = f"resources/{DATASET}/prepared"
SOURCE = f"{DATASET}-source"  # the synthetic world's source-style city
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
BENCH = f"benchmarks/{STUDY}"
CONDA_ENV = "../../envs/vocabseg.yaml"

MODEL = config["model"]
TEXT = f"{RESULTS}/text/{MODEL['preset']}"
# The base model: the official checkpoint, or (synthetic world) pretrained here.
PRETRAIN_BASE = MODEL["weights"] is None
BASE_WEIGHTS = f"{RESULTS}/models/base/model.pt" if PRETRAIN_BASE else MODEL["weights"]
CLIP_WEIGHTS = f"{RESULTS}/pretrain/clip.pt" if PRETRAIN_BASE else None


wildcard_constraints:
    conf="|".join(sorted(set(config["vocabularies"]) | {"000", EVAL_VOCAB})),
    city=f"{DATASET}|{SOURCE}",


def approaches_of_kind(*kinds):
    """Names of the configured approaches of the given kinds, as a wildcard regex."""
    names = [name for name, spec in APPROACHES.items() if spec["kind"] in kinds]
    return "|".join(names) if names else "(?!)"


def final_outputs():
    """Everything `snakemake` builds by default: splits, plots, metrics, the table."""
    outputs = ["results/table.md"]
    for conf in config["vocabularies"]:
        outputs.append(f"{RESULTS}/vocab/{conf}/split.json")
        outputs.append(f"{RESULTS}/vocab/{conf}/class_frequency.png")
    return outputs


def run_facts(approach):
    """`--fact KEY=VALUE` arguments recorded in an approach's metrics JSON."""
    spec = APPROACHES[approach]
    facts = {
        "approach": approach,
        "kind": spec["kind"],
        "study": STUDY,
        "dataset": DATASET,
        "backbone": spec.get("backbone", "-"),
        "vocab": spec.get("vocab", "-"),
        "iterations": spec.get("iters", 0),
        "eval_vocab": EVAL_VOCAB,
    }
    return " ".join(f"--fact {key}={value}" for key, value in facts.items())


def model_json():
    """The model block for the command line, with the pretrained CLIP of the synthetic world."""
    spec = dict(MODEL)
    if CLIP_WEIGHTS and spec["clip_pretrained"] is None:
        spec["clip_pretrained"] = CLIP_WEIGHTS
    return json.dumps(spec)


def recipe_json(iters):
    """The training recipe of the study for `python -m vocabseg.train --recipe`."""
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
            "seed",
            "num_points",
        )
    }
    recipe["iters"] = iters
    recipe["augment"] = {
        "crop_size": t["crop"],
        "min_scale": t["min_scale"],
        "max_scale": t["max_scale"],
        "flip": t["flip"],
        "color_jitter": t["color_jitter"],
    }
    return json.dumps(recipe)


def weights_of(approach):
    """Final weights of a model approach (the base model for zeroshot)."""
    if APPROACHES[approach]["kind"] == "zeroshot":
        return BASE_WEIGHTS
    return f"{RESULTS}/models/{approach}/model.pt"


def train_split_of(approach):
    """split.json of the vocabulary an approach was trained on ([] for the base model)."""
    spec = APPROACHES[approach]
    return [f"{RESULTS}/vocab/{spec['vocab']}/split.json"] if "vocab" in spec else []


def nproc(wildcards, resources):
    """Processes for torchrun: one per GPU, one on a CPU-only job."""
    return max(1, int(resources.gpu))


def synth_size(city):
    """Size of a synthetic city: the study's (target style) or the pretraining source."""
    if city == SOURCE:
        return config["pretrain"]["source"]
    return config["dataset"]["synthetic"]
