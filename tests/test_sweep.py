"""Sweeps: YAML configs, grid expansion, stable run ids, resumable execution (local and Dask)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import nbformat
import polars as pl
import pytest

from inatloc_nb import sweep
from inatloc_nb.cli import main as cli_main
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs import results
from inatloc_nb.sweep import ConfigError, RunSpec, SweepConfig, expand
from inatloc_nb.training.run_config import RunConfig

REPO = Path(__file__).resolve().parent.parent

BASE = {
    "name": "t",
    "datasets": {"toy": "synth:tiny"},
    "levels": ["species", "genus"],
    "methods": ["cam", "has"],
    "lrs": [1e-2, "1e-1"],
    "backbone": "tinycnn",
    "pretrained": False,
    "image_size": 32,
}


def write_config(tmp_path: Path, config: dict | str, name: str = "sweep.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def test_expand_grids_baselines_and_dedup(tmp_path: Path) -> None:
    config = SweepConfig.from_dict({
        **BASE,
        "extra": [{"name": "data-efficiency", "methods": "cam", "lrs": 1e-2, "per_class": [5, 10], "seeds": [0, 1]},
                  {"name": "overlap", "levels": "species", "methods": "cam"}],
        "baselines": ["center", "cam-agg", "fsl-seg"],
    })
    runs = expand(config)
    # main 2 levels x 2 methods x 2 lrs; extra 2 levels x 2 per_class x 2 seeds; the overlap grid adds nothing;
    # center once; cam-agg and fsl-seg at the finest level for each lr (cam-agg's species CAM runs are in main)
    assert len(runs) == 8 + 8 + 1 + 2 + 2
    assert len({r.run_id for r in runs}) == len(runs)
    assert [g.name for g in config.grids] == ["main", "data-efficiency", "overlap", "center", "cam-agg", "fsl-seg"]
    center = [r for r in runs if r.method == "center"]
    assert [(r.level, r.lr, r.seed, r.per_class) for r in center] == [("species", None, 0, None)]
    agg = [r for r in runs if r.method == "cam-agg"]
    assert {r.lr for r in agg} == {0.01, 0.1} and {r.level for r in agg} == {"species"}
    ids = [r.run_id for r in runs]
    for r in agg:
        dep = r.dependency()
        assert (dep.method, dep.level, dep.lr) == ("cam", "species", r.lr) and dep.run_id in ids
        params = r.notebook_parameters("/out", "/res")["config"]
        assert params["model_run"] == f"/res/runs/{dep.run_id}" and params["method"] == "cam-agg"
    eff = [r for r in runs if r.per_class is not None]
    assert {(r.per_class, r.seed, r.lr) for r in eff} == {(n, s, 0.01) for n in (5, 10) for s in (0, 1)}
    assert all(r.config.backbone == "tinycnn" and r.config.image_size == 32 and r.config.schedule == "2epoch"
               for r in runs)


def test_run_ids_are_readable_and_stable() -> None:
    spec = RunSpec("inatloc500", RunConfig(data="/data/a", level="genus", method="cam", lr=0.01, seed=2,
                                           per_class=50, schedule="2epoch"))
    # the same parameters give this id on every machine; the data location is not part of it
    assert spec.run_id == "inatloc500-genus-cam-lr0.01-s2-n50-" + spec.run_id[-10:]
    assert spec.run_id == spec.replace(data="/elsewhere").run_id
    assert spec.run_id == "inatloc500-genus-cam-lr0.01-s2-n50-550073ae18"
    # a run made when the best D_f epoch was the default keeps the id it had then
    best = spec.replace(select_epoch="best")
    assert best.run_id == "inatloc500-genus-cam-lr0.01-s2-n50-8376eb537c"
    assert spec.replace(seed=3).run_id != spec.run_id
    assert spec.replace(image_size=256).run_id[:-10] == spec.run_id[:-10]
    assert spec.replace(image_size=256).run_id != spec.run_id
    # parameters that are not swept (devices, workers) are not part of the identity
    assert spec.replace(device="cpu", num_workers=2, amp=False).run_id == spec.run_id
    params = spec.notebook_parameters("/out", "/res")
    assert params["out_dir"] == "/out" and params["config"]["data"] == "/data/a" and "dataset" not in params["config"]
    assert RunConfig.from_dict(params["config"]) == spec.config
    assert params["config"]["model_run"] is None and spec.dependency() is None


#: A sweep touching every grid key, list and scalar, an ``lrs: selected`` grid and baselines.
PINNED_SWEEP = {
    "name": "t", "datasets": {"toy": "synth:tiny"},
    "levels": ["species", "genus"], "methods": ["cam", "multihead"], "lrs": [1e-2, "1e-1"],
    "backbone": "tinycnn", "pretrained": False, "image_size": 32,
    "extra": [{"name": "eff", "methods": "cam", "lrs": "selected", "per_class": [5], "seeds": [0, 1]},
              {"name": "text", "levels": "genus", "methods": "has", "lr_groups": "classifier", "lr_decay": "text",
               "select_epoch": "best", "schedule": "10epoch", "batch_size": 16}],
    "baselines": ["center", "cam-agg", "fsl-seg"],
}


def test_run_ids_of_existing_sweeps_do_not_change() -> None:
    # regression values: the ids these runs had when the results of earlier sweeps were written
    ids = [r.run_id for r in expand(SweepConfig.from_dict(PINNED_SWEEP))]
    assert ids == [
        "toy-species-cam-lr0.01-s0-nall-af863f2bf5", "toy-species-cam-lr0.1-s0-nall-effa57b8c1",
        "toy-species-multihead-lr0.01-s0-nall-af09a957b7", "toy-species-multihead-lr0.1-s0-nall-9bf487896f",
        "toy-genus-cam-lr0.01-s0-nall-23d560a833", "toy-genus-cam-lr0.1-s0-nall-ba1125d902",
        "toy-genus-multihead-lr0.01-s0-nall-541885b909", "toy-genus-multihead-lr0.1-s0-nall-d87482c93e",
        "toy-species-cam-lrselected-s0-n5-69c388c6ec", "toy-species-cam-lrselected-s1-n5-188ea26626",
        "toy-genus-cam-lrselected-s0-n5-ea19711e8b", "toy-genus-cam-lrselected-s1-n5-55a0adb847",
        "toy-genus-has-lr0.01-s0-nall-689db0ab2f", "toy-genus-has-lr0.1-s0-nall-d718b7d029",
        "toy-species-center-lrnone-s0-nall-2adc2db11a",
        "toy-species-cam-agg-lr0.01-s0-nall-b5e6a8921d", "toy-species-cam-agg-lr0.1-s0-nall-dc54a316ff",
        "toy-species-fsl-seg-lr0.01-s0-nall-81274c6b80", "toy-species-fsl-seg-lr0.1-s0-nall-931df360ec",
    ]
    # the paper's defaults (ResNet-50, 224 px, batch 32) with an epoch count and best-epoch selection
    paper = SweepConfig.from_dict({"name": "p", "datasets": {"inatloc500": "synth:demo"}, "levels": ["order"],
                                   "lrs": [1e-3], "seeds": [3], "per_class": [None, 50], "schedule": 3,
                                   "select_epoch": "best"})
    assert [r.run_id for r in expand(paper)] == ["inatloc500-order-cam-lr0.001-s3-nall-390452ccac",
                                                 "inatloc500-order-cam-lr0.001-s3-n50-c6c98df9cb"]


def test_a_run_is_a_dataset_and_a_run_config() -> None:
    # keys a grid omits take RunConfig's defaults; the others replace them
    plain, = expand(SweepConfig.from_dict({"datasets": {"toy": "synth:tiny"}, "levels": "genus", "lrs": 0.01}))
    assert (plain.dataset, plain.config) == ("toy", RunConfig(data="synth:tiny", level="genus", lr=0.01))
    text, = expand(SweepConfig.from_dict({"datasets": {"toy": "synth:tiny"}, "levels": "genus", "lrs": 0.01,
                                          "lr_decay": "text", "schedule": 10, "seeds": 4}))
    assert text.config == RunConfig(data="synth:tiny", level="genus", lr=0.01, lr_decay="text", schedule="10", seed=4)
    assert text.run_id != plain.run_id


def test_cam_agg_brings_its_species_run() -> None:
    config = SweepConfig.from_dict({**BASE, "methods": "has", "lrs": 0.1, "baselines": {"cam-agg": {"seeds": [1]}}})
    runs = expand(config)
    assert [(r.method, r.level, r.seed) for r in runs[-2:]] == [("cam", "species", 1), ("cam-agg", "species", 1)]
    assert len(runs) == 4


def test_yaml_loading_resolves_dataset_folders(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**BASE, "datasets": {"real": "meta/inat", "toy": "synth:demo"}})
    config = SweepConfig.from_yaml(path)
    assert config.datasets == {"real": str((tmp_path / "meta" / "inat").resolve()), "toy": "synth:demo"}
    assert config.name == "t" and config.path == path
    with pytest.raises(ConfigError, match=r"sweep.yaml: datasets.real: no such metadata folder"):
        sweep.check_data(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lrs": ["fast"]}, r"lrs\[0\]: expected a finite number > 0, got 'fast'"),
        ({"lrs": [1e-3, 0]}, r"lrs\[1\]: expected a finite number > 0"),
        ({"methods": ["center"]}, r"methods\[0\]: unknown method 'center'.*baselines"),
        ({"levels": []}, "levels: expected at least one value"),
        ({"seeds": [-1]}, r"seeds\[0\]: expected an integer in 0\.\.4294967295"),
        ({"per_class": [0]}, r"per_class\[0\]: expected an integer >= 1 or null"),
        ({"pretrained": "yes"}, "pretrained: expected true or false"),
        ({"image_size": 0}, "image_size: expected an integer in 16..4096"),
        ({"epochs": 3}, "epochs: unknown key at top level"),
        ({"datasets": {}}, "datasets: expected a non-empty mapping"),
        ({"datasets": {"a b": "synth:tiny"}}, "datasets.a b: dataset names"),
        ({"datasets": {"x": "synth:huge"}}, "datasets.x: unknown synthetic preset"),
        ({"extra": [{"lr": [1]}]}, r"lr: unknown key at extra\[0\]"),
        ({"extra": [{"seeds": ["a"]}]}, r"extra\[0\].seeds\[0\]: expected an integer"),
        ({"baselines": ["cam"]}, "baselines.cam: unknown baseline"),
        ({"baselines": {"center": {"methods": ["cam"]}}}, r"methods: unknown key at baselines.center"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write_config(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError, match=f"sweep.yaml: {message}"):
        SweepConfig.from_yaml(path)


def test_config_errors_for_missing_keys_and_bad_yaml(tmp_path: Path) -> None:
    without_lrs = {k: v for k, v in BASE.items() if k != "lrs"}
    with pytest.raises(ConfigError, match="sweep.yaml: lrs: required"):
        SweepConfig.from_yaml(write_config(tmp_path, without_lrs))
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        SweepConfig.from_yaml(write_config(tmp_path, "levels: [species\n", "bad.yaml"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        SweepConfig.from_yaml(write_config(tmp_path, "- a\n", "list.yaml"))
    with pytest.raises(ConfigError, match="no such sweep configuration"):
        SweepConfig.from_yaml(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = SweepConfig.from_yaml(REPO / "configs" / name)
    runs = expand(config)
    methods = {r.method for r in runs}
    assert "cam" in methods and "cam-agg" in methods
    assert {r.per_class for r in runs} >= {None}
    if name == "paper.yaml":
        main = config.grids[0]
        assert main.axes["level"] == ("species", "genus", "family", "order", "class", "phylum")
        assert main.axes["lr"] == (1e-5, 1e-4, 1e-3, 1e-2, 1e-1) and main.settings["backbone"] == "resnet50"
        assert methods == {"cam", "has", "acol", "spg", "adl", "cutmix", "cam-agg", "center", "fsl-seg", "fsl-det"}
        eff = [r for r in runs if r.per_class is not None]
        assert {r.per_class for r in eff} == {50, 100, 200} and {r.seed for r in eff} == {0, 1, 2, 3, 4}


FAKE_TRAINING = textwrap.dedent('''
    import json, os, pathlib
    method, lr, seed, level, model_run = (config[k] for k in ("method", "lr", "seed", "level", "model_run"))
    if method == "adl":
        raise RuntimeError(f"cannot train {method} at lr={lr}")
    def block(score):
        return {"maxboxacc_v2": score, "per_iou": {"30": score + 5, "50": score, "70": score - 5},
                "optimal_threshold": {"30": 0.2, "50": 0.3, "70": 0.4}, "top1": 12.5}
    score = 40.0 + 100 * lr + seed
    metrics = {**block(score), "val": block(score + 1), "level": level, "method": method,
               "n_train_images": 10 * seed + 7, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "progress": os.environ.get("INATLOC_NB_PROGRESS")}
    if method == "cam-agg":  # reuses the species CAM run, which must have finished
        species = json.loads(pathlib.Path(model_run, "metrics.json").read_text())
        metrics["per_level"] = {lv: {**block(species["maxboxacc_v2"] - i), "val": block(0.0)}
                                for i, lv in enumerate(["species", "genus"])}
    pathlib.Path(out_dir, "metrics.json").write_text(json.dumps(metrics))
''')


@pytest.fixture()
def fake_notebook(tmp_path: Path) -> Path:
    """A stand-in for ``02_train_wsol``: same parameters, instant 'training', fails for ADL."""
    params = nbformat.v4.new_code_cell(textwrap.dedent('''
        config = {"data": "synth:tiny"}
        out_dir = "."
    '''))
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(FAKE_TRAINING)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "fake_train.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_local_sweep_is_resumable_and_records_failures(tmp_path: Path, fake_notebook: Path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.setattr(sweep.executors, "visible_gpus", lambda: ["3", "5"])  # pinning, checked without GPUs
    monkeypatch.delenv("INATLOC_NB_PROGRESS", raising=False)
    grids = {**BASE, "levels": "species", "methods": "cam", "extra": [{"methods": "adl", "lrs": 0.1}],
             "baselines": {"cam-agg": {"lrs": 0.1}}}
    config = SweepConfig.from_dict({**grids, "lrs": [0.1, 0.01]})
    out = tmp_path / "results"
    summary = sweep.run_sweep(config, out, notebook=fake_notebook, fuse_lrs=False)  # one notebook per run
    ids = {(r.method, r.lr): r.run_id for r in expand(config)}
    assert (summary.total, summary.skipped, len(summary.done), len(summary.failed)) == (4, 0, 3, 1)
    assert summary.done[-1] == ids["cam-agg", 0.1]  # after the run it reuses
    assert "failed 1, left 0" in capsys.readouterr().out

    ok = out / "runs" / ids["cam", 0.1]
    assert (ok / "02_train_wsol.ipynb").is_file() and (ok / "results.parquet").is_file()
    assert json.loads((ok / "metrics.json").read_text())["gpu"] in {"3", "5"}  # one GPU per worker
    assert json.loads((ok / "metrics.json").read_text())["progress"] == "lines"  # executed notebooks log lines
    failed = out / "runs" / ids["adl", 0.1]
    error = json.loads((failed / "error.json").read_text())
    assert "RuntimeError: cannot train adl at lr=0.1" in error["message"]
    assert "RuntimeError" in error["traceback"] and "\x1b[" not in error["traceback"]
    assert (failed / "02_train_wsol.ipynb").is_file() and not (failed / "metrics.json").exists()
    assert not list((out / "runs").glob(".*"))

    store = results.load(out)
    status = dict(store.group_by("run_id").agg(pl.col("status").first()).rows())
    assert status == {ids["cam", 0.1]: "ok", ids["cam", 0.01]: "ok", ids["adl", 0.1]: "failed",
                      ids["cam-agg", 0.1]: "ok"}
    chosen = results.select_learning_rate(store)
    assert chosen.select("method", "level", "lr", "maxboxacc_v2").rows() == [
        ("cam-agg", "genus", 0.1, 49.0), ("cam", "species", 0.1, 50.0), ("cam-agg", "species", 0.1, 50.0)]

    # a run killed half-way left a temporary folder: it is cleaned and the run redone;
    # finished runs are skipped and failed ones retried
    (ok / "metrics.json").write_text("{}")  # must not be touched again: the run is finished
    more = SweepConfig.from_dict({**grids, "lrs": [0.1, 0.01, 0.001]})
    killed = next(r.run_id for r in expand(more) if r.lr == 0.001)
    stale = out / "runs" / f".{killed}.tmp-abc123"
    stale.mkdir()
    (stale / "metrics.json").write_text('{"maxboxacc_v2": 9')
    summary = sweep.run_sweep(more, out, notebook=fake_notebook, max_parallel=1, progress=False, fuse_lrs=False)
    assert (summary.total, summary.skipped, len(summary.done), len(summary.failed)) == (5, 3, 1, 1)
    assert summary.done == [killed] and not stale.exists()
    assert (ok / "metrics.json").read_text() == "{}"
    assert json.loads((out / "runs" / killed / "run.json").read_text())["status"] == "ok"


def test_sweep_argument_errors(tmp_path: Path, fake_notebook: Path) -> None:
    config = SweepConfig.from_dict(BASE)
    with pytest.raises(InatlocError, match="unknown executor"):
        sweep.run_sweep(config, tmp_path, executor="slurm", notebook=fake_notebook)
    with pytest.raises(InatlocError, match="training notebook not found"):
        sweep.run_sweep(config, tmp_path, notebook=tmp_path / "missing.ipynb")
    with pytest.raises(InatlocError, match="max_parallel must be at least 1"):
        sweep.run_sweep(config, tmp_path, max_parallel=0, notebook=fake_notebook)


def test_cli_dry_run_lists_runs(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path, {**BASE, "levels": "species", "methods": "cam"})
    specs = expand(SweepConfig.from_yaml(path))
    finished = tmp_path / "res" / "runs" / specs[0].run_id
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    (finished / "results.parquet").write_bytes(b"")
    assert cli_main(["sweep", str(path), "--results", str(tmp_path / "res"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"finished  {specs[0].run_id}" in out and f"to run    {specs[1].run_id}" in out
    assert "2 runs: 1 finished, 1 to run" in out
    assert cli_main(["sweep", str(tmp_path / "nope.yaml")]) == 2


@pytest.mark.slow
def test_dask_sweep_runs_the_training_notebook(tmp_path: Path, tiny_dataset_dir: Path, fake_notebook: Path) -> None:
    """Two runs through a Dask LocalCluster: the real ``02_train_wsol`` on the tiny preset once it exists."""
    notebook = sweep.default_notebook()
    real = notebook.is_file()
    config = SweepConfig.from_dict({
        **BASE, "datasets": {"tiny": str(tiny_dataset_dir)}, "levels": ["species", "genus"], "methods": "cam",
        "lrs": 0.01, "schedule": 1, "batch_size": 16,
    })
    summary = sweep.run_sweep(config, tmp_path, executor="dask", max_parallel=2, progress=False,
                              notebook=notebook if real else fake_notebook)
    assert (len(summary.done), summary.failed) == (2, [])
    store = results.load(tmp_path)
    assert store.height == 4 and set(store["status"]) == {"ok"}
    assert set(store["level"]) == {"species", "genus"} and store["maxboxacc_v2"].is_between(0, 100).all()
    for spec in expand(config):
        folder = tmp_path / "runs" / spec.run_id
        assert (folder / "02_train_wsol.ipynb").is_file()
        if real:
            assert {"params.json", "metrics.json", "analysis.parquet"} <= {p.name for p in folder.iterdir()}
    if real:
        assert results.load_analysis(tmp_path)["run_id"].n_unique() == 2


def test_sweep_work_counts_what_each_run_asks_of_the_gpu() -> None:
    from inatloc_nb.sweep.cost import Rates, gpu_hours, sweep_work
    from inatloc_nb.training.run_config import load_dataset

    config = SweepConfig.from_dict({
        **BASE, "levels": ["species"], "methods": ["cam"], "lrs": [0.1, 0.01], "schedule": 2,
        "extra": [{"name": "stability", "lrs": "selected", "seeds": [0, 1]},
                  {"name": "eff", "lrs": "selected", "per_class": [2], "seeds": [0]}],
        "baselines": ["center", "cam-agg"]})
    specs = expand(config)
    dataset = load_dataset("synth:tiny")
    n = {split: len(dataset.images(split)) for split in ("train", "val", "test")}
    subset = len(dataset.subsample("train", "species", 2, 0))
    cam_agg = sum(s.method == "cam-agg" for s in specs)
    work = sweep_work(specs, {"toy": dataset})
    # main grid 2 runs + stability seed 1 (seed 0 is the main run at the selected lr) + 1 subset run
    assert work.reused == 1 and work.runs == len(specs) - 1
    assert work.train_images == 3 * 2 * n["train"] + 2 * subset
    assert work.valid_images == 4 * 2 * n["val"]
    assert work.eval_images == (4 + cam_agg) * (n["val"] + n["test"])  # Center computes nothing
    best = sweep_work([specs[0].replace(select_epoch="best")], {"toy": dataset})
    assert best.eval_images == n["val"] + n["test"] + 3 * n["val"]  # D_f before training and after each epoch

    rates = Rates(train=100.0, eval=200.0, valid=50.0, seconds_per_run=10.0, seconds_per_eval_image=0.001)
    hours = gpu_hours(work, rates, runs_at_once=2)
    assert hours["training_h"] == pytest.approx(work.train_images / 100 / 3600, abs=0.005)
    assert hours["validation_h"] == pytest.approx(work.valid_images / 50 / 3600, abs=0.005)
    assert hours["fixed_h"] == pytest.approx((work.runs * 10 + work.eval_images * 0.001) / 2 / 3600, abs=0.005)
    assert "validation_h" not in gpu_hours(work, rates.replace(valid=None))


def test_dry_run_estimates_gpu_hours_from_a_gpu_check(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path, {**BASE, "levels": "species", "methods": "cam"})
    check = tmp_path / "check.json"
    check.write_text(json.dumps({
        "data": {"eval_images_per_split": 100},
        "run_jpeg": {"train": {"images_per_s": 1000.0}, "cam_extraction": {"images_per_s": 2000.0}},
        "train_end_to_end": {"fixed_seconds": 6.0, "wall_seconds": 20.0,
                             "timings": {"score_test_seconds": 0.1, "validate_images_per_s": 1500.0}}}))
    argv = ["sweep", str(path), "--results", str(tmp_path / "res"), "--dry-run"]
    assert cli_main([*argv, "--rates", str(check)]) == 0
    out = capsys.readouterr().out
    assert "GPU estimate of the 2 runs to run: " in out and "training images" in out and "validation " in out
    assert cli_main(["sweep", str(path), "--rates", str(check)]) == 2
    assert "add --dry-run" in capsys.readouterr().err
    check.write_text("{}")
    assert cli_main([*argv, "--rates", str(check)]) == 2
    assert f"{check}: needs the sections run_jpeg and train_end_to_end" in capsys.readouterr().err
