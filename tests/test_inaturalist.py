"""Real hierarchies from the offline iNaturalist taxonomy, and the ``stats`` command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inatloc_nb.cli import main
from inatloc_nb.core.errors import HierarchyError
from inatloc_nb.datasets.metadata import SplitMetadata, class_names_file, write_class_names, write_split
from inatloc_nb.hierarchies import inaturalist


def test_inatloc500_hierarchy_is_the_release() -> None:
    h = inaturalist.inatloc500_hierarchy()
    counts = {level: len(h.level_names(level)) for level in h.levels}
    assert h.levels == inaturalist.INATLOC500_LEVELS
    assert (h.root, h.root_level, h.max_depth) == ("Animalia", "kingdom", 6)
    assert counts == {"species": 500, "genus": 317, "family": 184, "order": 61, "class": 18, "phylum": 5}
    # the release's placements (the iNaturalist taxonomy of 2021)
    assert h.ancestors("Cathartes aura")[:2] == ("Cathartes", "Cathartidae")
    assert h.ancestors("Cathartes aura")[2] == "Cathartiformes"
    assert h.ancestors("Calypte anna")[1:3] == ("Trochilidae", "Caprimulgiformes")
    assert h.ancestors("Bubulcus ibis") == ("Bubulcus", "Ardeidae", "Pelecaniformes", "Aves", "Chordata", "Animalia")
    # leaves in the release's class-index order, coarser labels as its class_labels_<level> files
    lineage = inaturalist.inatloc500_lineage()
    assert lineage["species"].to_list() == list(h.leaves)
    assert lineage["species"][0] == "Cyprinus carpio" and lineage["kingdom"].unique().to_list() == ["Animalia"]


def test_inatloc500_taxonomy_changes_since_the_release() -> None:
    changes = inaturalist.inatloc500_taxonomy_changes()
    by_level = dict(changes.group_by("level").len().iter_rows())
    assert by_level == {"family": 8, "order": 12}
    assert ("Calypte anna", "order", "Caprimulgiformes", "Apodiformes") in changes.select(
        "species", "level", "release", "current").rows()


def test_resolve_species_rules_and_errors() -> None:
    query = pl.DataFrame({
        "species": ["Canis lupus", "Neovison vison", "Hyla nonexistentis", "Nogenus nospecies"],
        "supercategory": ["Mammalia", "Mammalia", "Amphibia", "Animalia"],
    })
    with pytest.raises(HierarchyError, match=r"1 species not resolved.*'Nogenus nospecies': \[\]"):
        inaturalist.resolve_species(query)
    resolved = inaturalist.resolve_species(query.head(3))
    assert resolved["method"].to_list() == ["species", "synonym", "genus"]
    assert resolved["family"].to_list() == ["Canidae", "Mustelidae", "Hylidae"]
    # the supercategory must agree with the taxon: a wolf is not a bird
    with pytest.raises(HierarchyError, match="Canis lupus"):
        inaturalist.resolve_species(pl.DataFrame({"species": ["Canis lupus"], "supercategory": ["Aves"]}))


def test_cub_hierarchy_and_class_mapping() -> None:
    h = inaturalist.cub_hierarchy()
    classes = inaturalist.cub_classes()
    assert (h.root, h.root_level, h.levels) == ("Aves", "class", inaturalist.CUB_LEVELS)
    assert classes.height == 200 and classes["label"].to_list() == list(range(200))
    kept = classes.filter(pl.col("excluded").is_null())
    assert len(h.leaves) == kept.height == 184  # App. C; the mapping alone keeps 188 (docs/hierarchies.md)
    assert h.leaves == tuple(kept["scientific_name"])
    assert classes.filter(pl.col("cub_category") == "017.Cardinal")["excluded"].item() == "no iNaturalist species"
    to_leaf = inaturalist.cub_label_to_leaf()
    assert (to_leaf >= 0).sum() == 184 and to_leaf[16] == -1
    assert (inaturalist.cub_label_to_leaf(paper_filter=False) >= 0).sum() == 188
    assert h.leaves[to_leaf[0]] == "Phoebastria nigripes"
    assert {len(h.level_names(lv)) for lv in ("genus", "family", "order")} <= set(range(10, 120))


def test_stats_cli_inatloc500(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--dataset", "inatloc500"]) == 0
    out = capsys.readouterr().out
    assert "25000 images (val + test)" in out and "only the iNatLoc500 release's val and test metadata ship" in out
    assert "| order   | 61 " in out
    assert main(["stats", "--dataset", "inatloc500", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    species = report["levels"][0]
    assert (species["level"], species["n_categories"], species["min"], species["max"]) == ("species", 500, 50, 50)
    assert report["hierarchy"]["genus"] == 317
    assert main(["stats", "--dataset", "inatloc500", "--split", "train"]) == 2
    assert "no split 'train'" in capsys.readouterr().err


def _write_choe(root: Path) -> None:
    """Species s0..s3 under genera G0 (s0, s1) and G1 (s2, s3); train counts 3, 1, 2, 4."""
    names = {"species": ["s0", "s1", "s2", "s3"], "genus": ["G0", "G1"]}
    species = np.repeat(np.arange(4), [3, 1, 2, 4])
    for split, labels in (("train", species), ("val", np.arange(4))):
        images = pl.DataFrame({
            "image_id": [f"{split}/{i}.jpg" for i in range(len(labels))],
            "width": 10, "height": 8, "label": labels, "label_genus": labels // 2,
        })
        boxes = images.select("image_id", x0=pl.lit(1), y0=pl.lit(1), x1=pl.lit(8), y1=pl.lit(5))
        write_split(root / split, SplitMetadata(split, images, boxes))
    write_class_names(root / class_names_file(), names["species"])
    write_class_names(root / class_names_file("genus"), names["genus"])


def test_stats_cli_choe_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_choe(tmp_path)
    assert main(["stats", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == ["train"] and report["n_images"] == 10
    assert [(r["level"], r["n_categories"], r["min"], r["max"], r["mean"], r["imbalance"]) for r in report["levels"]] == [
        ("species", 4, 1, 4, 2.5, 4.0), ("genus", 2, 4, 6, 5.0, 1.5)]
    assert main(["stats", str(tmp_path), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "4 images (val)" in out and "hierarchy categories per level: species 4, genus 2" in out
