"""Where a sweep's runs execute: a local pool of spawned worker processes or a Dask cluster,
each worker pinned to a GPU (several runs per GPU when they fit in its memory).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from inatloc_nb.core.env import LOADER_WORKERS_ENV
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.sweep.grid import RunSpec


def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use (respecting ``CUDA_VISIBLE_DEVICES``)."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def gpu_slots(gpus: Sequence[str], n_workers: int) -> list[str]:
    """The GPU of each of ``n_workers`` worker processes: round-robin over ``gpus``, so
    ``len(gpus) * k`` workers put ``k`` runs on every GPU."""
    if not gpus:
        return []
    return [gpus[i % len(gpus)] for i in range(n_workers)]


def free_gpu_memory(gpus: Sequence[str]) -> dict[str, int]:
    """Free memory in bytes of each visible GPU (``torch.cuda.mem_get_info``), by id."""
    import torch

    return {gpu: torch.cuda.mem_get_info(index)[0] for index, gpu in enumerate(gpus)}


def fit_runs_per_gpu(requested: int, free: Mapping[str, int], per_run_gb: float,
                     say: Callable[[str], None] = print) -> int:
    """How many runs to pack on each GPU: ``requested``, lowered (with a message) to what the
    GPU with the least free memory holds at ``per_run_gb`` GiB a run. Raises ``InatlocError``
    when a GPU cannot hold even one run."""
    need = per_run_gb * 2**30
    gpu, least = min(free.items(), key=lambda kv: kv[1])
    fits = int(least // need)
    if fits < 1:
        raise InatlocError(f"GPU {gpu} has {least / 2**30:.1f} GiB free, a run needs about {per_run_gb:g} GiB "
                           "(gpu_memory_per_run_gb): free the GPU or lower gpu_memory_per_run_gb")
    if fits < requested:
        say(f"runs_per_gpu {requested} lowered to {fits}: GPU {gpu} has {least / 2**30:.1f} GiB free and a run "
            f"needs about {per_run_gb:g} GiB (gpu_memory_per_run_gb)")
    return min(requested, fits)


def _pin_gpu(gpus: Any, loader_workers: int | None = None) -> None:
    """Pool initializer: take one GPU id from the queue for this worker process and fix the
    data-loading workers of its runs to their share of the cores."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get()
    if loader_workers is not None:
        os.environ[LOADER_WORKERS_ENV] = str(loader_workers)


def _pin_dask_worker_gpu(gpus: list[str], loader_workers: int | None = None, dask_worker: Any = None) -> str:
    """Run on each worker of a local Dask cluster: worker ``i`` gets GPU ``gpu_slots[i]``
    and its share of the cores for data loading."""
    gpu = gpus[int(dask_worker.name) % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if loader_workers is not None:
        os.environ[LOADER_WORKERS_ENV] = str(loader_workers)
    return gpu


@contextmanager
def _local_pool(max_parallel: int, gpus: list[str], loader_workers: int | None = None
                ) -> Iterator[tuple[Callable, Callable]]:
    """``(submit, as_completed)`` of a pool of spawned worker processes, each pinned to a GPU
    of ``gpu_slots`` (several workers share a GPU when ``max_parallel`` exceeds the GPUs)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    init: dict[str, Any] = {}
    if gpus:
        queue = ctx.Queue()
        for gpu in gpu_slots(gpus, max_parallel):
            queue.put(gpu)
        init = {"initializer": _pin_gpu, "initargs": (queue, loader_workers)}
    pool = ProcessPoolExecutor(max_parallel, mp_context=ctx, **init)
    try:
        yield pool.submit, as_completed
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


@contextmanager
def _dask_client(max_parallel: int, gpus: list[str], scheduler: str | None, loader_workers: int | None = None
                 ) -> Iterator[tuple[Callable, Callable]]:
    """``(submit, as_completed)`` on the cluster at ``scheduler`` or a new ``LocalCluster``."""
    from distributed import Client, LocalCluster, as_completed

    if scheduler is not None:
        cluster, client = None, Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=max_parallel, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        if gpus:
            client.run(_pin_dask_worker_gpu, gpus, loader_workers)

    def submit(fn: Callable, runs: RunSpec | Sequence[RunSpec], *args: Any) -> Any:
        first = runs if isinstance(runs, RunSpec) else runs[0]
        return client.submit(fn, runs, *args, key=f"run-{first.run_id}", pure=False)

    try:
        yield submit, as_completed
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
