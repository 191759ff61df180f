"""envs/vocabseg.yaml (the conda environment of `--software-deployment-method conda`) lists
the same Python packages as pyproject.toml's [project] dependencies.

Requirements are compared after normalisation (PEP 503 names, sorted specifiers,
extras, markers), so `open_clip_torch>=3` equals `open-clip-torch >= 3`, while a
different version bound or a package on one side only is a mismatch.
"""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def normalised(requirement: str) -> str:
    """One spelling per requirement: ``name[extras] specifiers; marker``.

    >>> normalised("Open_Clip_Torch >=3")
    'open-clip-torch>=3'
    """
    req = Requirement(requirement)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    specifier = ",".join(sorted(str(s) for s in SpecifierSet(str(req.specifier))))
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{specifier}{marker}"


def pyproject_requirements(path: Path) -> list[str]:
    return list(tomllib.loads(path.read_text())["project"]["dependencies"])


def conda_pip_requirements(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(pip requirements, local installs such as ``-e ..``, conda packages) of an env file."""
    pip, local, conda = [], [], []
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(entry, dict):
            for item in entry.get("pip", []):
                (local if item.startswith(("-e", ".", "/", "file:")) else pip).append(item)
        else:
            conda.append(str(entry))
    return pip, local, conda


def mismatch(left: list[str], right: list[str]) -> tuple[set[str], set[str]]:
    """Normalised requirements only in ``left``, only in ``right``."""
    a, b = {normalised(r) for r in left}, {normalised(r) for r in right}
    return a - b, b - a


def test_normalisation_and_mismatch_are_strict():
    assert normalised("Open_Clip_Torch >=3") == "open-clip-torch>=3"
    assert normalised("snakemake<10,>=9") == normalised("snakemake>=9,<10") == "snakemake<10,>=9"
    assert mismatch(["torch==2.14.1", "numpy>=1.26"], ["torch==2.14.0", "numpy >= 1.26"]) == (
        {"torch==2.14.1"},
        {"torch==2.14.0"},
    )
    assert mismatch(["a", "b"], ["a"]) == ({"b"}, set())


def test_conda_env_lists_the_pyproject_dependencies():
    deps = pyproject_requirements(REPO / "pyproject.toml")
    pip, local, conda = conda_pip_requirements(REPO / "envs/vocabseg.yaml")
    only_pyproject, only_env = mismatch(deps, pip)
    assert not only_pyproject and not only_env, (
        f"pyproject.toml only: {sorted(only_pyproject)}; envs/vocabseg.yaml only: {sorted(only_env)}"
    )
    assert len(pip) == len(set(map(normalised, pip))), "a package is listed twice in envs/vocabseg.yaml"
    # the package itself comes from this checkout, with the Python pyproject asks for
    assert local == ["-e .."]
    assert (REPO / "envs" / ".." / "pyproject.toml").exists()
    python = [c for c in conda if c.startswith("python")]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert len(python) == 1 and SpecifierSet(requires).contains(python[0].split("=", 1)[1])
