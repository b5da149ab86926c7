"""The dataset doctor (``inatloc-nb check``) on a small generated Choe-format dataset."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from inatloc_nb.cli import main
from inatloc_nb.core.errors import MetadataError
from inatloc_nb.datasets.build import write_dataset
from inatloc_nb.datasets.check import check_dataset, decode_image


def _dataset(root: Path, n: int = 6) -> Path:
    (root / "images").mkdir(parents=True)
    rows, boxes = [], []
    for k in range(n):
        split = "val" if k % 2 else "test"
        image_id = f"c{k % 3}/img{k}.jpg"
        (root / "images" / f"c{k % 3}").mkdir(exist_ok=True)
        Image.new("RGB", (60, 40), (k * 30, 80, 120)).save(root / "images" / image_id, quality=90)
        rows.append((split, image_id, 60, 40, k % 3))
        boxes.append((split, image_id, 5, 5, 50, 30))
    images = pl.DataFrame(rows, schema=["split", "image_id", "width", "height", "label"], orient="row")
    box = pl.DataFrame(boxes, schema=["split", "image_id", "x0", "y0", "x1", "y1"], orient="row")
    return write_dataset(root, images, box, {"leaf": ["a", "b", "c"]})


def test_clean_dataset_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path / "ds")
    report = check_dataset(root, workers=2, progress=False)
    assert report.ok and report.images == {"val": 3, "test": 3}
    assert main(["check", str(root), "--quiet"]) == 0
    assert "all 6 images decode" in capsys.readouterr().out


def test_every_kind_of_problem_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path / "ds")
    images = root / "images"
    (images / "c0" / "img0.jpg").unlink()  # test: missing
    data = (images / "c2" / "img2.jpg").read_bytes()
    (images / "c2" / "img2.jpg").write_bytes(data[: len(data) // 2])  # test: truncated
    (images / "c1" / "img4.jpg").write_bytes(b"not an image")  # test: unreadable
    Image.new("RGB", (45, 40)).save(images / "c1" / "img1.jpg")  # val: narrower than image_sizes says
    report = check_dataset(root, workers=2, progress=False)
    found = {(p.kind, p.split, p.image_id) for p in report.problems}
    assert found == {
        ("missing", "test", "c0/img0.jpg"), ("truncated", "test", "c2/img2.jpg"),
        ("unreadable", "test", "c1/img4.jpg"), ("size", "val", "c1/img1.jpg"), ("box", "val", "c1/img1.jpg"),
    }
    size = next(p for p in report.problems if p.kind == "size")
    assert size.detail.endswith("val/image_sizes.txt:1: says 60x40, the image is 45x40")
    box = next(p for p in report.problems if p.kind == "box")
    assert "val/localization.txt:1: box (5, 5, 50, 30) outside the 45x40 image" in box.detail
    summary = report.summary().filter(pl.col("split") == "test").row(0, named=True)
    assert (summary["missing"], summary["truncated"], summary["unreadable"]) == (1, 1, 1)
    assert main(["check", str(root), "--quiet", "--workers", "1", "--size-order", "wh"]) == 1
    out = capsys.readouterr().out
    assert "5 problems" in out and "truncated: test c2/img2.jpg" in out


def test_decode_image_kinds(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("L", (7, 9)).save(path)
    assert decode_image(path) == (None, (7, 9), "")
    assert decode_image(tmp_path / "none.png")[0] == "missing"


def test_malformed_metadata_names_file_and_line(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "val" / "class_labels.txt").write_text("c1/img1.jpg,1\nc0/img3.jpg\nc2/img5.jpg,2\n")
    with pytest.raises(MetadataError, match=r"val/class_labels.txt:2"):
        check_dataset(root, progress=False)
    assert main(["check", str(root), "--quiet"]) == 2


def test_split_without_boxes_takes_the_order_of_the_boxed_splits(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path / "ds")
    train = [("train", f"c{k}/train{k}.jpg", 60, 40, k) for k in range(3)]  # sizes, no boxes (not square)
    for _, image_id, width, height, _ in train:
        Image.new("RGB", (width, height)).save(root / "images" / image_id)
    write_dataset(root, pl.DataFrame(train, schema=["split", "image_id", "width", "height", "label"], orient="row"),
                  pl.DataFrame(schema={"split": pl.String, "image_id": pl.String,
                                       **{c: pl.Int64 for c in ("x0", "y0", "x1", "y1")}}),
                  {"leaf": ["a", "b", "c"]})
    assert check_dataset(root, progress=False).images == {"train": 3, "val": 3, "test": 3}
    assert check_dataset(root, splits=["train"], progress=False).ok
    for split in ("val", "test"):  # no boxes anywhere: the order cannot be told, the hint names the flag
        (root / split / "localization.txt").unlink()
    capsys.readouterr()
    assert main(["check", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--size-order wh" in err and "size_order" not in err
    assert main(["check", str(root), "--quiet", "--size-order", "wh"]) == 0


def test_unreadable_split_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "train").symlink_to(root / "train")  # a symbolic link loop
    assert main(["check", str(root), "--quiet"]) == 2
    assert f"{root / 'train'}: split folder cannot be read" in capsys.readouterr().err


def test_image_root_required_when_absent(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "images").rename(tmp_path / "elsewhere")
    assert main(["check", str(root), "--quiet"]) == 2
    assert check_dataset(root, image_root=tmp_path / "elsewhere", progress=False).ok


def test_sweep_runs_the_doctor_with_check_data(tmp_path: Path) -> None:
    from inatloc_nb.sweep import ConfigError, SweepConfig, check_data

    root = _dataset(tmp_path / "ds")
    text = "name: t\ndatasets:\n  ds: ds\nlevels: [c0]\nmethods: [cam]\nlrs: [0.01]\ncheck_data: {}\n"
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(text.format("true"))
    check_data(SweepConfig.from_yaml(config_path))  # a clean dataset passes
    (root / "images" / "c0" / "img0.jpg").unlink()
    with pytest.raises(ConfigError, match=r"sweep.yaml: datasets.ds: 1 problems in .*missing: .*img0.jpg"):
        check_data(SweepConfig.from_yaml(config_path))
    config_path.write_text(text.format("false"))
    check_data(SweepConfig.from_yaml(config_path))  # not asked: images are not opened
    config_path.write_text(text.format("'yes'"))
    with pytest.raises(ConfigError, match="check_data: expected true or false"):
        SweepConfig.from_yaml(config_path)
