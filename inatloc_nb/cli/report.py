"""``inatloc-nb report RESULTS_DIR --out DIR``: the paper's tables and figures as an HTML report."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    parser = subparsers.add_parser(
        "report", help="tables, figures and report.html from a results folder",
        description="Consolidate a results folder and write the paper's tables (CSV, markdown), "
                    "figures (HTML, PNG) and one self-contained report.html.",
    )
    parser.add_argument("results_dir", type=Path, help="results folder of a sweep (holds runs/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS_DIR/report)")
    parser.add_argument("--quiet", action="store_true", help="print only the path of report.html")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report and print the path of report.html."""
    from inatloc_nb.report import build_report

    out = args.out if args.out is not None else args.results_dir / "report"
    print(build_report(args.results_dir, out, progress=not args.quiet))
    return 0
