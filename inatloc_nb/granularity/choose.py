"""One label level per category, chosen from D_f evidence and resolved into a valid labelling.

Evidence: for every finest category ``s`` and level ``L`` with single-level runs, the
per-image box scores (:mod:`~inatloc_nb.granularity.evidence`) of the D_f images of ``s``
under the models trained at ``L``, pooled over seeds. A category has few D_f images, so
its accuracy is shrunk toward the level's overall D_f accuracy::

    score(s, L) = (hits(s, L) + prior * acc(L)) / (n(s, L) + prior)

Each category *prefers* the level of its highest score. Preferences may conflict (a
category asking for its order while a sibling asks for its genus makes one label a
descendant of another). The conflict is resolved by a tree cut: a labelling is a set of
nodes covering every category exactly once, and the chosen cut maximises the total
expected number of correct D_f images, ``sum_s n(s) * score(s, level of the node covering s)``,
by dynamic programming from the leaves up (a node is used whole when its categories do better
together at its level than split among its children; ties keep the finer labels). The
root, a single class, is never used. A category gets its preferred level exactly when the
resolution does not override it; the ``reason`` column says which.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from inatloc_nb.core.errors import InatlocError

if TYPE_CHECKING:
    from inatloc_nb.hierarchies.taxonomy import Hierarchy

#: Default shrinkage strength, in D_f images.
DEFAULT_PRIOR = 4.0


def category_scores(evidence: pl.DataFrame, prior: float = DEFAULT_PRIOR) -> pl.DataFrame:
    """``category, level, n, hits, acc_level, score`` from :func:`run_evidence` rows (per image
    per run); ``n`` and ``hits`` pool the seeds."""
    if prior < 0:
        raise InatlocError(f"prior must be >= 0, got {prior}")
    level_acc = evidence.group_by("level").agg(acc_level=pl.col("hit").mean())
    return (evidence.group_by("category", "level").agg(n=pl.len(), hits=pl.col("hit").sum())
            .join(level_acc, on="level")
            .with_columns(score=(pl.col("hits") + prior * pl.col("acc_level")) / (pl.col("n") + prior))
            .sort("category", "level"))


def choose_levels(scores: pl.DataFrame, hierarchy: Hierarchy) -> tuple[dict[str, str], pl.DataFrame]:
    """The labelling ``{category: node}`` that maximises the expected D_f hits, and the table
    of why each category got its node (one row per category, in ``hierarchy.leaves`` order:
    ``category, preferred_level, preferred_score, chosen_node, chosen_level, chosen_score,
    group_size, reason`` and ``score_<level>`` for every level with evidence)."""
    levels = [lv for lv in hierarchy.levels if lv in set(scores["level"])]
    if hierarchy.levels[0] not in levels:
        raise InatlocError(f"no evidence at the finest level {hierarchy.levels[0]!r}; "
                           "choose-levels needs runs at every level it may choose, the finest included")
    table = scores.filter(pl.col("level").is_in(levels))
    score = {(c, lv): s for c, lv, s in table.select("category", "level", "score").iter_rows()}
    weight = dict(table.group_by("category").agg(pl.col("n").max()).iter_rows())
    missing = [leaf for leaf in hierarchy.leaves if (leaf, hierarchy.levels[0]) not in score]
    if missing:
        raise InatlocError(f"{len(missing)} categories have no D_f images in the evidence: {missing[:5]}")

    leaves_under: dict[str, list[str]] = {}
    for leaf in hierarchy.leaves:
        for node in (leaf, *hierarchy.ancestors(leaf)):
            leaves_under.setdefault(node, []).append(leaf)

    def cut_value(node: str) -> float:
        level = hierarchy.node_level(node)
        if node == hierarchy.root or level not in levels:
            return -np.inf
        return sum(weight[s] * score[(s, level)] for s in leaves_under[node])

    best: dict[str, tuple[float, list[str]]] = {}
    for node in sorted(leaves_under, key=hierarchy.depth, reverse=True):  # leaves up to the root
        kids = hierarchy.children(node)
        split = (sum(best[k][0] for k in kids), [n for k in kids for n in best[k][1]]) if kids else (-np.inf, [])
        whole = cut_value(node)
        best[node] = (whole, [node]) if whole > split[0] else split
    cut = best[hierarchy.root][1]
    if len(cut) < 2:
        raise InatlocError("the evidence puts every category under one label; a classifier needs two classes")
    labelling = {leaf: node for node in cut for leaf in leaves_under[node]}

    rows = []
    for leaf in hierarchy.leaves:
        per_level = {lv: score.get((leaf, lv), np.nan) for lv in levels}
        preferred = max(levels, key=lambda lv: (per_level[lv], -levels.index(lv)))
        node = labelling[leaf]
        chosen = hierarchy.node_level(node)
        group = leaves_under[node]
        if chosen == preferred:
            reason = "its own best level"
        elif levels.index(chosen) > levels.index(preferred):
            reason = (f"coarsened with the {len(group)} categories of {node}: together they score more at "
                      f"{chosen} than split finer")
        else:
            reason = (f"refined: its preferred {preferred} group would cost its other categories more than "
                      f"it gains")
        rows.append({"category": leaf, "preferred_level": preferred, "preferred_score": per_level[preferred],
                     "chosen_node": node, "chosen_level": chosen, "chosen_score": per_level[chosen],
                     "group_size": len(group), "n_images": weight[leaf], "reason": reason,
                     **{f"score_{lv}": per_level[lv] for lv in levels}})
    return labelling, pl.DataFrame(rows)
