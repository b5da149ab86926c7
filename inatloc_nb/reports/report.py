"""The results report: the paper's tables and figures from a results folder, without Jupyter.

:func:`build_report` consolidates the store (``results.collect``), applies the paper's model
selection (``results.select_learning_rate``) and writes, under the output folder:

* ``tables/<dataset>_<name>.csv`` and ``.md`` (Table 2, Table A2 / top-1 by level, Table A3
  chosen learning rates) and ``tables/runs.csv`` (every run with its status and error);
* ``figures/<dataset>_<name>.html`` and ``.png`` (Fig. 3 left/right, 4, 5, A3, A4);
* ``report.html``: every table and every PNG embedded, so the single file can be mailed.

A figure the results cannot support (say, no subsampled runs for Fig. 4, or no analysis
tables for Fig. 5) is listed in the report with the reason, never silently left out.
"""
from __future__ import annotations

import base64
import html
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from inatloc_nb.core.atomic import atomic_write_text
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.reports import plots
from inatloc_nb.runs import results
from inatloc_nb.runs.runfolder import RUNS_DIR

__all__ = ["ReportError", "Figure", "FIGURES", "level_table", "method_table", "learning_rate_table",
           "run_table", "selected_results", "metrics_table", "selected_analysis", "draw_figures", "build_report"]


class ReportError(InatlocError):
    """A results folder a report cannot be made from (no runs, or no finished run)."""


@dataclass(frozen=True)
class Figure:
    """One figure of the report: ``draw(best, analysis)`` returns an altair chart."""

    name: str
    caption: str
    draw: Callable[[pl.DataFrame, pl.DataFrame], object]


#: The report's figures, in order.
FIGURES = (
    Figure("fig3_localization", "Fig. 3 (left): test MaxBoxAccV2 by training level, per method (CAM-Agg: "
           "species-level CAM averaged over each level's species).", lambda b, a: plots.localization_by_level(b)),
    Figure("fig3_classification", "Fig. 3 (right): test top-1 accuracy at the training granularity.",
           lambda b, a: plots.classification_by_level(b)),
    Figure("fig4_data_efficiency", "Fig. 4: CAM MaxBoxAccV2 against the number of training images; squares: "
           "per-category subsamples (mean +- std over seeds), circles: all of D_w, dashed: finest level on all "
           "of D_w.", lambda b, a: plots.data_efficiency(b)),
    Figure("fig5_analysis", "Fig. 5 (left): medians over D_f of predicted / GT box area and of GT-box activation "
           "(CAM, selected learning rate, optimal threshold at IoU 50).", lambda b, a: plots.analysis_medians(a)),
    Figure("fig5_components", "Fig. 5 (right): connected components of the binarised CAM on D_f.",
           lambda b, a: plots.component_counts(a)),
    Figure("figA3_per_iou", "Fig. A3: CAM MaxBoxAcc per IoU threshold, absolute and relative to the finest level.",
           lambda b, a: plots.per_iou_by_level(b)),
    Figure("figA4_seed_spread", "Fig. A4: CAM MaxBoxAccV2 of every seed at each level (tick: mean).",
           lambda b, a: plots.seed_spread(b)),
)


def _levels_wide(long: pl.DataFrame, value: str) -> pl.DataFrame:
    """``method`` x level pivot of ``value`` with the levels finest first."""
    order = plots.level_order(long["level"].to_list())
    wide = long.pivot(on="level", index="method", values=value)
    return wide.select("method", *(lv for lv in order if lv in wide.columns))


def _labelled(table: pl.DataFrame) -> pl.DataFrame:
    return table.with_columns(pl.col("method").replace(plots.METHOD_LABELS))


def level_table(best: pl.DataFrame, value: str = "maxboxacc_v2") -> pl.DataFrame:
    """Table A2 (``maxboxacc_v2``) or the top-1 table (``top1``): mean over seeds of the selected
    runs on all of D_w, one row per level-trained method, one column per level (finest first)."""
    full = best.filter(pl.col("per_class").is_null() & ~pl.col("method").is_in(plots.NOT_BY_LEVEL)).drop_nulls(value)
    if full.height == 0:
        raise ReportError(f"no finished run on all of D_w with a {value} value")
    long = full.group_by("method", "level").agg(pl.col(value).mean().round(1))
    return _labelled(_levels_wide(long, value)).sort("method")


def method_table(best: pl.DataFrame) -> pl.DataFrame:
    """Table 2: test MaxBoxAccV2 of each method at each dataset's finest level (all of D_w,
    mean over seeds); CAM-Agg is left out (at the finest level it is CAM)."""
    full = best.filter(pl.col("per_class").is_null() & (pl.col("method") != "cam-agg"))
    finest = {ds: plots.level_order(g["level"].to_list())[0] for (ds,), g in full.group_by("dataset")}
    rows = full.filter(pl.col("level") == pl.col("dataset").replace_strict(finest, return_dtype=pl.String))
    if rows.height == 0:
        raise ReportError("no finished run at a dataset's finest level")
    long = rows.group_by("method", "dataset").agg(pl.col("maxboxacc_v2").mean().round(1))
    return _labelled(long.pivot(on="dataset", index="method", values="maxboxacc_v2")).sort("method")


def learning_rate_table(best: pl.DataFrame) -> pl.DataFrame:
    """Table A3: the learning rate(s) chosen on D_f, per method and level (all of D_w)."""
    full = best.filter(pl.col("per_class").is_null() & pl.col("lr").is_not_null())
    if full.height == 0:
        raise ReportError("no trained run on all of D_w")
    long = full.group_by("method", "level").agg(
        pl.col("lr").unique().sort().map_elements(lambda v: f"{v:g}", return_dtype=pl.String).str.join(" / "))
    return _labelled(_levels_wide(long, "lr")).sort("method")


def run_table(store: pl.DataFrame) -> pl.DataFrame:
    """One row per run: parameters, status, wall time and error message (failed runs included)."""
    return store.group_by("run_id", maintain_order=True).agg(
        pl.col("dataset", "train_level", "method", "lr", "seed", "per_class", "status",
               "wall_seconds", "error").first())


def selected_results(results_dir: str | Path, problems: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The consolidated store of ``results_dir`` (``results.collect``) and its selected D_test
    rows (``results.select_learning_rate``); ReportError when there is no run or none finished.
    With a ``problems`` list, damaged run folders are left out and described there."""
    results_dir = Path(results_dir)
    store = results.collect(results_dir, problems)
    if store.height == 0:
        raise ReportError(f"{results_dir}: no run folders under {results_dir / RUNS_DIR}")
    best = results.select_learning_rate(store)
    if best.height == 0:
        n_runs = store["run_id"].n_unique()
        raise ReportError(f"{results_dir}: none of the {n_runs} runs finished (see {results_dir / RUNS_DIR})")
    return store, best


def metrics_table(metrics: Mapping[str, Any]) -> pl.DataFrame:
    """A run's ``metrics.json`` as a table: one row per evaluated split (and level, for CAM-Agg)."""
    blocks = metrics["per_level"] if "per_level" in metrics else {metrics.get("level"): metrics}
    rows = []
    for level, block in blocks.items():
        for split, values in (("test", block), *((k, v) for k, v in block.items() if isinstance(v, Mapping)
                                                  and "maxboxacc_v2" in v)):
            rows.append({"level": level, "split": split, "maxboxacc_v2": values["maxboxacc_v2"],
                         **{f"maxboxacc_{d}": values["per_iou"][str(d)] for d in results.IOU_THRESHOLDS},
                         "top1": values.get("top1")})
    return pl.DataFrame(rows)


def selected_analysis(analysis: pl.DataFrame, best: pl.DataFrame, method: str = "cam") -> pl.DataFrame:
    """The D_f rows of ``results.load_analysis`` for the ``best`` (selected) runs of ``method``
    on all of D_w: what Fig. 5 summarises."""
    if analysis.height == 0:
        return analysis
    chosen = analysis.filter(pl.col("run_id").is_in(best["run_id"].implode()) & pl.col("per_class").is_null()
                             & (pl.col("method") == method))
    return chosen.filter(pl.col("split") == "val") if "split" in chosen.columns else chosen


def draw_figures(best: pl.DataFrame, analysis: pl.DataFrame) -> dict[str, Any]:
    """Every :data:`FIGURES` entry drawn from ``best`` / ``analysis`` (one dataset): name -> chart,
    or name -> the reason it cannot be drawn."""
    drawn: dict[str, Any] = {}
    for fig in FIGURES:
        try:
            drawn[fig.name] = fig.draw(best, analysis)
        except plots.PlotError as exc:
            drawn[fig.name] = str(exc)
    return drawn


def _markdown(table: pl.DataFrame) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, tbl_width_chars=1000, fmt_str_lengths=200):
        return f"{table}\n"


def _html_table(table: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{'' if v is None else html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class _Page:
    sections: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.sections.append(f"<h2>{html.escape(text)}</h2>")

    def table(self, title: str, table: pl.DataFrame) -> None:
        self.sections.append(f"<h3>{html.escape(title)}</h3>{_html_table(table)}")

    def figure(self, caption: str, png: Path, interactive: Path, root: Path) -> None:
        data = base64.b64encode(png.read_bytes()).decode()
        link = html.escape(str(interactive.relative_to(root)))
        self.sections.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                             f'<figcaption>{html.escape(caption)} <a href="{link}">interactive</a></figcaption></figure>')

    def note(self, text: str) -> None:
        self.sections.append(f'<p class="note">{html.escape(text)}</p>')

    def render(self, title: str) -> str:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;"
                 "text-align:right}th{background:#eee}img{max-width:100%}figure{margin:1em 0 2em}"
                 ".note{color:#a33}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self.sections)}"
                "</body></html>\n")


def _short_levels(table: pl.DataFrame) -> pl.DataFrame:
    """``level`` / ``train_level`` as :func:`inatloc_nb.hierarchies.labelling.short_name` gives them."""
    from inatloc_nb.hierarchies.labelling import short_name

    return table.with_columns(pl.col(c).map_elements(short_name, return_dtype=pl.String)
                              for c in ("level", "train_level") if c in table.columns)


def build_report(results_dir: str | Path, out_dir: str | Path, progress: bool = True,
                 skipped: list[str] | None = None) -> Path:
    """Write the tables, figures and ``report.html`` of ``results_dir`` under ``out_dir``; return
    the path of ``report.html``.

    ``progress`` prints what is written; damaged run files left out of the report are named
    (with the reason) on stderr whatever ``progress`` says, and appended to ``skipped`` when
    it is a list."""
    say = print if progress else (lambda *a, **k: None)
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    problems: list[str] = []
    store, explained = selected_results(results_dir, problems)  # validated before anything is written
    # every table and figure but the explainer one is about the runs' own maps
    store = store.filter(pl.col("explainer") == results.OWN_MAPS)
    best = explained.filter(pl.col("explainer") == results.OWN_MAPS)
    runs = run_table(store)
    analysis = _short_levels(selected_analysis(results.load_analysis(results_dir, problems), best))
    best = _short_levels(best)  # tables and figures name a mixed level by its file, not its path

    page = _Page()
    if problems:
        page.heading(f"Skipped: {len(problems)} damaged run file(s), left out of every table and figure")
        for problem in problems:
            page.note(problem)
            print(f"warning: skipped {problem}", file=sys.stderr)
        if skipped is not None:
            skipped.extend(problems)
    n_failed = runs.filter(pl.col("status") != "ok").height
    page.heading(f"Runs: {runs.height} ({n_failed} failed); learning rates chosen on D_f, scores on D_test")
    if n_failed:
        page.table("Failed runs", runs.filter(pl.col("status") != "ok").select("run_id", "error"))
    _write_table(out_dir / "tables" / "runs", runs)
    tables = {"table2_methods": ("Table 2: MaxBoxAccV2 at the finest level", method_table, best)}
    _add_tables(page, out_dir, "", tables)
    for (dataset,), group in best.group_by("dataset", maintain_order=True):
        page.heading(f"Dataset {dataset}")
        _add_tables(page, out_dir, f"{dataset}_", {
            "tableA2_maxboxacc": ("Table A2: MaxBoxAccV2 (%) by training level", level_table, group),
            "top1_by_level": ("Top-1 accuracy (%) at the training level", lambda t: level_table(t, "top1"), group),
            "tableA3_lr": ("Table A3: chosen learning rates", learning_rate_table, group),
        })
        group_analysis = analysis.filter(pl.col("dataset") == dataset) if analysis.height else analysis
        for fig, (name, chart) in zip(FIGURES, draw_figures(group, group_analysis).items()):
            if isinstance(chart, str):
                page.note(f"{fig.caption.split(':')[0]} not drawn: {chart}")
                continue
            html_path, png_path = plots.save_chart(chart, out_dir / "figures" / f"{dataset}_{name}")
            page.figure(fig.caption, png_path, html_path, out_dir)
            say(f"wrote {png_path}")
    _add_granularity(page, out_dir, results_dir, store, progress)
    _add_explainers(page, out_dir, explained, say)
    title = results.sweep_name(results_dir) or results_dir.resolve().name
    return atomic_write_text(out_dir / "report.html", page.render(f"inatloc-nb results: {title}"))


def _add_granularity(page: _Page, out_dir: Path, results_dir: Path, store: pl.DataFrame,
                     progress: bool) -> None:
    """The section comparing single-level, mixed and multi-head training, when the store has them
    (``inatloc_nb.granularity.selection``; ``configs/beyond.yaml``)."""
    from inatloc_nb.granularity.selection import granularity_tables

    tables = granularity_tables(results_dir, store, progress)
    if tables is None:
        return
    page.heading("Choosing the granularity: single level, mixed labelling, multi-head")
    for name, (title, table) in tables.items():
        _write_table(out_dir / "tables" / name, table)
        page.table(title, table)
    html_path, png_path = plots.save_chart(plots.granularity_comparison(tables["granularity_comparison"][1]),
                                           out_dir / "figures" / "granularity_comparison")
    page.figure("D_test MaxBoxAccV2 of each granularity strategy (mean +- std over seeds).", png_path, html_path,
                out_dir)


def _add_explainers(page: _Page, out_dir: Path, explained: pl.DataFrame, say: Any) -> None:
    """MaxBoxAccV2 by level for each post-hoc explainer scored on the runs (``inatloc-nb explain``
    or a sweep's ``explainers:``), per dataset, when there are any."""
    if explained.filter(pl.col("explainer") != results.OWN_MAPS).height == 0:
        return
    page.heading("Post-hoc explainers on the trained models")
    for (dataset,), group in explained.group_by("dataset", maintain_order=True):
        try:
            chart = plots.explainers_by_level(group)
        except plots.PlotError as exc:
            page.note(f"{dataset}: explainer figure not drawn: {exc}")
            continue
        html_path, png_path = plots.save_chart(chart, out_dir / "figures" / f"{dataset}_explainers_by_level")
        page.figure(f"{dataset}: test MaxBoxAccV2 by training level for each explainer (cam: the run's own "
                    "CAM; each explainer's learning rate chosen on its own D_f score).", png_path, html_path, out_dir)
        say(f"wrote {png_path}")


def _add_tables(page: _Page, out_dir: Path, prefix: str, tables: dict) -> None:
    for name, (title, make, source) in tables.items():
        try:
            table = make(source)
        except ReportError as exc:
            page.note(f"{title} not made: {exc}")
            continue
        _write_table(out_dir / "tables" / f"{prefix}{name}", table)
        page.table(title, table)


def _write_table(stem: Path, table: pl.DataFrame) -> None:
    atomic_write_text(stem.with_suffix(".csv"), table.write_csv())
    atomic_write_text(stem.with_suffix(".md"), _markdown(table))
