"""Build step: the wheel carries the shipped ``data/``, ``notebooks/`` and ``configs/`` inside
the package (``inatloc_nb/_shipped/``), the sdist carries them at the top level.

Which files ship is decided by ``inatloc_nb/core/resources.py`` (loaded by path: the build runs
before the package's dependencies exist). Everything else is in ``pyproject.toml``. Editable
installs copy nothing: they read the repository's folders.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _resources():
    """``inatloc_nb/core/resources.py`` as a module, without importing the package."""
    spec = importlib.util.spec_from_file_location("_inatloc_nb_resources", ROOT / "inatloc_nb" / "core" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bundle_targets(build_lib: str) -> list[tuple[Path, Path]]:
    """(source file, destination in the build tree) for every shipped file."""
    resources = _resources()
    bundle = Path(build_lib) / "inatloc_nb" / resources.BUNDLE
    return [(path, bundle / name / path.name)
            for name, paths in resources.shipped_files(ROOT).items() for path in paths]


class BuildPyWithShipped(build_py):
    """``build_py`` that also copies the shipped folders into the package, and names their
    files as sources (so the sdist carries them)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in _bundle_targets(self.build_lib):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [str(target) for _, target in _bundle_targets(self.build_lib)]

    def get_source_files(self) -> list[str]:
        """The modules and the shipped files: what the sdist (and SOURCES.txt) lists."""
        return super().get_source_files() + [
            source.relative_to(ROOT).as_posix() for source, _ in _bundle_targets(self.build_lib)]


setup(cmdclass={"build_py": BuildPyWithShipped})
