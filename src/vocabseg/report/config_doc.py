"""The configuration reference (``docs/configuration.md``), generated from the config schema.

The schema (``workflow/schemas/config.schema.yaml``) is the one place where config keys,
types, defaults and meanings are written; this module renders it as Markdown so the guide
cannot drift from what validation accepts (a test compares the two)::

    python -m vocabseg.report.config_doc > docs/configuration.md

Each object becomes a table of its keys (``a.b.c``, type, default, meaning); the kinds of
``approaches`` entries, which the schema states as ``if kind == … then …`` branches, get one
table each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"

HEADER = """\
# Configuration reference

*Generated from `workflow/schemas/config.schema.yaml` by
`python -m vocabseg.report.config_doc > docs/configuration.md`; a test keeps the two equal.
Do not edit by hand: change the schema and regenerate.*

A study is one YAML file (`config/config.yaml` is the default study; pass another with
`snakemake --configfile config/<study>.yaml`, which replaces the default instead of being
merged into it). Every key below is checked before any job starts: an unknown key, a wrong
type or a value out of range stops the run with one line naming the key. Keys not given
take the default shown. Resources (threads, GPUs, memory, run time) are not study settings:
they belong to the rules and the cluster profiles (see [clusters](clusters.md)).
"""


def _resolve(node: dict, root: dict) -> dict:
    """``node`` with a local ``$ref`` merged in (the node's own keys win)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in node.items() if k != "$ref"}}


def _type(node: dict) -> str:
    if "const" in node:
        return f"`{node['const']}`"
    if "enum" in node:
        return " | ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    if "items" in node:
        inner = _type(node["items"])
        kinds = [f"list of {inner}" if k == "array" and inner else k for k in kinds]
    text = " or ".join(k for k in kinds if k)
    bounds = []
    if "minimum" in node:
        bounds.append(f"≥ {node['minimum']}")
    if "exclusiveMinimum" in node:
        bounds.append(f"> {node['exclusiveMinimum']}")
    if "maximum" in node:
        bounds.append(f"≤ {node['maximum']}")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _default(node: dict) -> str:
    if "default" not in node:
        return "required" if node.get("_required") else "–"
    return f"`{json.dumps(node['default'], ensure_ascii=False)}`"


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(node: dict, root: dict, prefix: str) -> list[tuple[str, dict]]:
    """``(dotted key, resolved node)`` of every key below an object node, depth first."""
    rows = []
    required = set(node.get("required", []))
    for key, child in node.get("properties", {}).items():
        child = {**_resolve(child, root), "_required": key in required}
        path = f"{prefix}.{key}" if prefix else key
        rows.append((path, child))
        if "properties" in child:
            rows.extend(_rows(child, root, path))
    return rows


def _table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for path, node in rows:
        lines.append(
            f"| `{path}` | {_cell(_type(node))} | {_cell(_default(node))} | {_cell(node.get('description', ''))} |"
        )
    return lines


def _approach_kinds(root: dict) -> list[str]:
    """One table per approach kind, from the ``allOf`` branches of ``$defs.approach``."""
    approach = root["$defs"]["approach"]
    lines = ["## Approach kinds", "", _cell(approach["properties"]["kind"].get("description", "")), ""]
    for branch in approach.get("allOf", []):
        when = branch["if"]["properties"]["kind"]
        kinds = [when["const"]] if "const" in when else list(when["enum"])
        then = branch["then"]
        lines += [f"### `kind: {'` / `'.join(kinds)}`", ""]
        rows = [(path, node) for path, node in _rows(then, root, "") if path != "kind"]
        lines += _table(rows) if rows else ["No further keys."]
        lines.append("")
    return lines


def render(schema: dict) -> str:
    """The Markdown reference of a config schema."""
    lines = [HEADER, "## Study keys", "", _cell(schema.get("description", "")), ""]
    lines += _table(_rows(schema, schema, ""))
    lines.append("")
    if "approach" in schema.get("$defs", {}):
        lines += _approach_kinds(schema)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    sys.stdout.write(render(yaml.safe_load(SCHEMA.read_text())))


if __name__ == "__main__":
    main()
