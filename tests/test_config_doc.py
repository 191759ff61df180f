"""docs/configuration.md is the schema rendered, and the schema has no malformed nodes."""

from pathlib import Path

import yaml

from vocabseg.report import config_doc

ROOT = Path(__file__).resolve().parents[1]

# the JSON-schema keywords the config schema may use; anything else in a schema node is a
# typo or a YAML accident (an unquoted comma in a flow mapping starts a new key)
KEYWORDS = {
    "$schema", "$ref", "$defs", "title", "description", "type", "enum", "const", "default",
    "properties", "additionalProperties", "required", "items", "minItems", "maxItems",
    "uniqueItems", "minimum", "maximum", "exclusiveMinimum", "pattern", "propertyNames",
    "minProperties", "allOf", "anyOf", "oneOf", "if", "then", "else",
}  # fmt: skip


def schema_nodes(node, path="(root)"):
    """Every schema node below ``node`` with its path (property names are not nodes)."""
    yield path, node
    for key in ("properties", "$defs"):
        for name, child in node.get(key, {}).items():
            yield from schema_nodes(child, f"{path}.{name}")
    for key in ("items", "additionalProperties", "propertyNames", "if", "then", "else"):
        if isinstance(node.get(key), dict):
            yield from schema_nodes(node[key], f"{path}/{key}")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, child in enumerate(node.get(key, [])):
            yield from schema_nodes(child, f"{path}/{key}[{i}]")


def test_configuration_guide_is_the_rendered_schema():
    rendered = config_doc.render(yaml.safe_load(config_doc.SCHEMA.read_text()))
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert on_disk == rendered, (
        "docs/configuration.md is out of date: run "
        "`python -m vocabseg.report.config_doc > docs/configuration.md`"
    )


def test_schema_nodes_use_only_schema_keywords():
    schema = yaml.safe_load(config_doc.SCHEMA.read_text())
    bad = [
        f"{path}: {key!r}"
        for path, node in schema_nodes(schema)
        for key in node
        if key not in KEYWORDS
    ]
    assert not bad, "schema nodes with unknown keywords: " + "; ".join(bad)


def test_render_lists_nested_keys_defaults_and_kinds():
    schema = {
        "description": "a study",
        "required": ["study"],
        "properties": {
            "study": {"type": "string", "description": "name"},
            "training": {
                "type": "object",
                "properties": {"lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1}},
            },
            "eval_vocab": {"$ref": "#/$defs/vocab", "default": "008"},
        },
        "$defs": {
            "vocab": {"enum": ["000", "008"]},
            "approach": {
                "properties": {"kind": {"description": "the kinds"}},
                "allOf": [
                    {
                        "if": {"properties": {"kind": {"const": "wiseft"}}},
                        "then": {
                            "required": ["alpha"],
                            "properties": {"kind": {"const": "wiseft"}, "alpha": {"type": "number"}},
                        },
                    }
                ],
            },
        },
    }
    text = config_doc.render(schema)
    assert "| `study` | string | required | name |" in text
    assert "| `training.lr` | number (> 0) | `0.1` |  |" in text
    assert "| `eval_vocab` | `000` \\| `008` | `\"008\"` |  |" in text
    assert "### `kind: wiseft`" in text and "| `alpha` | number | required |  |" in text
