"""Automatic level selection and the side-by-side comparison of granularity strategies.

A results store of ``configs/beyond.yaml`` (or ``configs/replication.yaml``) holds, per dataset and seed, four kinds of runs
(:func:`run_variants`): ``single`` (CAM at one named level, the full schedule), ``short``
(the same with the short schedule), ``mixed`` (CAM on a ``mixed:FILE`` labelling) and
``multihead`` (one run with a head per level). :func:`head_scores` re-scores a multi-head run
with the CAM of every head and the fused CAM.

- :func:`comparison_table`: D_test MaxBoxAccV2 (mean, std over seeds) of the best single level
  (chosen on D_f, as the paper's grid search does; and the D_test oracle), of the mixed
  labelling and of the multi-head variants, with paired bootstrap intervals of the gains
  (:mod:`~inatloc_nb.granularity.intervals`); :func:`level_table`: every level's scores.
- :func:`selection_agreement`: for each cheap selector (the short runs, the heads of one
  multi-head run, the species run's CAMs coarsened to every level: :func:`coarsened_scores`)
  and seed, the level it picks on D_f, whether it is the level the full grid picks on D_f, the
  rank correlation of the two D_f rankings, the D_test cost of its pick and its share of the
  grid's training time.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.granularity.intervals import PairedBootstrap, percentile_interval
from inatloc_nb.hierarchies.labelling import is_mixed, labelling_path
from inatloc_nb.runs.runfolder import run_folder

#: Name of the per-head scores a multi-head run folder caches.
HEADS_FILE = "heads.parquet"
#: The multi-head CAM that averages every head's normalised CAM.
FUSED = "fused"
#: Name of the coarsened-CAM scores a finest-level run folder caches, and of that selector.
COARSENED_FILE = "coarsened.parquet"
COARSENED = "coarsened species CAMs"


def _finished(store: pl.DataFrame) -> pl.DataFrame:
    """Finished rows of runs trained on all of D_w and scored at their own level with their own
    maps (a run's post-hoc explainer rows share its run id and are left out)."""
    from inatloc_nb.runs.explainers import OWN_MAPS

    own = (pl.col("explainer") == OWN_MAPS) if "explainer" in store.columns else pl.lit(True)
    return store.filter((pl.col("status") == "ok") & pl.col("per_class").is_null()
                        & (pl.col("level") == pl.col("train_level")) & own)


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
    shows the CAM passes (``inatloc_nb.core.progress``)."""
    from inatloc_nb.core.atomic import atomic_write_parquet
    from inatloc_nb.runs.run_model import load_run_model
    from inatloc_nb.training.cam import extract_cams, score_cams
    from inatloc_nb.training.run_config import load_dataset

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
    frames = [head_scores(run_folder(results_dir, run_id).path, progress=progress) for run_id in runs["run_id"]]
    return pl.concat(frames).join(runs, on="run_id")


def coarsened_scores(run_dir: str | Path, splits: tuple[str, ...] = ("val",), levels: Sequence[str] | None = None,
                     refresh: bool = False) -> pl.DataFrame:
    """``run_id, level, split, maxboxacc_v2, seconds`` of a finished finest-level CAM run,
    scored at ``levels`` (default: every coarser named level with two or more classes) without
    training: a coarser class's CAM uses the mean of its finest classes' classifier weights (a
    CAM is linear in them, so it is the mean of their CAMs), the image's class at that level as
    target; at the finest level it is the run's own CAM. ``seconds``: the time the re-scoring
    took. The default levels are cached in the run folder (:data:`COARSENED_FILE`, written
    atomically); ``refresh`` recomputes."""
    import time

    import torch

    from inatloc_nb.core.atomic import atomic_write_parquet
    from inatloc_nb.runs.run_model import load_run_model
    from inatloc_nb.training.cam import extract_cams, score_cams
    from inatloc_nb.training.run_config import load_dataset

    run_dir = Path(run_dir)
    cache = run_dir / COARSENED_FILE
    if cache.is_file() and not refresh and levels is None:
        return pl.read_parquet(cache)
    start = time.perf_counter()
    model, config, method = load_run_model(run_dir, device="cpu")
    dataset = load_dataset(config.data, config.image_root)
    hierarchy = dataset.hierarchy
    classifier = getattr(model, "classifier", None)
    if method.name != "cam" or not isinstance(classifier, torch.nn.Linear) or config.level != hierarchy.levels[0]:
        raise InatlocError(f"{run_dir}: a {method.name!r} run at {config.level!r}; coarsened CAMs need a plain "
                           f"cam run at the finest level {hierarchy.levels[0]!r}")
    weights = classifier.weight.detach()
    rows = []
    for level in hierarchy.levels[1:] if levels is None else levels:
        index = torch.as_tensor(np.asarray(hierarchy.level_index(level)), dtype=torch.long)  # leaf -> class at level
        n_classes = len(hierarchy.level_names(level))
        if n_classes < 2:
            continue
        members = torch.zeros(n_classes, len(index)).index_put_((index, torch.arange(len(index))), torch.tensor(1.0))
        model.classifier = torch.nn.Linear(weights.shape[1], n_classes)
        with torch.no_grad():
            model.classifier.weight.copy_((members / members.sum(1, keepdim=True)) @ weights)
        for split in splits:
            cams = extract_cams(model, dataset, split, level, image_size=config.image_size,
                                batch_size=config.batch_size, device="cpu", num_workers=0)
            rows.append({"run_id": run_dir.name, "level": level, "split": split,
                         "maxboxacc_v2": score_cams(cams, dataset).mean})
    model.classifier = classifier
    table = pl.DataFrame(rows, schema={"run_id": pl.String, "level": pl.String, "split": pl.String,
                                       "maxboxacc_v2": pl.Float64}).with_columns(
        seconds=pl.lit(time.perf_counter() - start))
    if levels is None:
        atomic_write_parquet(cache, table)
    return table


def all_coarsened_scores(results_dir: str | Path, variants: pl.DataFrame) -> pl.DataFrame:
    """:func:`coarsened_scores` of every finest-level ``single`` run in ``variants`` on D_f,
    with ``dataset`` and ``seed``; the finest level's row is the run's own D_f score."""
    from inatloc_nb.granularity.evidence import sweep_dataset

    single = variants.filter(pl.col("variant") == "single").select("run_id", "dataset", "seed", "level").unique()
    frames = []
    for (dataset,), runs in single.group_by("dataset"):
        finest = sweep_dataset(variants, dataset).hierarchy.levels[0]
        for run_id, seed in runs.filter(pl.col("level") == finest).select("run_id", "seed").sort("seed").iter_rows():
            coarser = coarsened_scores(run_folder(results_dir, run_id).path)
            own = variants.filter((pl.col("run_id") == run_id) & (pl.col("split") == "val")).select(
                "run_id", "level", "split", "maxboxacc_v2", seconds=pl.lit(coarser["seconds"][0]))
            frames.append(pl.concat([own, coarser], how="vertical_relaxed")
                          .with_columns(dataset=pl.lit(dataset), seed=pl.lit(seed, dtype=pl.Int64)))
    if not frames:
        return pl.DataFrame(schema={"run_id": pl.String, "level": pl.String, "split": pl.String,
                                    "maxboxacc_v2": pl.Float64, "seconds": pl.Float64, "dataset": pl.String,
                                    "seed": pl.Int64})
    return pl.concat(frames).sort("dataset", "seed", "level")


def _wide(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """``dataset, seed, <key>, [run_id,] val, test`` from long ``split`` rows (``run_id`` when
    ``frame`` has it); two scores of one run and split are refused, naming the run."""
    index = ["dataset", "seed", key, *(["run_id"] if "run_id" in frame.columns else [])]
    rows = frame.filter(pl.col("split").is_in(["val", "test"]))
    twins = rows.filter(pl.struct(*index, "split").is_duplicated())
    if twins.height:
        row = twins.row(0, named=True)
        raise InatlocError(f"{row.get('run_id', row['dataset'])}: {twins.height} rows score {key} {row[key]!r} seed "
                           f"{row['seed']} on {row['split']} more than once; one row per run and split expected")
    return rows.pivot(on="split", index=index, values="maxboxacc_v2")


def _pick(scores: pl.DataFrame, key: str, by: str) -> pl.DataFrame:
    """Per ``dataset, seed``: the row with the highest ``by`` (first in order on ties)."""
    keep = ["dataset", "seed", key, *(["run_id"] if "run_id" in scores.columns else []), "val", "test"]
    return (scores.sort(["dataset", "seed", by], descending=[False, False, True], maintain_order=True)
            .group_by("dataset", "seed", maintain_order=True).first().select(keep))


#: ``dataset`` of the comparison rows that pool every dataset (world).
ALL_WORLDS = "all worlds"


def level_table(variants: pl.DataFrame) -> pl.DataFrame:
    """Per dataset and level (finest first) of the ``single`` runs: ``val`` (mean D_f),
    ``test`` and ``test_std`` (D_test mean and std over seeds), ``n_seeds``, and which level the
    grid search picks on mean D_f (``df_pick``) and which scores best on D_test (``oracle``)."""
    from inatloc_nb.datasets.synth import LEVELS

    single = _wide(variants.filter(pl.col("variant") == "single"), "level")
    table = (single.group_by("dataset", "level")
             .agg(val=pl.col("val").mean(), test=pl.col("test").mean(), test_std=pl.col("test").std(),
                  n_seeds=pl.len())
             .with_columns(df_pick=pl.col("val") == pl.col("val").max().over("dataset"),
                           oracle=pl.col("test") == pl.col("test").max().over("dataset"),
                           order=pl.col("level").map_elements(lambda lv: LEVELS.index(lv) if lv in LEVELS else len(LEVELS),
                                                              return_dtype=pl.Int64)))
    return table.sort("dataset", "order", "level").drop("order")


def comparison_table(variants: pl.DataFrame, heads: pl.DataFrame, ensembles: pl.DataFrame | None = None,
                     intervals: PairedBootstrap | None = None) -> pl.DataFrame:
    """Per dataset and strategy: ``dataset, strategy, detail, mean, std, n_seeds`` of D_test
    MaxBoxAccV2 over seeds (``detail``: the level(s) picked) and ``gain``, ``gain_std``: the
    mean and standard deviation over seeds of the strategy's score minus that of the best
    single level (D_f) with the same seed. With ``ensembles``
    (:func:`~inatloc_nb.granularity.ensemble.ensemble_scores`), also the level ensemble whose
    range has the best mean D_f score. With ``intervals``, ``ci_low`` and ``ci_high``: the
    paired bootstrap interval of ``gain`` over test images and seeds
    (:mod:`~inatloc_nb.granularity.intervals`), for the strategies scored by a run's own maps
    (single levels, the mixed labelling); null for the others. With two or more datasets, rows
    ``dataset = "all worlds"`` pool each strategy present in all of them: the mean over
    datasets of ``mean`` and ``gain``, the interval from the datasets' replicates averaged.
    Sorted best first per dataset."""
    single = _wide(variants.filter(pl.col("variant") == "single"), "level")
    by_level = single.group_by("dataset", "level").agg(val=pl.col("val").mean(), test=pl.col("test").mean())
    rows = []
    replicates: dict[str, dict[str, np.ndarray]] = {}

    def add(dataset: str, strategy: str, detail: str, scores: pl.DataFrame, reference: pl.DataFrame) -> None:
        values = scores["test"].drop_nulls()
        paired = scores.join(reference.select("seed", ref="test", **({"ref_run": "run_id"} if "run_id" in reference.columns else {})),
                             on="seed")
        gains = paired.select(gain=pl.col("test") - pl.col("ref"))["gain"].drop_nulls()
        low = high = None
        if intervals is not None and "run_id" in paired.columns and "ref_run" in paired.columns and paired.height:
            boot = intervals.gain_replicates(dataset, list(zip(paired["run_id"], paired["ref_run"], strict=True)))
            replicates.setdefault(strategy, {})[dataset] = boot
            low, high = percentile_interval(boot)
        rows.append({"dataset": dataset, "strategy": strategy, "detail": detail, "mean": values.mean(),
                     "std": values.std() if len(values) > 1 else float("nan"), "n_seeds": len(values),
                     "gain": gains.mean(), "gain_std": gains.std() if len(gains) > 1 else float("nan"),
                     "ci_low": low, "ci_high": high})

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
            wide = _wide(mh.drop("run_id", strict=False), "head")
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
    table = pl.DataFrame(rows, schema_overrides={"ci_low": pl.Float64, "ci_high": pl.Float64})
    datasets = table["dataset"].unique().to_list()
    if len(datasets) > 1:
        pooled = []
        for (strategy,), group in table.group_by("strategy", maintain_order=True):
            if group.height != len(datasets):
                continue
            boot = replicates.get(strategy, {})
            low = high = None
            if len(boot) == len(datasets):
                low, high = percentile_interval(np.mean([boot[d] for d in sorted(boot)], axis=0))
            pooled.append({"dataset": ALL_WORLDS, "strategy": strategy, "detail": f"{len(datasets)} datasets",
                           "mean": group["mean"].mean(), "std": float("nan"), "n_seeds": int(group["n_seeds"].sum()),
                           "gain": group["gain"].mean(), "gain_std": float("nan"), "ci_low": low, "ci_high": high})
        table = pl.concat([table, pl.DataFrame(pooled, schema=table.schema)])
    return table.sort(["dataset", "mean"], descending=[False, True], nulls_last=True)


def selection_agreement(variants: pl.DataFrame, heads: pl.DataFrame,
                        coarsened: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per dataset, seed and selector (``short runs``, ``multihead heads`` and, with
    ``coarsened`` (:func:`all_coarsened_scores`), ``coarsened species CAMs``): ``picked``, the
    grid's D_f pick ``grid_pick``, ``agrees``, ``spearman`` (D_f rankings over the levels
    both score), ``test_of_pick`` and ``test_of_grid_pick`` (D_test of those levels in the full
    grid) and ``cost`` (selector seconds / grid training seconds; for the coarsened CAMs, the
    species run's training plus the re-scoring)."""
    from scipy.stats import spearmanr

    single = _wide(variants.filter(pl.col("variant") == "single"), "level")
    cost = (variants.filter(pl.col("split") == "val").group_by("dataset", "seed", "variant")
            .agg(seconds=pl.col("wall_seconds").sum()))
    selectors = {
        "short runs": (_wide(variants.filter(pl.col("variant") == "short"), "level"), "short"),
        "multihead heads": (_wide(heads.filter(pl.col("head") != FUSED), "head").rename({"head": "level"}),
                            "multihead"),
    }
    if coarsened is not None and coarsened.height:
        selectors[COARSENED] = (_wide(coarsened.drop("seconds", strict=False), "level"), COARSENED)
        extra = coarsened.group_by("dataset", "seed").agg(seconds=pl.col("seconds").first())
        species = (variants.filter((pl.col("split") == "val") & pl.col("run_id").is_in(coarsened["run_id"].unique().to_list()))
                   .select("dataset", "seed", "wall_seconds"))
        cost = pl.concat([cost, species.join(extra, on=["dataset", "seed"])
                          .select("dataset", "seed", variant=pl.lit(COARSENED),
                                  seconds=pl.col("wall_seconds") + pl.col("seconds"))], how="diagonal_relaxed")
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


def labelling_summary(variants: pl.DataFrame, results_dir: str | Path) -> pl.DataFrame:
    """Per mixed labelling trained in ``variants``: ``dataset, file, sha1, level, categories``
    (how many finest categories were given each level), read from the copy each mixed run
    keeps (:func:`~inatloc_nb.hierarchies.labelling.run_labelling`, digest checked). The mixed runs of one
    dataset must share one labelling; runs trained on different contents are refused, named."""
    import csv

    from inatloc_nb.hierarchies.labelling import file_digest, run_labelling

    rows = []
    mixed = variants.filter(pl.col("variant") == "mixed").select("dataset", "run_id").unique().sort("dataset", "run_id")
    for (dataset,), runs in mixed.group_by("dataset", maintain_order=True):
        files = {}
        for run_id in runs["run_id"]:
            path = run_labelling(run_folder(results_dir, run_id).path)
            files.setdefault(file_digest(path), []).append((run_id, path))
        if len(files) > 1:
            shown = "; ".join(f"{sha[:10]}: {', '.join(r for r, _ in items)}" for sha, items in files.items())
            raise InatlocError(f"the mixed runs of {dataset!r} were trained on {len(files)} different labellings "
                               f"({shown}); compare runs of one labelling")
        sha, [(_, path), *_] = next(iter(files.items()))
        with path.open(encoding="utf-8-sig") as f:  # as read_labelling: a byte-order mark is accepted
            chosen = [row["level"] for row in csv.DictReader(line for line in f if not line.startswith("#"))]
        source = labelling_path(variants.filter(pl.col("run_id") == runs["run_id"][0])["level"][0])
        for lv in dict.fromkeys(chosen):
            rows.append({"dataset": dataset, "file": source.name, "sha1": sha[:10], "level": lv,
                         "categories": chosen.count(lv)})
    return pl.DataFrame(rows, schema={"dataset": pl.String, "file": pl.String, "sha1": pl.String, "level": pl.String,
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
    intervals = PairedBootstrap(results_dir, variants)
    tables = {"granularity_comparison": ("Choosing the granularity: D_test MaxBoxAccV2 (%) over seeds; gain over the "
                                         "best single level with its 95 % paired bootstrap interval (ci_low, ci_high)",
                                         comparison_table(variants, heads, ensembles, intervals)),
              "granularity_levels": ("D_test MaxBoxAccV2 (%) of every single level (df_pick: the grid search's "
                                     "level; oracle: the best on D_test)", level_table(variants))}
    agreement = selection_agreement(variants, heads, all_coarsened_scores(results_dir, variants))
    if agreement.height:
        tables["level_selection"] = ("Automatic level selection on D_f against the full grid",
                                     agreement_summary(agreement))
    labellings = labelling_summary(variants, results_dir)
    if labellings.height:
        tables["mixed_labellings"] = ("Mixed labellings: categories per chosen level", labellings)
    return tables


__all__ = ["ALL_WORLDS", "COARSENED", "COARSENED_FILE", "FUSED", "HEADS_FILE", "agreement_summary",
           "all_coarsened_scores", "all_head_scores", "coarsened_scores", "comparison_table", "granularity_tables",
           "head_scores", "infer_schedules", "labelling_summary", "level_table", "run_variants",
           "selection_agreement"]
