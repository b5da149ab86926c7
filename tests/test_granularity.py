"""Choosing label granularity: mixed labellings, choose-levels, multi-head training, level
selection and notebook 05, on the ``tiny`` synthetic world."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from inatloc_nb.errors import InatlocError
from inatloc_nb.granularity.choose import category_scores, choose_levels
from inatloc_nb.labelling import read_labelling, write_labelling

pytest_plugins = ["fixtures_results"]

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_choosing_granularity.ipynb"
TINY = {"lr": 0.05, "seed": 0, "per_class": None, "schedule": "2", "backbone": "tinycnn", "pretrained": False,
        "image_size": 48, "batch_size": 16, "num_workers": 0}


@pytest.fixture(scope="module")
def hierarchy(tiny_dataset):
    return tiny_dataset.hierarchy


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_mixed_level_labels_images_with_the_chosen_nodes(tiny_dataset, hierarchy, tmp_path):
    leaves = hierarchy.leaves
    nodes = {leaf: (hierarchy.coarsen(leaf, 1) if i < 4 else leaf) for i, leaf in enumerate(leaves)}
    path = write_labelling(tmp_path / "mixed.csv", hierarchy, nodes)
    assert read_labelling(path, hierarchy) == tuple(nodes[leaf] for leaf in leaves)
    level = f"mixed:{path}"
    names = hierarchy.level_names(level)
    assert names == tuple(sorted(set(nodes.values())))
    # each image's label is its species' chosen node, as the per-image k vector gives it
    leaf_idx = tiny_dataset.labels("train", "species")
    k = np.array([hierarchy.depth(leaves[i]) - hierarchy.depth(nodes[leaves[i]]) for i in leaf_idx])
    expected = hierarchy.coarsen_leaves(leaf_idx, k)
    got = np.asarray(names)[tiny_dataset.labels("train", level)]
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("row, message", [
    ("speciesX,genus0,genus", "unknown category 'speciesX'"),
    ("species0,genus3,genus", "neither 'species0' nor one of its ancestors"),
    ("species0,genus0,family", "is at level 'genus', not 'family'"),
    ("species0,species0,species\nspecies0,genus0,genus", "listed again (first on line 3)"),
])
def test_bad_labelling_rows_name_file_and_line(hierarchy, tmp_path, row, message):
    rest = "\n".join(f"{leaf},{leaf},species" for leaf in hierarchy.leaves[1:])
    path = _write(tmp_path / "bad.csv", f"# chosen by hand\ncategory,node,level\n{row}\n{rest}\n")
    with pytest.raises(InatlocError, match="bad.csv:[0-9]+: ") as err:
        read_labelling(path, hierarchy)
    assert message in str(err.value)


def test_labelling_breaking_the_hierarchy_is_refused(hierarchy, tmp_path):
    species0, species1 = hierarchy.leaves[:2]
    genus = hierarchy.parent(species0)
    assert hierarchy.parent(species1) == genus
    rows = [f"{species0},{genus}", f"{species1},{species1}",
            *(f"{leaf},{leaf}" for leaf in hierarchy.leaves[2:])]
    path = _write(tmp_path / "conflict.csv", "category,node\n" + "\n".join(rows) + "\n")
    with pytest.raises(InatlocError, match=rf"conflict.csv:3: node '{species1}' is a descendant of '{genus}', chosen on line 2"):
        read_labelling(path, hierarchy)
    missing = _write(tmp_path / "missing.csv", "category,node\n" + "\n".join(rows[2:]) + "\n")
    with pytest.raises(InatlocError, match="missing.csv: 2 categories have no row"):
        read_labelling(missing, hierarchy)
    with pytest.raises(InatlocError, match="header"):
        read_labelling(_write(tmp_path / "nohead.csv", "\n".join(rows) + "\n"), hierarchy)


def test_choose_levels_resolves_conflicting_preferences(hierarchy):
    """species0 and species1 (one genus) gain at genus; species2 prefers genus but its sibling
    species3 loses more there; the others prefer species."""
    s = hierarchy.leaves
    assert hierarchy.parent(s[2]) == hierarchy.parent(s[3])
    hits = {("genus", s[0]): 9, ("genus", s[1]): 9, ("genus", s[2]): 7, ("genus", s[3]): 1}
    rows = [{"run_id": f"r-{lv}", "level": lv, "seed": 0, "image_id": f"{leaf}-{i}", "category": leaf,
             "hit": float(i < hits.get((lv, leaf), 5))}
            for lv in ("species", "genus") for leaf in s for i in range(10)]
    labelling, why = choose_levels(category_scores(pl.DataFrame(rows), prior=0), hierarchy)
    assert labelling[s[0]] == labelling[s[1]] == hierarchy.parent(s[0])
    assert labelling[s[2]] == s[2] and labelling[s[3]] == s[3]
    assert all(labelling[leaf] == leaf for leaf in s[4:])
    row = why.filter(pl.col("category") == s[2]).row(0, named=True)
    assert row["preferred_level"] == "genus" and row["chosen_level"] == "species"
    assert row["reason"].startswith("refined")
    assert why.filter(pl.col("category") == s[0])["reason"][0] == "its own best level"


def test_multihead_loss_is_the_weighted_sum_of_level_cross_entropies(tiny_dataset, hierarchy):
    from inatloc_nb.methods import get_method

    method = get_method("multihead", levels=["species", "genus", "phylum"], weights=[1.0, 0.5, 2.0])
    method.bind(hierarchy, "species")
    model = method.build_model(torch.nn.Conv2d(3, 4, 3), 4, len(hierarchy.leaves)).train()
    x, target = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 5, 7])
    logits = model(x)
    total = torch.nn.functional.cross_entropy(logits, target) + model.auxiliary_loss(target)
    expected = 0
    for level, w in (("species", 1.0), ("genus", 0.5), ("phylum", 2.0)):
        level_target = torch.as_tensor(hierarchy.level_index(level))[target]
        expected = expected + w * torch.nn.functional.cross_entropy(model._head_logits[level], level_target)
    assert torch.allclose(total, expected)
    feats = model.feature_maps(x)
    fused = model.class_activation_maps(feats, target)
    assert fused.shape == (5, 6, 6) and 0 <= fused.min() and fused.max() <= 1
    model.cam_level = "phylum"
    phylum = torch.as_tensor(hierarchy.level_index("phylum"))[target]
    assert torch.allclose(model.class_activation_maps(feats, target),
                          torch.einsum("bc,bchw->bhw", model.head("phylum").weight[phylum], feats))


def test_multihead_refuses_what_it_cannot_compose_with(hierarchy):
    from inatloc_nb.methods import get_method

    with pytest.raises(InatlocError, match="composes with cam, has only, not 'cutmix'"):
        get_method("multihead", base="cutmix")
    with pytest.raises(InatlocError, match="composes with cam, has only, not 'acol'"):
        get_method("multihead", base="acol")
    with pytest.raises(InatlocError, match="finer than the training level 'genus'"):
        get_method("multihead", levels=["genus", "species"]).bind(hierarchy, "genus")
    with pytest.raises(InatlocError, match="cam_level 'kingdom'"):
        get_method("multihead", cam_level="kingdom").bind(hierarchy, "species")


def test_sweep_resolves_mixed_levels_per_dataset(tmp_path):
    from inatloc_nb.sweep import ConfigError, SweepConfig, check_data, expand

    raw = {"datasets": {"tiny": "synth:tiny"}, "levels": ["species", "mixed:labels/{dataset}.csv"], "lrs": [0.1],
           "methods": ["cam", "multihead"]}
    config = SweepConfig.from_dict(raw, path=tmp_path / "sweep.yaml")
    levels = {spec.level for spec in expand(config)}
    assert levels == {"species", f"mixed:{tmp_path / 'labels' / 'tiny.csv'}"}
    assert any("-mixed-tiny-multihead-" in spec.run_id for spec in expand(config))
    with pytest.raises(ConfigError, match=r"sweep.yaml: levels: no labelling file .*tiny.csv for dataset 'tiny'"):
        check_data(config)
    assert [g.name for g in config.select_grids(["main"]).grids] == ["main"]


def test_a_labelling_chosen_anew_gives_new_run_ids(hierarchy, tmp_path):
    from inatloc_nb.sweep import SweepConfig, expand

    raw = {"datasets": {"tiny": "synth:tiny"}, "levels": ["species", "mixed:tiny.csv"], "lrs": [0.1]}
    config = SweepConfig.from_dict(raw, path=tmp_path / "sweep.yaml")

    def ids() -> dict[str, str]:
        return {spec.level: spec.run_id for spec in expand(config)}

    leaves = hierarchy.leaves
    write_labelling(tmp_path / "tiny.csv", hierarchy, {leaf: hierarchy.coarsen(leaf, 1) for leaf in leaves})
    first = ids()
    assert first == ids()  # same content, same ids: the sweep resumes
    write_labelling(tmp_path / "tiny.csv", hierarchy, {leaf: leaf for leaf in leaves})
    second = ids()
    mixed = f"mixed:{tmp_path / 'tiny.csv'}"
    assert second["species"] == first["species"] and second[mixed] != first[mixed]


@pytest.fixture(scope="module")
def granularity_results(explorer_results: Path, tmp_path_factory, torch_one_thread) -> Path:
    """The explorer runs (species, order, phylum), a labelling chosen from them by the
    command line, a CAM run on it and a multi-head run, in one results folder."""
    from inatloc_nb import results
    from inatloc_nb.cli import main
    from inatloc_nb.io import atomic_write_json
    from inatloc_nb.run import run_experiment
    from inatloc_nb.run_config import RunConfig
    from inatloc_nb.sweep import RunSpec, runs_dir

    out = explorer_results.parent / "granularity"
    labelling = tmp_path_factory.mktemp("labels") / "mixed-tiny.csv"
    assert main(["choose-levels", str(explorer_results), "--dataset", "tiny", "--out", str(labelling)]) == 0
    shutil.copytree(explorer_results, out)
    data = pl.read_parquet(explorer_results / "results.parquet")["data"][0]
    for level, method in ((f"mixed:{labelling}", "cam"), ("species", "multihead")):
        config = RunConfig(data=data, level=level, method=method, **TINY)
        spec = RunSpec(dataset="tiny", **{f: getattr(config, f) for f in RunSpec.__dataclass_fields__
                                          if f != "dataset" and hasattr(config, f)})
        folder = runs_dir(out) / spec.run_id
        start = time.perf_counter()
        run_experiment(config, folder, say=lambda _line: None)
        atomic_write_json(folder / results.RUN_RECORD, {"run_id": spec.run_id, "params": spec.params(), "data": data,
                                                        "status": "ok", "wall_seconds": time.perf_counter() - start})
        results.write_run_results(folder)
    results.collect(out)
    return out


def test_choose_levels_command_writes_a_valid_labelling(explorer_results, tiny_dataset, tmp_path, capsys):
    from inatloc_nb.cli import main

    out = tmp_path / "chosen.csv"
    assert main(["choose-levels", str(explorer_results), "--dataset", "tiny", "--out", str(out)]) == 0
    assert "categories ->" in capsys.readouterr().out
    nodes = read_labelling(out, tiny_dataset.hierarchy)
    why = pl.read_csv(tmp_path / "chosen-why.csv")
    assert why["category"].to_list() == list(tiny_dataset.hierarchy.leaves)
    assert why["chosen_node"].to_list() == list(nodes)
    assert set(why["chosen_level"]) <= {"species", "order", "phylum"}
    assert main(["choose-levels", str(explorer_results), "--dataset", "nope", "--out", str(out)]) == 2


def test_comparison_and_selection_tables(granularity_results):
    from inatloc_nb import results
    from inatloc_nb.granularity import selection

    store = results.load(granularity_results)
    variants = selection.run_variants(store, full_schedule="2")
    assert set(variants["variant"]) == {"single", "mixed", "multihead"}
    stale = store.filter(pl.col("level").str.starts_with("mixed:")).with_columns(run_id=pl.col("run_id") + "-old")
    with pytest.raises(InatlocError, match=r"appear more than once.*labelling was chosen anew"):
        selection.run_variants(pl.concat([store, stale]), full_schedule="2")
    heads = selection.all_head_scores(granularity_results, variants)
    assert set(heads["head"]) == {"species", "genus", "family", "order", "class", "phylum", "fused"}
    table = selection.comparison_table(variants, heads)
    strategies = set(table["strategy"])
    assert {"best single level (D_f)", "mixed labelling", "multihead, fused CAM"} <= strategies
    assert table["mean"].is_between(0, 100).all()
    best = table.filter(pl.col("strategy") == "best single level (D_f)")
    assert best["gain"].to_list() == [0.0]
    mixed = table.filter(pl.col("strategy") == "mixed labelling").row(0, named=True)
    assert mixed["gain"] == pytest.approx(mixed["mean"] - best["mean"][0])  # one seed: the plain difference
    agreement = selection.selection_agreement(variants, heads)
    assert agreement["selector"].to_list() == ["multihead heads"]
    assert agreement["picked"][0] in {"species", "order", "phylum"}


def test_level_ensembles_fuse_the_single_level_runs(granularity_results):
    from inatloc_nb import results
    from inatloc_nb.granularity import ensemble, selection
    from inatloc_nb.granularity.evidence import sweep_dataset

    variants = selection.run_variants(results.load(granularity_results), full_schedule="2")
    table = ensemble.ensemble_scores(granularity_results, variants, progress=False)
    assert sorted(set(table["levels"])) == ["order..phylum", "species..order", "species..phylum"]
    assert set(table["split"]) == {"val", "test"} and table["maxboxacc_v2"].is_between(0, 100).all()
    cache = granularity_results / ensemble.ENSEMBLES_FILE
    stamp = cache.stat().st_mtime_ns
    assert ensemble.ensemble_scores(granularity_results, variants, progress=False).equals(table)
    assert cache.stat().st_mtime_ns == stamp  # served from the cache
    # fusing a run with itself gives the run's own maps, hence its own score
    single = variants.filter((pl.col("variant") == "single") & (pl.col("level") == "order") & (pl.col("split") == "val"))
    run = granularity_results / "runs" / single["run_id"][0]
    fused = ensemble.fused_scores([run, run], ["order", "order"], sweep_dataset(variants, "tiny"), "val")
    assert fused == {"order..order": pytest.approx(single["maxboxacc_v2"][0], abs=1e-9)}
    comparison = selection.comparison_table(variants, selection.all_head_scores(granularity_results, variants), table)
    assert comparison.filter(pl.col("strategy") == "level ensemble (D_f)").height == 1


def _store(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """A results store of finished all-image runs: (method, level, schedule) per row."""
    return pl.DataFrame([{"status": "ok", "per_class": None, "method": m, "level": lv, "train_level": lv,
                          "schedule": sch} for m, lv, sch in rows], schema_overrides={"per_class": pl.Int64})


def test_schedules_are_inferred_from_the_multihead_and_mixed_runs():
    from inatloc_nb.granularity.selection import infer_schedules

    base = [("cam", "species", "3"), ("cam", "order", "3"), ("multihead", "species", "3"), ("cam", "mixed:a.csv", "3")]
    assert infer_schedules(_store(base)) == ("3", None)
    assert infer_schedules(_store([*base, ("cam", "species", "1"), ("cam", "order", "1")])) == ("3", "1")
    assert infer_schedules(_store([*base, ("cam", "species", "1"), ("cam", "order", "2")])) == ("3", None)
    with pytest.raises(InatlocError, match="several schedules"):
        infer_schedules(_store([*base, ("multihead", "species", "1")]))
    with pytest.raises(InatlocError, match="no finished multi-head or mixed runs"):
        infer_schedules(_store(base[:2]))


def test_report_has_a_granularity_section(granularity_results, tmp_path):
    from inatloc_nb.report import build_report

    page = build_report(granularity_results, tmp_path / "report", progress=False).read_text(encoding="utf-8")
    assert "Choosing the granularity: single level, mixed labelling, multi-head" in page
    assert (tmp_path / "report" / "tables" / "granularity_comparison.csv").is_file()
    assert (tmp_path / "report" / "figures" / "granularity_comparison.png").is_file()


def test_head_rescoring_shows_its_cam_passes_only_when_asked(granularity_results, capfd, monkeypatch):
    import json

    from inatloc_nb.granularity import selection
    from inatloc_nb.progress import PROGRESS_ENV

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    run = next(f for f in (granularity_results / "runs").iterdir()
               if json.loads((f / "params.json").read_text())["config"]["method"] == "multihead")
    quiet = selection.head_scores(run, refresh=True, progress=False)
    assert capfd.readouterr() == ("", "")
    shown = selection.head_scores(run, refresh=True)
    err = capfd.readouterr().err
    assert err.count("CAMs of ") == shown.height and "\r" not in err  # one line per pass in a log
    assert quiet.equals(shown)


@pytest.mark.slow
def test_choosing_granularity_notebook(granularity_results, tmp_path):
    import nbformat
    import papermill

    out = tmp_path / "05.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"results_dir": str(granularity_results),
                                                                     "full_schedule": "2", "short_schedule": None},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.outputs for c in stored.cells if c.cell_type == "code")


def test_labelling_encoding_byte_order_mark_and_non_utf8(hierarchy, tmp_path):
    rows = "category,node,level\r\n" + "".join(f"{leaf},{leaf},species\r\n" for leaf in hierarchy.leaves)
    bom = tmp_path / "excel.csv"  # as a spreadsheet saves "CSV UTF-8": byte-order mark, CRLF
    bom.write_bytes(b"\xef\xbb\xbf" + rows.encode())
    assert read_labelling(bom, hierarchy) == hierarchy.leaves
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(("category,node,level\n# chosen by Andr\xe9\n" + rows).encode("latin-1"))
    with pytest.raises(InatlocError, match=r"latin1.csv:2: not UTF-8 text \(byte 0xe9"):
        read_labelling(latin, hierarchy)
