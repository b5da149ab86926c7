"""``inatloc-nb choose-levels RESULTS_DIR --dataset NAME --out FILE``: a per-category labelling."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``choose-levels`` subcommand."""
    parser = subparsers.add_parser(
        "choose-levels",
        help="choose one label level per category from the D_f evidence of a sweep's single-level runs",
        description="Reads the per-image D_f box accuracy of every single-level CAM run of one dataset "
        "in a results folder, picks a level per finest category, resolves conflicts into a valid "
        "labelling (no label a descendant of another) and writes it as a CSV usable as the sweep "
        "level mixed:FILE, with a table of why each category got its level (docs/granularity.md).",
    )
    parser.add_argument("results", help="results folder of a sweep (with results.parquet and runs/)")
    parser.add_argument("--dataset", required=True, help="dataset name as in the sweep config")
    parser.add_argument("--out", required=True, help="labelling CSV to write (category,node,level)")
    parser.add_argument("--why", default=None,
                        help="table of the reasons (CSV; default: OUT with suffix -why.csv)")
    parser.add_argument("--schedule", default=None,
                        help="use the runs of this schedule (needed when the dataset has several)")
    parser.add_argument("--prior", type=float, default=None,
                        help="shrinkage toward each level's overall D_f accuracy, in images (default 4)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inatloc_nb.core.atomic import atomic_write_text
    from inatloc_nb.granularity.choose import DEFAULT_PRIOR, category_scores, choose_levels
    from inatloc_nb.granularity.evidence import run_evidence, sweep_dataset
    from inatloc_nb.hierarchies.labelling import write_labelling
    from inatloc_nb.runs import results

    evidence = run_evidence(args.results, args.dataset, args.schedule)
    hierarchy = sweep_dataset(results.load(args.results), args.dataset).hierarchy
    labelling, why = choose_levels(category_scores(evidence, DEFAULT_PRIOR if args.prior is None else args.prior),
                                   hierarchy)
    out = write_labelling(args.out, hierarchy, labelling)
    why_path = Path(args.why) if args.why else out.with_name(f"{out.stem}-why.csv")
    atomic_write_text(why_path, why.write_csv(float_precision=4))
    counts = why.group_by("chosen_level").len().sort("len", descending=True)
    summary = ", ".join(f"{n} at {lv}" for lv, n in counts.iter_rows())
    print(f"{args.dataset}: {why.height} categories -> {len(set(labelling.values()))} classes ({summary})")
    print(f"labelling: {out}\nreasons:   {why_path}\nuse it as the sweep level  mixed:{out.resolve()}")
    return 0

