"""WSOLDataset: folders, shipped metadata, rescaled boxes, subsampling and image checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from inatloc_nb.core.errors import InatlocError, MetadataError
from inatloc_nb.datasets.dataset import WSOLDataset, load_shipped
from inatloc_nb.datasets.metadata import SplitMetadata, write_class_names, write_split

SPECIES = ["Bufo bufo", "Bufo spinosus", "Rana temporaria", "Parus major"]
GENUS = ["Bufo", "Rana", "Parus"]        # species -> genus 0, 0, 1, 2
FAMILY = ["Bufonidae", "Ranidae", "Paridae"]


def _folder(root: Path, levels: bool = True, sizes_hw: bool = False) -> Path:
    """train: 12 images (6, 3, 2, 1 per species), no boxes; val: 4 images with boxes."""
    species = np.array([0] * 6 + [1] * 3 + [2] * 2 + [3])
    for split, labels in (("train", species), ("val", np.arange(4))):
        n = len(labels)
        images = pl.DataFrame({
            "image_id": [f"{split}/{SPECIES[y]}/{i}.jpg" for i, y in enumerate(labels)],
            "width": [200] * n, "height": [100] * n, "label": labels,
            **({"label_genus": np.array([0, 0, 1, 2])[labels],
                "label_family": np.array([0, 0, 1, 2])[labels]} if levels else {}),
        })
        boxes = pl.DataFrame({"image_id": images["image_id"], "x0": [10] * n, "y0": [5] * n,
                              "x1": [150 + i for i in range(n)], "y1": [90] * n})
        if split == "train":
            boxes = boxes.clear()
        write_split(root / split, SplitMetadata(split, images, boxes))
        if sizes_hw:
            text = (root / split / "image_sizes.txt").read_text().replace(",200,100", ",100,200")
            (root / split / "image_sizes.txt").write_text(text)
    write_class_names(root / "class_names.txt", SPECIES)
    if levels:
        write_class_names(root / "class_names_genus.txt", GENUS)
        write_class_names(root / "class_names_family.txt", FAMILY)
        write_class_names(root / "class_names_kingdom.txt", ["Animalia"])
    return root


def test_from_folder_with_levels(tmp_path):
    data = WSOLDataset.from_folder(_folder(tmp_path / "toy"), image_root=tmp_path / "img")
    assert data.name == "toy" and list(data.splits) == ["train", "val"]
    assert data.levels == ("species", "genus", "family")
    assert (data.hierarchy.root, data.hierarchy.root_level) == ("Animalia", "kingdom")
    assert data.class_names("genus") == tuple(GENUS)
    images = data.images("val")
    assert images.columns == ["image_id", "width", "height", "label", "label_genus", "label_family"]
    assert images["label_genus"].to_list() == [0, 0, 1, 2]
    assert data.labels("train", "family").tolist() == [0] * 9 + [1, 1, 2]
    assert data.labels("train", 1).tolist() == data.labels("train", "genus").tolist()
    assert data.image_path("val/x.jpg") == tmp_path / "img" / "val/x.jpg"
    summary = data.describe()
    assert summary.row(1, named=True) == {"split": "val", "images": 4, "boxes": 4,
                                          "n_species": 4, "n_genus": 3, "n_family": 3}
    assert "train=12" in repr(data) and "val=4 (4 boxes)" in repr(data)


def test_from_folder_flat_and_size_order_shared(tmp_path):
    data = WSOLDataset.from_folder(_folder(tmp_path / "flat", levels=False, sizes_hw=True))
    assert data.levels == ("c0",) and data.hierarchy.leaves == tuple(SPECIES)
    # val's boxes (x1 up to 153) only fit 200-wide images: height,width is detected there
    # and used for train, whose sizes alone are ambiguous.
    assert data.splits["val"].size_order == "hw" and data.splits["train"].size_order == "hw"
    assert data.images("train")["width"].unique().to_list() == [200]
    with pytest.raises(InatlocError, match="no image root"):
        data.image_path("a.jpg")
    with pytest.raises(InatlocError, match="no split 'test'"):
        data.images("test")


def test_parent_conflict_names_files_and_lines(tmp_path):
    root = _folder(tmp_path / "toy")
    path = root / "val" / "class_labels_genus.txt"  # Bufo spinosus (val line 2) put in genus Rana
    lines = path.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",1"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MetadataError) as err:
        WSOLDataset.from_folder(root)
    message = str(err.value)
    assert message.startswith("species 'Bufo spinosus' is labelled under two genus classes: 'Bufo' (image "
                              "'train/Bufo spinosus/6.jpg': ")
    assert f"{root / 'train' / 'class_labels.txt'}:7 and {root / 'train' / 'class_labels_genus.txt'}:7" in message
    assert (f"'Rana' (image 'val/Bufo spinosus/1.jpg': {root / 'val' / 'class_labels.txt'}:2 and "
            f"{root / 'val' / 'class_labels_genus.txt'}:2)") in message


@pytest.mark.parametrize("entry, message", [
    ("val", "split folder cannot be read: Too many levels of symbolic links"),
    ("val/localization.txt", "cannot be read: Too many levels of symbolic links"),
    ("val/image_sizes.txt", "cannot be read: Too many levels of symbolic links"),
    ("class_names_genus.txt", "cannot be read: Too many levels of symbolic links"),
    ("train/class_labels_family.txt", "cannot be read: Too many levels of symbolic links"),
])
def test_unreadable_entries_are_named_not_skipped(tmp_path, entry, message):
    root = _folder(tmp_path / "toy")
    target = root / entry
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(target)  # a symbolic link loop: exists() and is_dir() say False
    with pytest.raises(MetadataError) as err:
        WSOLDataset.from_folder(root)
    assert str(err.value) == f"{target}: {message}"


def test_split_folder_without_permission_is_named(tmp_path, monkeypatch):
    import os

    root = _folder(tmp_path / "toy")
    scandir = os.scandir

    def denied(path):
        if Path(path) == root / "train":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)  # a chmod would not stop the root user the tests may run as
    with pytest.raises(MetadataError, match=rf"{root / 'train'}: split folder cannot be read: Permission denied"):
        WSOLDataset.from_folder(root)
    monkeypatch.undo()
    (root / "broken").symlink_to(tmp_path / "nowhere")
    (root / "train").rename(tmp_path / "train")
    (root / "broken").rename(root / "train")
    with pytest.raises(MetadataError, match=r"split folder not found \(a broken symbolic link\)"):
        WSOLDataset.from_folder(root)


def test_gt_boxes_rescaled_with_truncation(tmp_path):
    data = WSOLDataset.from_folder(_folder(tmp_path / "toy"))
    boxes = data.gt_boxes("val")
    # 200 x 100 image, box (10, 5, 150 + i, 90): x * 224 / 200, y * 224 / 100, truncated
    expected = [[11, 11, 168, 201], [11, 11, 169, 201], [11, 11, 170, 201], [11, 11, 171, 201]]
    assert [b.tolist() for b in boxes] == [[e] for e in expected]
    assert data.gt_boxes("val", size=100)[0].tolist() == [[5, 5, 75, 90]]
    with pytest.raises(MetadataError, match="no boxes"):
        data.gt_boxes("train")


def test_subsample_is_seeded_and_per_class(tmp_path):
    data = WSOLDataset.from_folder(_folder(tmp_path / "toy"))
    with pytest.warns(UserWarning, match=r"2 categories have fewer than 3 images.*Rana temporaria \(2\)"):
        ids = data.subsample("train", "species", per_class=3, seed=7)
    with pytest.warns(UserWarning):
        assert data.subsample("train", "species", per_class=3, seed=7) == ids
    chosen = data.images("train").filter(pl.col("image_id").is_in(ids))
    assert chosen.group_by("label").len().sort("label")["len"].to_list() == [3, 3, 2, 1]
    draws = set()
    for seed in range(6):
        with pytest.warns(UserWarning):
            draws.add(tuple(data.subsample("train", "species", per_class=3, seed=seed)))
    assert len(draws) > 1
    genus_ids = data.subsample("train", "genus", per_class=1, seed=0)
    assert sorted(data.labels("train", "genus")[[data.images("train")["image_id"].to_list().index(i)
                                                  for i in genus_ids]].tolist()) == [0, 1, 2]
    items = WSOLDataset.from_folder(tmp_path / "toy", image_root=tmp_path).items("train", "genus", genus_ids)
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in items][0] == (genus_ids[0], 0)
    with pytest.raises(MetadataError, match="not in toy train"):
        data.items("train", 0, ["nope.jpg"])


def test_check_images_lists_missing_and_unreadable(tmp_path):
    root = tmp_path / "img"
    data = WSOLDataset.from_folder(_folder(tmp_path / "toy"), image_root=root)
    ids = data.images("val")["image_id"].to_list()
    for image_id in ids[:2]:
        (root / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (200, 100)).save(root / image_id)
    (root / ids[2]).parent.mkdir(parents=True, exist_ok=True)
    (root / ids[2]).write_bytes(b"not a jpeg")
    with pytest.raises(MetadataError) as info:
        data.check_images("val", progress=False)
    message = str(info.value)
    assert "2 of 4 images" in message
    assert f"{root / ids[2]} (unreadable" in message and f"{root / ids[3]} (missing)" in message
    assert len(info.value.problems) == 2
    (root / ids[3]).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 100)).save(root / ids[2])
    Image.new("RGB", (200, 100)).save(root / ids[3])
    assert data.check_images("val", progress=False) == 4


def test_shipped_cub_counts():
    cub = load_shipped("cub", with_hierarchy=False)
    sizes = {s: cub.images(s).height for s in cub.splits}
    assert sizes == {"train": 5994, "val": 1000, "test": 5794}
    assert {s: cub.boxes(s).height for s in cub.splits} == sizes
    assert len(cub.hierarchy.leaves) == 200 and cub.levels == ("species",)
    first = cub.images("train").row(0, named=True)
    assert first == {"image_id": "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
                     "width": 500, "height": 336, "label": 0}
    # box (139, 30, 292, 294) of a 500 x 336 image
    assert cub.gt_boxes("train")[0].tolist() == [[62, 20, 130, 196]]


def test_shipped_ilsvrc_counts_and_multiple_boxes():
    ilsvrc = load_shipped("ilsvrc", with_hierarchy=False)
    assert {s: ilsvrc.images(s).height for s in ilsvrc.splits} == {"val": 10000, "test": 50000}
    assert {s: ilsvrc.boxes(s).height for s in ilsvrc.splits} == {"val": 18532, "test": 80477}
    assert ilsvrc.levels == ("c0",) and len(ilsvrc.hierarchy.leaves) == 1000
    boxes = ilsvrc.gt_boxes("test")
    assert len(boxes) == 50000 and sum(len(b) for b in boxes) == 80477
    assert max(len(b) for b in boxes) > 1
    # ILSVRC2012_val_00000002: 500 x 375 with boxes (45, 49, 499, 162) and (2, 69, 437, 207)
    assert boxes[1].tolist() == [[20, 29, 223, 96], [0, 41, 195, 123]]


def test_shipped_inatloc500_lists():
    inat = load_shipped("inatloc500", with_hierarchy=False)
    assert {s: inat.images(s).height for s in inat.splits} == {"val": 12500, "test": 12500}
    counts = inat.images("test").group_by("label").len()
    assert counts.height == 500 and counts["len"].unique().to_list() == [25]
    assert inat.class_names()[0] == "Cyprinus carpio"


def test_load_shipped_errors(tmp_path, monkeypatch):
    with pytest.raises(InatlocError, match="unknown shipped dataset 'coco'"):
        load_shipped("coco")
    monkeypatch.setenv("INATLOC_NB_DATA", str(tmp_path))
    with pytest.raises(MetadataError, match=r"cub_images.parquet: shipped metadata file not found"):
        load_shipped("cub")
