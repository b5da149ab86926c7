"""The install surfaces agree: pyproject.toml, environment.yml and the CLI."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from inatloc_nb.cli import COMMAND_MODULES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]

# conda-forge names that differ from the PyPI names in pyproject.toml
CONDA_TO_PIP = {"pytorch": "torch", "distributed": "dask"}
NOT_A_DEPENDENCY = {"python", "pip"}


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement string (extras and versions dropped)."""
    name = re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    return {_name(r) for r in requirements}


def _environment_names() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names: set[str] = set()
    for dep in env["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            if entry.startswith("-e"):
                continue
            name = _name(entry)
            names.add(CONDA_TO_PIP.get(name, name))
    return names - NOT_A_DEPENDENCY


def test_environment_yml_names_the_pyproject_dependencies() -> None:
    pyproject, environment = _pyproject_names(), _environment_names()
    assert pyproject - environment == set(), "in pyproject.toml but not in environment.yml"
    assert environment - pyproject == set(), "in environment.yml but not in pyproject.toml"


def test_every_command_is_registered() -> None:
    parser = build_parser()
    subactions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    registered = set(subactions[0].choices)
    for module in COMMAND_MODULES:
        assert module.replace("_", "-") in registered  # module make_dataset -> command make-dataset


@pytest.mark.parametrize("command", [None, *COMMAND_MODULES])
def test_help_on_each_command(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--help"] if command is None else [command.replace("_", "-"), "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: inatloc-nb" in out
