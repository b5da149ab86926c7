"""``inatloc-nb sweep CONFIG.yaml``: run (or list, with ``--dry-run``) a granularity sweep."""
from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.core.validate import arg_type, integer

if TYPE_CHECKING:
    from inatloc_nb.sweep import RunSpec, SweepConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` subcommand."""
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of training runs (02_train_wsol notebook) and collect the results store",
        description="Expand a sweep YAML into runs and execute the ones not finished yet; "
        "rerunning resumes (finished runs are skipped, failed ones retried).",
    )
    parser.add_argument("config", help="sweep YAML (see configs/ and docs/results_schema.md)")
    parser.add_argument("--results", default="runs", help="results folder (default: ./runs)")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="local process pool (default) or Dask distributed")
    parser.add_argument("--scheduler", default=None,
                        help="address of an existing Dask scheduler, e.g. tcp://host:8786 (implies --executor dask)")
    parser.add_argument("--max-parallel", type=arg_type(integer, int, minimum=1), default=None,
                        help="runs at once (default: --runs-per-gpu per GPU, or 1 on CPU)")
    parser.add_argument("--runs-per-gpu", type=arg_type(integer, int, minimum=1, maximum=64), default=None,
                        metavar="N", help="runs packed on each GPU (default: the config's runs_per_gpu, "
                        "else 1); lowered to what free GPU memory holds")
    parser.add_argument("--fuse-lrs", action=argparse.BooleanOptionalAction, default=None,
                        help="train runs that differ only in lr together, one loader per group (default: "
                        "the config's fuse_lrs, else on with a GPU)")
    parser.add_argument("--notebook", default=None,
                        help="training notebook (default: the shipped notebooks/02_train_wsol.ipynb; "
                             "see inatloc-nb shipped)")
    parser.add_argument("--grid", action="append", default=None, metavar="NAME",
                        help="run only this grid (main, an extra grid's name or a baseline); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and which are finished; run nothing")
    parser.add_argument("--rates", metavar="CHECK.json", default=None,
                        help="with --dry-run: the GPU hours of the runs left, from the rates a "
                        "`benchmarks/gpu_check.py --json` output measured (docs/cost_model.md)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from inatloc_nb.sweep import SweepConfig, plan, run_sweep

    config = SweepConfig.from_yaml(args.config)
    if args.grid:
        config = config.select_grids(args.grid)
    if args.rates and not args.dry_run:
        raise InatlocError("--rates estimates the hours of a --dry-run; add --dry-run")
    if args.dry_run:
        runs = plan(config, args.results)
        reused = "  (takes the outputs of the main grid's run at the selected lr)"
        for spec, finished in runs:
            print(f"{'finished' if finished else 'to run  '}  {spec.run_id}"
                  + (reused if not finished and spec.repeats_a_candidate() else ""))
        n_done = sum(finished for _, finished in runs)
        n_reused = sum(not finished and spec.repeats_a_candidate() for spec, finished in runs)
        print(f"{len(runs)} runs: {n_done} finished, {len(runs) - n_done} to run"
              + (f", {n_reused} of them without training" if n_reused else "") + f" (results in {args.results})")
        if args.rates:
            print(_estimate(config, [spec for spec, finished in runs if not finished], args.rates,
                            args.runs_per_gpu or config.runs_per_gpu))
        return 0
    executor = "dask" if args.scheduler else args.executor
    summary = run_sweep(config, args.results, executor=executor, scheduler=args.scheduler,
                        max_parallel=args.max_parallel, notebook=args.notebook, runs_per_gpu=args.runs_per_gpu,
                        fuse_lrs=args.fuse_lrs)
    return 1 if summary.failed else 0


def _estimate(config: SweepConfig, todo: list[RunSpec], rates_file: str, runs_per_gpu: int) -> str:
    """The cost model's GPU hours of ``todo`` (``inatloc_nb.sweep.cost``), as one paragraph."""
    from inatloc_nb.sweep.cost import Rates, gpu_hours, sweep_work
    from inatloc_nb.training.run_config import load_dataset

    rates = Rates.from_json(rates_file, prepared=bool(config.prepared))
    datasets = {name: load_dataset(data, allow_overlap=True) for name, data in config.datasets.items()}
    work = sweep_work(todo, datasets)
    hours = gpu_hours(work, rates, runs_per_gpu)
    terms = ", ".join(f"{name.removesuffix('_h')} {value:.2f} h" for name, value in hours.items() if name != "total_h")
    return (f"GPU estimate of the {len(todo)} runs to run: {hours['total_h']:.2f} h ({terms}); "
            f"{work.train_images:,} training images, {work.eval_images:,} evaluated, {work.valid_images:,} "
            f"validated; one run's rates from {rates_file}, fixed costs shared by {runs_per_gpu} run(s) at once"
            + ("" if rates.valid else "; no validation rate in that check, so validation is left out"))
