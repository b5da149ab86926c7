"""Label hierarchies: coarsening, deepest-only levels, DAG -> tree, builders, statistics, errors."""
from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from inatloc_nb.core.errors import HierarchyError, InatlocError
from inatloc_nb.hierarchies.dag import dag_to_tree
from inatloc_nb.hierarchies.level_stats import level_statistics
from inatloc_nb.hierarchies.taxonomy import Hierarchy

LEVELS = ["species", "genus", "family"]


@pytest.fixture
def carnivora() -> Hierarchy:
    """order Carnivora > families Canidae, Felidae > genera > four species (uniform depth 3)."""
    table = pl.DataFrame(
        {
            "species": ["Canis lupus", "Canis latrans", "Vulpes vulpes", "Felis catus"],
            "genus": ["Canis", "Canis", "Vulpes", "Felis"],
            "family": ["Canidae", "Canidae", "Canidae", "Felidae"],
        }
    )
    return Hierarchy.from_lineage(table, LEVELS, "Carnivora", root_level="order")


@pytest.fixture
def irregular() -> Hierarchy:
    """r > A > a1;  r > B > B1 > {b11, b12};  r > B > b2  (leaf depths 2, 3, 3, 2)."""
    return Hierarchy.from_parent_map(
        {"A": "r", "B": "r", "a1": "A", "B1": "B", "b11": "B1", "b12": "B1", "b2": "B"}, "r"
    )


def test_accessors(carnivora: Hierarchy) -> None:
    h = carnivora
    assert h.leaves == ("Canis lupus", "Canis latrans", "Vulpes vulpes", "Felis catus")
    assert h.levels == ("species", "genus", "family")
    assert (h.root, h.root_level, h.max_depth) == ("Carnivora", "order", 3)
    assert h.parent("Canis lupus") == "Canis" and h.parent("Carnivora") is None
    assert h.children("Canidae") == ("Canis", "Vulpes")
    assert h.depth("Carnivora") == 0 and h.depth("Felis catus") == 3
    assert h.ancestors("Vulpes vulpes") == ("Vulpes", "Canidae", "Carnivora")
    assert h.is_ancestor("Canidae", "Canis latrans") and not h.is_ancestor("Canis latrans", "Canidae")
    assert not h.is_ancestor("Felidae", "Canis lupus")
    assert [h.node_level(n) for n in ("Canis lupus", "Canis", "Felidae", "Carnivora")] == [
        "species", "genus", "family", "order"]
    assert h.to_parent_map()["Felis"] == "Felidae" and "Carnivora" not in h.to_parent_map()
    assert h.lineage_table().row(2) == (2, "Vulpes vulpes", "Vulpes", "Canidae")
    with pytest.raises(HierarchyError, match="'Lynx'"):
        h.parent("Lynx")


@pytest.mark.parametrize(
    ("node", "k", "expected"),
    [("Canis lupus", 0, "Canis lupus"), ("Canis lupus", 1, "Canis"), ("Canis lupus", 2, "Canidae"),
     ("Canis lupus", 3, "Carnivora"), ("Canis lupus", 9, "Carnivora"), ("Canis", 1, "Canidae")],
)
def test_coarsen(carnivora: Hierarchy, node: str, k: int, expected: str) -> None:
    assert carnivora.coarsen(node, k) == expected


def test_uniform_coarsening_equals_named_levels(carnivora: Hierarchy) -> None:
    leaves = np.arange(4)
    for k, level in enumerate(carnivora.levels):
        names = np.asarray(carnivora.level_names(level))
        assert carnivora.coarsen_leaves(leaves, k).tolist() == names[carnivora.level_index(level)].tolist()
        assert carnivora.level_names(f"c{k}") == carnivora.level_names(level)
        assert carnivora.level_index(f"c{k}").tolist() == carnivora.level_index(level).tolist()
    # class-index order at coarse levels: sorted ids
    assert carnivora.level_names("genus") == ("Canis", "Felis", "Vulpes")
    assert carnivora.level_index("genus").tolist() == [0, 0, 2, 1]
    assert carnivora.level_names("order") == ("Carnivora",) == carnivora.level_names("c3")
    assert carnivora.level_index("c7").tolist() == [0, 0, 0, 0]


def test_a_level_is_resolved_once(carnivora: Hierarchy) -> None:
    genus = carnivora.resolve("genus")
    assert carnivora.resolve("genus") is genus and len(genus) == 3 and genus.labelling is None
    assert (genus.level, genus.name, genus.names) == ("genus", "genus", ("Canis", "Felis", "Vulpes"))
    assert not genus.index.flags.writeable  # shared: callers get copies from level_index
    copy = carnivora.level_index("genus")
    copy[0] = 9
    assert carnivora.level_index("genus").tolist() == [0, 0, 2, 1]
    c1 = carnivora.resolve("c1")  # cK on a named tree is the named level K
    assert (c1.level, c1.name, c1.names) == ("c1", "genus", genus.names)
    root = carnivora.resolve("order")
    assert root.names == ("Carnivora",) and root.index.tolist() == [0, 0, 0, 0]
    for bad, error in [("", InatlocError), (None, InatlocError), (["genus"], InatlocError), ("mixed:", InatlocError),
                       ("tribe", HierarchyError)]:
        with pytest.raises(error, match=re.escape(repr(bad))):
            carnivora.resolve(bad)


def test_k_vector(carnivora: Hierarchy) -> None:
    # Canis lupus -> Canis, Felis catus -> Felidae: neither is below the other
    assert carnivora.coarsen_leaves([0, 3, 1], [1, 2, 1]).tolist() == ["Canis", "Felidae", "Canis"]
    with pytest.raises(HierarchyError, match=r"image 2 gets 'Canis latrans' and image 0 gets 'Canis'"):
        carnivora.coarsen_leaves([0, 0, 1], [1, 1, 0])
    with pytest.raises(HierarchyError, match="k must be >= 0"):
        carnivora.coarsen_leaves([0, 1], [0, -1])
    with pytest.raises(HierarchyError, match="3 entries for 2 images"):
        carnivora.coarsen_leaves([0, 1], [0, 1, 1])
    with pytest.raises(HierarchyError, match="leaf index 4 of image 1"):
        carnivora.coarsen_leaves([0, 4], 0)


def test_deepest_only_on_irregular_tree(irregular: Hierarchy) -> None:
    h = irregular
    assert h.levels == ("c0", "c1", "c2") and h.leaves == ("a1", "b11", "b12", "b2")
    assert h.node_level("B1") is None
    # c1: only the depth-3 leaves move up; c2: everything at depth 2 moves up; c3: root
    assert h.level_names("c1") == ("B1", "a1", "b2")
    assert h.level_index("c1").tolist() == [1, 0, 0, 2]
    assert h.level_names("c2") == ("A", "B")
    assert h.level_index("c2").tolist() == [0, 1, 1, 1]
    assert h.level_names("c3") == ("r",)
    # uniform k=1 on this tree is not a valid coarsening: b2 -> B is an ancestor of B1
    with pytest.raises(HierarchyError, match="'B1'.*'B', an ancestor"):
        h.coarsen_leaves(np.arange(4), 1)
    with pytest.raises(HierarchyError, match="unknown level 'genus'"):
        h.level_names("genus")


def test_dag_to_tree_worked_by_hand() -> None:
    # y has parents A and B. Keeping A deletes node B and with it z, w (2 leaves left: x, y);
    # keeping B deletes A and x (3 leaves left: y, z, w) -> keep B.
    # v has parents C and D (C first in sorted order): keeping C deletes D (leaf u lost),
    # keeping D deletes C (nothing lost besides C itself) -> keep D; C is dropped.
    dag = {
        "A": ["r"], "B": ["r"], "x": ["A"], "y": ["A", "B"], "z": ["B"], "w": ["B"],
        "C": ["r"], "D": ["r"], "v": ["D", "C"], "u": ["D"],
    }
    assert dag_to_tree(dag, "r") == {
        "B": "r", "y": "B", "z": "B", "w": "B", "D": "r", "v": "D", "u": "D",
    }


def test_dag_to_tree_drops_parents_left_without_leaves() -> None:
    # q is the only child of P; keeping the parent that loses no leaf deletes q, so P is dropped
    dag = {"P": ["r"], "q": ["P"], "S": ["r"], "t": ["q", "S"], "s2": ["S"]}
    assert dag_to_tree(dag, "r") == {"S": "r", "t": "S", "s2": "S"}


@pytest.mark.parametrize(
    ("dag", "message"),
    [({"a": ["b"], "b": ["a"]}, "cycle in the parent map: a -> b -> a"),
     ({"a": ["r"], "b": ["zz"]}, "node 'b' has unknown parent 'zz'"),
     ({"a": ["r"], "b": []}, r"without a parent.*\['b'\]"),
     ({"r": ["a"], "a": ["r"]}, "the root 'r' has parents")],
)
def test_dag_errors(dag: dict, message: str) -> None:
    with pytest.raises(HierarchyError, match=message):
        dag_to_tree(dag, "r")


def test_level_statistics_by_hand(carnivora: Hierarchy) -> None:
    # images: Canis lupus x2, Canis latrans x1, Vulpes vulpes x1, Felis catus x3
    stats = level_statistics(carnivora, [0, 0, 1, 2, 3, 3, 3])
    assert stats.columns == ["level", "n_categories", "min", "max", "mean", "imbalance"]
    assert stats.rows() == [
        ("species", 4, 1, 3, 7 / 4, 3.0),
        ("genus", 3, 1, 3, 7 / 3, 3.0),  # Canis 3, Felis 3, Vulpes 1
        ("family", 2, 3, 4, 3.5, 4 / 3),  # Canidae 4, Felidae 3
    ]
    assert level_statistics(carnivora, [0, 1])["imbalance"][0] == float("inf")
    with pytest.raises(HierarchyError, match="label 9 of image 1"):
        level_statistics(carnivora, [0, 9])


def test_from_parent_map_levels_and_order() -> None:
    parents = {"g1": "f", "g2": "f", "s1": "g1", "s2": "g2", "s3": "g1"}
    h = Hierarchy.from_parent_map(parents, "f", levels=["species", "genus"], leaves=["s3", "s1", "s2"])
    assert h.leaves == ("s3", "s1", "s2") and h.level_index("genus").tolist() == [0, 0, 1]
    by_node = {"g1": "genus", "g2": "genus", "s1": "species", "s2": "species", "s3": "species", "f": "family"}
    h2 = Hierarchy.from_parent_map(parents, "f", node_level=by_node)
    assert (h2.levels, h2.root_level, h2.leaves) == (("species", "genus"), "family", ("s1", "s2", "s3"))
    assert Hierarchy.from_parent_map(h.to_parent_map(), "f", levels=h.levels).level_names("genus") == ("g1", "g2")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"parents": {"a": "b", "b": "c", "c": "a"}}, "cycle in the parent map: a -> b -> c -> a"),
     ({"parents": {"a": "r", "b": "nowhere"}}, "node 'b' has unknown parent 'nowhere'"),
     ({"parents": {"a": "r", "b": "a"}, "leaves": ["b", "zz"]}, r"not leaves of the tree \['zz'\]"),
     ({"parents": {"a": "r", "b": "r"}, "leaves": ["a", "a", "b"]}, r"duplicate leaf ids.*\['a'\]"),
     ({"parents": {"a": "r", "b": "a", "c": "r"}, "levels": ["species", "genus"]}, "'c' is at depth 1"),
     ({"parents": {"a": "r", "b": "a"}, "node_level": {"b": "genus", "a": "species"}, "levels": ["species", "genus"]},
      "'a' is labelled level 'species' but sits at depth 1"),
     ({"parents": {"a": "r", "b": "r", "c": "a", "d": "b"}, "node_level": {"a": "genus", "b": "family"}},
      "'a' is genus but 'b' is family at the same depth 1"),
     ({"parents": {"a": "r"}, "node_level": {"a": "species", "ghost": "genus"}}, "'ghost'"),
     ({"parents": {}}, "has no leaves")],
)
def test_from_parent_map_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(HierarchyError, match=message):
        Hierarchy.from_parent_map(root="r", **kwargs)


def test_from_lineage_homonyms_get_level_suffix() -> None:
    # "Oenanthe" is a bird genus; here it also stands for a (fictional) family above it
    table = pl.DataFrame({"species": ["Oenanthe oenanthe", "Oenanthe"], "genus": ["Oenanthe", "Oenanthe (g)"],
                          "family": ["Muscicapidae", "Muscicapidae"]})
    h = Hierarchy.from_lineage(table, LEVELS, "Aves")
    assert h.leaves == ("Oenanthe oenanthe", "Oenanthe")
    assert h.level_names("genus") == ("Oenanthe (g)", "Oenanthe (genus)")
    assert h.parent("Oenanthe oenanthe") == "Oenanthe (genus)"


@pytest.mark.parametrize(
    ("table", "message"),
    [({"species": ["a", "b"], "genus": ["G", "G"], "family": ["F", "E"]},
      r"genus 'G' has two family parents: 'F' \(row 0\) and 'E' \(row 1\)"),
     ({"species": ["a", "a"], "genus": ["G", "G"], "family": ["F", "F"]}, r"leaf 'a' appears in lineage rows \[0, 1\]"),
     ({"species": ["a", None], "genus": ["G", "G"], "family": ["F", "F"]}, r"no 'species' in rows \[1\]"),
     ({"species": ["a"], "genus": ["G"]}, r"lacks level columns \['family'\]"),
     ({"species": ["a", "b"], "genus": ["G", "H"], "family": ["F", "F"], "order": ["O", "P"]},
      "row 1 has order 'P', not the root 'O'")],
)
def test_from_lineage_errors(table: dict, message: str) -> None:
    with pytest.raises(HierarchyError, match=message):
        Hierarchy.from_lineage(pl.DataFrame(table), LEVELS, "O", root_level="order")


def test_from_level_labels_keeps_file_indices() -> None:
    labels = {"species": np.array([2, 0, 1, 0, 2]), "genus": np.array([0, 1, 1, 1, 0]),
              "kingdom": np.zeros(5, dtype=int)}
    names = {"species": ["s0", "s1", "s2"], "genus": ["Gz", "Ga"], "kingdom": ["Animalia"]}
    h = Hierarchy.from_level_labels(labels, names, "Animalia")
    assert (h.leaves, h.levels, h.root_level) == (("s0", "s1", "s2"), ("species", "genus"), "kingdom")
    assert h.level_names("genus") == ("Gz", "Ga")  # file order kept, not sorted
    assert h.level_index("genus").tolist() == [1, 1, 0]
    assert h.level_index("genus")[labels["species"]].tolist() == labels["genus"].tolist()
    stats = level_statistics(h, labels["species"])
    assert stats.select("n_categories", "min", "max").rows() == [(3, 1, 2), (2, 2, 3)]


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [({"species": [0, 1, 0], "genus": [0, 0, 1]}, None, r"species 's0' has two genus parents: 'G0' \(image 0\) and 'G1' \(image 2\)"),
     ({"species": [0, 1, 5], "genus": [0, 0, 1]}, None, "species label 5 of image 2 is outside the 2 class names"),
     ({"species": [0, 1, 1], "genus": [0, 0, 0]}, None, r"genus classes without any image.*\['G1'\]"),
     ({"species": [0, 1], "genus": [0, 1, 1]}, None, "differ in length"),
     ({"species": [0, 1], "genus": [0, 1]}, {"species": ["s0", "s0"], "genus": ["G0", "G1"]},
      r"duplicate species class names: \['s0'\]"),
     ({"species": [0, 1], "genus": [0, 1]}, {"species": ["s0", "s1"]}, r"no class names for levels \['genus'\]")],
)
def test_from_level_labels_errors(labels: dict, names: dict | None, message: str) -> None:
    names = names or {"species": ["s0", "s1"], "genus": ["G0", "G1"]}
    with pytest.raises(HierarchyError, match=message) as info:
        Hierarchy.from_level_labels({k: np.asarray(v) for k, v in labels.items()}, names, "root")
    assert isinstance(info.value, InatlocError)
