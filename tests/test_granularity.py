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

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.granularity.choose import category_scores, choose_levels
from inatloc_nb.hierarchies.labelling import read_labelling, write_labelling

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


def test_a_mixed_level_is_read_once_per_version_of_its_file(hierarchy, tmp_path, monkeypatch):
    import inatloc_nb.hierarchies.taxonomy as taxonomy
    from inatloc_nb.hierarchies.labelling import RUN_COPY, file_digest, load_labelling, store_run_labelling

    leaves = hierarchy.leaves
    path = write_labelling(tmp_path / "mixed.csv", hierarchy, {leaf: hierarchy.coarsen(leaf, 1) for leaf in leaves})
    reads: list[Path] = []
    monkeypatch.setattr(taxonomy, "load_labelling", lambda p, h: reads.append(p) or load_labelling(p, h))
    level = f"mixed:{path}"
    first = hierarchy.resolve(level)
    assert hierarchy.resolve(level) is first and hierarchy.level_names(level) == first.names
    assert hierarchy.level_index(level).tolist() == first.index.tolist() and reads == [path]
    assert first.labelling.sha1 == file_digest(path) and first.labelling.data == path.read_bytes()
    trained_on = path.read_bytes()
    write_labelling(path, hierarchy, {leaf: leaf for leaf in leaves})  # chosen anew: read again
    second = hierarchy.resolve(level)
    assert reads == [path, path] and second.names == tuple(sorted(leaves)) and len(first) < len(second)
    assert second.labelling.sha1 == file_digest(path) != first.labelling.sha1
    # a run keeps the labelling it trained on, not what the file holds by the time it ends
    recorded = store_run_labelling(first.labelling, tmp_path)
    assert (tmp_path / RUN_COPY).read_bytes() == trained_on
    assert recorded == {"source": str(path), "sha1": first.labelling.sha1}
    path.unlink()
    with pytest.raises(InatlocError, match=f"{path}: cannot read the labelling of level 'mixed:"):
        hierarchy.resolve(level)


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
    from inatloc_nb.training.methods import get_method

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
    from inatloc_nb.training.methods import get_method

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
    from inatloc_nb.cli import main
    from inatloc_nb.core.atomic import atomic_write_json
    from inatloc_nb.runs import results
    from inatloc_nb.runs.run import run_experiment
    from inatloc_nb.sweep import RunSpec, runs_dir
    from inatloc_nb.training.run_config import RunConfig

    out = explorer_results.parent / "granularity"
    labelling = tmp_path_factory.mktemp("labels") / "mixed-tiny.csv"
    assert main(["choose-levels", str(explorer_results), "--dataset", "tiny", "--out", str(labelling)]) == 0
    shutil.copytree(explorer_results, out)
    data = pl.read_parquet(explorer_results / "results.parquet")["data"][0]
    for level, method in ((f"mixed:{labelling}", "cam"), ("species", "multihead")):
        config = RunConfig(data=data, level=level, method=method, **TINY)
        spec = RunSpec("tiny", config)
        folder = runs_dir(out) / spec.run_id
        start = time.perf_counter()
        run_experiment(config, folder, say=lambda _line: None)
        atomic_write_json(folder / results.RUN_RECORD, {"run_id": spec.run_id, "params": spec.params(), "data": data,
                                                        "status": "ok", "wall_seconds": time.perf_counter() - start})
        results.write_run_results(folder)
    results.collect(out)
    return out


@pytest.mark.slow
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


@pytest.mark.slow
def test_comparison_and_selection_tables(granularity_results):
    from inatloc_nb.granularity import selection
    from inatloc_nb.runs import results

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


@pytest.mark.slow
def test_level_ensembles_fuse_the_single_level_runs(granularity_results):
    from inatloc_nb.granularity import ensemble, selection
    from inatloc_nb.granularity.evidence import sweep_dataset
    from inatloc_nb.runs import results

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


@pytest.mark.slow
def test_report_has_a_granularity_section(granularity_results, tmp_path):
    from inatloc_nb.reports.report import build_report

    page = build_report(granularity_results, tmp_path / "report", progress=False).read_text(encoding="utf-8")
    assert "Choosing the granularity: single level, mixed labelling, multi-head" in page
    comparison = pl.read_csv(tmp_path / "report" / "tables" / "granularity_comparison.csv")
    assert {"ci_low", "ci_high"} <= set(comparison.columns)
    assert comparison.filter(pl.col("strategy") == "mixed labelling")["ci_low"].is_not_null().all()
    levels = pl.read_csv(tmp_path / "report" / "tables" / "granularity_levels.csv")
    assert levels["oracle"].sum() == 1 and "D_test MaxBoxAccV2 (%) of every single level" in page
    assert (tmp_path / "report" / "figures" / "granularity_comparison.png").is_file()


@pytest.mark.slow
def test_head_rescoring_shows_its_cam_passes_only_when_asked(granularity_results, capfd, monkeypatch):
    import json

    from inatloc_nb.core.env import PROGRESS_ENV
    from inatloc_nb.granularity import selection

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


# --- evidence that holds: intervals, guards, the cost of choosing -----------------------------

def test_bootstrap_replicates_repick_the_threshold():
    from inatloc_nb.granularity.intervals import percentile_interval, replicate_scores
    from inatloc_nb.metrics import BoxAccuracy

    rng = np.random.default_rng(0)
    accuracy = BoxAccuracy(n_thresholds=50)
    accuracy._add(rng.uniform(0, 1, size=(40, 50)))  # best IoU per image and CAM threshold
    curves = np.stack([accuracy.image_curves()[d] for d in accuracy.iou_thresholds], axis=1)
    ones = np.ones((1, 40), dtype=np.int64)
    assert replicate_scores(curves, ones)[0] == pytest.approx(accuracy.compute().mean)
    # a replicate drawing only image 0 twice per image: correct at any threshold where image 0 is
    only_first = np.zeros((1, 40), dtype=np.int64)
    only_first[0, 0] = 40
    expected = 100 * np.mean([curves[0, d].any() for d in range(3)])
    assert replicate_scores(curves, only_first)[0] == pytest.approx(expected)
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def _toy_variants(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Variants, head scores and ensemble scores of two datasets, four levels, three seeds."""
    rng = np.random.default_rng(seed)
    levels = ["species", "genus", "family", "order"]
    rows, heads, ens = [], [], []
    for dataset in ("a", "b"):
        for s in range(3):
            for split in ("val", "test"):
                for lv in levels:
                    rows.append({"dataset": dataset, "variant": "single", "level": lv, "seed": s, "split": split,
                                 "run_id": f"{dataset}-{lv}-{s}", "maxboxacc_v2": rng.uniform(40, 90),
                                 "wall_seconds": 10.0})
                    rows.append({"dataset": dataset, "variant": "short", "level": lv, "seed": s, "split": split,
                                 "run_id": f"{dataset}-{lv}-{s}-short", "maxboxacc_v2": rng.uniform(40, 90),
                                 "wall_seconds": 5.0})
                    heads.append({"run_id": f"{dataset}-mh-{s}", "head": lv, "split": split,
                                  "maxboxacc_v2": rng.uniform(40, 90), "dataset": dataset, "seed": s})
                rows.append({"dataset": dataset, "variant": "mixed", "level": "mixed:x.csv", "seed": s, "split": split,
                             "run_id": f"{dataset}-mixed-{s}", "maxboxacc_v2": rng.uniform(40, 90), "wall_seconds": 10.0})
                rows.append({"dataset": dataset, "variant": "multihead", "level": "species", "seed": s, "split": split,
                             "run_id": f"{dataset}-mh-{s}", "maxboxacc_v2": rng.uniform(40, 90), "wall_seconds": 12.0})
                heads.append({"run_id": f"{dataset}-mh-{s}", "head": "fused", "split": split,
                              "maxboxacc_v2": rng.uniform(40, 90), "dataset": dataset, "seed": s})
                for name in ("species..genus", "genus..order"):
                    ens.append({"dataset": dataset, "seed": s, "levels": name, "split": split,
                                "maxboxacc_v2": rng.uniform(40, 90)})
    return pl.DataFrame(rows), pl.DataFrame(heads), pl.DataFrame(ens)


def _scrambled(frame: pl.DataFrame, split: str, seed: int) -> pl.DataFrame:
    """``frame`` with every ``split`` score replaced by random values."""
    rng = np.random.default_rng(seed)
    noise = pl.Series(rng.uniform(0, 100, frame.height))
    return frame.with_columns(maxboxacc_v2=pl.when(pl.col("split") == split).then(noise).otherwise(pl.col("maxboxacc_v2")))


def _picks(variants: pl.DataFrame, heads: pl.DataFrame, ensembles: pl.DataFrame) -> tuple:
    from inatloc_nb.granularity import selection

    table = selection.comparison_table(variants, heads, ensembles)
    picks = (table.filter(~pl.col("strategy").str.contains("oracle")).sort("dataset", "strategy")
             .select("dataset", "strategy", "detail").rows())
    agreement = selection.selection_agreement(variants, heads).select(
        "dataset", "seed", "selector", "picked", "grid_pick", "agrees", "spearman").rows()
    return picks, agreement, selection.level_table(variants).select("dataset", "level", "df_pick").rows()


def test_scrambling_d_test_changes_no_pick():
    variants, heads, ensembles = _toy_variants()
    before = _picks(variants, heads, ensembles)
    for seed in range(5):
        assert _picks(_scrambled(variants, "test", seed), _scrambled(heads, "test", seed + 10),
                      _scrambled(ensembles, "test", seed + 20)) == before
    changed = _picks(_scrambled(variants, "val", 1), _scrambled(heads, "val", 2), _scrambled(ensembles, "val", 3))
    assert changed != before  # the picks do read D_f


@pytest.mark.slow
def test_choose_levels_ignores_d_test(explorer_results, tmp_path):
    """The labelling is the same when every run's D_test CAMs are swapped with another run's."""
    from inatloc_nb.cli import main

    scrambled = tmp_path / "scrambled"
    shutil.copytree(explorer_results, scrambled)
    tests = sorted((scrambled / "runs").glob("*/cams/test.npz"))
    assert len(tests) == 3
    data = [p.read_bytes() for p in tests]
    for path, other in zip(tests, data[1:] + data[:1], strict=True):
        path.write_bytes(other)
    outs = []
    for folder in (explorer_results, scrambled):
        outs.append(tmp_path / f"{folder.name}.csv")
        assert main(["choose-levels", str(folder), "--dataset", "tiny", "--out", str(outs[-1])]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def _no_heads() -> pl.DataFrame:
    return pl.DataFrame(schema={"run_id": pl.String, "head": pl.String, "split": pl.String,
                                "maxboxacc_v2": pl.Float64, "dataset": pl.String, "seed": pl.Int64})


@pytest.mark.slow
def test_comparison_ignores_explainer_rows(granularity_results):
    from inatloc_nb.granularity import selection
    from inatloc_nb.runs import results

    store = results.load(granularity_results)
    variants = selection.run_variants(store, full_schedule="2")
    own = selection.comparison_table(variants, _no_heads())
    gradcam = store.filter(pl.col("explainer") == "cam").with_columns(explainer=pl.lit("gradcam"),
                                                                      maxboxacc_v2=pl.lit(1.0))
    for mixed_in in (pl.concat([gradcam, store]), pl.concat([store, gradcam])):  # Grad-CAM rows first or last
        with_explainers = selection.run_variants(mixed_in, full_schedule="2")
        assert set(with_explainers["explainer"]) == {"cam"}
        assert selection.comparison_table(with_explainers, _no_heads()).equals(own)
    with pytest.raises(InatlocError, match="more than once; one row per run and split"):
        selection.comparison_table(pl.concat([variants, variants.head(1)]), _no_heads())


@pytest.mark.slow
def test_comparison_intervals_include_the_test_sample(granularity_results):
    from inatloc_nb.granularity import selection
    from inatloc_nb.granularity.evidence import sweep_dataset
    from inatloc_nb.granularity.intervals import PairedBootstrap, replicate_scores, run_image_curves
    from inatloc_nb.runs import results

    variants = selection.run_variants(results.load(granularity_results), full_schedule="2")
    test_rows = variants.filter(pl.col("split") == "test")
    dataset = sweep_dataset(variants, "tiny")
    for run_id, score in test_rows.select("run_id", "maxboxacc_v2").iter_rows():  # all weights 1: the run's score
        curves = run_image_curves(granularity_results / "runs" / run_id, dataset)
        assert curves.shape == (dataset.images("test").height, 3, 1000)
        assert replicate_scores(curves, np.ones((1, curves.shape[0]), dtype=np.int64))[0] == pytest.approx(score)
    intervals = PairedBootstrap(granularity_results, variants, n_boot=500)
    table = selection.comparison_table(variants, _no_heads(), intervals=intervals)
    best = table.filter(pl.col("strategy") == "best single level (D_f)").row(0, named=True)
    assert (best["ci_low"], best["ci_high"]) == (0.0, 0.0)
    mixed = table.filter(pl.col("strategy") == "mixed labelling").row(0, named=True)
    assert mixed["ci_low"] <= mixed["gain"] <= mixed["ci_high"] and mixed["ci_low"] < mixed["ci_high"]
    again = selection.comparison_table(variants, _no_heads(), intervals=PairedBootstrap(granularity_results, variants,
                                                                                        n_boot=500))
    assert again.equals(table)  # reproducible draws
    # two worlds (the same runs under a second name): pooled rows average the worlds
    twin = variants.with_columns(dataset=pl.lit("tiny2"))
    pooled = selection.comparison_table(pl.concat([variants, twin]), _no_heads(),
                                        intervals=PairedBootstrap(granularity_results, pl.concat([variants, twin]),
                                                                  n_boot=500))
    row = pooled.filter((pl.col("dataset") == selection.ALL_WORLDS) & (pl.col("strategy") == "mixed labelling"))
    assert row["gain"][0] == pytest.approx(mixed["gain"]) and row["n_seeds"][0] == 2
    assert row["ci_low"][0] <= row["gain"][0] <= row["ci_high"][0]
    levels = selection.level_table(variants)
    assert levels["level"].to_list() == ["species", "order", "phylum"]
    assert levels["df_pick"].sum() == 1 and levels["oracle"].sum() == 1


@pytest.mark.slow
def test_mixed_runs_keep_a_checked_copy_of_their_labelling(granularity_results):
    import json

    from inatloc_nb.granularity import selection
    from inatloc_nb.hierarchies.labelling import RUN_COPY, LabellingError, labelling_path, run_labelling
    from inatloc_nb.runs import results
    from inatloc_nb.runs.run_model import load_run_model

    variants = selection.run_variants(results.load(granularity_results), full_schedule="2")
    run_dir = granularity_results / "runs" / variants.filter(pl.col("variant") == "mixed")["run_id"][0]
    source = labelling_path(variants.filter(pl.col("variant") == "mixed")["level"][0])
    assert run_labelling(run_dir) == run_dir / RUN_COPY
    assert (run_dir / RUN_COPY).read_bytes() == source.read_bytes()
    summary = selection.labelling_summary(variants, granularity_results)
    original = source.read_bytes()
    try:
        # overwritten after training: the summary and the model still use what the run trained on
        lines = original.decode().splitlines()
        source.write_text("\n".join(lines[:1] + [f"{line.split(',')[0]},{line.split(',')[0]},species"
                                                 for line in lines[1:]]) + "\n", encoding="utf-8")
        assert selection.labelling_summary(variants, granularity_results).equals(summary)
        _, config, _ = load_run_model(run_dir, device="cpu")
        assert config.level == f"mixed:{run_dir / RUN_COPY}"
        # a run without a copy checks the original against its run id's digest
        params = json.loads((run_dir / "params.json").read_text())
        copy = (run_dir / RUN_COPY).read_bytes()
        (run_dir / "params.json").write_text(json.dumps({k: v for k, v in params.items() if k != "labelling"}))
        with pytest.raises(LabellingError, match="overwritten after training"):
            run_labelling(run_dir)
        source.write_bytes(original)
        assert run_labelling(run_dir) == source
        (run_dir / "params.json").write_text(json.dumps(params))
        (run_dir / RUN_COPY).write_bytes(copy + b"# edited\n")
        with pytest.raises(LabellingError, match="the copy was altered"):
            selection.labelling_summary(variants, granularity_results)
        (run_dir / RUN_COPY).write_bytes(copy)
    finally:
        source.write_bytes(original)
    assert selection.labelling_summary(variants, granularity_results).equals(summary)


def test_sweep_dry_run_validates_the_labelling_content(hierarchy, tmp_path):
    from inatloc_nb.sweep import ConfigError, SweepConfig, plan

    config = SweepConfig.from_dict({"datasets": {"tiny": "synth:tiny:3"}, "levels": ["species", "mixed:tiny.csv"],
                                    "lrs": [0.1]}, path=tmp_path / "sweep.yaml")
    rows = "\n".join(f"{leaf},{hierarchy.parent(leaf)},genus" for leaf in hierarchy.leaves[1:])
    (tmp_path / "tiny.csv").write_text(f"category,node,level\nspeciesX,genus0,genus\n{rows}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sweep.yaml: levels: the labelling for dataset 'tiny' is not valid: "
                                          r".*tiny.csv:2: unknown category 'speciesX'"):
        plan(config, tmp_path / "results")
    write_labelling(tmp_path / "tiny.csv", hierarchy, {leaf: hierarchy.parent(leaf) for leaf in hierarchy.leaves})
    assert len(plan(config, tmp_path / "results")) == 2


def test_synthetic_taxonomy_is_known_without_images(tiny_dataset):
    from inatloc_nb.sweep.checks import dataset_hierarchy

    built = dataset_hierarchy("synth:tiny:5")
    loaded = tiny_dataset.hierarchy
    assert built.leaves == loaded.leaves and built.nodes == loaded.nodes and built.levels == loaded.levels
    assert all(built.ancestors(n) == loaded.ancestors(n) for n in loaded.nodes)


@pytest.mark.slow
def test_coarsened_species_cams_rank_the_levels(granularity_results):
    from inatloc_nb.granularity import selection
    from inatloc_nb.runs import results

    variants = selection.run_variants(results.load(granularity_results), full_schedule="2")
    coarsened = selection.all_coarsened_scores(granularity_results, variants)
    assert coarsened["level"].to_list() == sorted(["species", "genus", "family", "order", "class", "phylum"])
    species = variants.filter((pl.col("variant") == "single") & (pl.col("level") == "species") & (pl.col("split") == "val"))
    rescored = selection.coarsened_scores(granularity_results / "runs" / species["run_id"][0], levels=["species"])
    # the finest level's weights are the classifier's own: its CAMs and score are the run's
    assert rescored["maxboxacc_v2"][0] == pytest.approx(species["maxboxacc_v2"][0], abs=1e-9)
    assert coarsened["maxboxacc_v2"].is_between(0, 100).all()
    assert coarsened["seconds"].n_unique() == 1 and coarsened["seconds"][0] > 0
    agreement = selection.selection_agreement(variants, _no_heads(), coarsened)
    row = agreement.filter(pl.col("selector") == selection.COARSENED).row(0, named=True)
    assert row["picked"] in {"species", "order", "phylum"} and row["grid_pick"] in {"species", "order", "phylum"}
    seconds = variants.filter((pl.col("variant") == "single") & (pl.col("split") == "val"))["wall_seconds"]
    assert row["cost"] == pytest.approx((species["wall_seconds"][0] + coarsened["seconds"][0]) / seconds.sum())
    summary = selection.agreement_summary(agreement)
    assert summary.filter(pl.col("selector") == selection.COARSENED)["n_seeds"][0] == 1
    with pytest.raises(InatlocError, match="coarsened CAMs need a plain cam run at the finest level"):
        order = variants.filter((pl.col("variant") == "single") & (pl.col("level") == "order"))["run_id"][0]
        selection.coarsened_scores(granularity_results / "runs" / order)
