"""The iNatLoc500 release's own metadata (shipped copy of its val/test folders), end to end
without images: boxes as released, the release's hierarchy, the Center baseline's numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inatloc_nb.cli import main
from inatloc_nb.datasets.build import export_dataset
from inatloc_nb.datasets.dataset import load_shipped
from inatloc_nb.datasets.metadata import read_split

#: Center baseline on the release's files with the reference BoxEvaluator (Table 2: 42.8).
CENTER = {"test": (42.816, {"30": 73.656, "50": 41.368, "70": 13.424}), "val": (42.992, None)}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped release metadata written back as a Choe-format folder (no images)."""
    return export_dataset(load_shipped("inatloc500"), tmp_path_factory.mktemp("inatloc500") / "metadata")


def _center(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["center", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("split", ["test", "val"])
def test_center_on_the_shipped_release_is_the_reference_number(split: str, capsys) -> None:
    result = _center(capsys, "--dataset", "inatloc500", "--split", split)
    mean, per_iou = CENTER[split]
    assert result["n_images"] == 12500
    assert round(result["maxboxacc_v2"], 3) == mean
    if per_iou is not None:
        assert {d: round(v, 3) for d, v in result["per_iou"].items()} == per_iou
        # counts of correct images, to the last one
        assert {d: round(v * 125) for d, v in result["per_iou"].items()} == {"30": 9207, "50": 5171, "70": 1678}
    assert main(["center", "--dataset", "inatloc500", "--split", split]) == 0
    assert f"maxboxacc_v2: {mean:.3f} over 12500 images" in capsys.readouterr().out


def test_boxes_ending_on_the_border_are_kept_as_released(release: Path) -> None:
    dataset = load_shipped("inatloc500")
    joined = dataset.boxes("test").join(dataset.images("test").select("image_id", "width", "height"), on="image_id")
    on_border = joined.filter((pl.col("x1") == pl.col("width")) | (pl.col("y1") == pl.col("height")))
    assert on_border.height == 629
    # read back from the folder exactly as written, and rescaled by truncation to 224 (not clamped)
    back = read_split(release / "test")
    assert back.size_order == "wh" and back.boxes.equals(dataset.boxes("test"))
    row = on_border.row(0, named=True)
    position = dataset.images("test")["image_id"].to_list().index(row["image_id"])
    scaled = dataset.gt_boxes("test")[position][0]
    assert scaled.tolist() == [int(row[c] * 224 / row["width" if c[0] == "x" else "height"])
                               for c in ("x0", "y0", "x1", "y1")]
    assert 224 in scaled.tolist()[2:]


def test_the_release_folder_reads_everywhere_without_images(release: Path, capsys, tmp_path: Path) -> None:
    assert round(_center(capsys, "--metadata", str(release), "--split", "test")["maxboxacc_v2"], 3) == 42.816
    assert main(["stats", str(release), "--json"]) == 0
    levels = {r["level"]: r["n_categories"] for r in json.loads(capsys.readouterr().out)["levels"]}
    assert levels == {"species": 500, "genus": 317, "family": 184, "order": 61, "class": 18, "phylum": 5}
    assert main(["check", str(release), "--metadata-only"]) == 0
    assert "metadata of 25000 images" in capsys.readouterr().out
    assert main(["check", str(release)]) == 2  # images are needed without --metadata-only
    assert "--image-root" in capsys.readouterr().err

    # evaluate: the Center map saved for 200 test images scores as the Center baseline does on them
    from inatloc_nb.metrics import BoxAccuracy, center_map

    ids = (release / "test" / "image_ids.txt").read_text().split("\n")[:200]
    subset = tmp_path / "subset" / "test"
    subset.mkdir(parents=True)
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        lines = (release / "test" / name).read_text().splitlines()
        (subset / name).write_text("".join(f"{line}\n" for line in lines if line.split(",")[0] in set(ids)))
    maps = tmp_path / "maps"
    for image_id in ids:
        (maps / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / image_id.replace(".jpg", ".npy"), center_map())
    assert main(["evaluate", "--scoremaps", str(maps), "--metadata", str(subset), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    dataset = load_shipped("inatloc500", with_hierarchy=False)
    boxes = dict(zip(dataset.images("test")["image_id"].to_list(), dataset.gt_boxes("test")))
    expected = BoxAccuracy()
    expected.update_shared(center_map(), [boxes[i] for i in ids])
    assert scored["maxboxacc_v2"] == expected.compute().mean and scored["n_images"] == 200


def test_a_box_beyond_the_border_is_refused_naming_file_line_and_size(release: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    (broken / "test").mkdir(parents=True)
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt"):
        (broken / "test" / name).write_text((release / "test" / name).read_text())
    lines = (release / "test" / "localization.txt").read_text().splitlines()
    image_id, x0, y0, _, y1 = lines[3].split(",")
    width = dict(line.split(",")[:2] for line in (release / "test" / "image_sizes.txt").read_text().splitlines())[image_id]
    lines[3] = ",".join([image_id, x0, y0, str(int(width) + 1), y1])
    (broken / "test" / "localization.txt").write_text("\n".join(lines) + "\n")
    assert main(["center", "--metadata", str(broken), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "localization.txt:4: box" in err and f"{int(width) + 1}" in err and "lies outside the" in err
