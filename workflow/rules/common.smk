# Config validation, path helpers and the approach registry lookups.
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
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
BENCH = f"benchmarks/{STUDY}"
CONDA_ENV = "../../envs/vocabseg.yaml"


wildcard_constraints:
    conf="|".join(config["vocabularies"]),


def approaches_of_kind(kind):
    """Names of the configured approaches of one kind, as a wildcard regex."""
    names = [name for name, spec in APPROACHES.items() if spec["kind"] == kind]
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
