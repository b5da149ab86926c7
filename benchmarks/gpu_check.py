"""The project's GPU figures in one command: every rate the cost model uses, and the grid estimate.

    python benchmarks/gpu_check.py --json            # on a GPU machine, about 6 minutes on one H200
    python benchmarks/gpu_check.py --smoke --json    # tiny sizes on the CPU: checks the script runs

Needs only torch, torchvision, numpy, pillow, opencv and the project with its pure-Python
dependencies. Sections, in order of importance (each one's failure is recorded and the next
runs; sections that would not fit in ``--budget-s`` are skipped and say so):

- ``bare_loop``: the paper's model (28 x 28 ResNet-50, 224 px, the device's precision and
  memory format) on tensors already on the device, SGD step, batch 32 / 64 / 128 / 256:
  training and forward + CAM images/s (float32 as ``extract_cams``, and bf16), GFLOP per
  forward; no data loading.
- ``training_levers``: batch 32 per model, 3 models: stepped one after another, on 3 CUDA
  streams, as CUDA graphs (one; three one after another; three on streams) and under
  ``torch.compile`` (first-step seconds included apart): which lever could lift the training term.
- ``cuda_graphs``: the real Learner trained eagerly and with CUDA-graph steps
  (``inatloc_nb.training.cuda_graphs``) from one seed: both rates and whether the weights are identical.
- ``run_jpeg``: ``bench_training.run_once`` (the real Learner and loaders) on generated 500 px
  JPEGs at batch 32; ``run_prepared``: the same from a prepared copy; ``run_batch64`` /
  ``run_batch128`` / ``run_batch128_prepared``; ``packed3``: three packed runs
  (``bench_training.run_packed``); ``compile``: ``--compile``, with the compilation's
  batches and graph counts.
- ``train_end_to_end``: ``run_experiment`` (what ``inatloc-nb train`` and the notebook run),
  one epoch, D_f and D_test, with where its wall time goes (``phases``) and the fixed cost
  (wall minus training and CAM extraction), plus the import time of a fresh process.
- ``fused``: ``inatloc_nb.runs.fused.run_fused`` of ``--fused-k`` learning rates on the same data:
  aggregate training and CAM images/s and the fixed cost per run.
- ``maxboxacc``: ``bench_maxboxacc.run``: ms per map on one core and with all threads.
- ``grid_estimate``: ``docs/cost_model.md``'s formula with the measured rates.

JSON goes to stdout (``--json``) and, section by section, to ``--out`` (so a run cut short
keeps what it measured).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_maxboxacc  # noqa: E402
import bench_training  # noqa: E402

#: The paper grid (docs/cost_model.md): training images, CAMs and runs executed (287 runs, of
#: which the stability grid's 6 seed-0 runs take the main grid's outputs); the part of it made
#: of runs that differ only in lr (main grid 150 + ACoL 5 runs of 2 x 138k images, 25k CAMs
#: each); the images per evaluated split (D_f, D_test).
GRID = {"train_images": 55.6e6 - 6 * 276_000, "cams": 7.06e6 - 6 * 25_000, "runs": 281,
        "fusable_runs": 155, "fusable_train_images": 155 * 276_000, "fusable_cams": 155 * 25_000,
        "split_images": 12_500,
        # fastai's validation pass over D_f after each of 2 epochs, in the 269 trained WSOL runs
        # (179 on all of D_w, 90 data-efficiency runs; FSL baselines aside)
        "valid_images": 269 * 2 * 12_500, "fusable_valid_images": 155 * 2 * 12_500}


class Check:
    """Runs the sections within a time budget and keeps the results."""

    def __init__(self, budget_s: float, out: Path | None, only: list[str] | None = None):
        self.start, self.budget_s, self.out = time.perf_counter(), budget_s, out
        self.only = set(only or ())
        self.results: dict[str, Any] = {}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def section(self, name: str, needs_s: float, fn: Callable[[], Any]) -> Any:
        if self.only and name not in self.only and name != "environment":
            return None
        if self.left() < needs_s:
            self.results[name] = {"skipped": f"{self.left():.0f} s of the budget left, needs about {needs_s:.0f} s"}
        else:
            start = time.perf_counter()
            try:
                self.results[name] = fn()
            except Exception as exc:  # recorded; the other sections go on
                self.results[name] = {"error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-3000:]}
            if isinstance(self.results[name], dict):
                self.results[name]["section_seconds"] = round(time.perf_counter() - start, 2)
        print(f"[gpu_check] {name}: {json.dumps(self.results[name])[:400]}", file=sys.stderr, flush=True)
        _free()
        self.save()
        return self.results[name]

    def save(self) -> None:
        if self.out is not None:
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=2, default=str))
            os.replace(tmp, self.out)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # each section's peak_gpu_memory_gb is its own


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def environment() -> dict[str, Any]:
    import fastai
    import PIL
    import torchvision

    gpu = torch.cuda.is_available()
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "host": platform.node(),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None,
        "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "torchvision": torchvision.__version__,
                     "fastai": fastai.__version__, "pillow": PIL.__version__, "numpy": np.__version__},
        "driver": _nvidia_smi("driver_version") if gpu else None,
    }


def _nvidia_smi(field: str) -> str | None:
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --- bare loop ------------------------------------------------------------------------------


def _random_batch(settings: Any, batch: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random images (in the run's memory format) and labels on the run's device."""
    device = torch.device(settings.device)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    return (torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt),
            torch.randint(0, bench_training.N_CLASSES, (batch,), device=device))


def bare_loop(model_factory: Callable[[], tuple[torch.nn.Module, Any]], batches: list[int], steps: int,
              warmup: int, image_size: int) -> dict[str, Any]:
    """Training and forward + CAM images/s of the paper's model on device-resident tensors."""
    from fastai.callback.hook import hook_output
    from torch.utils.flop_counter import FlopCounterMode

    model, settings = model_factory()
    device = torch.device(settings.device)
    out: dict[str, Any] = {"amp_dtype": str(settings.amp_dtype) if settings.amp else None,
                           "channels_last": settings.channels_last,
                           "cudnn_benchmark": torch.backends.cudnn.benchmark,
                           "cudnn_deterministic": torch.backends.cudnn.deterministic, "batches": {}}
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(_random_batch(settings, 1, image_size)[0])
    out["gflop_per_forward"] = counter.get_total_flops() / 1e9
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True, weight_decay=1e-5)
    autocast = (lambda: torch.autocast(device.type, dtype=settings.amp_dtype)) if settings.amp else contextlib.nullcontext
    runs = [(bs, False) for bs in batches] + [(batches[0], True)]
    for bs, autotune in runs:
        # the last row: cuDNN autotuning on (training runs keep it off: fastai's reproducible seeding)
        before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = (True, False) if autotune else before
        x, y = _random_batch(settings, bs, image_size)
        model.train()

        def train_step() -> None:
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def cam_step(precision: str) -> None:
            ctx = autocast() if precision == "bf16" else torch.autocast(device.type, enabled=False)
            with torch.no_grad(), ctx, hook_output(model.features, detach=True) as hook:
                logits = model(x).float()
                cams = model.class_activation_maps(hook.stored.float(), logits.argmax(1))
                cams.float().cpu()

        row = {"train_images_per_s": _rate(train_step, bs, steps, warmup)}
        model.eval()
        row["forward_cam_fp32_images_per_s"] = _rate(lambda: cam_step("fp32"), bs, steps, warmup)
        if settings.amp:
            row["forward_cam_bf16_images_per_s"] = _rate(lambda: cam_step("bf16"), bs, steps, warmup)
        out["batches"][f"{bs}{'_cudnn_benchmark' if autotune else ''}"] = row
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before
        del x, y
        _free()
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _rate(step: Callable[[], None], batch: int, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return batch * steps / (time.perf_counter() - start)


def training_levers(model_factory: Callable[[], tuple[torch.nn.Module, Any]], k: int, batch: int, steps: int,
                    warmup: int, image_size: int, compile_budget_s: float) -> dict[str, Any]:
    """What could make the training term faster with every number unchanged, on device-resident
    tensors at ``batch`` per model: ``k`` models (one per learning rate) stepped one after
    another, on ``k`` CUDA streams, as CUDA graphs (one and ``k`` on streams), and the step
    under ``torch.compile`` (with its compilation seconds). Rates are images/s over all models."""
    import copy

    import torch._dynamo

    base, settings = model_factory()
    device = torch.device(settings.device)
    cuda = device.type == "cuda"
    x, y = _random_batch(settings, batch, image_size)
    models = [base] + [copy.deepcopy(base) for _ in range(k - 1)]
    opts = [torch.optim.SGD(m.parameters(), lr=1e-4 * (i + 1), momentum=0.9, nesterov=True, weight_decay=1e-5)
            for i, m in enumerate(models)]
    for m in models:
        m.train()

    def step(i: int, captured: bool = False) -> None:
        # under capture (PyTorch's whole-network recipe): no autocast cache, gradients left
        # in place (set to None before the capture, so each replay writes them anew)
        with (torch.autocast(device.type, dtype=settings.amp_dtype, cache_enabled=not captured) if settings.amp
              else contextlib.nullcontext()):
            loss = torch.nn.functional.cross_entropy(models[i](x), y)
        loss.backward()
        opts[i].step()
        if not captured:
            opts[i].zero_grad(set_to_none=True)

    out: dict[str, Any] = {"k": k, "batch_per_model": batch}
    out["one_model_images_per_s"] = _rate(lambda: step(0), batch, steps, warmup)
    out["k_sequential_images_per_s"] = _rate(lambda: [step(i) for i in range(k)], batch * k, steps, warmup)
    if not cuda:
        out["cuda_only"] = "streams and CUDA graphs need a GPU"
    else:
        streams = [torch.cuda.Stream() for _ in range(k)]

        def on_streams(work: Callable[[int], None]) -> None:
            current = torch.cuda.current_stream()
            for i, s in enumerate(streams):
                s.wait_stream(current)
                with torch.cuda.stream(s):
                    work(i)
            for s in streams:
                current.wait_stream(s)

        out["k_streams_images_per_s"] = _rate(lambda: on_streams(step), batch * k, steps, warmup)
        graphs = []
        for i in range(k):  # whole-step capture (PyTorch's CUDA graphs recipe): warm up on a side stream
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step(i)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opts[i].zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                step(i, captured=True)
            graphs.append(graph)
        out["one_graph_images_per_s"] = _rate(graphs[0].replay, batch, steps, warmup)
        out["k_graphs_sequential_images_per_s"] = _rate(lambda: [g.replay() for g in graphs], batch * k, steps, warmup)
        out["k_graphs_streams_images_per_s"] = _rate(lambda: on_streams(lambda i: graphs[i].replay()),
                                                     batch * k, steps, warmup)
        del graphs
    if compile_budget_s > 0:
        torch._dynamo.reset()
        compiled = torch.compile(models[0])
        models[0] = compiled
        start = time.perf_counter()
        step(0)
        _sync()
        out["compile_first_step_seconds"] = time.perf_counter() - start
        out["compiled_one_model_images_per_s"] = _rate(lambda: step(0), batch, steps, warmup)
        torch._dynamo.reset()
    del models, opts
    return out


# --- the real pipeline ----------------------------------------------------------------------


def bench_run(data: Path, argv: list[str], packed: int = 1) -> dict[str, Any]:
    """``bench_training`` on ``data`` with its command-line ``argv`` (one run, or ``packed``)."""
    args = bench_training.parse_args([*argv, "--runs", str(packed)])
    with contextlib.redirect_stdout(sys.stderr):
        result = bench_training.run_packed(args, data) if packed > 1 else bench_training.run_once(args, data)
    for block in (result, *result.get("runs", [])):
        block["train"].pop("window", None)
    return result


def cuda_graph_run(data: Path, args: argparse.Namespace, warmup: int, steps: int) -> dict[str, Any]:
    """The real Learner on the JPEGs, trained eagerly and with CUDA-graph steps from one seed:
    training images/s of each, and whether the weights after the same batches are identical."""
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.cuda_graphs import graph_summary
    from inatloc_nb.training.learner import build_learner
    from inatloc_nb.training.run_config import RunConfig

    dataset = WSOLDataset.from_folder(data, image_root=data / "images")
    out: dict[str, Any] = {}
    weights = {}
    cuda = args.device != "cpu"
    for way in ("eager", "graphs"):
        config = RunConfig(data=str(data), level=dataset.levels[0], lr=1e-2, backbone=args.backbone,
                           pretrained=False, image_size=args.image_size, device=args.device, schedule=1,
                           num_workers=0 if args.smoke else None, cuda_graphs=cuda and way == "graphs")
        learn = build_learner(dataset, config)
        timer = bench_training.Timer(warmup, steps)
        with learn.added_cbs(timer), learn.no_bar(), learn.no_logging():
            learn.fit(1)
        out[way] = {"train_images_per_s": timer.images / (timer.stop - timer.start), "graphs": graph_summary(learn)}
        weights[way] = {k: v.detach().float().cpu() for k, v in learn.model.state_dict().items()}
        del learn
        _free()
    diffs = [float((weights["eager"][k] - weights["graphs"][k]).abs().max()) for k in weights["eager"]]
    out["weights_identical"] = all(torch.equal(weights["eager"][k], weights["graphs"][k]) for k in weights["eager"])
    out["weights_max_abs_diff"] = max(diffs)
    out["speedup"] = out["graphs"]["train_images_per_s"] / out["eager"]["train_images_per_s"]
    return out


def compile_run(data: Path, argv: list[str]) -> dict[str, Any]:
    """``--compile``: the timed rate, plus how long the warm-up batches (which compile) took
    and how many graphs dynamo compiled over training and CAM extraction."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    start = time.perf_counter()
    result = bench_run(data, [*argv, "--compile"])
    result["wall_seconds_incl_compilation"] = time.perf_counter() - start
    counters = torch._dynamo.utils.counters
    result["dynamo"] = {"unique_graphs": counters["stats"].get("unique_graphs", 0),
                        "calls_captured": counters["stats"].get("calls_captured", 0),
                        "recompiles": {str(k): v for k, v in counters.get("recompiles", {}).items()}}
    torch._dynamo.reset()
    return result


class Phases:
    """``say`` for ``run_experiment`` that timestamps its messages: where a run's time goes."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[float, str]] = []

    def __call__(self, message: str) -> None:
        self.marks.append((time.perf_counter() - self.start, message))
        print(f"[{self.marks[-1][0]:7.2f} s] {message}", file=sys.stderr, flush=True)

    def table(self, end: float) -> list[dict[str, Any]]:
        times = [t for t, _ in self.marks] + [end]
        return [{"phase": m, "seconds": round(times[i + 1] - t, 3)} for i, (t, m) in enumerate(self.marks)]


def _run_config(data: Path, args: argparse.Namespace, lr: float, select_epoch: str, prepared: bool = False) -> Any:
    """A one-epoch CAM run on ``data``; ``prepared``: reading a prepared copy (made at
    ``data/prepared`` when missing, where ``bench_training --prepared`` makes it)."""
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.prepared import prepare_dataset
    from inatloc_nb.training.run_config import RunConfig

    dataset = WSOLDataset.from_folder(data, image_root=data / "images")
    copy = data / "prepared"
    if prepared and not copy.is_dir():
        prepare_dataset(dataset, copy, args.image_size, progress=False)
    return RunConfig(data=str(data), level=dataset.levels[0], method="cam", lr=lr, schedule=1,
                     select_epoch=select_epoch, backbone=args.backbone, pretrained=False, image_size=args.image_size,
                     batch_size=32, device=args.device, prepared=str(copy) if prepared else None,
                     num_workers=1 if args.smoke and prepared else None)  # reading the copy needs workers


def end_to_end(data: Path, work: Path, args: argparse.Namespace, select_epoch: str,
               prepared: bool = False) -> dict[str, Any]:
    """One ``run_experiment``: wall, training and CAM seconds from its timings, and its phases."""
    from inatloc_nb.runs.run import run_experiment

    config = _run_config(data, args, 0.01, select_epoch, prepared)
    out = work / f"e2e-{select_epoch}{'-prepared' if prepared else ''}"
    phases = Phases()
    with contextlib.redirect_stdout(sys.stderr):
        run_experiment(config, out, say=phases)
    _sync()
    wall = time.perf_counter() - phases.start
    timings = json.loads((out / "timings.json").read_text())
    # with "best", D_f's CAMs are those of the selected epoch, timed inside select_epoch_seconds
    cams = sum(v for k, v in timings.items() if k.startswith("cam_") and k.endswith("_seconds")
               and not (select_epoch == "best" and k == "cam_val_seconds"))
    return {"select_epoch": select_epoch, "wall_seconds": wall, "timings": timings,
            "fixed_seconds": wall - timings["train_seconds"] - timings["select_epoch_seconds"] - cams,
            "phases": phases.table(wall), "n_train_images": json.loads((out / "metrics.json").read_text())["n_train_images"]}


def fused_group(data: Path, work: Path, args: argparse.Namespace, k: int) -> dict[str, Any]:
    """``run_fused`` of ``k`` learning rates: aggregate rates and fixed cost per run."""
    from inatloc_nb.runs.fused import run_fused

    lrs = [0.01 * 2**i for i in range(k)]
    configs = [_run_config(data, args, lr, "last") for lr in lrs]
    folders = [work / f"fused-{lr:g}" for lr in lrs]
    phases = Phases()
    with contextlib.redirect_stdout(sys.stderr):
        outcomes = run_fused(configs, folders, say=phases)
    _sync()
    wall = time.perf_counter() - phases.start
    failed = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise RuntimeError(f"fused runs failed: {failed}")
    timings = [json.loads((f / "timings.json").read_text()) for f in folders]
    n_train = json.loads((folders[0] / "metrics.json").read_text())["n_train_images"]
    train_s = max(t["train_seconds"] for t in timings)
    cam_splits = [key for key in timings[0] if key.startswith("cam_") and key.endswith("_seconds")]
    cam_s = sum(max(t[key] for t in timings) for key in cam_splits)
    n_cams = sum(round(timings[0][key] * timings[0][key.replace("_seconds", "_images_per_s")]) for key in cam_splits)
    return {"k": k, "lrs": lrs, "wall_seconds": wall, "n_train_images": n_train,
            "train_images_per_s_aggregate": k * n_train / train_s, "train_seconds": train_s,
            "cam_images_per_s_aggregate": k * n_cams / cam_s, "cam_seconds": cam_s,
            "fixed_seconds_per_run": (wall - train_s - cam_s) / k, "phases": phases.table(wall)}


def import_seconds() -> dict[str, Any]:
    """Seconds a fresh interpreter takes to import what a run imports."""
    code = ("import time; t = time.perf_counter(); import torch, fastai.vision.all, polars; "
            "import inatloc_nb.runs.run, inatloc_nb.training.learner, inatloc_nb.training.cam, inatloc_nb.runs.fused; "
            "print(time.perf_counter() - t)")
    wall = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return {"imports_seconds": float(done.stdout.strip().splitlines()[-1]),
            "process_seconds": time.perf_counter() - wall}


# --- the grid ---------------------------------------------------------------------------------


def grid_estimate(r: dict[str, Any]) -> dict[str, Any]:
    """``docs/cost_model.md``'s GPU-hours of the paper grid (:data:`GRID`) from the measured
    rates (``inatloc_nb.sweep.cost``), for each way of running."""
    from inatloc_nb.core.errors import InatlocError
    from inatloc_nb.sweep.cost import Rates, Work, gpu_hours

    out: dict[str, Any] = {"grid": GRID, "formula": "W_train / A_train + W_eval / A_eval + W_valid / A_valid "
                                                    "+ (n_runs x t_run + W_eval x t_image) / k"}
    try:
        rates = Rates.from_check(r)
    except InatlocError:
        return {**out, "missing": "needs run_jpeg and train_end_to_end"}
    grid = Work(runs=GRID["runs"], train_images=GRID["train_images"], eval_images=GRID["cams"],
                valid_images=GRID["valid_images"])
    fusable = Work(runs=GRID["fusable_runs"], train_images=GRID["fusable_train_images"],
                   eval_images=GRID["fusable_cams"], valid_images=GRID["fusable_valid_images"])
    out["inputs"] = {"A_train_one_run": rates.train, "A_cam_one_run": rates.eval, "A_valid_one_run": rates.valid,
                     "t_run_seconds": rates.seconds_per_run, "post_cam_seconds_per_image": rates.seconds_per_eval_image,
                     "t_run_seconds_at_paper_scale": rates.seconds_per_run
                     + 2 * GRID["split_images"] * rates.seconds_per_eval_image}
    out["one_run_at_a_time"] = gpu_hours(grid, rates)
    prepared = r.get("run_prepared", {}).get("cam_extraction")
    if prepared:  # evaluation splits read from a prepared copy (CAMs in whole batches)
        out["one_run_at_a_time_prepared_cams"] = gpu_hours(grid, rates.replace(eval=prepared["images_per_s"]))
    packed = r.get("packed3", {}).get("aggregate")
    if packed and packed.get("train_windows_overlap_s", 0) <= 0:
        out["packed_3"] = {"not_estimated": "the packed runs' timed windows did not overlap, so the sum of "
                                            "their rates is not a packed throughput"}
    elif packed:
        out["packed_3"] = gpu_hours(grid, rates.replace(train=packed["train_images_per_s_sum"],
                                                        eval=packed["cam_images_per_s_sum"]), runs_at_once=3)
    fused = r.get("fused", {})
    if "train_images_per_s_aggregate" in fused:
        # The fused group is measured end to end (its windows hold worker start-up, the D_f
        # validation pass and the waits of the lockstep), the one-run rates in steady state:
        # the fused rates are the one-run rates times the end-to-end speed-up per run of each phase.
        k, single = fused["k"], r["train_end_to_end"]["timings"]
        r_train = single["train_seconds"] / (fused["train_seconds"] / k)
        r_cam = (single["cam_val_seconds"] + single["cam_test_seconds"]) / (fused["cam_seconds"] / k)
        fused_rates = rates.replace(train=rates.train * r_train, eval=rates.eval * r_cam,
                                    seconds_per_run=fused["fixed_seconds_per_run"])
        fused_part = gpu_hours(fusable, fused_rates)
        fused_part["speedup_per_run"] = {"training": round(r_train, 3), "cams": round(r_cam, 3),
                                         "wall": round(r["train_end_to_end"]["wall_seconds"]
                                                       / (fused["wall_seconds"] / k), 3)}
        rest = gpu_hours(grid - fusable, rates)
        out["fused_lrs"] = {"fused_runs": fused_part, "other_runs_one_at_a_time": rest,
                            "total_h": round(fused_part["total_h"] + rest["total_h"], 2),
                            "k": fused["k"], "note": "the main grid and ACoL fused by lr; the other runs one at a time"}
    return out


def _distributions() -> list[str]:
    """The installed distributions this process imported (what a bare machine must be given)."""
    from importlib.metadata import packages_distributions

    found = packages_distributions()
    return sorted({d for name in {m.split(".")[0] for m in list(sys.modules)} for d in found.get(name, [])})


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes and model: checks the script on a CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, help="also write the JSON here, after every section")
    p.add_argument("--budget-s", type=float, default=330.0, help="skip sections that would end after this")
    p.add_argument("--fused-k", type=int, default=5, help="learning rates in the fused group (the paper's 5)")
    p.add_argument("--workdir", type=Path, help="where to generate the images (default: a temporary folder)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the --compile section")
    p.add_argument("--only", action="append", metavar="SECTION",
                   help="run only this section (repeatable; e.g. fused, train_end_to_end); default: all")
    args = p.parse_args(argv)
    args.device = None if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.backbone, args.image_size, args.n_train, args.n_eval, args.unique = "tinycnn", 32, 96, 32, 30
        args.batches, args.steps, args.warmup = [4, 8], 2, 1
        args.bench = ["--backbone", "tinycnn", "--image-size", "32", "--steps", "2", "--warmup", "1",
                      "--device", "cpu", "--workers", "0"]
        args.fused_k = min(args.fused_k, 2)
    else:
        args.backbone, args.image_size, args.n_train, args.n_eval, args.unique = "resnet50", 224, 3840, 2000, 240
        args.batches, args.steps, args.warmup = [32, 64, 128, 256], 15, 5
        args.bench = ["--steps", "100", "--warmup", "15"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check = Check(args.budget_s, args.out, args.only)
    big = not args.smoke
    check.section("environment", 0, environment)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        data = work / "jpegs"
        start = time.perf_counter()
        bench_training.write_jpeg_dataset(data, args.n_train, args.n_eval, eval_splits=("val", "test"),
                                          unique=args.unique)
        check.results["data"] = {"train_images": args.n_train, "eval_images_per_split": args.n_eval,
                                 "distinct_photos": args.unique, "seconds": time.perf_counter() - start}

        def model_factory() -> tuple[torch.nn.Module, Any]:
            from inatloc_nb.datasets.dataset import WSOLDataset
            from inatloc_nb.training.learner import build_learner
            from inatloc_nb.training.run_config import RunConfig

            dataset = WSOLDataset.from_folder(data, image_root=data / "images")
            learn = build_learner(dataset, RunConfig(data=str(data), level=dataset.levels[0], backbone=args.backbone,
                                                     pretrained=False, image_size=args.image_size, device=args.device,
                                                     num_workers=0))
            return learn.model, learn.device_settings

        check.section("bare_loop", 30 if big else 0,
                      lambda: bare_loop(model_factory, args.batches, args.steps, args.warmup, args.image_size))
        check.section("training_levers", 60 if big else 0,
                      lambda: training_levers(model_factory, 3, args.batches[0], args.steps, args.warmup,
                                              args.image_size, 1 if args.compile and big else 0))
        check.section("cuda_graphs", 40 if big else 0,
                      lambda: cuda_graph_run(data, args, 10 if big else 1, 100 if big else 2))
        check.section("run_jpeg", 25 if big else 0, lambda: bench_run(data, args.bench))
        # first, so that the runs below find the MaxBoxAccV2 kernels compiled (numba caches them
        # on disk: only a machine's first run pays the compilation)
        check.section("maxboxacc", 15 if big else 0,
                      lambda: bench_maxboxacc.run(512 if big else 16, 5 if big else 1, 2 if big else 1))
        check.section("train_end_to_end", 30 if big else 0, lambda: end_to_end(data, work, args, "last"))
        check.section("fused", 50 if big else 0, lambda: fused_group(data, work, args, args.fused_k))
        check.section("imports", 15 if big else 0, import_seconds)
        bs = [] if not big else ["--batch-size"]
        check.section("run_prepared", 25 if big else 0, lambda: bench_run(data, [*args.bench, "--prepared"]))
        check.section("run_batch128", 20 if big else 0,
                      lambda: bench_run(data, [*args.bench, *bs, "128", "--steps", "25", "--warmup", "4"] if big
                                        else args.bench))
        check.section("run_batch128_prepared", 20 if big else 0,
                      lambda: bench_run(data, [*args.bench, "--batch-size", "128", "--steps", "25", "--warmup", "4",
                                               "--prepared"] if big else [*args.bench, "--prepared"]))
        check.section("run_batch64", 20 if big else 0,
                      lambda: bench_run(data, [*args.bench, "--batch-size", "64", "--steps", "50", "--warmup", "6"]
                                        if big else args.bench))
        if args.compile:
            check.section("compile", 100 if big else 0,
                          lambda: compile_run(data, [*args.bench, "--steps", "50", "--warmup", "10"] if big
                                              else args.bench))
        check.section("train_end_to_end_best", 35 if big else 0, lambda: end_to_end(data, work, args, "best"))
        # validation and CAM passes read from the prepared copy in whole batches
        check.section("train_end_to_end_prepared", 35 if big else 0,
                      lambda: end_to_end(data, work, args, "last", prepared=True))
        check.section("packed3", 50 if big else 0,
                      lambda: bench_run(data, [*args.bench, "--prepared"], packed=3 if big else 2))
    check.results["grid_estimate"] = grid_estimate(check.results)
    check.results["modules"] = _distributions()
    check.results["total_seconds"] = time.perf_counter() - check.start
    check.save()
    if args.json:
        print(json.dumps(check.results, indent=2, default=str))
    else:
        for name, value in check.results.items():
            print(f"{name}: {json.dumps(value, default=str)[:600]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
