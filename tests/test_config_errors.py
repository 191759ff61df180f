"""Bad study files, tried as a user would: `snakemake --configfile X` in a subprocess.

Each mistake must stop before any job runs, with one line naming the file or the
config key, and leave every file already computed in place. Where Snakemake itself
reads the file before the workflow's code runs (a missing file, a YAML syntax
error), the test pins what Snakemake prints, as docs/troubleshooting.md quotes it.
"""

from __future__ import annotations

import json

import pytest

from study_configs import TINY
from test_workflow import snakemake, write_config

pytestmark = pytest.mark.workflow

OPENWORLD = {
    "dataset": "study",
    "unknown": [13],
    "model": {"preset": "tiny"},
    "recipe": {"epochs": 3, "batch_size": 2, "augment": {"crop_size": [32, 64]}},
    "variants": {"contmav": None, "contmav_focal": {"loss": {"semantic": "focal"}}},
}


def tiny_openworld() -> dict:
    config = json.loads(json.dumps(TINY))
    config["openworld"] = json.loads(json.dumps(OPENWORLD))
    return config


def errors(res) -> str:
    return res.stderr + res.stdout


def last_lines(res) -> list[str]:
    """The last line of stderr and of stdout (Snakemake prints some errors on stdout)."""
    return [text.strip().splitlines()[-1] for text in (res.stderr, res.stdout) if text.strip()]


def test_a_valid_openworld_block_with_epochs_and_augment_plans_its_jobs(tmp_path):
    res = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", tiny_openworld())))
    assert res.returncode == 0, errors(res)
    assert "contmav_train" in res.stdout


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda ow: ow["recipe"].update(epochz=3),
         "config key openworld.recipe: Additional properties are not allowed ('epochz' was unexpected); allowed keys here: "),
        (lambda ow: ow["recipe"].update(iters=5), "config key openworld.recipe: give only one of epochs, iters"),
        (lambda ow: ow["model"].update(trufr=True),
         "config key openworld.model: Additional properties are not allowed ('trufr' was unexpected)"),
        (lambda ow: ow.update(loss={"semantik": "focal"}),
         "config key openworld.loss: Additional properties are not allowed ('semantik' was unexpected)"),
        (lambda ow: ow["variants"].update(x={"loss": {"extra": "infonse"}}),
         "config key openworld.variants.x.loss.extra: 'infonse' is not one of ['none', 'infonce', 'synco']"),
        (lambda ow: ow["variants"].update(x={"model": {"trufor": "maybe"}}),
         "config key openworld.variants.x.model.trufor: 'maybe' is not of type 'boolean'"),
    ],
)
def test_openworld_typos_stop_before_any_job_and_keep_the_trained_model(tmp_path, mutate, expected):
    config = tiny_openworld()
    mutate(config["openworld"])
    model = tmp_path / "results/tiny/openworld/models/contmav/model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"trained earlier")
    res = snakemake(tmp_path, "--cores", "1", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode != 0
    assert expected in errors(res)
    if "allowed keys here" in expected:  # every valid key is listed, epochs and augment included
        assert "augment, batch_size" in errors(res) and "epochs" in errors(res)
    assert model.read_bytes() == b"trained earlier"
    assert not (tmp_path / "resources").exists()


FEW = {"few": ["person", 25], "cars": ["car"]}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"vocab_configs": FEW, "vocabularies": ["000", "008"]},
         "config key vocabularies.1: '008' is not one of the study's vocabulary configurations (000, few, cars;"),
        ({"vocab_configs": FEW, "vocabularies": None, "eval_vocab": "many"}, "config key eval_vocab: 'many' is not one of"),
        ({"eval_vocab": "few"}, "config key eval_vocab: 'few' is not one of the study's vocabulary configurations (000, 001,"),
        ({"vocab_configs": {"000": [24]}}, "config key vocab_configs.000: the full vocabulary deletes nothing; give []"),
        ({"vocab_configs": {"a b": [24]}}, "config key vocab_configs: 'a b' does not match"),
        ({"vocab_configs": FEW, "vocabularies": None, "eval_vocab": "few",
          "approaches": {"lb": {"kind": "finetune", "vocab": "008", "iters": 3}}},
         "config key approaches.lb.vocab: '008' is not one of"),
    ],
)
def test_vocabulary_configurations_are_checked_naming_the_key(tmp_path, changes, expected):
    config = {**json.loads(json.dumps(TINY)), **changes}
    res = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode != 0
    assert expected in errors(res)


def test_a_study_names_its_own_vocabulary_configurations(tmp_path):
    """vocab_configs replaces the seed's 000-008: "000" and the study's own, each split
    with the classes it names passed on to vocab-split."""
    config = {**json.loads(json.dumps(TINY)), "vocab_configs": FEW, "eval_vocab": "few", "vocabularies": None}
    config["approaches"] = {"lb": {"kind": "finetune", "vocab": "cars", "iters": 3}, "oracle": {"kind": "oracle"}}
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode == 0, errors(res)
    assert "vocabseg vocab-split --conf few --deleted person 25 " in res.stdout
    assert "vocabseg vocab-split --conf cars --deleted car " in res.stdout
    assert "vocabseg vocab-split --conf 000 --deleted " in res.stdout
    assert "results/tiny/vocab/008" not in res.stdout


def test_a_missing_configfile_names_the_file_on_the_last_line(tmp_path):
    missing = tmp_path / "config" / "my-study.yaml"
    res = snakemake(tmp_path, "-n", "--configfile", str(missing))
    assert res.returncode != 0
    # Snakemake's own FileNotFoundError, after a 27-line traceback
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'" in last_lines(res)


def test_a_yaml_syntax_error_is_reported_by_snakemake_without_file_or_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: tiny\ndataset: {name: tinycity, kind: synthetic\n")
    res = snakemake(tmp_path, "-n", "--configfile", str(bad))
    assert res.returncode != 0
    # what docs/troubleshooting.md quotes; Snakemake reads the file before the workflow runs
    assert any(line.startswith("Config file is not valid JSON or YAML") for line in last_lines(res))


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("study: tiny\nstudy: other\ndataset: {name: tinycity, kind: synthetic}\n", 2, "study"),
        ("study: tiny\ndataset:\n  name: tinycity\n  kind: synthetic\n  name: other\n", 5, "name"),
        ("study: tiny\ndataset: {name: tinycity, kind: synthetic}\n"
         "approaches:\n  a: {kind: finetune, vocab: '008', iters: 3, iters: 300}\n", 4, "iters"),
    ],
)
def test_a_duplicate_key_names_file_line_and_key(tmp_path, text, line, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    res = snakemake(tmp_path, "-n", "--configfile", str(path))
    assert res.returncode != 0
    assert f"{path}, line {line}, column " in errors(res)
    assert f": duplicate key '{key}' (first given on line " in errors(res)


@pytest.mark.parametrize(
    "key, weights, made_by",
    [
        ("model.weights", "results/tiny/models/base/model.pt", "every output lives in results/"),
        ("model.weights", "resources/tinycity/prepared", "rule prepare"),
        ("model.clip_pretrained", "results/synthetic/pretrain/clip.pt", "every output lives in results/"),
        ("openworld.variants.contmav.model.pretrained", "results/tiny/openworld/models/contmav/model.pt",
         "rule contmav_train"),
    ],
)
def test_weights_the_workflow_makes_are_rejected_naming_the_key(tmp_path, key, weights, made_by):
    config = tiny_openworld()
    if key.startswith("model."):
        config["model"] = {key.removeprefix("model."): weights}
    else:
        config["openworld"]["variants"]["contmav"] = {"model": {"pretrained": weights}}
    made = tmp_path / weights
    made.parent.mkdir(parents=True)
    made.write_bytes(b"a model made by an earlier run")
    res = snakemake(tmp_path, "--cores", "1", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode != 0
    assert f"config key {key}: {weights} is a file the workflow itself writes ({made_by})" in errors(res)
    assert made.read_bytes() == b"a model made by an earlier run"


def test_no_rule_deletes_the_users_weights_file(tmp_path):
    """Even forced, Snakemake must not rerun a rule over the official checkpoint: a
    rerun deletes the outputs first, and a failed job removes them afterwards."""
    config = json.loads(json.dumps(TINY))
    config["model"] = {"weights": "resources/weights/fcclip_cocopan_r50.pth"}
    config["approaches"]["zeroshot"] = {"kind": "zeroshot"}  # needs the base weights
    weights = tmp_path / "resources/weights/fcclip_cocopan_r50.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"official checkpoint")
    path = str(write_config(tmp_path / "c.yaml", config))
    snakemake(tmp_path, "--cores", "1", "--configfile", path, "--forceall", "resources/weights/fcclip_cocopan_r50.pth")
    assert weights.read_bytes() == b"official checkpoint"
    # while it is missing, a rule explains where to get it
    weights.unlink()
    res = snakemake(tmp_path, "-n", "--configfile", path)
    assert res.returncode == 0 and "official_weights" in res.stdout
