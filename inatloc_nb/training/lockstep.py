"""Lockstep execution: several jobs in threads of one process, one running at a time, sharing
what they have in common (the machinery of fused learning-rate runs, :mod:`inatloc_nb.runs.fused`).

:func:`run_lockstep` runs the jobs; inside one, :func:`shared` computes a value once for the
group (the first job to ask computes it, the others receive it), :func:`shared_dataloaders`
makes one set of loaders whose every batch is computed once and copied to each job
(:class:`SharedLoader`), and :func:`step_aside` lets the others go on while a job does work
of its own (scoring, writing). Each job keeps its own python, numpy, torch (and CUDA) random
state, swapped in when it takes its turn; a shared step must find every job in the same state
(else :class:`FusedDivergence`). Outside a group every helper is a plain call.
"""
from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inatloc_nb.core.errors import InatlocError

_local = threading.local()
_END = object()  # the end of a pass over a loader


class FusedDivergence(InatlocError):
    """A fused run's random state differs from the group's at a shared step: its separate
    run would see other data from here on."""


def active() -> LockstepGroup | None:
    """The group this thread's run belongs to, or None outside :func:`run_fused`."""
    return getattr(_local, "group", None)


def shared(kind: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, once per fused group: the n-th call of ``kind`` in each run gets what
    the first run to make it computed (with its random draws). Outside a group: ``compute()``."""
    group = active()
    return compute() if group is None else group.shared((kind, group.count(kind)), compute)


@contextmanager
def step_aside() -> Iterator[None]:
    """Leave the group's turns for a while, to do CPU work that draws no random numbers and
    touches nothing shared (scoring CAMs, writing files) while the other runs use the GPU;
    this run takes its turn again afterwards. Outside a group: nothing."""
    group = active()
    if group is None:
        yield
        return
    group.leave_turns(_local.index)
    try:
        yield
    finally:
        group.rejoin_turns(_local.index)


def shared_dataloaders(build: Callable[[], Any]) -> Any:
    """fastai ``DataLoaders`` from ``build()``; in a fused group, built once and wrapped so
    that every pass over its loaders (and over loaders made from them with ``test_dl`` /
    ``new``) is shared (:class:`SharedLoader`)."""
    group = active()
    if group is None:
        return build()
    from fastai.data.core import DataLoaders

    real = group.shared(("dataloaders", group.count("dataloaders")), build)
    dls = DataLoaders(*(SharedLoader(dl, group) for dl in real.loaders), path=real.path, device=real.device)
    dls.prepared = getattr(real, "prepared", None)
    return dls


# --- random state -------------------------------------------------------------------------


def _rng_state() -> tuple:
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    if state[3] is not None:
        torch.cuda.set_rng_state_all(state[3])


def _same_state(a: tuple, b: tuple) -> bool:
    import torch

    if a[0] != b[0] or not torch.equal(a[2], b[2]):
        return False
    if a[1][0] != b[1][0] or not np.array_equal(a[1][1], b[1][1]) or tuple(a[1][2:]) != tuple(b[1][2:]):
        return False
    if a[3] is not None and b[3] is not None:
        return len(a[3]) == len(b[3]) and all(torch.equal(x, y) for x, y in zip(a[3], b[3], strict=True))
    return True


# --- the group ----------------------------------------------------------------------------


@dataclass
class _Entry:
    before: tuple
    after: tuple
    value: Any
    error: BaseException | None
    consumers: set[int] = field(default_factory=set)


class LockstepGroup:
    """``n`` runs, one thread each, taking turns round-robin (:meth:`yield_turn`), with a
    cache of what they share (:meth:`shared`), kept until every live run has taken it."""

    def __init__(self, n: int):
        self.n = n
        self._cond = threading.Condition()
        self._live = list(range(n))  # runs not ended: what is shared is kept until they all took it
        self._turns = list(range(n))  # runs taking turns (the live ones not stepped aside)
        self._turn: int | None = 0
        self._aside_state: dict[int, tuple] = {}
        self._cache: dict[Hashable, _Entry] = {}
        self._passes: dict[Hashable, Iterator] = {}
        self._keep: list[Any] = []  # loaders made in the group: alive, so their ids stay unique

    # turns
    def wait_turn(self, index: int) -> None:
        """Block until run ``index`` may run."""
        with self._cond:
            while self._turn != index:
                self._cond.wait()

    def yield_turn(self) -> None:
        """Hand over to the next live run and wait for this run's next turn (its random
        state is kept aside meanwhile)."""
        index = _local.index
        with self._cond:
            following = self._next_after(index)
        if following == index:
            return
        state = _rng_state()
        with self._cond:
            self._turn = following
            self._cond.notify_all()
            while self._turn != index:
                self._cond.wait()
        _set_rng_state(state)

    def leave(self, index: int) -> None:
        """Run ``index`` has ended (finished or failed): the others go on without it."""
        with self._cond:
            following = self._next_after(index)
            self._live.remove(index)
            self._turns.remove(index)
            if self._turn == index:
                self._turn = following if self._turns else None
            for key in [k for k, e in self._cache.items() if e.consumers >= set(self._live)]:
                del self._cache[key]
            self._cond.notify_all()

    def leave_turns(self, index: int) -> None:
        """Run ``index`` (holding the turn) steps aside: the others take turns without it."""
        self._aside_state[index] = _rng_state()
        with self._cond:
            following = self._next_after(index)
            self._turns.remove(index)
            self._turn = following if self._turns else None
            self._cond.notify_all()

    def rejoin_turns(self, index: int) -> None:
        """Run ``index`` takes turns again: it waits for its turn and gets its random state back."""
        with self._cond:
            self._turns = sorted([*self._turns, index])
            if self._turn is None:
                self._turn = index
            while self._turn != index:
                self._cond.wait()
        _set_rng_state(self._aside_state.pop(index))

    def _next_after(self, index: int) -> int:
        turns = self._turns
        return turns[(turns.index(index) + 1) % len(turns)]

    # sharing
    def count(self, kind: Hashable) -> int:
        """How many times this thread has asked for ``kind`` before (per-run call counter)."""
        counts = _local.__dict__.setdefault("counts", {})
        n = counts.get(kind, 0)
        counts[kind] = n + 1
        return n

    def shared(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """What ``compute()`` gave the first run that asked for ``key``, with the random
        state it left (see the module docstring)."""
        index = _local.index
        entry = self._cache.get(key)
        if entry is None:
            before = _rng_state()
            try:
                value, error = compute(), None
            except Exception as exc:  # every run that asks gets it, as its own run would
                value, error = None, exc
            entry = self._cache[key] = _Entry(before, _rng_state(), value, error)
        else:
            if not _same_state(_rng_state(), entry.before):
                raise FusedDivergence(
                    f"run {_local.name}: its random draws differ from the other fused runs' before "
                    f"{key[0]} #{key[-1]}, so its separate run would see other data; run it on its own "
                    "(sweep key fuse_lrs: false)")
            _set_rng_state(entry.after)
        entry.consumers.add(index)
        if entry.consumers >= set(self._live):
            del self._cache[key]
        if entry.error is not None:
            raise entry.error
        return entry.value

    def next_batch(self, pass_key: Hashable, loader: Any) -> Any:
        """The next batch of the real pass ``pass_key`` over ``loader`` (``_END`` at its end)."""
        iterator = self._passes.get(pass_key)
        if iterator is None:
            iterator = self._passes[pass_key] = iter(loader)
        try:
            return next(iterator)
        except StopIteration:
            del self._passes[pass_key]
            return _END

    def keep(self, obj: Any) -> Any:
        self._keep.append(obj)
        return obj

    def close(self) -> None:
        """End the passes a run left unfinished (stopping their worker processes)."""
        for iterator in self._passes.values():
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._passes.clear()
        self._cache.clear()
        self._keep.clear()


class SharedLoader:
    """A fastai ``DataLoader`` seen by one run of a fused group: each pass over it is the
    group's pass (one decode), each batch a copy of its own; other attributes are the
    loader's."""

    def __init__(self, loader: Any, group: LockstepGroup):
        self._loader = group.keep(loader)
        self._group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        group, loader = self._group, self._loader
        pass_key = ("pass", id(loader), group.count(("pass", id(loader))))
        for step in range(sys.maxsize):
            batch = group.shared((*pass_key, step), lambda: group.next_batch(pass_key, loader))
            group.yield_turn()
            if batch is _END:
                return
            yield _copy(batch)

    def new(self, *args: Any, **kwargs: Any) -> SharedLoader:
        """``DataLoader.new``, made once for the group (``DataLoaders.test_dl`` uses it)."""
        kind = ("new", id(self._loader))
        made = self._group.shared((*kind, self._group.count(kind)), lambda: self._loader.new(*args, **kwargs))
        return SharedLoader(made, self._group)


def _copy(batch: Any) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, (tuple, list)):
        return type(batch)(_copy(b) for b in batch)
    return batch


def run_lockstep(jobs: Sequence[Callable[[], Any]], names: Sequence[str]) -> list[Any]:
    """Run ``jobs`` in lockstep threads (:class:`LockstepGroup`), each starting from this
    thread's random state; returns per job its result or the exception that ended it."""
    group = LockstepGroup(len(jobs))
    outcomes: list[Any] = [None] * len(jobs)
    initial = _rng_state()

    def work(index: int) -> None:
        _local.group, _local.index, _local.name = group, index, names[index]
        group.wait_turn(index)
        _set_rng_state(initial)
        try:
            outcomes[index] = jobs[index]()
        except BaseException as exc:  # this job fails; the others go on
            outcomes[index] = exc
        finally:
            group.leave(index)

    threads = [threading.Thread(target=work, args=(i,), name=f"fused-{names[i]}", daemon=True)
               for i in range(len(jobs))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        group.close()
        _set_rng_state(initial)
    return outcomes
