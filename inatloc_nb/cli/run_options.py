"""Options and output shared by the commands that write a run folder (``train``, ``baseline``).

The options are derived from the fields of :class:`~inatloc_nb.training.run_config.RunConfig`: one
``--field-name`` per field, with the field's check, help and choices (its metadata), booleans
as ``--x`` / ``--no-x``, ``method_params`` as repeatable ``--param KEY=VALUE``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from inatloc_nb.core import validate as v
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.run_config import RunConfig, default

#: argparse type of ``--epochs`` (a number of epochs, the plain form of ``--schedule``).
EPOCHS = v.arg_type(v.integer, int, minimum=1)
#: Parsers of the option text by the field's annotation (other fields take the text as is).
_PARSE = {"int": int, "int | None": int, "float | None": float, "float": float}
#: Namespace attribute listing the ``RunConfig`` fields a parser offers.
_OFFERED = "run_config_fields"


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as JSON when possible (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def field_type(name: str) -> Any:
    """The argparse ``type=`` of the ``RunConfig`` field ``name``: its text parsed, then checked."""
    f = RunConfig.__dataclass_fields__[name]
    return v.arg_type(f.metadata["check"], _PARSE.get(f.type, str))


def add_run_options(p: argparse.ArgumentParser, required: Sequence[str] = ("data",), skip: Sequence[str] = (),
                    defaults: Mapping[str, Any] | None = None) -> None:
    """An option for every ``RunConfig`` field but ``skip`` (``required`` ones must be given;
    ``defaults`` replace ``RunConfig``'s), ``--epochs`` (an alternative to ``--schedule``) and
    ``--out``."""
    defaults = dict(defaults or {})
    offered = []
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        offered.append(f.name)
        meta = f.metadata
        cli = dict(meta["cli"])
        flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
        value = defaults.get(f.name, None if f.name in required else default(f.name))
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"], **cli}
        if f.type in ("bool", "bool | None"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type.startswith("dict"):
            kwargs.update(type=_key_value, action="append")
            value = []
        elif f.type.startswith("tuple"):
            kwargs.update(nargs="+")
        else:
            kwargs["type"] = field_type(f.name)
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]()
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = value
            if value is not None and value != [] and not isinstance(value, bool) and "(default" not in meta["help"]:
                shown = " ".join(value) if isinstance(value, tuple) else value
                kwargs["help"] = f"{meta['help']} (default: {shown})"
        if f.name == "schedule":
            group = p.add_mutually_exclusive_group()
            group.add_argument("--epochs", type=EPOCHS, help="number of epochs (LR / 10 every 3, see --lr-decay)")
            group.add_argument(flag, **kwargs)
        else:
            p.add_argument(flag, **kwargs)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.set_defaults(**{_OFFERED: tuple(offered)})


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RunConfig`` fields the options of :func:`add_run_options` set."""
    fields = {name: getattr(args, name) for name in getattr(args, _OFFERED)}
    if getattr(args, "epochs", None) is not None:
        fields["schedule"] = args.epochs
    if "method_params" in fields:
        pairs = fields["method_params"]
        fields["method_params"] = dict(pairs)
        if len(fields["method_params"]) != len(pairs):
            raise InatlocError("a --param key is given more than once")
    if "eval_splits" in fields:
        fields["eval_splits"] = tuple(fields["eval_splits"])
    return fields


def print_metrics(metrics: dict[str, Any]) -> None:
    """One line per evaluated split (D_test, D_f) with MaxBoxAccV2, per-IoU values and top-1."""
    for name, split in (("D_test", metrics), ("D_f", metrics.get("val", {}))):
        if "maxboxacc_v2" not in split:
            continue
        per_iou = "  ".join(f"IoU{d}: {v:.1f}" for d, v in split["per_iou"].items())
        top1 = f"  top-1 {split['top1']:.1f}" if split.get("top1") is not None else ""
        print(f"{name}: MaxBoxAccV2 {split['maxboxacc_v2']:.1f}  ({per_iou}){top1}  [{split['n_images']} images]")
