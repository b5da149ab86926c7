"""Automatic level selection and the side-by-side comparison of granularity strategies.

A results store of ``configs/beyond.yaml`` holds, per dataset and seed, four kinds of runs
(:func:`run_variants`): ``single`` (CAM at one named level, the full schedule), ``short``
(the same with the short schedule), ``mixed`` (CAM on a ``mixed:FILE`` labelling) and
``multihead`` (one run with a head per level). :func:`head_scores` re-scores a multi-head run
with the CAM of every head and the fused CAM.

- :func:`comparison_table`: D_test MaxBoxAccV2 (mean, std over seeds) of the best single level
  (chosen on D_f, as the paper's grid search does; and the D_test oracle), of the mixed
  labelling and of the multi-head variants.
- :func:`selection_agreement`: for each cheap selector (the short runs, the heads of one
  multi-head run) and seed, the level it picks on D_f, whether it is the level the full grid
  picks on D_f, the rank correlation of the two D_f rankings, the D_test cost of its pick and
  its share of the grid's training time.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from inatloc_nb.errors import InatlocError
from inatloc_nb.labelling import is_mixed, labelling_path

#: Name of the per-head scores a multi-head run folder caches.
HEADS_FILE = "heads.parquet"
#: The multi-head CAM that averages every head's normalised CAM.
FUSED = "fused"


def _finished(store: pl.DataFrame) -> pl.DataFrame:
    """Finished rows of runs trained on all of D_w and scored at their own level."""
    return store.filter((pl.col("status") == "ok") & pl.col("per_class").is_null()
                        & (pl.col("level") == pl.col("train_level")))


def infer_schedules(store: pl.DataFrame) -> tuple[str, str | None]:
    """``(full, short)``: the schedule of the multi-head and mixed runs, and the one other
    schedule of single-level CAM runs (None when there is none or several)."""
    ok = _finished(store)
    mixed = pl.col("level").map_elements(is_mixed, return_dtype=pl.Boolean)
    full = ok.filter((pl.col("method") == "multihead") | mixed)["schedule"].unique().sort().to_list()
    if not full:
        raise InatlocError("no finished multi-head or mixed runs in the results")
    if len(full) > 1:
        raise InatlocError(f"multi-head and mixed runs use several schedules {full}; compare one at a time")
    others = ok.filter((pl.col("method") == "cam") & ~mixed & (pl.col("schedule") != full[0]))["schedule"].unique()
    return full[0], others[0] if len(others) == 1 else None


def run_variants(store: pl.DataFrame, full_schedule: str | None = None, short_schedule: str | None = None) -> pl.DataFrame:
    """Finished, all-image rows of ``store`` with a ``variant`` column (``single``, ``short``,
    ``mixed``, ``multihead``); other rows (baselines, other schedules) are left out. Without
    ``full_schedule`` both schedules come from :func:`infer_schedules`."""
    if full_schedule is None:
        full_schedule, short_schedule = infer_schedules(store)
    ok = _finished(store)
    mixed = pl.col("level").map_elements(is_mixed, return_dtype=pl.Boolean)
    variant = (pl.when(pl.col("method") == "multihead").then(pl.lit("multihead"))
               .when((pl.col("method") == "cam") & mixed).then(pl.lit("mixed"))
               .when((pl.col("method") == "cam") & (pl.col("schedule") == str(full_schedule))).then(pl.lit("single"))
               .when((pl.col("method") == "cam") & (pl.col("schedule") == str(short_schedule))).then(pl.lit("short"))
               .otherwise(None))
    out = ok.with_columns(variant=variant).filter(pl.col("variant").is_not_null()
                                                  & ((pl.col("variant") != "multihead")
                                                     | (pl.col("schedule") == str(full_schedule))))
    if out.filter(pl.col("variant") == "single").height == 0:
        raise InatlocError(f"no finished single-level CAM runs with schedule {full_schedule!r} in the results")
    twins = (out.group_by("dataset", "variant", "level", "method", "schedule", "seed")
             .agg(pl.col("run_id").unique().sort()).filter(pl.col("run_id").list.len() > 1))
    if twins.height:
        row = twins.row(0, named=True)
        raise InatlocError(
            f"{twins.height} run(s) of the same kind and seed appear more than once, e.g. {row['dataset']} "
            f"{row['level']} {row['method']} seed {row['seed']}: {', '.join(row['run_id'])} (for a mixed "
            "level: its labelling was chosen anew; move the runs of the old labelling out of the results folder)")
    return out


def head_scores(run_dir: str | Path, splits: tuple[str, ...] = ("val", "test"), refresh: bool = False,
                progress: bool = True) -> pl.DataFrame:
    """``run_id, head, split, maxboxacc_v2`` of a finished multi-head run: the CAMs of every
    head (``head`` = its level) and the fused CAM, scored like the run's own. Cached in the
    run folder (``heads.parquet``, written atomically); ``refresh`` recomputes; ``progress``
    shows the CAM passes (``inatloc_nb.progress``)."""
    from inatloc_nb.cam import extract_cams, score_cams
    from inatloc_nb.io import atomic_write_parquet
    from inatloc_nb.run_config import load_dataset
    from inatloc_nb.run_model import load_run_model

    run_dir = Path(run_dir)
    cache = run_dir / HEADS_FILE
    if cache.is_file() and not refresh:
        return pl.read_parquet(cache)
    model, config, method = load_run_model(run_dir, device="cpu")
    if method.name != "multihead":
        raise InatlocError(f"{run_dir}: a {method.name!r} run; head scores need a multihead run")
    dataset = load_dataset(config.data, config.image_root)
    rows = []
    for head in (*method.hparams["levels"], FUSED):
        model.cam_level = head
        for split in splits:
            cams = extract_cams(model, dataset, split, config.level, image_size=config.image_size,
                                batch_size=config.batch_size, device="cpu", num_workers=0, progress=progress)
            rows.append({"run_id": run_dir.name, "head": head, "split": split,
                         "maxboxacc_v2": score_cams(cams, dataset).mean})
    table = pl.DataFrame(rows)
    atomic_write_parquet(cache, table)
    return table


def all_head_scores(results_dir: str | Path, variants: pl.DataFrame, progress: bool = True) -> pl.DataFrame:
    """:func:`head_scores` of every multi-head run in ``variants``, with ``dataset`` and ``seed``."""
    runs = variants.filter(pl.col("variant") == "multihead").select("run_id", "dataset", "seed").unique()
    if runs.height == 0:
        return pl.DataFrame(schema={"run_id": pl.String, "head": pl.String, "split": pl.String,
                                    "maxboxacc_v2": pl.Float64, "dataset": pl.String, "seed": pl.Int64})
    frames = [head_scores(Path(results_dir) / "runs" / run_id, progress=progress) for run_id in runs["run_id"]]
    return pl.concat(frames).join(runs, on="run_id")


def _wide(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """``dataset, seed, <key>, val, test`` from long ``split`` rows."""
    return (frame.filter(pl.col("split").is_in(["val", "test"]))
            .pivot(on="split", index=["dataset", "seed", key], values="maxboxacc_v2", aggregate_function="first"))


def _pick(scores: pl.DataFrame, key: str, by: str) -> pl.DataFrame:
    """Per ``dataset, seed``: the row with the highest ``by`` (first in order on ties)."""
    return (scores.sort(["dataset", "seed", by], descending=[False, False, True], maintain_order=True)
            .group_by("dataset", "seed", maintain_order=True).first().select("dataset", "seed", key, "val", "test"))


def comparison_table(variants: pl.DataFrame, heads: pl.DataFrame,
                     ensembles: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per dataset and strategy: ``dataset, strategy, detail, mean, std, n_seeds`` of D_test
    MaxBoxAccV2 over seeds (``detail``: the level(s) picked) and ``gain``, ``gain_std``: the
    mean and standard deviation over seeds of the strategy's score minus that of the best
    single level (D_f) with the same seed. With ``ensembles``
    (:func:`~inatloc_nb.granularity.ensemble.ensemble_scores`), also the level ensemble whose
    range has the best mean D_f score. Sorted best first per dataset."""
    single = _wide(variants.filter(pl.col("variant") == "single"), "level")
    by_level = single.group_by("dataset", "level").agg(val=pl.col("val").mean(), test=pl.col("test").mean())
    rows = []

    def add(dataset: str, strategy: str, detail: str, scores: pl.DataFrame, reference: pl.DataFrame) -> None:
        values = scores["test"].drop_nulls()
        gains = (scores.join(reference.select("seed", ref="test"), on="seed")
                 .select(gain=pl.col("test") - pl.col("ref"))["gain"].drop_nulls())
        rows.append({"dataset": dataset, "strategy": strategy, "detail": detail, "mean": values.mean(),
                     "std": values.std() if len(values) > 1 else float("nan"), "n_seeds": len(values),
                     "gain": gains.mean(), "gain_std": gains.std() if len(gains) > 1 else float("nan")})

    for dataset in sorted(single["dataset"].unique()):
        mine = single.filter(pl.col("dataset") == dataset)
        levels = by_level.filter(pl.col("dataset") == dataset)
        picked = levels.sort("val", descending=True)["level"][0]
        oracle = levels.sort("test", descending=True)["level"][0]
        best = mine.filter(pl.col("level") == picked)
        add(dataset, "best single level (D_f)", picked, best, best)
        add(dataset, "best single level (oracle)", oracle, mine.filter(pl.col("level") == oracle), best)
        per_seed = _pick(mine, "level", "val")
        add(dataset, "single level picked per seed (D_f)", ", ".join(per_seed["level"].to_list()), per_seed, best)
        mixed = _wide(variants.filter((pl.col("variant") == "mixed") & (pl.col("dataset") == dataset)), "level")
        if mixed.height:
            add(dataset, "mixed labelling", "choose-levels", mixed, best)
        mh = heads.filter(pl.col("dataset") == dataset)
        if mh.height:
            wide = _wide(mh, "head")
            add(dataset, "multihead, fused CAM", FUSED, wide.filter(pl.col("head") == FUSED), best)
            picked_heads = _pick(wide.filter(pl.col("head") != FUSED), "head", "val")
            add(dataset, "multihead, best head (D_f)", ", ".join(picked_heads["head"].to_list()), picked_heads, best)
        fused = _wide(ensembles.filter(pl.col("dataset") == dataset), "levels") if ensembles is not None else None
        if fused is not None and fused.height:
            ranked = fused.group_by("levels").agg(pl.col("val").mean()).sort("val", "levels", descending=[True, False])
            chosen = ranked["levels"][0]
            add(dataset, "level ensemble (D_f)", chosen, fused.filter(pl.col("levels") == chosen), best)
    if not rows:
        raise InatlocError("no single-level runs to compare")
    return pl.DataFrame(rows).sort(["dataset", "mean"], descending=[False, True], nulls_last=True)


def selection_agreement(variants: pl.DataFrame, heads: pl.DataFrame) -> pl.DataFrame:
    """Per dataset, seed and selector (``short runs``, ``multihead heads``): ``picked``, the
    grid's D_f pick ``grid_pick``, ``agrees``, ``spearman`` (D_f rankings over the levels
    both score), ``test_of_pick`` and ``test_of_grid_pick`` (D_test of those levels in the full
    grid) and ``cost`` (selector training seconds / grid training seconds)."""
    from scipy.stats import spearmanr

    single = _wide(variants.filter(pl.col("variant") == "single"), "level")
    cost = (variants.filter(pl.col("split") == "val").group_by("dataset", "seed", "variant")
            .agg(seconds=pl.col("wall_seconds").sum()))
    selectors = {
        "short runs": (_wide(variants.filter(pl.col("variant") == "short"), "level"), "short"),
        "multihead heads": (_wide(heads.filter(pl.col("head") != FUSED), "head").rename({"head": "level"}),
                            "multihead"),
    }
    rows = []
    for (dataset, seed), grid in single.group_by("dataset", "seed", maintain_order=True):
        grid_val = dict(zip(grid["level"], grid["val"], strict=True))
        grid_test = dict(zip(grid["level"], grid["test"], strict=True))
        grid_pick = max(grid_val, key=grid_val.get)
        grid_seconds = cost.filter((pl.col("dataset") == dataset) & (pl.col("seed") == seed)
                                   & (pl.col("variant") == "single"))["seconds"].sum()
        for name, (frame, variant) in selectors.items():
            mine = frame.filter((pl.col("dataset") == dataset) & (pl.col("seed") == seed)
                                & pl.col("level").is_in(list(grid_val)))
            if mine.height < 2:
                continue
            val = dict(zip(mine["level"], mine["val"], strict=True))
            picked = max(val, key=val.get)
            common = sorted(val)
            rho = spearmanr([val[lv] for lv in common], [grid_val[lv] for lv in common]).statistic
            seconds = cost.filter((pl.col("dataset") == dataset) & (pl.col("seed") == seed)
                                  & (pl.col("variant") == variant))["seconds"].sum()
            rows.append({"dataset": dataset, "seed": seed, "selector": name, "picked": picked,
                         "grid_pick": grid_pick, "agrees": picked == grid_pick, "spearman": float(rho),
                         "test_of_pick": grid_test[picked], "test_of_grid_pick": grid_test[grid_pick],
                         "cost": seconds / grid_seconds if grid_seconds else float("nan")})
    return pl.DataFrame(rows)


def agreement_summary(agreement: pl.DataFrame) -> pl.DataFrame:
    """Per dataset and selector: how often the pick agrees with the grid's, the mean rank
    correlation, the mean D_test lost against the grid's pick and the mean cost share."""
    return (agreement.group_by("dataset", "selector", maintain_order=True)
            .agg(agree=pl.col("agrees").sum(), n_seeds=pl.len(), mean_spearman=pl.col("spearman").mean(),
                 mean_test_loss=(pl.col("test_of_grid_pick") - pl.col("test_of_pick")).mean(),
                 mean_cost=pl.col("cost").mean())
            .sort("dataset", "selector"))


def labelling_summary(variants: pl.DataFrame) -> pl.DataFrame:
    """Per mixed labelling trained in ``variants``: ``dataset, file, level, categories`` (how
    many finest categories were given each level), read from the labelling files."""
    import csv

    rows = []
    for dataset, level in variants.filter(pl.col("variant") == "mixed").select("dataset", "level").unique().sort("dataset").iter_rows():
        path = labelling_path(level)
        if not path.is_file():
            raise InatlocError(f"{path}: the labelling of the mixed runs of {dataset!r} is gone")
        with path.open(encoding="utf-8-sig") as f:  # as read_labelling: a byte-order mark is accepted
            chosen = [row["level"] for row in csv.DictReader(line for line in f if not line.startswith("#"))]
        for lv in dict.fromkeys(chosen):
            rows.append({"dataset": dataset, "file": path.name, "level": lv, "categories": chosen.count(lv)})
    return pl.DataFrame(rows, schema={"dataset": pl.String, "file": pl.String, "level": pl.String,
                                      "categories": pl.Int64})


def granularity_tables(results_dir: str | Path, store: pl.DataFrame,
                       progress: bool = False) -> dict[str, tuple[str, pl.DataFrame]] | None:
    """The report's tables (name -> (title, table)) when ``store`` holds multi-head or mixed
    runs, else None. Schedules as :func:`infer_schedules` finds them; ``progress`` shows the
    multi-head re-scoring and level ensembles' progress (minutes on a first call, cached
    afterwards)."""
    beyond = store.filter((pl.col("status") == "ok") & ((pl.col("method") == "multihead")
                                                         | pl.col("level").map_elements(is_mixed, return_dtype=pl.Boolean)))
    if beyond.height == 0:
        return None
    from inatloc_nb.granularity.ensemble import ensemble_scores

    variants = run_variants(store)
    heads = all_head_scores(results_dir, variants, progress=progress)
    ensembles = ensemble_scores(results_dir, variants, progress=progress)
    tables = {"granularity_comparison": ("Choosing the granularity: D_test MaxBoxAccV2 (%) over seeds",
                                         comparison_table(variants, heads, ensembles))}
    agreement = selection_agreement(variants, heads)
    if agreement.height:
        tables["level_selection"] = ("Automatic level selection on D_f against the full grid",
                                     agreement_summary(agreement))
    labellings = labelling_summary(variants)
    if labellings.height:
        tables["mixed_labellings"] = ("Mixed labellings: categories per chosen level", labellings)
    return tables


__all__ = ["FUSED", "HEADS_FILE", "agreement_summary", "all_head_scores", "comparison_table",
           "granularity_tables", "head_scores", "infer_schedules", "labelling_summary", "run_variants",
           "selection_agreement"]
