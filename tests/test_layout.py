"""The package layout: each model family has one home, and the import graph has no cycle.

Read statically (``ast``, every ``import`` including those inside functions), so the
test sees the imports the command line defers as well and needs no torch import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vocabseg

ROOT = Path(vocabseg.__file__).parent

#: the FC-CLIP family (seed 000): its network, the approaches, Mask2Former losses, its
#: panoptic training dataset, the training entry
FCCLIP_FAMILY = (
    "vocabseg.models",
    "vocabseg.approaches",
    "vocabseg.losses",
    "vocabseg.pretrain",
    "vocabseg.data.panoptic_dataset",
    "vocabseg.train",
)
#: the open-world family (seed 003, ContMAV)
OPENWORLD_FAMILY = ("vocabseg.openworld",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a package also when one of its modules is)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        parts = target.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in known)
    # a module's own packages are initialised before it runs: importing them is no edge
    return {t for t in found if not (name == t or name.startswith(t + "."))}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _in(name: str, family: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in family)


def test_graph_sees_the_imports():
    graph = _graph()
    assert "vocabseg.openworld.model" in graph["vocabseg.openworld.train"]
    assert "vocabseg.openworld.model.config" in graph["vocabseg.openworld.model.model"]  # relative import
    assert "vocabseg.openworld.evaluate" in graph["vocabseg.cli"]  # deferred, inside a function


def test_the_open_world_family_has_one_home():
    strays = [m for m in _modules() if ("contmav" in m or "openworld" in m) and not _in(m, OPENWORLD_FAMILY)]
    assert strays == [], f"open-world modules outside vocabseg.openworld: {strays}"


def test_neither_family_imports_the_other():
    crossings = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        for target in sorted(targets)
        if (_in(name, FCCLIP_FAMILY) and _in(target, OPENWORLD_FAMILY))
        or (_in(name, OPENWORLD_FAMILY) and _in(target, FCCLIP_FAMILY))
    ]
    assert crossings == []


def test_import_graph_is_acyclic():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


#: the only modules that may read the Cityscapes label table: the label-set builder
#: (and the table's own module); every other stage gets a LabelSet (issue 15)
LABEL_TABLE_READERS = {"vocabseg.data.labelset"}


def test_only_the_label_set_builder_imports_the_cityscapes_table():
    graph = _graph()
    readers = {name for name, targets in graph.items() if "vocabseg.data.labels" in targets}
    assert readers == LABEL_TABLE_READERS
    # FC-CLIP's Cityscapes prompt names are part of that table (they live in it)
    prompt_readers = {
        name
        for name, path in _modules().items()
        if "CITYSCAPES_PROMPT_ENG" in path.read_text() and name != "vocabseg.data.labels"
    }
    assert prompt_readers == LABEL_TABLE_READERS
