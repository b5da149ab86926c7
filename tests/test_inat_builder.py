"""The iNaturalist dataset builder on small generated files in the released JSON layouts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from inatloc_nb.cli import main
from inatloc_nb.core.errors import InatlocError, MetadataError
from inatloc_nb.datasets import inat_builder
from inatloc_nb.datasets.dataset import WSOLDataset

# species: (kingdom, phylum, class, order, family, supercategory 2017)
SPECIES = {
    "Ardea alba": ("Animalia", "Chordata", "Aves", "Pelecaniformes", "Ardeidae", "Aves"),
    "Ardea herodias": ("Animalia", "Chordata", "Aves", "Pelecaniformes", "Ardeidae", "Aves"),
    "Corvus corax": ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Aves"),
    "Cyprinus carpio": ("Animalia", "Chordata", "Actinopterygii", "Cypriniformes", "Cyprinidae", "Actinopterygii"),
    "Helix pomatia": ("Animalia", "Mollusca", "Gastropoda", "Stylommatophora", "Helicidae", "Mollusca"),
}


def _inat21(path: Path, per_species: int = 6) -> Path:
    categories, images, annotations = [], [], []
    for cid, (name, (kingdom, phylum, cls, order, family, _)) in enumerate(SPECIES.items()):
        genus, epithet = name.split()
        directory = f"{cid:05d}_{kingdom}_{phylum}_{cls}_{order}_{family}_{genus}_{epithet}"
        categories.append({"id": cid, "name": name, "common_name": f"common {name}", "supercategory": "Birds",
                           "kingdom": kingdom, "phylum": phylum, "class": cls, "order": order, "family": family,
                           "genus": genus, "specific_epithet": epithet, "image_dir_name": directory,
                           "image_count": per_species})
        for k in range(per_species):
            iid = 1000 * cid + k
            images.append({"id": iid, "width": 500, "height": 375, "file_name": f"train/{directory}/{iid:08x}.jpg",
                           "license": 1, "rights_holder": "someone", "date": "2019-01-01", "latitude": 1.0,
                           "longitude": 2.0, "location_uncertainty": 10})
            annotations.append({"id": iid, "image_id": iid, "category_id": cid})
    # the real file lists images first, then categories, then annotations
    path.write_text(json.dumps({"info": {"year": 2021}, "images": images, "categories": categories,
                                "annotations": annotations, "licenses": [{"id": 1}]}))
    return path


def _inat17(path: Path, split: str, per_species: int, offset: int) -> Path:
    categories, images, annotations = [], [], []
    aid = offset
    for cid, (name, lineage) in enumerate(SPECIES.items()):
        if name == "Corvus corax":
            continue  # no boxes for this species in 2017
        categories.append({"id": cid + 7, "name": name, "supercategory": lineage[-1]})
        for k in range(per_species + 2):
            iid = offset + 100 * cid + k
            images.append({"id": iid, "width": 800, "height": 600,
                           "file_name": f"train_val_images/{lineage[-1]}/{name}/{iid:032x}.jpg"})
            boxes = [[10.5, 20.0, 300.2, 200.0]] if k < per_species else [[1, 1, 5, 5], [50, 50, 10, 10]]
            if k == 0:
                boxes = [[700.0, 500.0, 100.7, 100.0]]  # past the right border (clamped), on the bottom one
            for bbox in boxes:
                aid += 1
                annotations.append({"id": aid, "image_id": iid, "category_id": cid + 7, "bbox": bbox,
                                    "area": bbox[2] * bbox[3], "iscrowd": 0})
    path.write_text(json.dumps({"info": {}, "categories": categories, "images": images, "annotations": annotations}))
    return path


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {"inat21": _inat21(tmp_path / "train.json"),
            "train17": _inat17(tmp_path / "train_2017_bboxes.json", "train", 3, 10_000),
            "val17": _inat17(tmp_path / "val_2017_bboxes.json", "val", 2, 90_000)}


def test_build_reproducible_with_levels_and_boxes(sources: dict[str, Path], tmp_path: Path) -> None:
    kwargs = dict(per_species={"train": 4, "val": 2, "test": 2}, seed=3, progress=False)
    boxes17 = [sources["train17"], sources["val17"]]
    summary = inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "a", **kwargs)
    again = inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "b", **kwargs)
    for name in ("image_ids.txt", "localization.txt"):
        assert (tmp_path / "a" / "val" / name).read_text() == (tmp_path / "b" / "val" / name).read_text()
    # Corvus corax has no 2017 boxes: 4 species, Actinopterygii < Aves < Mollusca
    assert summary.n_species == 4 and summary.images == {"train": 16, "val": 8, "test": 8}
    assert summary.skipped["images with several boxes"] == 16
    ds = WSOLDataset.from_folder(tmp_path / "a", image_root=tmp_path / "a" / "images")
    assert ds.levels == ("species", "genus", "family", "order", "class", "phylum")
    assert (ds.hierarchy.root, ds.hierarchy.root_level) == ("Animalia", "kingdom")
    assert ds.class_names("species") == ("Cyprinus carpio", "Ardea alba", "Ardea herodias", "Helix pomatia")
    assert len(ds.class_names("genus")) == 3 and len(ds.class_names("phylum")) == 2
    val_ids = set(ds.images("val")["image_id"]) | set(ds.images("test")["image_id"])
    assert len(val_ids) == 16 and all(i.startswith("inat17/train_val_images/") for i in val_ids)
    assert all(i.startswith("inat21/train/") for i in ds.images("train")["image_id"])
    boxes = pl.concat([ds.boxes("val"), ds.boxes("test")])
    # the release's convention: x1 = x + w, y1 = y + h (fractions widened to whole pixels)
    assert set(boxes.select("x0", "y0", "x1", "y1").rows()) <= {(10, 20, 311, 220), (700, 500, 800, 600)}
    assert summary.boxes_clamped == int((boxes["x1"] == 800).sum()) > 0
    assert json.loads((tmp_path / "a" / "build.json").read_text())["seed"] == 3
    other = inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "c", **{**kwargs, "seed": 4})
    assert other.images == summary.images
    assert (tmp_path / "c" / "val" / "image_ids.txt").read_text() != (tmp_path / "a" / "val" / "image_ids.txt").read_text()
    assert again.comparison is not None and set(again.comparison["split"]) == {"val", "test"}
    assert again.comparison.filter(pl.col("split") == "val")["species"].item() >= 2  # Ardea alba, Cyprinus carpio


def test_choose_taxa_by_supercategory_list_and_count(sources: dict[str, Path], tmp_path: Path) -> None:
    boxes17 = [sources["train17"], sources["val17"]]
    small = dict(per_species={"train": None, "val": 2, "test": 2}, progress=False)
    birds = inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "birds", supercategories=["Aves"], **small)
    assert birds.n_species == 2 and birds.images["train"] == 12
    two = inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "two", n_species=2, seed=1, **small)
    assert two.n_species == 2
    with pytest.raises(InatlocError, match=r"Corvus corax \(1 single|Corvus corax \(not in both"):
        inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "x", species=["Corvus corax"], **small)
    with pytest.raises(InatlocError, match=r"Ardea alba \(5 single-instance boxed"):
        inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "y", species=["Ardea alba"],
                                per_species={"val": 3, "test": 3}, progress=False)
    with pytest.raises(InatlocError, match="unknown supercategories"):
        inat_builder.build_inat(sources["inat21"], boxes17, tmp_path / "z", supercategories=["Plantae"], **small)


def test_cli_make_dataset_inat(sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make-dataset", "inat", "--inat21", str(sources["inat21"]), "--boxes17", str(sources["train17"]),
            "--boxes17", str(sources["val17"]), "--per-species-val", "2", "--per-species-test", "2",
            "--out", str(tmp_path / "cli"), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 species, train 24 images, val 8 images, test 8 images" in out
    assert re.search(r"vs shipped iNatLoc500 val: 0 of \d+ images are the shipped val images", out)


@pytest.mark.parametrize(
    ("text", "message"),
    [("{\"images\": [{\"id\": 1, \"width\": 5}], \"annotations\": [], \"categories\": []}", "no valid 'file_name'"),
     ("{\"images\": [], \"annotations\": [] ", "not valid JSON"),
     ("{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 5, \"height\": 5}], \"categories\": []}",
      r"no items in a top-level 'annotations' array")],
)
def test_malformed_json_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.json"
    path.write_text(text)
    with pytest.raises(MetadataError, match=rf"train.json: .*{message}"):
        inat_builder.read_inat21(path, progress=False)


def test_bad_bbox_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "train_2017_bboxes.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                                "categories": [{"id": 0, "name": "Ardea alba", "supercategory": "Aves"}],
                                "annotations": [{"id": 5, "image_id": 1, "category_id": 0, "bbox": [1, 2, 3]}]}))
    with pytest.raises(MetadataError, match=r"annotation id 5: bbox must be \[x, y, w, h\]"):
        inat_builder.read_inat17_boxes(path, "train", progress=False)


def test_comparison_finds_the_shipped_images(sources: dict[str, Path], tmp_path: Path) -> None:
    shipped = pl.read_parquet(Path(__file__).parents[1] / "data" / "inatloc500_images.parquet").filter(
        pl.col("image_id").str.contains("/Cyprinus carpio/"))
    assert shipped.height == 50
    files = []
    for split in ("train", "val"):
        rows = shipped.filter(pl.col("source_dataset_split") == split)
        ids = rows["source_dataset_image_id"].to_list()
        images = [{"id": i, "width": 640, "height": 480, "file_name": f"train_val_images/Actinopterygii/"
                   f"Cyprinus carpio/{i:032x}.jpg"} for i in ids]
        annotations = [{"id": k, "image_id": i, "category_id": 3, "bbox": [5, 5, 100, 80]} for k, i in enumerate(ids)]
        path = tmp_path / f"{split}_2017_bboxes.json"
        path.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 3, "name": "Cyprinus carpio", "supercategory": "Actinopterygii"}]}))
        files.append(path)
    summary = inat_builder.build_inat(sources["inat21"], files, tmp_path / "carp", species=["Cyprinus carpio"],
                                      seed=0, progress=False)
    table = summary.comparison
    assert table["built"].to_list() == [25, 25] and table["shipped"].to_list() == [25, 25]
    assert table["in_shipped"].sum() == 50 and 0 < table["same"].sum() < 50  # same pool, another draw
    assert any("are in the shipped val or test" in line for line in summary.lines())


def test_options_are_checked_and_image_roots_linked(sources: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "boxes.json"
    renamed.write_text(sources["train17"].read_text())
    with pytest.raises(InatlocError, match="cannot tell the iNat 2017 split"):
        inat_builder.build_inat(sources["inat21"], [renamed], tmp_path / "x", progress=False)
    with pytest.raises(InatlocError, match="images per species for val must be a positive integer"):
        inat_builder.build_inat(sources["inat21"], [sources["train17"]], tmp_path / "x",
                                per_species={"val": 0}, progress=False)
    roots = {"inat21": tmp_path / "r21", "inat17": tmp_path / "r17"}
    for root in roots.values():
        root.mkdir()
    inat_builder.build_inat(sources["inat21"], [sources["train17"], sources["val17"]], tmp_path / "linked",
                            per_species={"val": 2, "test": 2}, image_roots=roots, progress=False)
    assert (tmp_path / "linked" / "images" / "inat17").resolve() == roots["inat17"].resolve()


def _box_rows(rows: list[tuple[int, float, float, float, float]]) -> pl.DataFrame:
    """iNat 2017 box rows on 800x600 images: ``(image_id, x, y, w, h)``."""
    return pl.DataFrame(
        [("train", iid, f"{iid}.jpg", 800, 600, "Ardea alba", "Aves", iid, x, y, w, h) for iid, x, y, w, h in rows],
        schema=["source_split", "image_id", "file_name", "width", "height", "species", "supercategory",
                "annotation_id", "x", "y", "w", "h"], orient="row")


def test_single_instance_boxes_in_the_release_convention() -> None:
    table, skipped = inat_builder.single_instance(_box_rows([
        (1, 65, 132, 735, 338),       # ends on the right border, as 629 iNatLoc500 test boxes do
        (2, 10.5, 20.0, 300.2, 200.0),  # fractions: widened to whole pixels
        (3, 700, 500, 120, 50),       # past the right border: clamped to it
        (4, -5, 10, 20, 20),          # left of the image: clamped to 0
        (5, 900, 10, 5, 5),           # outside the image: skipped
        (6, 0, 0, 800, 600),          # the whole image
    ]))
    rows = {r["image_id"]: (r["x0"], r["y0"], r["x1"], r["y1"], r["clamped"]) for r in table.iter_rows(named=True)}
    assert rows == {1: (65, 132, 800, 470, False), 2: (10, 20, 311, 220, False), 3: (700, 500, 800, 550, True),
                    4: (0, 10, 15, 30, True), 6: (0, 0, 800, 600, False)}
    assert skipped["boxes outside their image"] == 1


def test_nan_and_infinity_values_do_not_abort_the_build(tmp_path: Path) -> None:
    # more than one 64 KiB read, so tokens and strings cross the reader's chunk boundaries
    images = [{"id": i, "file_name": f"train/a: NaN, Infinity/{i}.jpg", "width": 5, "height": 5,
               "latitude": float("nan") if i % 3 else 1.5, "longitude": float("-inf") if i % 5 else -2.0,
               "rights_holder": 'said "latitude": NaN, then'} for i in range(3000)]
    doc = {"images": images, "annotations": [{"id": i, "image_id": i, "category_id": 0} for i in range(3000)]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc).replace('"latitude": NaN', '"latitude" :NaN', 7))  # json writes NaN, -Infinity
    assert "NaN" in path.read_text() and path.stat().st_size > 3 * 65536
    read = [obj for _, obj in inat_builder.stream_coco(path, ["images"], progress=False)]
    assert len(read) == 3000
    assert [o["latitude"] for o in read[:4]] == [1.5, None, None, 1.5]
    assert [o["longitude"] for o in read[:6]] == [-2.0, None, None, None, None, -2.0]
    assert all(o["file_name"] == f"train/a: NaN, Infinity/{o['id']}.jpg" for o in read)  # strings untouched
    assert all(o["rights_holder"] == 'said "latitude": NaN, then' for o in read)


def _images_for(folder: Path, roots: dict[str, Path]) -> None:
    """JPEGs of the sizes the metadata gives, under the ``inat21/`` and ``inat17/`` roots."""
    from PIL import Image

    for split in ("train", "val", "test"):
        for line in (folder / split / "image_sizes.txt").read_text().splitlines():
            image_id, width, height = line.split(",")
            prefix, _, rest = image_id.partition("/")
            target = roots[prefix] / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (int(width), int(height)), (90, 120, 60)).save(target)


def test_check_accepts_what_make_dataset_inat_wrote(sources: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    roots = {"inat21": tmp_path / "r21", "inat17": tmp_path / "r17"}
    for root in roots.values():
        root.mkdir()
    out = tmp_path / "built"
    assert main(["make-dataset", "inat", "--inat21", str(sources["inat21"]), "--boxes17", str(sources["train17"]),
                 "--boxes17", str(sources["val17"]), "--per-species-train", "2", "--per-species-val", "2",
                 "--per-species-test", "2", "--inat21-images", str(roots["inat21"]),
                 "--inat17-images", str(roots["inat17"]), "--out", str(out), "--quiet"]) == 0
    assert not (out / "train" / "localization.txt").exists()  # train: sizes (500x375, not square), no boxes
    _images_for(out, roots)
    capsys.readouterr()
    assert main(["check", str(out), "--quiet", "--workers", "1"]) == 0
    assert "all 24 images decode; sizes and boxes agree" in capsys.readouterr().out
    assert main(["check", str(out), "--split", "train", "--quiet", "--workers", "1"]) == 0


def test_a_missing_image_root_is_refused_before_anything_is_written(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(InatlocError, match=r"nowhere: inat17 image folder not found"):
        inat_builder.build_inat(sources["inat21"], [sources["train17"], sources["val17"]], out,
                                per_species={"val": 2, "test": 2}, image_roots={"inat17": tmp_path / "nowhere"},
                                progress=False)
    assert not out.exists()
