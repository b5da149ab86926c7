"""Level names, parsed once, and mixed-granularity labellings (one chosen node per finest category).

A level is written as a named level (``species``, ``genus``; a hierarchy's root level), a
deepest-only level ``cK`` or a mixed labelling ``mixed:FILE``. :func:`parse_level` reads the
text once into a :class:`Level`; ``Hierarchy.resolve`` (``inatloc_nb.hierarchies.taxonomy``) turns it into
the classes and the leaf -> class index of one hierarchy, reading a labelling file once per
version of the file.

A labelling maps every finest-level category (leaf) to one of its ancestors or itself; the
labels form a valid label set when no chosen node is a descendant of another (the antichain
condition of per-image k vectors, ``Hierarchy.coarsen_leaves``). Used as a training level
under the name ``mixed:FILE``: ``Hierarchy.level_names("mixed:FILE")`` are the chosen nodes
(sorted) and ``level_index`` maps each leaf to its node's class index, so every part of the
library that takes a level (data loaders, subsampling, CAM targets, the sweep) takes a mixed
labelling.

File format (CSV, UTF-8, one header line, one row per finest category, ``#`` comment lines
allowed; a leading byte-order mark, as spreadsheet programs write, is ignored)::

    category,node,level
    species0,genus0,genus
    species1,genus0,genus
    species2,species2,species

``category``: a leaf id; ``node``: the chosen node (the leaf itself or an ancestor);
``level``: the node's named level (optional column, checked when present).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from inatloc_nb.core.atomic import atomic_write_bytes, atomic_write_text
from inatloc_nb.core.errors import InatlocError

#: Prefix of a level naming a mixed labelling file.
MIXED_PREFIX = "mixed:"
#: Columns of a labelling file (``level`` is optional when reading).
COLUMNS = ("category", "node", "level")
#: The copy of its labelling file a run on a mixed level keeps in its run folder.
RUN_COPY = "labelling.csv"


class LabellingError(InatlocError):
    """An invalid mixed labelling; the message names the file and line."""


class Tree(Protocol):
    """What a labelling is checked against: the parts of ``inatloc_nb.hierarchies.taxonomy.Hierarchy`` it
    reads (a hierarchy resolves its own ``mixed:FILE`` levels with :func:`load_labelling`)."""

    leaves: tuple[str, ...]

    @property
    def nodes(self) -> tuple[str, ...]: ...

    def ancestors(self, node: str) -> tuple[str, ...]: ...

    def is_ancestor(self, a: str, b: str) -> bool: ...

    def node_level(self, node: str) -> str | None: ...


_DEEPEST_ONLY = re.compile(r"c(\d+)")


@dataclass(frozen=True)
class Level:
    """A level string, parsed: ``kind`` is ``"mixed"`` (``path``: its labelling file),
    ``"deepest"`` (``cK``; ``steps``: K) or ``"name"`` (a named or root level, known only to a
    hierarchy). A named tree may also call its levels ``cK`` (see ``inatloc_nb.hierarchies.taxonomy``)."""

    text: str
    kind: Literal["name", "deepest", "mixed"]
    steps: int | None = None
    path: Path | None = None

    @property
    def is_mixed(self) -> bool:
        """Whether the level is a mixed labelling ``mixed:FILE``."""
        return self.kind == "mixed"

    @property
    def short_name(self) -> str:
        """``mixed-<file stem>`` for a mixed level, the level itself otherwise (ids, plots)."""
        return f"mixed-{self.path.stem}" if self.path is not None else self.text


def parse_level(level: str) -> Level:
    """The :class:`Level` a level string names (parsed once per text). Raises
    :class:`LabellingError` naming the value for a non-string or empty level and for
    ``mixed:`` without a file."""
    if not isinstance(level, str) or not level:
        raise LabellingError(f"level {level!r} is not a level name (species, genus, ..., cK or mixed:FILE)")
    return _parse_level(level)


@functools.lru_cache(maxsize=4096)
def _parse_level(level: str) -> Level:
    if level.startswith(MIXED_PREFIX):
        if not level[len(MIXED_PREFIX):]:
            raise LabellingError(f"level {level!r} names no labelling file; use mixed:FILE")
        return Level(level, "mixed", path=Path(level[len(MIXED_PREFIX):]))
    match = _DEEPEST_ONLY.fullmatch(level)
    return Level(level, "deepest", steps=int(match.group(1))) if match else Level(level, "name")


def is_mixed(level: str) -> bool:
    """Whether ``level`` names a mixed labelling (``mixed:FILE``); False for a non-string."""
    return isinstance(level, str) and level.startswith(MIXED_PREFIX)


def labelling_path(level: str) -> Path:
    """The file of a ``mixed:FILE`` level."""
    path = parse_level(level).path if is_mixed(level) else None
    if path is None:
        raise LabellingError(f"{level!r} is not a mixed level; use mixed:FILE")
    return path


def short_name(level: str) -> str:
    """``mixed-<file stem>`` for a mixed level, the level itself otherwise (for ids and plots)."""
    return parse_level(level).short_name if is_mixed(level) else level


@dataclass(frozen=True, eq=False)
class Labelling:
    """One version of a labelling file, read and validated: its ``path``, the bytes ``data``
    read, their ``sha1`` (hex) and the chosen node of every leaf (``nodes``, leaf order)."""

    path: Path
    data: bytes
    sha1: str
    nodes: tuple[str, ...]


def read_labelling(path: str | Path, hierarchy: Tree) -> tuple[str, ...]:
    """The chosen node of every leaf, in ``hierarchy.leaves`` order, validated
    (:func:`load_labelling`)."""
    return load_labelling(path, hierarchy).nodes


def load_labelling(path: str | Path, hierarchy: Tree) -> Labelling:
    """Read the labelling file ``path`` once and validate it against ``hierarchy``.

    Raises :class:`LabellingError` naming the file and line for: a missing, unreadable or
    non-UTF-8 file, a missing header,
    an unknown category or node, a node that is not the category or one of its ancestors, a
    level that is not the node's, a category listed twice or not at all, a node that is a
    descendant of another chosen node, fewer than two classes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabellingError(f"{path}: cannot read the labelling ({exc.strerror or exc})") from None
    return Labelling(path, data, hashlib.sha1(data).hexdigest(), _parse(data, path, hierarchy))


def _parse(data: bytes, path: Path, hierarchy: Tree) -> tuple[str, ...]:
    """The chosen nodes of a labelling file's ``data`` (see :func:`load_labelling`)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LabellingError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason}); "
                             "save the labelling as UTF-8") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise LabellingError(f"{path}: empty; expected a header 'category,node[,level]' and one row per category")
    header_no, header = lines[0]
    columns = [c.strip() for c in next(csv.reader([header]))]
    if columns[:2] != ["category", "node"] or columns[2:] not in ([], ["level"]):
        raise LabellingError(f"{path}:{header_no}: header must be 'category,node' or 'category,node,level', "
                             f"got {header!r}")
    leaves = set(hierarchy.leaves)
    chosen: dict[str, tuple[str, int]] = {}
    for n, row in zip((n for n, _ in lines[1:]), csv.reader(line for _, line in lines[1:]), strict=True):
        where = f"{path}:{n}"
        values = [v.strip() for v in row]
        if len(values) != len(columns):
            raise LabellingError(f"{where}: expected {len(columns)} fields ({','.join(columns)}), got {len(values)}")
        category, node = values[0], values[1]
        if category not in leaves:
            raise LabellingError(f"{where}: unknown category {category!r} (not a finest-level class of "
                                 f"the dataset's hierarchy)")
        if category in chosen:
            raise LabellingError(f"{where}: category {category!r} listed again (first on line {chosen[category][1]})")
        if node not in hierarchy.nodes:
            raise LabellingError(f"{where}: unknown node {node!r}")
        if node != category and not hierarchy.is_ancestor(node, category):
            raise LabellingError(f"{where}: {node!r} is neither {category!r} nor one of its ancestors "
                                 f"({', '.join(hierarchy.ancestors(category))})")
        if len(values) == 3 and values[2] and hierarchy.node_level(node) not in (None, values[2]):
            raise LabellingError(f"{where}: node {node!r} is at level {hierarchy.node_level(node)!r}, "
                                 f"not {values[2]!r}")
        chosen[category] = (node, n)
    missing = [leaf for leaf in hierarchy.leaves if leaf not in chosen]
    if missing:
        raise LabellingError(f"{path}: {len(missing)} categories have no row: {missing[:5]} "
                             "(every finest category needs one)")
    line_of = {node: line for node, line in chosen.values()}
    for node, line in sorted(line_of.items(), key=lambda item: item[1]):
        for ancestor in hierarchy.ancestors(node):
            if ancestor in line_of:
                raise LabellingError(
                    f"{path}:{line}: node {node!r} is a descendant of {ancestor!r}, chosen on line "
                    f"{line_of[ancestor]}; a label may not be a descendant of another (coarsen line "
                    f"{line} to {ancestor!r} or refine line {line_of[ancestor]})")
    if len(line_of) < 2:
        raise LabellingError(f"{path}: every category maps to {next(iter(line_of))!r}; a classifier needs "
                             "at least two classes")
    return tuple(chosen[leaf][0] for leaf in hierarchy.leaves)


def write_labelling(path: str | Path, hierarchy: Tree, nodes: Mapping[str, str]) -> Path:
    """Write ``{category: node}`` (every leaf) as a labelling file, atomically; validated by
    reading it back."""
    rows = ["category,node,level"]
    for leaf in hierarchy.leaves:
        if leaf not in nodes:
            raise LabellingError(f"{path}: no node chosen for category {leaf!r}")
        node = nodes[leaf]
        rows.append(",".join(_csv_field(v) for v in (leaf, node, hierarchy.node_level(node) or "")))
    atomic_write_text(Path(path), "\n".join(rows) + "\n")
    read_labelling(path, hierarchy)
    return Path(path)


def file_digest(path: str | Path) -> str:
    """SHA-1 (hex) of a file's bytes."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def store_run_labelling(labelling: Labelling, run_dir: str | Path) -> dict[str, str]:
    """Write the labelling a run trained on (the bytes read when its level was resolved, even
    if the file changed since) into ``run_dir`` (:data:`RUN_COPY`, atomically) and return what
    ``params.json`` records of it: ``{"source", "sha1"}``."""
    atomic_write_bytes(Path(run_dir) / RUN_COPY, labelling.data)
    return {"source": str(labelling.path), "sha1": labelling.sha1}


def run_labelling(run_dir: str | Path) -> Path:
    """The labelling file a finished mixed run was trained on: its copy in the run folder,
    checked against the digest ``params.json`` recorded at training time. A run trained before
    runs kept a copy falls back to the original file, checked against the digest in its run
    id's parameters (``run.json``). Raises :class:`LabellingError` naming the file and both
    digests when the content is not the one trained on."""
    run_dir = Path(run_dir)
    params = _json(run_dir / "params.json")
    recorded = params.get("labelling") if isinstance(params.get("labelling"), dict) else None
    copy = run_dir / RUN_COPY
    if recorded is not None:
        if not copy.is_file():
            raise LabellingError(f"{copy}: missing; the run recorded a labelling copy (sha1 {recorded['sha1'][:10]})")
        found = file_digest(copy)
        if found != recorded["sha1"]:
            raise LabellingError(f"{copy}: sha1 {found[:10]} is not the {recorded['sha1'][:10]} recorded in "
                                 f"{run_dir / 'params.json'} when the run trained; the copy was altered")
        return copy
    level = (params.get("config") or {}).get("level", "")
    source = labelling_path(level)
    expected = (_json(run_dir / "run.json").get("params") or {}).get("labelling")
    if not source.is_file():
        raise LabellingError(f"{source}: the labelling of run {run_dir.name} is gone (the run kept no copy)")
    found = file_digest(source)[:10]
    if expected is None or found != expected:
        raise LabellingError(f"{source}: sha1 {found} is not the {expected or 'unrecorded'} digest run {run_dir.name} "
                             "was trained with: the file was overwritten after training (the run kept no copy)")
    return source


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabellingError(f"{path}: damaged ({exc})") from None
    return value if isinstance(value, dict) else {}


def _csv_field(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n') else value
