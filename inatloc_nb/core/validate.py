"""Range checks shared by the command line, ``RunConfig`` and sweep configurations.

Each checker takes the value and a ``name`` saying where it came from (``--lr``,
``RunConfig.batch_size``, ``configs/x.yaml: grids.main.lrs[2]``) and returns the value,
normalised, or raises :class:`~inatloc_nb.core.errors.InatlocError` whose message names the
place, the value and the allowed range. :func:`arg_type` turns a checker into an argparse
``type=`` so bad options end with argparse's usage message and exit code 2.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from inatloc_nb.core.errors import InatlocError

#: Allowed ranges, shared by every entry point: ``(minimum, maximum)`` (``None``: unbounded).
IMAGE_SIZE_RANGE = (16, 4096)
BATCH_SIZE_RANGE = (1, 65536)
#: Named learning-rate schedules (a number of epochs >= 1, or ``"E/D"``, is also accepted).
SCHEDULES = ("2epoch", "paper", "10epoch")
#: Device strings: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")


def integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool, not a float) in ``[minimum, maximum]``."""
    rng = _range_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InatlocError(f"{name}: expected an integer {rng}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InatlocError(f"{name}: expected an integer {rng}, got {value}")
    return value


def optional_integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """``None`` or :func:`integer`."""
    return None if value is None else integer(value, name, minimum, maximum)


def positive_float(value: Any, name: str) -> float:
    """A finite number > 0 (learning rates); numeric strings such as YAML's ``1e-3`` are read."""
    try:
        number = float(value)
        ok = not isinstance(value, bool) and math.isfinite(number) and number > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InatlocError(f"{name}: expected a finite number > 0, got {value!r}")
    return number


def unit_interval(value: float, name: str) -> float:
    """A number in [0, 1] (rates, probabilities, thresholds of a map's maximum)."""
    if not 0.0 <= value <= 1.0:
        raise InatlocError(f"{name} must be in [0, 1], got {value}")
    return value


def schedule(value: Any, name: str) -> str | int:
    """``"2epoch"``, ``"paper"``, ``"10epoch"``, a number of epochs >= 1 (an int or a digit
    string), or ``"E/D"``: E epochs, LR / 10 every D epochs (``"50/15"``: Choe et al.'s CUB
    schedule); returned unchanged."""
    if isinstance(value, str) and value in SCHEDULES:
        return value
    if isinstance(value, str) and (every := re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)):
        integer(int(every[1]), f"{name} (epochs)", 1)
        integer(int(every[2]), f"{name} (epochs between LR decays)", 1)
        return value
    epochs = int(value) if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()) else value
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise InatlocError(f"{name}: expected {', '.join(SCHEDULES)}, a number of epochs >= 1 or "
                          f"'EPOCHS/DECAY_EVERY' (e.g. '50/15'), got {value!r}")
    integer(epochs, f"{name} (epochs)", 1)
    return value


def device(value: Any, name: str) -> str | None:
    """``None`` (automatic) or a device string ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    if value is None:
        return None
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value.strip()):
        raise InatlocError(f"{name}: unknown device {value!r}; use cpu, cuda, cuda:N or mps (or leave it unset)")
    return value.strip()


def device_available(value: str | None, name: str = "device") -> None:
    """Fail clearly when ``value`` asks for a CUDA device this machine does not have."""
    if value is None or not value.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count()
    index = int(value.partition(":")[2] or 0)
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise InatlocError(f"{name}: {value!r} requested but this machine has {have}; use --device cpu or leave it unset")


def choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``."""
    if value not in allowed:
        raise InatlocError(f"{name}: unknown value {value!r}; expected one of {', '.join(allowed)}")
    return value


def arg_type(check: Callable[[Any, str], Any], parse: Callable[[str], Any] = str, **limits: Any) -> Callable[[str], Any]:
    """An argparse ``type=``: ``parse`` the text, then ``check(value, "", **limits)``.

    argparse adds the option name to the message and exits with code 2.
    """
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            kind = {"int": "an integer", "float": "a number"}.get(getattr(parse, "__name__", ""), "a value")
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value, "value", **limits)
        except InatlocError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in {minimum}..{maximum}"
    if minimum is not None:
        return f">= {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""


def load_yaml_unique(text: str, where: str) -> Any:
    """Parse YAML like ``yaml.safe_load`` but refuse a key given twice in one mapping
    (``InatlocError`` naming ``where``, the key and both lines) instead of keeping the last."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    break
                if first is not None:
                    raise InatlocError(f"{where}:{line}: duplicate key {key!r} (first on line {first}); "
                                       "keep only one of them")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
