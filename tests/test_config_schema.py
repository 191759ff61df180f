"""The study schema knows exactly the keys the Python code accepts.

The ContMAV blocks of ``workflow/schemas/config.schema.yaml`` (``openworld.model``,
``openworld.loss`` and ``openworld.recipe``, and a variant's ``model`` / ``loss``)
list their keys so that a typo stops before any job runs. The keys are defined once,
by the dataclasses and the recipe of :mod:`vocabseg.openworld.train`; these
tests keep the schema equal to them (names, value types, and every choice accepted),
so neither side can drift.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vocabseg.openworld.train import (
    CONTMAV_RECIPE,
    ContMAVVariant,
    _recipe,
    build_contmav_model,
    model_keys,
    recipe_keys,
    variant_keys,
)
from vocabseg.engine.trainer import TrainConfig
from vocabseg.errors import InputError
from vocabseg.openworld.losses import ContMAVLossConfig, SynCoConfig
from vocabseg.openworld.model import ContMAVConfig, preset_config

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
DEFS = SCHEMA["$defs"]


def properties(block: dict) -> dict:
    return block["properties"]


def resolve(prop: dict) -> dict:
    """A property with its `$ref` (one level, as the schema uses them) merged in."""
    if "$ref" in prop:
        return {**DEFS[prop["$ref"].removeprefix("#/$defs/")], **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


def test_openworld_blocks_refer_to_the_contmav_definitions():
    ow = properties(SCHEMA["properties"]["openworld"])
    assert ow["model"]["$ref"] == "#/$defs/contmav_model"
    assert ow["loss"]["$ref"] == "#/$defs/contmav_loss"
    assert ow["recipe"]["$ref"] == "#/$defs/contmav_recipe"
    variant = ow["variants"]["additionalProperties"]
    assert variant["properties"]["model"]["$ref"] == "#/$defs/contmav_model"
    assert variant["properties"]["loss"]["$ref"] == "#/$defs/contmav_loss"
    for name in ("contmav_model", "contmav_loss", "contmav_recipe"):
        assert DEFS[name]["additionalProperties"] is False


def test_schema_keys_equal_the_python_keys():
    assert sorted(properties(DEFS["contmav_model"])) == model_keys()
    assert sorted(properties(DEFS["contmav_loss"])) == variant_keys()
    assert sorted(properties(properties(DEFS["contmav_loss"])["synco"])) == sorted(
        f.name for f in dataclasses.fields(SynCoConfig)
    )
    assert sorted(properties(DEFS["contmav_recipe"])) == recipe_keys()
    assert sorted(properties(properties(DEFS["contmav_recipe"])["augment"])) == sorted(CONTMAV_RECIPE["augment"])


def test_python_key_lists_name_every_field():
    """The key lists come from the dataclasses, so a new field shows up in them."""
    assert {f.name for f in dataclasses.fields(ContMAVConfig)} | {"preset"} == set(model_keys())
    assert {f.name for f in dataclasses.fields(ContMAVLossConfig)} <= set(variant_keys())
    assert {f.name for f in dataclasses.fields(TrainConfig)} | {"epochs", "augment", "unknown_as"} <= set(recipe_keys())


_JSON_TYPE = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def declared_types(prop: dict) -> set[str]:
    prop = resolve(prop)
    if "enum" in prop:
        return {"string"}
    kinds = prop["type"]
    return set(kinds if isinstance(kinds, list) else [kinds])


@pytest.mark.parametrize(
    "block, cls",
    [("contmav_model", ContMAVConfig), ("contmav_loss", ContMAVLossConfig), ("contmav_loss", ContMAVVariant),
     ("contmav_recipe", TrainConfig)],
)
def test_schema_types_follow_the_dataclass_annotations(block, cls):
    props = properties(DEFS[block])
    for f in dataclasses.fields(cls):
        if f.name in ("loss", "synco"):  # the variant's nested configs, flattened / a mapping
            continue
        annotation = str(f.type)
        expected = {"array"} if annotation.startswith("tuple") else {_JSON_TYPE[annotation.split(" |")[0]]}
        if "None" in annotation:
            expected.add("null")
        got = declared_types(props[f.name])
        if expected == {"number"}:
            assert got <= {"number", "integer"}, (block, f.name, got)
        else:
            assert got == expected, (block, f.name, got, expected)


def choices(block: dict) -> list[tuple[str, object]]:
    return [(key, value) for key, prop in properties(block).items() for value in resolve(prop).get("enum", [])]


@pytest.mark.parametrize("key, value", choices(DEFS["contmav_model"]))
def test_every_model_choice_of_the_schema_is_accepted(key, value):
    preset_config(value) if key == "preset" else preset_config("tiny", **{key: value})


@pytest.mark.parametrize("key, value", choices(DEFS["contmav_loss"]))
def test_every_loss_choice_of_the_schema_is_accepted(key, value):
    ContMAVVariant.from_dict({key: value})


@pytest.mark.parametrize("key, value", choices(properties(DEFS["contmav_loss"])["synco"]))
def test_every_synco_choice_of_the_schema_is_accepted(key, value):
    SynCoConfig.from_dict({key: value})


@pytest.mark.parametrize("key, value", [(k, v) for k, v in choices(DEFS["contmav_recipe"]) if k != "unknown_as"])
def test_every_recipe_choice_of_the_schema_is_accepted(key, value):
    TrainConfig.from_dict({"iters": 1, "batch_size": 1, key: value})


def test_unknown_key_messages_list_every_valid_key():
    """Inside a job (the command line run by hand) the lists are complete as well."""
    with pytest.raises(InputError, match=r"ContMAV recipe: unknown key\(s\) \['epochz'\]; known keys: .*'augment'.*'epochs'"):
        _recipe({"epochz": 3})
    with pytest.raises(InputError, match=r"unknown key\(s\) \['semantik'\]; known keys: .*'extra'.*'semantic'"):
        ContMAVVariant.from_dict({"semantik": "ce"})
    with pytest.raises(InputError, match=r"ContMAV model: unknown key\(s\) \['trufr'\]; known keys: .*'preset'.*'trufor'"):
        build_contmav_model({"preset": "tiny", "trufr": True}, 3)
