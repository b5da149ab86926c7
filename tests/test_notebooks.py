"""The notebooks, executed with papermill on the ``tiny`` synthetic preset."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from inatloc_nb.reports.chart_display import VEGALITE5_MIME_TYPE

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: Tiny-network settings shared by every training run here: one short epoch on 48 px images.
TINY = {"backbone": "tinycnn", "pretrained": False, "image_size": 48, "batch_size": 16, "schedule": "1", "lr": 0.05}
RUN_FILES = ("params.json", "model.pth", "history.csv", "cams/val.npz", "cams/test.npz", "metrics.json",
             "analysis.parquet", "timings.json")


@pytest.fixture(scope="module", autouse=True)
def inline_figures():
    """Let the kernels render matplotlib figures as PNG outputs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        yield


def _execute(name: str, out: Path, **parameters) -> nbformat.NotebookNode:
    import papermill

    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(out.parent), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)  # chart outputs included
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    return nb


def _mime_types(nb: nbformat.NotebookNode) -> list[str]:
    return [key for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            for key in o.get("data", {})]


def _stored_notebook_is_clean(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.parametrize("name", ["00_tutorial", "01_dataset_overview", "02_train_wsol", "03_results"])
def test_notebooks_are_stored_without_outputs(name):
    _stored_notebook_is_clean(name)


@pytest.fixture(scope="module")
def sweep_results(tiny_dataset_dir, tmp_path_factory) -> Path:
    """A results folder holding one ``02_train_wsol`` run (genus level) executed by the sweep."""
    from inatloc_nb.sweep import RunSpec, execute_run
    from inatloc_nb.training.run_config import RunConfig

    results_dir = tmp_path_factory.mktemp("results")
    spec = RunSpec("tiny", RunConfig(data=str(tiny_dataset_dir), level="genus", method="cam", **TINY))
    outcome = execute_run(spec, results_dir, NOTEBOOKS / "02_train_wsol.ipynb")
    assert outcome.status == "ok", outcome.error
    return results_dir


@pytest.mark.slow
def test_train_notebook_writes_a_run_folder(sweep_results):
    (run_dir,) = (sweep_results / "runs").iterdir()
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["level"] == "genus" and 0 <= metrics["maxboxacc_v2"] <= 100 and "val" in metrics
    nb = nbformat.read(run_dir / "02_train_wsol.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert _mime_types(nb).count("image/png") == 2  # the learning curve and the CAM grid
    assert _mime_types(nb).count(VEGALITE5_MIME_TYPE) == 1  # the learning curve, interactive


@pytest.mark.slow
def test_results_notebook_on_a_sweep(sweep_results, tmp_path):
    nb = _execute("03_results", tmp_path / "03.ipynb", results_dir=str(sweep_results))
    figures = nb.cells[-1].outputs
    drawn = [o for o in figures if "image/png" in o.get("data", {})]
    assert len(drawn) == 7  # Fig. 3 left/right, 4, 5 (medians, components), A3, A4
    assert all(VEGALITE5_MIME_TYPE in o["data"] for o in drawn)  # interactive in JupyterLab, PNG elsewhere
    assert "Fig. 3 (left)" in json.dumps(figures)


@pytest.mark.slow
def test_tutorial_notebook(tiny_dataset_dir, tmp_path):
    nb = _execute("00_tutorial", tmp_path / "00.ipynb", data=str(tiny_dataset_dir), levels=["species", "phylum"],
                  out_dir=str(tmp_path / "runs"), **{k: v for k, v in TINY.items() if k != "schedule"}, schedule=1)
    for level in ("species", "phylum"):
        assert (tmp_path / "runs" / level / "metrics.json").is_file()
    assert _mime_types(nb).count("image/png") == 2  # the CAMs of both levels, the chart by level
    assert _mime_types(nb).count(VEGALITE5_MIME_TYPE) == 1


@pytest.mark.slow
def test_dataset_overview_notebook(tiny_dataset_dir, tmp_path):
    nb = _execute("01_dataset_overview", tmp_path / "01.ipynb", data=str(tiny_dataset_dir), compare=["cub"])
    assert _mime_types(nb).count("image/png") == 2  # Fig. A7 and Fig. A6
    assert _mime_types(nb).count(VEGALITE5_MIME_TYPE) == 2
