"""Reading and writing the Choe et al. metadata format."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from inatloc_nb.core.errors import MetadataError
from inatloc_nb.datasets.metadata import (
    SplitMetadata,
    read_class_names,
    read_split,
    write_class_names,
    write_split,
)


def _split() -> SplitMetadata:
    images = pl.DataFrame({
        "image_id": ["a/1.jpg", "a/2.jpg", "b/3.jpg", "c/4 with space.jpg"],
        "width": [100, 60, 80, 50],
        "height": [50, 90, 80, 40],
        "label": [0, 1, 2, 3],
        "label_genus": [0, 0, 1, 1],
        "label_family": [0, 0, 0, 0],
    })
    boxes = pl.DataFrame({
        "image_id": ["a/1.jpg", "a/2.jpg", "a/2.jpg", "b/3.jpg", "c/4 with space.jpg"],
        "x0": [0, 5, 10, 0, 1], "y0": [0, 5, 70, 0, 2],
        "x1": [99, 20, 59, 79, 30], "y1": [45, 80, 89, 79, 39],
    })
    return SplitMetadata("val", images, boxes)


def _write(folder: Path, files: dict[str, str], newline: str = "\n", final: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        lines = text.strip("\n").split("\n")
        (folder / name).write_bytes((newline.join(lines) + (newline if final else "")).encode())
    return folder


GOOD = {
    "image_ids.txt": "p/1.jpg\np/2.jpg\nq/3.jpg",
    "class_labels.txt": "p/1.jpg,0\np/2.jpg,0\nq/3.jpg,1",
    "image_sizes.txt": "p/1.jpg,100,50\np/2.jpg,40,80\nq/3.jpg,30,30",
    "localization.txt": "p/1.jpg,10,5,90,45\np/2.jpg,0,0,39,70\nq/3.jpg,1,1,29,29\np/1.jpg,0,0,3,3",
}


def test_round_trip_with_levels(tmp_path):
    split = _split()
    write_split(tmp_path / "val", split)
    back = read_split(tmp_path / "val")
    assert back.name == "val"
    assert back.size_order == "wh"
    assert set(back.levels) == {"genus", "family"}
    assert back.images.select(split.images.columns).equals(split.images)
    assert back.boxes.equals(split.boxes)
    only_genus = read_split(tmp_path / "val", levels=["genus"])
    assert only_genus.levels == ("genus",)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("final", [True, False])
def test_line_endings_and_final_newline(tmp_path, newline, final):
    split = read_split(_write(tmp_path / "s", GOOD, newline, final))
    assert split.images["image_id"].to_list() == ["p/1.jpg", "p/2.jpg", "q/3.jpg"]
    assert split.images["width"].to_list() == [100, 40, 30]
    assert split.boxes.height == 4
    assert split.boxes.filter(pl.col("image_id") == "p/1.jpg")["x1"].to_list() == [90, 3]


def test_trailing_blank_lines_ignored(tmp_path):
    folder = _write(tmp_path / "s", GOOD)
    with open(folder / "class_labels.txt", "a") as f:
        f.write("\n\n  \n")
    assert read_split(folder).images.height == 3


def test_split_without_sizes_or_boxes(tmp_path):
    files = {k: GOOD[k] for k in ("image_ids.txt", "class_labels.txt")}
    split = read_split(_write(tmp_path / "train", files))
    assert split.images["width"].null_count() == 3
    assert split.boxes.height == 0 and split.size_order is None
    write_split(tmp_path / "copy", split)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["class_labels.txt", "image_ids.txt"]


def test_size_order_height_width_detected(tmp_path):
    files = dict(GOOD, **{"image_sizes.txt": "p/1.jpg,50,100\np/2.jpg,80,40\nq/3.jpg,30,30"})
    split = read_split(_write(tmp_path / "s", files))
    assert split.size_order == "hw"
    assert split.images["width"].to_list() == [100, 40, 30]
    assert split.images["height"].to_list() == [50, 80, 30]


def test_size_order_ambiguous_fails_unless_given(tmp_path):
    files = dict(GOOD, **{"localization.txt": "p/1.jpg,0,0,10,10\np/2.jpg,0,0,20,20\nq/3.jpg,1,1,2,2"})
    folder = _write(tmp_path / "s", files)
    with pytest.raises(MetadataError, match=r"image_sizes.txt: .*not square; name the order with --size-order wh"):
        read_split(folder)
    assert read_split(folder, size_order="hw").images["width"].to_list() == [50, 80, 30]
    assert read_split(folder, size_order="wh").images["width"].to_list() == [100, 40, 30]


def test_sizes_without_boxes_need_the_order_named(tmp_path):
    folder = _write(tmp_path / "s", {k: v for k, v in GOOD.items() if k != "localization.txt"})
    with pytest.raises(MetadataError, match=r"image_sizes.txt: .*localization.txt \(absent\) fits both .*--size-order wh"):
        read_split(folder)
    assert read_split(folder, size_order="wh").images["width"].to_list() == [100, 40, 30]


def test_size_order_square_images_are_not_ambiguous(tmp_path):
    files = {
        "image_ids.txt": "a.jpg\nb.jpg",
        "class_labels.txt": "a.jpg,0\nb.jpg,1",
        "image_sizes.txt": "a.jpg,64,64\nb.jpg,32,32",
        "localization.txt": "a.jpg,0,0,10,10\nb.jpg,1,2,3,4",
    }
    assert read_split(_write(tmp_path / "s", files)).size_order == "wh"


def test_size_order_given_but_box_does_not_fit(tmp_path):
    with pytest.raises(MetadataError, match=r"localization.txt:1: .*outside the 50x100 image"):
        read_split(_write(tmp_path / "s", GOOD), size_order="hw")


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    return _write(tmp_path / "s", dict(GOOD, **{name: text}))


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("class_labels.txt", "p/1.jpg,0\np/2.jpg\nq/3.jpg,1", r"class_labels.txt:2: expected 2 .*found 1"),
        ("class_labels.txt", "p/1.jpg,0\np/2.jpg,0,3\nq/3.jpg,1", r"class_labels.txt:2: expected 2"),
        ("class_labels.txt", "p/1.jpg,0\np/2.jpg,0\nq/3.jpg,one", r"class_labels.txt:3: expected integers"),
        ("class_labels.txt", "p/1.jpg,0\np/2.jpg,-1\nq/3.jpg,1", r"class_labels.txt:2: negative label"),
        ("image_sizes.txt", "p/1.jpg,100,50\np/2.jpg,40,8.5\nq/3.jpg,30,30", r"image_sizes.txt:2: expected integers"),
        ("image_sizes.txt", "p/1.jpg,100,50\np/2.jpg,0,80\nq/3.jpg,30,30", r"image_sizes.txt:2: image size must be positive"),
        ("localization.txt", "p/1.jpg,10,5,90,45\np/2.jpg,0,0,39,70\nq/3.jpg,1,1,2x,29",
         r"localization.txt:3: expected integers"),
        ("localization.txt", "p/1.jpg,10,5,90,45\np/2.jpg,0,0,39,70\nq/3.jpg,1,1,29,29\np/1.jpg,0,0,101,3",
         r"localization.txt:4: box \(0, 0, 101, 3\) lies outside the 100x50 image .*image_sizes.txt line 1"),
        ("localization.txt", "p/1.jpg,10,5,9,45\np/2.jpg,0,0,39,70\nq/3.jpg,1,1,29,29",
         r"localization.txt:1: .*x1 < x0 or y1 < y0"),
        ("localization.txt", "p/1.jpg,10,5,90,45\np/2.jpg,0,9,39,7\nq/3.jpg,1,1,29,29",
         r"localization.txt:2: .*x1 < x0 or y1 < y0"),
        ("localization.txt", "p/1.jpg,10,5,90,45\np/2.jpg,0,0,39,70\nq/3.jpg,-1,1,29,29",
         r"localization.txt:3: negative box coordinate"),
        ("image_ids.txt", "p/1.jpg\np/2.jpg\nq/3.jpg\np/2.jpg", r"image_ids.txt:4: duplicate image id 'p/2.jpg' \(first on line 2\)"),
        ("class_labels.txt", "p/1.jpg,0\np/2.jpg,0\nq/3.jpg,1\np/1.jpg,0",
         r"class_labels.txt:4: image id 'p/1.jpg' given twice \(first on line 1\)"),
        ("image_ids.txt", "p/1.jpg\n\np/2.jpg\nq/3.jpg", r"image_ids.txt:2: blank line"),
        ("image_ids.txt", "p/1.jpg\np/2.jpg,x\nq/3.jpg", r"image_ids.txt:2: expected 1 "),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, text, pattern):
    with pytest.raises(MetadataError, match=pattern) as info:
        read_split(_bad(tmp_path, name, text))
    assert info.value.path is not None and info.value.path.name == name
    assert info.value.line is not None


def test_id_sets_must_agree(tmp_path):
    folder = _bad(tmp_path, "class_labels.txt", "p/1.jpg,0\np/2.jpg,0\nq/3.jpg,1\nz/9.jpg,4")
    with pytest.raises(MetadataError, match=r"class_labels.txt:4: 1 image id\(s\) not in .*image_ids.txt: 'z/9.jpg'"):
        read_split(folder)
    folder = _bad(tmp_path, "image_sizes.txt", "p/1.jpg,100,50\nq/3.jpg,30,30")
    with pytest.raises(MetadataError, match=r"image_sizes.txt: 1 image id\(s\) of .*image_ids.txt missing here: 'p/2.jpg'"):
        read_split(folder)
    folder = _bad(tmp_path, "localization.txt", "p/1.jpg,10,5,90,45\nq/3.jpg,1,1,29,29")
    with pytest.raises(MetadataError, match=r"localization.txt: .*missing here: 'p/2.jpg'"):
        read_split(folder)
    folder = _bad(tmp_path, "localization.txt", "p/1.jpg,10,5,90,45\np/2.jpg,0,0,39,70\nq/3.jpg,1,1,29,29\nr.jpg,1,1,2,2")
    with pytest.raises(MetadataError, match=r"localization.txt:4: .*not in .*image_ids.txt: 'r.jpg'"):
        read_split(folder)


def test_missing_files_are_named(tmp_path):
    folder = _write(tmp_path / "s", GOOD)
    with pytest.raises(MetadataError, match=r"class_labels_genus.txt: file not found"):
        read_split(folder, levels=["genus"])
    (folder / "class_labels.txt").unlink()
    with pytest.raises(MetadataError, match=r"class_labels.txt: file not found"):
        read_split(folder)
    (folder / "image_sizes.txt").unlink()
    with pytest.raises(MetadataError, match=r"image_sizes.txt: localization.txt is present"):
        read_split(_write(tmp_path / "t", {k: v for k, v in GOOD.items() if k != "image_sizes.txt"}))
    with pytest.raises(MetadataError, match="split folder not found"):
        read_split(tmp_path / "nowhere")


def test_write_split_validates(tmp_path):
    split = _split()
    wide = split.boxes.with_columns(pl.when(pl.col("image_id") == "b/3.jpg").then(81).otherwise(pl.col("x1")).alias("x1"))
    with pytest.raises(MetadataError, match=r"outside the image for 'b/3.jpg'"):
        write_split(tmp_path, SplitMetadata("val", split.images, wide))
    dup = pl.concat([split.images, split.images.head(1)])
    with pytest.raises(MetadataError, match=r"duplicate image ids 'a/1.jpg'"):
        write_split(tmp_path, SplitMetadata("val", dup, split.boxes))
    with pytest.raises(MetadataError, match=r"images without a box 'b/3.jpg'"):
        write_split(tmp_path, SplitMetadata("val", split.images, split.boxes.filter(pl.col("image_id") != "b/3.jpg")))
    with pytest.raises(MetadataError, match="lacks columns"):
        SplitMetadata("val", split.images.drop("label"), split.boxes)


def test_class_names_formats(tmp_path):
    path = write_class_names(tmp_path / "class_names.txt", ["Cyprinus carpio", "Lepomis, sunfish", "Zanclus"])
    assert path.read_text().splitlines()[1] == "1,Lepomis, sunfish"
    assert read_class_names(path) == ["Cyprinus carpio", "Lepomis, sunfish", "Zanclus"]
    (tmp_path / "plain.txt").write_bytes(b"alpha\r\nbeta\r\ngamma")
    assert read_class_names(tmp_path / "plain.txt") == ["alpha", "beta", "gamma"]
    (tmp_path / "name_index.txt").write_text("Zanclus,2\nCyprinus,0\nLepomis,1\n")
    assert read_class_names(tmp_path / "name_index.txt") == ["Cyprinus", "Lepomis", "Zanclus"]
    (tmp_path / "gap.txt").write_text("0,a\n2,b\n")
    with pytest.raises(MetadataError, match=r"gap.txt:2: class index 2 outside 0..1"):
        read_class_names(tmp_path / "gap.txt")
    (tmp_path / "twice.txt").write_text("0,a\n0,b\n")
    with pytest.raises(MetadataError, match=r"twice.txt:2: class index 0 given twice"):
        read_class_names(tmp_path / "twice.txt")
    with pytest.raises(MetadataError, match="non-empty single lines"):
        write_class_names(tmp_path / "x.txt", ["a", "b\nc"])
