"""The package as users install it: the shipped data, notebooks and configs travel in the wheel.

The slow test builds the wheel from a copy of the source tree (offline, no build isolation),
installs it into a fresh virtual environment that borrows this environment's dependencies
through a ``.pth`` file, and runs ``inatloc-nb`` from a folder outside the source tree.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from inatloc_nb.cli import main
from inatloc_nb.cli.demo import DEMO_CONFIG
from inatloc_nb.core import resources
from inatloc_nb.core.shipped import data_dir
from inatloc_nb.sweep import default_notebook

REPO = Path(__file__).resolve().parents[1]


def test_shipped_files_take_every_data_file_by_pattern(tmp_path: Path) -> None:
    """New tables in data/ ship without being listed; scripts and sub-folders stay out."""
    for name in ("data/new_release_images.parquet", "data/PROVENANCE.md", "data/pack_metadata.py",
                 "data/synth-demo/metadata.parquet", "notebooks/09_new.ipynb", "notebooks/scratch.py",
                 "configs/new.yaml", "configs/.hidden.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = {name: [p.relative_to(tmp_path).as_posix() for p in paths]
             for name, paths in resources.shipped_files(tmp_path).items()}
    assert found == {"data": ["data/PROVENANCE.md", "data/new_release_images.parquet"],
                     "notebooks": ["notebooks/09_new.ipynb"], "configs": ["configs/new.yaml"]}


def test_source_tree_reads_the_repository_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INATLOC_NB_DATA", raising=False)
    assert not resources.is_bundled()
    assert data_dir() == REPO / "data"
    assert default_notebook() == REPO / "notebooks" / "02_train_wsol.ipynb"
    assert DEMO_CONFIG == REPO / "configs" / "demo.yaml"
    with pytest.raises(ValueError, match="unknown shipped folder 'docs'"):
        resources.shipped_folder("docs")


def test_shipped_copy_refuses_to_overwrite_edits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shipped", "--copy", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"configs    {REPO / 'configs'}" in out and "source tree" in out
    assert sorted(p.name for p in (tmp_path / "configs").iterdir()) == sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert (tmp_path / "notebooks" / "02_train_wsol.ipynb").read_bytes() == default_notebook().read_bytes()
    assert not (tmp_path / "data").exists()  # data is read in place unless asked for

    edited = tmp_path / "configs" / "demo.yaml"
    edited.write_text("name: mine\n")
    assert main(["shipped", "--copy", str(tmp_path)]) == 2
    assert f"{edited} exists and differs from the shipped configs/demo.yaml" in capsys.readouterr().err
    assert edited.read_text() == "name: mine\n"
    assert main(["shipped", "--copy", str(tmp_path), "--what", "configs", "--force"]) == 0
    assert "1 file(s) copied" in capsys.readouterr().out
    assert edited.read_bytes() == (REPO / "configs" / "demo.yaml").read_bytes()


def _copy_source_tree(dest: Path) -> Path:
    """What a build reads: the top-level files, the package and the shipped folders (files only)."""
    dest.mkdir()
    for path in REPO.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    shutil.copytree(REPO / "inatloc_nb", dest / "inatloc_nb",
                    ignore=shutil.ignore_patterns("__pycache__", resources.BUNDLE))
    for name in resources.SHIPPED:
        (dest / name).mkdir()
        for path in (REPO / name).iterdir():
            if path.is_file():
                shutil.copy2(path, dest / name / path.name)
    return dest


def _fresh_venv(folder: Path) -> Path:
    """A virtual environment without pip that sees this environment's site-packages after its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib) / "borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in ours if os.path.isdir(p)))
    return python


@pytest.mark.slow
def test_built_wheel_installs_and_runs_outside_the_source_tree(tmp_path: Path) -> None:
    source = _copy_source_tree(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(wheels)], check=True, cwd=tmp_path)
    [wheel] = wheels.glob("inatloc_nb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name, paths in resources.shipped_files(REPO).items():
        assert paths, f"nothing ships from {name}/"
        for path in paths:
            assert f"inatloc_nb/{resources.BUNDLE}/{name}/{path.name}" in names
    assert not [n for n in names if n.endswith("pack_metadata.py")]

    python = _fresh_venv(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "INATLOC_NB_DATA")}
    env.update(PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}", JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),
               INATLOC_NB_CACHE=str(tmp_path / "cache"))

    def cli(*args: str) -> str:
        done = subprocess.run(["inatloc-nb", *args], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"inatloc-nb {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    where = cli("shipped")
    installed = Path(subprocess.run([str(python), "-c", "import inatloc_nb; print(inatloc_nb.__file__)"], cwd=work,
                                    env=env, check=True, capture_output=True, text=True).stdout.strip()).parent
    assert installed.is_relative_to(tmp_path / "venv")
    assert f"notebooks  {installed / resources.BUNDLE / 'notebooks'}" in where and "installed package" in where

    assert "species" in cli("stats", "--dataset", "cub")
    cli("synth", "--preset", "tiny", "--seed", "0", "--out", "tiny", "--quiet")
    cli("train", "--data", "tiny", "--level", "genus", "--method", "cam", "--lr", "0.01", "--epochs", "1",
        "--backbone", "tinycnn", "--no-pretrained", "--image-size", "32", "--batch-size", "16", "--select-epoch", "last",
        "--out", "run")
    assert 0 <= json.loads((work / "run" / "metrics.json").read_text())["maxboxacc_v2"] <= 100

    (work / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "installed", "datasets": {"tiny": str(work / "tiny")}, "levels": ["genus"], "methods": ["cam"],
        "lrs": [0.01], "schedule": 1, "backbone": "tinycnn", "pretrained": False, "image_size": 32, "batch_size": 16,
        "select_epoch": "last",
    }))
    cli("sweep", "sweep.yaml", "--results", "results")
    [run] = (work / "results" / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "ok"
    assert (run / "metrics.json").is_file()
