"""``inatloc-nb demo [--out DIR]``: a small granularity study end to end on a CPU.

Generates the synthetic ``demo`` world inside ``DIR`` (once), runs ``configs/demo.yaml``
through the sweep (finished runs are reused), writes the report and prints MaxBoxAccV2 by
training level and the path of ``report.html``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from inatloc_nb.core.resources import shipped_folder

#: The sweep the demo runs: the shipped ``configs/demo.yaml`` (installed package or source tree).
DEMO_CONFIG = shipped_folder("configs") / "demo.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo", help="synthetic data, a small sweep and its report, on a CPU in minutes",
        description="Generate the synthetic demo world, train CAM at every level of its taxonomy "
                    "(configs/demo.yaml), and write the report. Rerunning reuses finished runs.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"),
                        help="output folder: data/, results/, report/ (default: ./demo_output)")
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="sweep YAML (default: configs/demo.yaml)")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="runs at once (default: 2 on a CPU with at least 2 cores, else one per GPU)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Data, sweep, report; prints the MaxBoxAccV2-by-level table and the report's path."""
    import polars as pl

    from inatloc_nb.reports import report
    from inatloc_nb.runs.runfolder import run_folder
    from inatloc_nb.sweep import SweepConfig, run_sweep, visible_gpus
    from inatloc_nb.training.run_config import synth_folder

    out = args.out.resolve()
    os.environ["INATLOC_NB_CACHE"] = str(out / "data")  # synth:demo is generated (once) in here
    config = SweepConfig.from_yaml(args.config)
    # Runs record the generated folder itself, so notebooks opened later find the same images.
    datasets = {name: str(synth_folder(source)) if source.startswith("synth:") else source
                for name, source in config.datasets.items()}
    for name, folder in datasets.items():
        print(f"data {name}: {folder}")
    config = dataclasses.replace(config, datasets=datasets)
    parallel = args.max_parallel
    if parallel is None and not visible_gpus():
        parallel = 2 if (os.cpu_count() or 1) >= 2 else 1
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    summary = run_sweep(config, out / "results", executor="local", max_parallel=parallel)
    page = report.build_report(out / "results", out / "report")

    _, best = report.selected_results(out / "results")
    with pl.Config(tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True, tbl_cols=-1, tbl_width_chars=200):
        for (dataset,), group in best.group_by("dataset", maintain_order=True):
            print(f"\nMaxBoxAccV2 (%) on D_test by training level, dataset {dataset}:")
            print(report.level_table(group))
    if summary.failed:
        where = run_folder(out / "results", "<id>").error_path
        print(f"\n{len(summary.failed)} run(s) failed; see the report and {where}")
    print(f"\nreport: {page}")
    return 1 if summary.failed else 0
