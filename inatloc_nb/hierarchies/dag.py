"""Label graphs with several parents per node: the rooted-graph check and App. C's reduction
of a DAG to a tree (used for ILSVRC's WordNet hierarchy, :mod:`inatloc_nb.hierarchies.imagenet`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from inatloc_nb.core.errors import HierarchyError


def check_rooted(parents: Mapping[str, Iterable[str]], root: str) -> None:
    """Raise ``HierarchyError`` unless every node's parents lead to ``root`` without cycles."""
    if root in parents and list(parents[root]):
        raise HierarchyError(f"the root {root!r} has parents {sorted(parents[root])}")
    for node in sorted(parents):
        for parent in sorted(parents[node]):
            if parent != root and parent not in parents:
                raise HierarchyError(
                    f"node {node!r} has unknown parent {parent!r} (neither a node nor the root {root!r})"
                )
    orphans = sorted(node for node, ps in parents.items() if node != root and not list(ps))
    if orphans:
        raise HierarchyError(f"nodes without a parent, not connected to the root {root!r}: {orphans[:5]}")
    state: dict[str, int] = {root: 2}  # 1: on the current upward path, 2: known to reach the root
    for start in sorted(parents):
        if state.get(start) == 2:
            continue
        path, stack = [start], [iter(sorted(parents[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                state[path.pop()] = 2
            elif state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                raise HierarchyError(f"cycle in the parent map: {' -> '.join(cycle)}")
            elif state.get(nxt) != 2:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(parents[nxt])))


def dag_to_tree(
    parents: Mapping[str, Sequence[str]],
    root: str,
    *,
    order: Sequence[str] | None = None,
    sort_parents: bool = True,
) -> dict[str, str]:
    """Turn a DAG ``{node: [parents...]}`` into a tree ``{node: parent}`` (App. C).

    Nodes with several parents are visited in sorted order (or ``order``, which must list
    every node once: App. C's "fixed but arbitrary" order). For each, every candidate parent
    is tried in sorted order (listed order with ``sort_parents=False``): the *other* parent
    nodes are deleted and the original leaves still reachable from ``root`` are counted; the
    parent keeping the most is kept (ties: the first tried) and the other parent nodes are
    deleted, with every node no longer reachable from the root. Finally, nodes with no
    surviving original leaf below them are dropped, so the tree's leaves are original leaves.
    The mapping may list nodes in any order (children before their parents). Raises
    ``HierarchyError`` on cycles, unknown parents and an ``order`` that is not the nodes.
    """
    check_rooted(parents, root)
    children: dict[str, set[str]] = {root: set()}
    for node, ps in parents.items():
        children.setdefault(node, set())
        for p in ps:
            children.setdefault(p, set()).add(node)  # a parent may be listed after its child
    leaves = {node for node, kids in children.items() if not kids and node != root}
    alive = set(children)
    current = {node: set(ps) for node, ps in parents.items()}

    def reachable(deleted: set[str]) -> set[str]:
        seen, frontier = {root}, [root]
        while frontier:
            for child in children[frontier.pop()]:
                if child in alive and child not in deleted and child not in seen:
                    seen.add(child)
                    frontier.append(child)
        return seen

    visit = sorted(current) if order is None else list(order)
    if len(visit) != len(current) or set(visit) != set(current):
        raise HierarchyError(f"the visit order must list every node of the DAG once ({len(current)} nodes, "
                             f"{len(visit)} given)")
    for node in visit:
        if node not in alive or len(current[node] & alive) < 2:
            continue
        listed = list(dict.fromkeys(parents[node]))
        candidates = sorted(current[node] & alive) if sort_parents else [p for p in listed if p in alive]
        scores = [len(leaves & reachable(set(candidates) - {p})) for p in candidates]
        keep = candidates[int(np.argmax(scores))]
        alive = reachable(set(candidates) - {keep})
    # every surviving node now has exactly one surviving parent
    tree = {node: next(iter(current[node] & alive)) for node in sorted(alive - {root})}
    useful = set()
    for leaf in leaves & alive:
        node = leaf
        while node not in useful and node != root:
            useful.add(node)
            node = tree[node]
    return {node: parent for node, parent in tree.items() if node in useful}
