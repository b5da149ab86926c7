"""Atomic file writes: write to a temporary file beside the target, then rename it into place."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _current_umask()
#: Mode of written files: what ``open()`` would give (``mkstemp`` alone gives 0600).
_FILE_MODE = 0o666 & ~_UMASK
#: Mode of created folders: what ``mkdir`` would give (``mkdtemp`` alone gives 0700).
_DIR_MODE = 0o777 & ~_UMASK


def make_temp_dir(prefix: str, parent: str | Path) -> Path:
    """A new uniquely named folder in ``parent`` (created if needed) with the mode ``mkdir``
    gives under the umask, so a folder published by renaming it is readable by whoever may
    read the files in it."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, _DIR_MODE)
    return folder


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success rename it onto ``target``.

    On error the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _write_with(target: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return _write_with(target, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    return _write_with(target, lambda p: p.write_bytes(data))


def atomic_write_json(target: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(target: str | Path, frame: pl.DataFrame) -> Path:
    """Write a polars DataFrame as parquet to ``target`` atomically."""
    return _write_with(target, frame.write_parquet)
