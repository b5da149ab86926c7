"""Label hierarchies: rooted trees of labels and the coarsening operator c_k.

A :class:`Hierarchy` is a rooted tree whose leaves are the finest labels (Sec. 3.2 of the
paper). Node ids are unique strings. Levels are named finest first; the root's level
(e.g. ``kingdom``) is kept apart in ``root_level``.

Two ways of naming coarser label sets:

* **Named levels** (uniform-depth trees such as iNatLoc500 and CUB): level ``levels[k]``
  holds the nodes ``k`` edges above the leaves, so relabelling at a named level equals
  uniform coarsening ``k * 1``.
* **Deepest-only levels** ``c0, c1, ...`` (any tree, App. A.1): ``cX`` applies X rounds of
  coarsening *only the labels at the current deepest level*. Leaf ``l`` becomes its
  ancestor at depth ``min(depth(l), max(D - X, 0))`` where ``D`` is the deepest leaf depth.
  On a uniform named tree ``cX`` is the same label set as ``levels[X]``.

Class-index order at each level: the finest level uses ``leaves`` order; coarser levels are
sorted by node id, unless the hierarchy was built from files with explicit class indices
(:meth:`Hierarchy.from_level_labels`), whose order is kept.

Resolving a level: :meth:`Hierarchy.resolve` reads a level (:func:`inatloc_nb.hierarchies.labelling.parse_level`)
once into a :class:`LabelSet` (its classes and each leaf's class) and keeps it; a
``mixed:FILE`` labelling is read again only when the file changes (size, times or inode).

Homonyms: node ids must be unique. When a builder that takes one column of names per level
(:meth:`Hierarchy.from_lineage`, :meth:`Hierarchy.from_level_labels`) meets the same name at
two levels, the finest occurrence keeps the plain name and each coarser one becomes
``"Name (level)"``; a level name equal to the root's becomes ``"Name (level)"`` as well.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from inatloc_nb.core.errors import HierarchyError, ParentConflictError
from inatloc_nb.hierarchies.dag import check_rooted
from inatloc_nb.hierarchies.labelling import Labelling, LabellingError, Level, load_labelling, parse_level


@dataclass(frozen=True, eq=False)
class LabelSet:
    """A level resolved against one hierarchy (:meth:`Hierarchy.resolve`).

    ``level``: the level as given; ``name``: the level it is (a named level for ``cK`` on a
    named tree, else ``level``); ``names``: the classes in class-index order; ``index``: leaf
    index -> class index (read-only int64); ``labelling``: the file version a ``mixed:FILE``
    level was read from (None for other levels).
    """

    level: str
    name: str
    names: tuple[str, ...]
    index: np.ndarray
    labelling: Labelling | None = None

    def __len__(self) -> int:
        return len(self.names)


class Hierarchy:
    """A rooted label tree with named (or deepest-only ``cK``) levels; immutable.

    Build it with :meth:`from_parent_map`, :meth:`from_lineage` or :meth:`from_level_labels`.
    """

    def __init__(
        self,
        parents: Mapping[str, str],
        root: str,
        *,
        leaves: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        node_level: Mapping[str, str] | None = None,
        root_level: str | None = None,
        level_orders: Mapping[str, Sequence[str]] | None = None,
    ):
        check_rooted({node: (parent,) for node, parent in parents.items()}, root)
        self.root = root
        self.root_level = root_level
        self._parent = dict(parents)
        children: dict[str, list[str]] = {root: []}
        for node in self._parent:
            children.setdefault(node, [])
        for node, parent in self._parent.items():
            children[parent].append(node)
        self._children = {node: tuple(sorted(kids)) for node, kids in children.items()}
        self._depth: dict[str, int] = {root: 0}
        for node in self._topological():
            if node != root:
                self._depth[node] = self._depth[self._parent[node]] + 1
        found = sorted(node for node, kids in self._children.items() if not kids and node != root)
        if not found:
            raise HierarchyError(f"the hierarchy rooted at {root!r} has no leaves")
        self.leaves: tuple[str, ...] = self._leaf_order(found, leaves)
        self._leaf_index = {leaf: i for i, leaf in enumerate(self.leaves)}
        self._max_depth = max(self._depth[leaf] for leaf in self.leaves)
        self._nodes = tuple(sorted(self._depth))
        self._node_index = {node: i for i, node in enumerate(self._nodes)}
        self._paths = self._leaf_paths()
        self._leaf_depths = np.array([self._depth[leaf] for leaf in self.leaves])
        self._named = self._named_levels(levels, node_level, root_level)
        self.levels: tuple[str, ...] = (
            tuple(self._named) if self._named else tuple(f"c{x}" for x in range(self._max_depth))
        )
        self._orders = self._level_orders(level_orders or {})
        self._resolved: dict[str, LabelSet] = {}
        self._mixed: dict[tuple[str, str], tuple[tuple[int, ...], LabelSet]] = {}

    # ----------------------------------------------------------------- construction helpers
    def _topological(self) -> list[str]:
        order, frontier = [], [self.root]
        while frontier:
            node = frontier.pop()
            order.append(node)
            frontier.extend(self._children[node])
        return order

    @staticmethod
    def _leaf_order(found: list[str], leaves: Sequence[str] | None) -> tuple[str, ...]:
        if leaves is None:
            return tuple(found)
        given = list(leaves)
        duplicates = sorted(leaf for leaf, count in Counter(given).items() if count > 1)
        if duplicates:
            raise HierarchyError(f"duplicate leaf ids in the leaf order: {duplicates[:5]}")
        extra, missing = sorted(set(given) - set(found)), sorted(set(found) - set(given))
        if extra or missing:
            raise HierarchyError(
                "the leaf order does not match the tree's leaves: "
                f"not leaves of the tree {extra[:5]}, leaves missing from the order {missing[:5]}"
            )
        return tuple(given)

    def _leaf_paths(self) -> np.ndarray:
        """``paths[i, d]`` = node index of leaf i's ancestor at depth d (-1 below the leaf)."""
        paths = np.full((len(self.leaves), self._max_depth + 1), -1, dtype=np.int64)
        for i, leaf in enumerate(self.leaves):
            node = leaf
            for d in range(self._depth[leaf], -1, -1):
                paths[i, d] = self._node_index[node]
                node = self._parent.get(node, node)
        return paths

    def _named_levels(
        self, levels: Sequence[str] | None, node_level: Mapping[str, str] | None, root_level: str | None
    ) -> dict[str, int]:
        """Map each named level to its depth; empty when the levels are deepest-only ``cK``."""
        if levels is None and node_level is None:
            return {}
        if levels is None:
            by_depth: dict[int, tuple[str, str]] = {}
            for node, level in sorted(node_level.items()):  # type: ignore[union-attr]
                if node in self._depth and node != self.root:
                    other, other_level = by_depth.setdefault(self._depth[node], (node, level))
                    if other_level != level:
                        raise HierarchyError(
                            f"node {other!r} is {other_level} but {node!r} is {level} at the same depth {self._depth[node]}"
                        )
            levels = [by_depth[d][1] for d in sorted(by_depth, reverse=True)]
        levels = list(levels)
        named = [*levels, *([root_level] if root_level else [])]
        misplaced = [lv for k, lv in enumerate(named) if parse_level(lv).kind == "deepest" and lv != f"c{k}"]
        if len(set(named)) != len(named) or misplaced:
            raise HierarchyError(f"level names must be distinct, and a name cK must be level K: {named}")
        odd = [leaf for leaf in self.leaves if self._depth[leaf] != len(levels)]
        if odd:
            raise HierarchyError(
                f"named levels {levels} need every leaf at depth {len(levels)}; "
                f"{odd[0]!r} is at depth {self._depth[odd[0]]}"
            )
        depths = {level: len(levels) - k for k, level in enumerate(levels)}
        for node, level in sorted((node_level or {}).items()):
            if node not in self._depth:
                raise HierarchyError(f"node_level names {node!r}, which is not connected to the tree")
            if {**depths, **({root_level: 0} if root_level else {})}.get(level) != self._depth[node]:
                raise HierarchyError(
                    f"node {node!r} is labelled level {level!r} but sits at depth {self._depth[node]}"
                )
        return depths

    def _level_orders(self, orders: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        result: dict[str, tuple[str, ...]] = {}
        for level, order in orders.items():
            expected = set(self._nodes_at(self._named[level]))
            if set(order) != expected or len(order) != len(expected):
                raise HierarchyError(f"the class order given for level {level!r} does not list its nodes exactly")
            result[level] = tuple(order)
        return result

    def _nodes_at(self, depth: int) -> list[str]:
        return sorted(node for node, d in self._depth.items() if d == depth)

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_parent_map(
        cls,
        parents: Mapping[str, str],
        root: str,
        node_level: Mapping[str, str] | None = None,
        levels: Sequence[str] | None = None,
        *,
        leaves: Sequence[str] | None = None,
        root_level: str | None = None,
    ) -> Hierarchy:
        """Build from ``{child: parent}`` (every non-root node once).

        ``levels`` (finest first) names the levels of a uniform-depth tree; alternatively
        ``node_level`` gives each node's level name and the levels are read from it (each
        node's level must match its depth). Without either, levels are deepest-only ``cK``.
        ``leaves`` fixes the class-index order of the leaves (default: sorted ids). Raises
        ``HierarchyError`` naming the ids on a cycle, an unknown parent or a mismatched order.
        """
        if node_level is not None and root_level is None:
            root_level = node_level.get(root)
        return cls(parents, root, leaves=leaves, levels=levels, node_level=node_level, root_level=root_level)

    @classmethod
    def from_lineage(
        cls, table: pl.DataFrame, levels: Sequence[str], root: str, root_level: str | None = None
    ) -> Hierarchy:
        """Build from a table with one row per leaf and one column per level, finest first.

        Leaves keep the row order; coarser levels are sorted by id. If the table also has a
        ``root_level`` column, every value must equal ``root``. Raises ``HierarchyError``
        naming rows and ids for missing columns, nulls, duplicate leaves and nodes under two
        parents. Homonyms across levels are renamed as described in the module docstring.
        """
        levels = list(levels)
        missing = [lv for lv in levels if lv not in table.columns]
        if missing:
            raise HierarchyError(f"lineage table lacks level columns {missing} (has {table.columns})")
        frame = table.select(pl.col(levels).cast(pl.String)).with_row_index("row")
        for level in levels:
            nulls = frame.filter(pl.col(level).is_null())["row"]
            if len(nulls):
                raise HierarchyError(f"lineage table has no {level!r} in rows {nulls.head(5).to_list()}")
        if root_level is not None and root_level in table.columns:
            wrong = table.with_row_index("row").filter(pl.col(root_level).cast(pl.String) != root)
            if len(wrong):
                raise HierarchyError(
                    f"lineage row {wrong['row'][0]} has {root_level} {wrong[root_level][0]!r}, not the root {root!r}"
                )
        dup = frame.filter(pl.col(levels[0]).is_duplicated())
        if len(dup):
            rows = dup.filter(pl.col(levels[0]) == dup[levels[0]][0])["row"].to_list()
            raise HierarchyError(f"leaf {dup[levels[0]][0]!r} appears in lineage rows {rows}")
        return cls._from_level_frame(frame, levels, root, root_level, where="row")

    @classmethod
    def from_level_labels(
        cls,
        labels: Mapping[str, np.ndarray],
        names: Mapping[str, Sequence[str]],
        root: str,
        root_level: str | None = None,
    ) -> Hierarchy:
        """Build from per-image integer labels at each level (as in ``class_labels_LEVEL.txt``).

        ``labels`` lists the levels finest first (mapping order); ``names[level][i]`` is the
        name of class ``i``. Every level keeps the file's class indices. If the coarsest level
        has the single class ``root``, it is taken as the root's level. Raises
        ``HierarchyError`` naming the ids and an example image when a label sits under two
        coarser ones, when a class has no image, or when labels are out of range.
        """
        levels = list(labels)
        missing = [lv for lv in levels if lv not in names]
        if missing:
            raise HierarchyError(f"no class names for levels {missing}")
        sizes = {lv: len(np.asarray(labels[lv])) for lv in levels}
        if len(set(sizes.values())) != 1:
            raise HierarchyError(f"per-level label arrays differ in length: {sizes}")
        for level in levels:
            dup = sorted(n for n, count in Counter(names[level]).items() if count > 1)
            if dup:
                raise HierarchyError(f"duplicate {level} class names: {dup[:5]}")
        if len(levels) > 1 and list(names[levels[-1]]) == [root]:
            root_level = root_level or levels[-1]
            levels = levels[:-1]
        columns = {}
        for level in levels:
            values = np.asarray(labels[level])
            n = len(names[level])
            bad = np.flatnonzero((values < 0) | (values >= n))
            if len(bad):
                raise HierarchyError(
                    f"{level} label {values[bad[0]]} of image {bad[0]} is outside the {n} class names"
                )
            unused = sorted(set(range(n)) - set(np.unique(values).tolist()))
            if unused:
                raise HierarchyError(
                    f"{level} classes without any image, so not connected to the tree: "
                    f"{[names[level][i] for i in unused[:5]]}"
                )
            columns[level] = np.asarray(names[level], dtype=object)[values].astype(str)
        frame = pl.DataFrame(columns).with_row_index("image")
        orders = {level: list(names[level]) for level in levels}
        return cls._from_level_frame(frame, levels, root, root_level, where="image", orders=orders)

    @classmethod
    def _from_level_frame(
        cls,
        frame: pl.DataFrame,
        levels: list[str],
        root: str,
        root_level: str | None,
        where: str,
        orders: Mapping[str, Sequence[str]] | None = None,
    ) -> Hierarchy:
        """Shared core: ``frame`` has a column per level plus ``where`` (row or image index)."""
        for child, parent in zip(levels, levels[1:]):
            pairs = frame.group_by([child, parent], maintain_order=True).agg(pl.col(where).first())
            clash = pairs.filter(pl.col(child).is_duplicated())
            if len(clash):
                name = clash[child][0]
                two = clash.filter(pl.col(child) == name).head(2)
                raise ParentConflictError(
                    f"{child} {name!r} has two {parent} parents: "
                    f"{two[parent][0]!r} ({where} {two[where][0]}) and {two[parent][1]!r} ({where} {two[where][1]})",
                    child, parent, name, (two[parent][0], two[parent][1]), (int(two[where][0]), int(two[where][1])))
        leaves_frame = frame.unique(levels[0], keep="first", maintain_order=True)
        rename = cls._homonym_ids(leaves_frame, levels, root)
        parents: dict[str, str] = {}
        for child, parent in zip(levels, levels[1:]):
            for c, p in leaves_frame.select(child, parent).unique().iter_rows():
                parents[rename[child].get(c, c)] = rename[parent].get(p, p)
        for c in leaves_frame[levels[-1]].unique():
            parents[rename[levels[-1]].get(c, c)] = root
        leaf_order = leaves_frame[levels[0]].to_list()
        if orders is not None:
            leaf_order = list(orders[levels[0]])
            orders = {lv: [rename[lv].get(n, n) for n in orders[lv]] for lv in levels[1:]}
        return cls(parents, root, leaves=leaf_order, levels=levels, root_level=root_level, level_orders=orders)

    @staticmethod
    def _homonym_ids(frame: pl.DataFrame, levels: list[str], root: str) -> dict[str, dict[str, str]]:
        """Per level, the renamings ``name -> "name (level)"`` that make ids unique."""
        seen = {root}
        rename: dict[str, dict[str, str]] = {}
        for k, level in enumerate(levels):
            names = set(frame[level].unique().to_list())
            rename[level] = {n: f"{n} ({level})" for n in names & seen} if k else {}
            if not k and root in names:
                raise HierarchyError(f"leaf {root!r} has the same id as the root")
            seen |= names
        return rename

    # ---------------------------------------------------------------------------- accessors
    def __repr__(self) -> str:
        sizes = ", ".join(f"{lv}={len(self.level_names(lv))}" for lv in self.levels)
        return f"Hierarchy(root={self.root!r}, {sizes})"

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node id (sorted)."""
        return self._nodes

    @property
    def max_depth(self) -> int:
        """Depth of the deepest leaf."""
        return self._max_depth

    def _check(self, node: str) -> str:
        if node not in self._depth:
            raise HierarchyError(f"unknown node {node!r}")
        return node

    def parent(self, node: str) -> str | None:
        """The parent of ``node`` (None for the root)."""
        return self._parent.get(self._check(node))

    def children(self, node: str) -> tuple[str, ...]:
        """The children of ``node``, sorted."""
        return self._children[self._check(node)]

    def depth(self, node: str) -> int:
        """Number of edges from the root to ``node``."""
        return self._depth[self._check(node)]

    def ancestors(self, node: str) -> tuple[str, ...]:
        """Proper ancestors of ``node``, nearest first, ending with the root."""
        out, node = [], self._check(node)
        while node != self.root:
            node = self._parent[node]
            out.append(node)
        return tuple(out)

    def is_ancestor(self, a: str, b: str) -> bool:
        """Whether ``a`` is a proper ancestor of ``b``."""
        self._check(a)
        return a in self.ancestors(b)

    def node_level(self, node: str) -> str | None:
        """The named level of ``node`` (``root_level`` for the root); None without named levels."""
        depth = self.depth(node)
        if not self._named:
            return None
        if depth == 0:
            return self.root_level
        return self.levels[len(self.levels) - depth]

    def to_parent_map(self) -> dict[str, str]:
        """``{child: parent}`` for every non-root node."""
        return dict(self._parent)

    def lineage_table(self) -> pl.DataFrame:
        """One row per leaf in class-index order: ``leaf_index`` and a column per level."""
        columns: dict[str, object] = {"leaf_index": np.arange(len(self.leaves))}
        for level in self.levels:
            columns[level] = np.asarray(self.level_names(level), dtype=object)[self.level_index(level)].tolist()
        return pl.DataFrame(columns)

    # ---------------------------------------------------------------------------- coarsening
    def coarsen(self, node: str, k: int) -> str:
        """c_k: the node ``k`` edges closer to the root (the root once ``k >= depth``)."""
        if k < 0:
            raise HierarchyError(f"coarsening steps must be >= 0, got {k}")
        node = self._check(node)
        for _ in range(min(k, self._depth[node])):
            node = self._parent[node]
        return node

    def coarsen_leaves(self, leaf_idx: Sequence[int] | np.ndarray, k: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Labels ``c_{k_i}(leaves[leaf_idx[i]])`` as an array of node ids.

        ``k`` is an int (uniform ``k * 1``) or one value per image. Raises ``HierarchyError``
        naming a pair of images when one resulting label is a descendant of another.
        """
        idx = np.asarray(leaf_idx, dtype=np.int64).reshape(-1)
        bad = np.flatnonzero((idx < 0) | (idx >= len(self.leaves)))
        if len(bad):
            raise HierarchyError(f"leaf index {idx[bad[0]]} of image {bad[0]} is outside 0..{len(self.leaves) - 1}")
        steps = np.broadcast_to(np.asarray(k, dtype=np.int64), idx.shape) if np.ndim(k) == 0 else np.asarray(k)
        if steps.shape != idx.shape:
            raise HierarchyError(f"k has {steps.size} entries for {idx.size} images")
        if len(steps) and steps.min() < 0:
            raise HierarchyError(f"k must be >= 0; image {int(np.argmin(steps))} has k={int(steps.min())}")
        depth = np.maximum(self._leaf_depths[idx] - steps, 0)
        result = self._paths[idx, depth]
        self._check_antichain(result)
        return np.asarray(self._nodes)[result]

    def _check_antichain(self, result: np.ndarray) -> None:
        values, first = np.unique(result, return_index=True)
        present = dict(zip(values.tolist(), first.tolist()))
        for value, image in sorted(present.items(), key=lambda item: item[1]):
            node = self._nodes[value]
            for ancestor in self.ancestors(node):
                if self._node_index[ancestor] in present:
                    raise HierarchyError(
                        f"invalid k vector: image {image} gets {node!r} and image "
                        f"{present[self._node_index[ancestor]]} gets {ancestor!r}, an ancestor of it"
                    )

    # ------------------------------------------------------------------------------ levels
    def resolve(self, level: str) -> LabelSet:
        """The :class:`LabelSet` of ``level``: a named level, the root level, ``cK`` or a
        per-category labelling ``mixed:FILE`` (whose classes are its chosen nodes, sorted).

        Resolved once per level; a labelling file is read again only once it has changed.
        Raises ``HierarchyError`` naming an unknown level and ``LabellingError`` naming the
        file and line of an invalid labelling.
        """
        parsed = parse_level(level)
        if parsed.is_mixed:
            return self._resolve_mixed(parsed)
        found = self._resolved.get(parsed.text)
        if found is None:
            found = self._resolved[parsed.text] = self._resolve_plain(parsed)
        return found

    def _resolve_plain(self, level: Level) -> LabelSet:
        name = level.text
        if self._named and level.steps is not None and level.steps < len(self.levels):
            name = self.levels[level.steps]  # cK on a named tree is the named level K
        if name in self._named:
            nodes = self._paths[:, self._named[name]]
        elif name == self.root_level:
            nodes = self._paths[:, 0]
        elif level.steps is not None:
            depth = np.minimum(self._leaf_depths, max(self._max_depth - level.steps, 0))
            nodes = self._paths[np.arange(len(self.leaves)), depth]
        else:
            known = [*self.levels, *([self.root_level] if self.root_level else []), "c0", "c1", "...", "mixed:FILE"]
            raise HierarchyError(f"unknown level {level.text!r}; levels are {known}")
        if name == self.levels[0] or name == "c0":
            names = self.leaves
        elif name in self._orders:
            names = self._orders[name]
        elif name == self.root_level:
            names = (self.root,)
        elif name in self._named:
            names = tuple(self._nodes_at(self._named[name]))
        else:
            names = tuple(sorted(self._nodes[i] for i in np.unique(nodes)))
        return self._label_set(level.text, name, names, nodes)

    def _resolve_mixed(self, level: Level) -> LabelSet:
        path = level.path
        assert path is not None
        try:
            stat = path.stat()
        except OSError as exc:
            raise LabellingError(f"{path}: cannot read the labelling of level {level.text!r} "
                                 f"({exc.strerror or exc})") from None
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        key = (level.text, str(path.absolute()))
        cached = self._mixed.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        labelling = load_labelling(path, self)
        nodes = np.array([self._node_index[node] for node in labelling.nodes], dtype=np.int64)
        names = tuple(sorted(set(labelling.nodes)))
        found = self._label_set(level.text, level.text, names, nodes, labelling)
        self._mixed[key] = (version, found)
        return found

    def _label_set(self, level: str, name: str, names: tuple[str, ...], nodes: np.ndarray,
                   labelling: Labelling | None = None) -> LabelSet:
        position = {node: i for i, node in enumerate(names)}
        lookup = np.array([position.get(node, -1) for node in self._nodes], dtype=np.int64)
        index = lookup[nodes]
        index.flags.writeable = False
        return LabelSet(level, name, tuple(names), index, labelling)

    def level_names(self, level: str) -> tuple[str, ...]:
        """Class-index order of the labels at ``level`` (see :meth:`resolve`)."""
        return self.resolve(level).names

    def level_index(self, level: str) -> np.ndarray:
        """Leaf index -> class index at ``level`` (a new int64 array with one entry per leaf)."""
        return self.resolve(level).index.copy()
