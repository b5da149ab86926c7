"""How progress is shown: redrawn bars where someone watches, one line per step in logs.

Every progress display of the package goes through this module:

- :func:`track` wraps a loop (or is used as a context manager with ``update``) the way
  ``tqdm`` does: a ``tqdm.auto`` bar when its stream (stderr) is a terminal or the code runs
  in a Jupyter kernel; otherwise one line when the stage ends (what, how many, how long, how
  fast), plus a line every ``LINE_INTERVAL`` seconds for long stages; nothing with
  ``show=False``. ``show="bars"`` keeps the bar where it would be drawn and is silent
  elsewhere (for a pass whose result another line reports).
- ``ProgressCallback`` (a fastai callback) replaces fastai's own for every learner of the package
  (:func:`install`): fastprogress bars where stdout is a terminal or in Jupyter; otherwise
  one line per epoch on stdout with the losses, the metrics, what other callbacks report
  (``progress_note()``, e.g. the D_f score of epoch selection) and the epoch's wall time.

``$INATLOC_NB_PROGRESS`` overrides the choice: ``bars`` (always draw bars), ``lines`` (always
print lines, e.g. for notebooks executed headless) or ``auto`` (the default).
"""
from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Literal

from inatloc_nb.core.env import PROGRESS_ENV
from inatloc_nb.core.errors import InatlocError

#: Values of ``$INATLOC_NB_PROGRESS`` (``inatloc_nb.core.env.PROGRESS_ENV``), which overrides the
#: choice between bars and lines.
STYLES = ("auto", "bars", "lines")
#: Seconds between two lines of a stage that is still running, in line mode.
LINE_INTERVAL = 60.0

Show = bool | Literal["bars"]


def in_notebook() -> bool:
    """Whether the code runs in a Jupyter kernel (where bars are widgets, not redraws)."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it; nothing to import otherwise
    shell = None if ipython is None else ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def bars_wanted(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stdout) gets bars: ``$INATLOC_NB_PROGRESS`` when set to
    ``bars`` or ``lines``, else whether it is a terminal or the code runs in Jupyter."""
    style = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
    if style not in STYLES:
        raise InatlocError(f"${PROGRESS_ENV}={style!r}: expected one of {', '.join(STYLES)}")
    if style != "auto":
        return style == "bars"
    if in_notebook():
        return True
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_seconds(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_count(value: float) -> str:
    """``value`` with an SI prefix and three significant digits: ``950``, ``1.5k``, ``2.34G``."""
    prefixes = ("", "k", "M", "G", "T")
    step = 0
    while abs(value) >= 999.5 and step < len(prefixes) - 1:
        value /= 1000
        step += 1
    return f"{value:.0f}" if step == 0 else f"{value:.3g}{prefixes[step]}"


class LineTracker:
    """The line-printing stand-in of a ``tqdm`` bar (the subset the package uses: iteration,
    ``update``, ``set_postfix``, ``write``, ``close``, context manager)."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str,
                 stream: IO[str], silent: bool = False, interval: float = LINE_INTERVAL,
                 unit_scale: bool = False) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream, self.silent, self.interval, self.unit_scale = stream, silent, interval, unit_scale
        self.n = 0
        self.postfix = ""
        self.start = self._last = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this tracker wraps no iterable")
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineTracker:
        return self

    def __exit__(self, kind: type | None, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.closed = True  # the error says what happened; no "done" line

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; print a line when ``interval`` seconds passed since the last."""
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval and not self.closed:
            self._last = now
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            self._say(f"{self.desc}: {self._count(self.n, self.total)}{share}, "
                      f"{format_seconds(now - self.start)} so far{self.postfix}")

    def set_postfix(self, **values: Any) -> None:
        """Extra ``key=value`` pairs for the next line."""
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        """Extra text for the next line."""
        self.postfix = f", {text}" if text else ""

    def write(self, text: str) -> None:
        """Print ``text`` as its own line on stdout, as ``tqdm.write`` does."""
        print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        """Print the stage's line: items, time and rate (once)."""
        if self.closed:
            return
        self.closed = True
        seconds = time.perf_counter() - self.start
        rate = f" ({self._count(self.n / seconds)}/s)" if seconds > 0 and self.n else ""
        total = self.total if self.total != self.n else None
        self._say(f"{self.desc}: {self._count(self.n, total)} in {format_seconds(seconds)}{rate}{self.postfix}")

    def _count(self, n: float, total: int | None = None) -> str:
        """``n[/total] unit``; SI-scaled with ``unit_scale`` (``1.5/2GB``, as tqdm writes it)."""
        if self.unit_scale:
            return f"{format_count(n)}{f'/{format_count(total)}' if total else ''}{self.unit}"
        shown = f"{n:.1f}" if isinstance(n, float) else str(n)
        return f"{shown}{f'/{total}' if total else ''} {self.unit}"

    def _say(self, text: str) -> None:
        if not self.silent:
            print(text, file=self.stream, flush=True)


def track(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
          unit_scale: bool = False, show: Show = True, stream: IO[str] | None = None) -> Any:
    """Progress over ``iterable`` (or, without one, over ``update`` calls up to ``total``):
    a ``tqdm.auto`` bar, one line per stage, or nothing (see the module docstring). The
    result is iterated, or used as a context manager, like a ``tqdm`` bar; ``unit_scale``
    writes counts with SI prefixes (bytes)."""
    stream = sys.stderr if stream is None else stream
    if show and bars_wanted(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=stream)
    return LineTracker(iterable, total, desc, unit, stream, silent=show is not True, unit_scale=unit_scale)


@functools.cache
def _callback_class() -> type:
    """:class:`ProgressCallback`, made on first use (fastai is slow to import; commands
    that only call :func:`track` do not need it)."""
    from fastai.callback import progress as fastai_progress
    from fastcore.basics import noop

    class ProgressCallback(fastai_progress.ProgressCallback):
        """fastai's progress bars where they are watched (:func:`bars_wanted` of stdout, decided
        when a fit or a lone validation starts); elsewhere one line per epoch: ``epoch E/N``, the
        Recorder's values (losses, accuracies), every other callback's ``progress_note()`` and
        the epoch's wall time (training, validation and those callbacks' work). Before the first
        epoch, the notes alone (``epoch 0/N``: e.g. the untrained model's D_f score)."""

        def __init__(self) -> None:
            self.bars: bool | None = None
            self.pbar = None

        # ---- bars or lines
        def _drawing(self) -> bool:
            return self.bars if self.bars is not None else bars_wanted(sys.stdout)

        def before_fit(self) -> None:
            self.bars = bars_wanted(sys.stdout)
            if self.bars:
                super().before_fit()
                return
            self._log: list | None = None
            if self.learn.logger is noop:  # logging switched off (``learn.no_logging()``)
                self.old_logger = noop
                return
            self.old_logger, self.learn.logger = self.learn.logger, self._collect
            notes = self._notes()
            if notes:
                self._say(f"epoch 0/{self.n_epoch}  {notes}")

        def before_epoch(self) -> None:
            if self.bars:
                super().before_epoch()
            self._epoch_start = time.perf_counter()

        def _launch_pbar(self) -> None:
            if self._drawing():
                super()._launch_pbar()
            else:
                self.pbar = None

        def after_train(self) -> None:
            if self.pbar is not None:
                super().after_train()

        def after_validate(self) -> None:
            if self.pbar is not None:
                super().after_validate()

        def after_batch(self) -> None:
            if self.pbar is not None:
                super().after_batch()

        def after_epoch(self) -> None:
            if self.bars or self.old_logger is noop or self._log is None:
                return
            names = list(self.recorder.metric_names)
            fields = [f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                      for name, value in zip(names[1:], self._log[1:], strict=False) if name != "time"]
            notes = self._notes()
            self._say(f"epoch {self.epoch + 1}/{self.n_epoch}  " + "  ".join(fields)
                      + (f"  {notes}" if notes else "")
                      + f"  time {format_seconds(time.perf_counter() - self._epoch_start)}")
            self._log = None

        def after_fit(self) -> None:
            if self.bars:
                super().after_fit()
            elif hasattr(self, "old_logger"):
                self.learn.logger = self.old_logger
            self.bars, self.pbar = None, None

        def _collect(self, log: list) -> None:
            self._log = list(log)

        def _notes(self) -> str:
            notes = (cb.progress_note() for cb in self.learn.cbs if hasattr(cb, "progress_note"))
            return "  ".join(n for n in notes if n)

        def _say(self, text: str) -> None:
            print(text, file=sys.stdout, flush=True)

    return ProgressCallback


def __getattr__(name: str) -> Any:
    if name == "ProgressCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install(learn: Any) -> Any:
    """Give ``learn`` this module's :class:`ProgressCallback` in place of fastai's."""
    from fastai.callback import progress as fastai_progress

    for cb in list(learn.cbs):
        if isinstance(cb, fastai_progress.ProgressCallback):
            learn.remove_cb(cb)
    learn.add_cb(_callback_class()())
    return learn


__all__ = ["LINE_INTERVAL", "STYLES", "LineTracker", "ProgressCallback", "bars_wanted",
           "format_count", "format_seconds", "in_notebook", "install", "track"]
