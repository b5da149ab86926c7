"""``inatloc-nb report RESULTS_DIR --out DIR``: the paper's tables and figures as an HTML report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    parser = subparsers.add_parser(
        "report", help="tables, figures and report.html from a results folder",
        description="Consolidate a results folder and write the paper's tables (CSV, markdown), "
                    "figures (HTML, PNG) and one self-contained report.html. Damaged run files are "
                    "left out of the report and named, with the reason, on stderr.",
    )
    parser.add_argument("results_dir", type=Path, help="results folder of a sweep (holds runs/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS_DIR/report)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress: print only the path of report.html (skipped files are still "
                             "named on stderr)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a damaged run file was skipped (the report is "
                             "still written)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report and print the path of report.html; with ``--strict``, 1 when files were skipped."""
    from inatloc_nb.reports.report import build_report

    out = args.out if args.out is not None else args.results_dir / "report"
    skipped: list[str] = []
    print(build_report(args.results_dir, out, progress=not args.quiet, skipped=skipped))
    if skipped and args.strict:
        print(f"inatloc-nb report: {len(skipped)} damaged run file(s) skipped (--strict)", file=sys.stderr)
        return 1
    return 0
