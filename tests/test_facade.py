"""The top-level facade: ``from inatloc_nb import ...`` for notebooks and users, loaded lazily."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import inatloc_nb


@pytest.mark.parametrize("name", sorted(inatloc_nb.EXPORTS))
def test_every_exported_name_resolves_to_its_module(name):
    value = getattr(inatloc_nb, name)
    module = importlib.import_module(inatloc_nb.EXPORTS[name])
    assert value is (module if module.__name__.rpartition(".")[2] == name else getattr(module, name))
    assert name in dir(inatloc_nb)


def test_import_loads_no_heavy_dependency():
    code = ("import json, sys, inatloc_nb; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('inatloc_nb.') "
            "or m.split('.')[0] in {'torch', 'fastai', 'polars', 'numpy', 'altair'})))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    assert loaded == []


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        inatloc_nb.not_a_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from inatloc_nb import not_a_name", {})


def test_version_is_the_distribution_version():
    try:
        installed = importlib.metadata.version("inatloc-nb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("inatloc-nb is not installed")
    assert inatloc_nb.__version__ == installed
