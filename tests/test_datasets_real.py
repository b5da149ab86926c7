"""Real dataset layouts: the ImageNet WordNet tree, FGVC-Aircraft, filtered CUB (generated files only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from inatloc_nb.core.errors import HierarchyError, MetadataError
from inatloc_nb.datasets import aircraft
from inatloc_nb.datasets.dataset import WSOLDataset, load_shipped
from inatloc_nb.hierarchies import imagenet
from inatloc_nb.hierarchies.dag import dag_to_tree

# --------------------------------------------------------------------------- DAG -> tree


def test_dag_to_tree_accepts_children_before_parents() -> None:
    ordered = {"A": ["r"], "B": ["r"], "x": ["A"], "y": ["A", "B"], "z": ["B"], "w": ["B"]}
    reversed_order = dict(reversed(list(ordered.items())))
    assert list(reversed_order)[0] == "w"  # a child first: its parent B comes later
    assert dag_to_tree(reversed_order, "r") == dag_to_tree(ordered, "r") == {"B": "r", "y": "B", "z": "B", "w": "B"}


# --------------------------------------------------------------------------- ImageNet / WordNet

WORDNET = {  # offset: (lemma, hypernym pointers as (symbol, offset))
    "00001740": ("entity", []),
    "00000010": ("animal", [("@", "00001740")]),
    "00000020": ("artifact", [("@", "00001740")]),
    "00000030": ("dog", [("@", "00000010")]),
    "00000040": ("robot_dog", [("@", "00000010"), ("@", "00000020")]),
    "00000050": ("beagle", [("@", "00000030")]),
    "00000060": ("toy_robot_dog", [("@", "00000040")]),
    "00000070": ("hammer", [("@", "00000020")]),
    "00000080": ("lassie", [("@i", "00000030")]),
}


def _write_data_noun(path: Path, synsets: dict = WORDNET) -> Path:
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by  "]
    for offset, (lemma, pointers) in synsets.items():
        ptrs = " ".join(f"{sym} {target} n 0000" for sym, target in pointers)
        extra = " + 01234567 v 0101" if lemma == "hammer" else ""  # a verb pointer is ignored
        count = len(pointers) + bool(extra)
        lines.append(f"{offset} 05 n 01 {lemma} 0 {count:03d} {ptrs}{extra} | gloss of {lemma}  ")
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


def test_read_wordnet_nouns_hypernyms_and_errors(tmp_path: Path) -> None:
    nouns = imagenet.read_wordnet_nouns(_write_data_noun(tmp_path / "data.noun"))
    assert nouns["n00000040"] == ("robot dog", ("n00000010", "n00000020"))
    assert nouns["n00000080"][1] == ("n00000030",)  # instance hypernym
    assert nouns["n00000070"][1] == ("n00000020",)
    bad = tmp_path / "bad.noun"
    bad.write_text("00000010 05 n 01 animal 0 002 @ 00001740 n 0000 | truncated\n")
    with pytest.raises(MetadataError, match=r"bad.noun:1: not a WordNet synset line"):
        imagenet.read_wordnet_nouns(bad)


def test_read_synsets_errors(tmp_path: Path) -> None:
    path = tmp_path / "synsets.txt"
    path.write_text("n00000050\nn00000060\nn00000050\n")
    with pytest.raises(MetadataError, match=r"synsets.txt:3: n00000050 repeats line 1"):
        imagenet.read_synsets(path)
    path.write_text("n00000050\ndog\n")
    with pytest.raises(MetadataError, match=r"synsets.txt:2: 'dog' is not a WordNet noun id"):
        imagenet.read_synsets(path)


def test_hierarchy_table_applies_the_greedy_tree(tmp_path: Path) -> None:
    nouns = imagenet.read_wordnet_nouns(_write_data_noun(tmp_path / "data.noun"))
    classes = ["n00000050", "n00000060", "n00000070", "n00000080"]
    table = imagenet.hierarchy_table(classes, nouns)
    parent = dict(table.select("node", "parent").iter_rows())
    # robot_dog keeps animal (3 leaves stay reachable) over artifact (2), so artifact is
    # deleted and hammer, a class below it only, is excluded (no parent in the table)
    assert parent["n00000040"] == "n00000010" and "n00000020" not in parent
    assert parent["n00000070"] is None
    assert table.filter(pl.col("label").is_not_null()).sort("label")["node"].to_list() == classes
    assert table.filter(pl.col("node") == imagenet.WORDNET_ROOT)["parent"].to_list() == [None]
    with pytest.raises(HierarchyError, match="n00000999 is not a WordNet 3.0 noun"):
        imagenet.hierarchy_table(["n00000999"], nouns)
    with pytest.raises(HierarchyError, match="hypernyms of other classes"):
        imagenet.hierarchy_table(["n00000030", "n00000050"], nouns)


def test_shipped_ilsvrc_hierarchy_has_927_leaves() -> None:
    tree = imagenet.ilsvrc_hierarchy()
    classes = imagenet.ilsvrc_classes()
    assert len(tree.leaves) == 927 and classes.height == 1000  # App. C
    assert classes["wnid"].to_list() == sorted(classes["wnid"].to_list())  # label order = sorted wnids
    assert tree.root == imagenet.WORDNET_ROOT and tree.levels[0] == "c0"
    assert classes.filter(pl.col("wnid") == "n01440764")["name"].item() == "tench"
    sizes = [len(tree.level_names(level)) for level in tree.levels]
    assert sizes[0] == 927 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 10
    to_leaf = imagenet.ilsvrc_label_to_leaf()
    assert (to_leaf >= 0).sum() == 927
    ilsvrc = load_shipped("ilsvrc")
    assert ilsvrc.levels == tree.levels and ilsvrc.excluded["class_name"].n_unique() == 73
    kept = to_leaf[load_shipped("ilsvrc", with_hierarchy=False).images("test")["label"].to_numpy()] >= 0
    assert ilsvrc.images("test").height == int(kept.sum())


# --------------------------------------------------------------------------- FGVC-Aircraft

VARIANTS = {  # variant: (family, manufacturer)
    "707-320": ("Boeing 707", "Boeing"), "737-800": ("Boeing 737", "Boeing"),
    "F/A-18": ("F/A-18", "McDonnell Douglas"), "Cessna 172": ("Cessna 172", "Cessna"),
}


def _write_aircraft(root: Path, per_split: int = 2, box_shift: int = 1) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    families = sorted({f for f, _ in VARIANTS.values()})
    makers = sorted({m for _, m in VARIANTS.values()})
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in VARIANTS))
    (data / "families.txt").write_text("".join(f"{f}\n" for f in families))
    (data / "manufacturers.txt").write_text("".join(f"{m}\n" for m in makers))
    boxes, number = [], 100000
    for split in ("train", "val", "test", "trainval"):
        rows = {"variant": [], "family": [], "manufacturer": []}
        for variant, (family, maker) in VARIANTS.items():
            for _ in range(per_split):
                number += 1
                name = f"{number:07d}"
                if split != "trainval":
                    Image.new("RGB", (40 + number % 7, 30)).save(data / "images" / f"{name}.jpg")
                    boxes.append(f"{name} {box_shift + 2} {box_shift + 3} {box_shift + 34} {box_shift + 25}\n")  # wider than tall
                rows["variant"].append(f"{name} {variant}\n")
                rows["family"].append(f"{name} {family}\n")
                rows["manufacturer"].append(f"{name} {maker}\n")
        for level, lines in rows.items():
            (data / f"images_{level}_{split}.txt").write_text("".join(lines))
    (data / "images_box.txt").write_text("".join(boxes))
    return data.parent


def test_aircraft_release_to_choe_folder(tmp_path: Path) -> None:
    release = _write_aircraft(tmp_path)
    out = aircraft.build_aircraft(release, tmp_path / "aircraft", progress=False)
    assert (out / "images").resolve() == (release / "data" / "images").resolve()
    ds = WSOLDataset.from_folder(out, image_root=out / "images")
    assert ds.levels == ("leaf", "family", "manufacturer")
    assert {s: ds.images(s).height for s in ds.splits} == {"train": 8, "val": 8, "test": 8}
    assert [len(ds.class_names(lv)) for lv in ds.levels] == [4, 4, 3]
    assert "F/A-18" in ds.class_names("leaf") and "F/A-18 (family)" in ds.class_names("family")
    first = ds.images("val").row(0, named=True)
    box = ds.boxes("val").filter(pl.col("image_id") == first["image_id"]).row(0)
    assert box[1:] == (2, 3, 34, 25)  # 1-based (3, 4, 35, 26) shifted to 0-based
    assert (first["width"], first["height"]) == Image.open(ds.image_path(first["image_id"])).size
    boeing = ds.class_names("manufacturer").index("Boeing")
    labels = ds.labels("test", "manufacturer")
    names = [ds.class_names("leaf")[i] for i in ds.labels("test")]
    assert [n in ("707-320", "737-800") for n in names] == list(labels == boeing)
    assert ds.check_images("test", progress=False) == 8


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("images_variant_val.txt", "0100009 707-320", "0100009"), r"images_variant_val.txt:1: expected 'IMAGE_NAME LABEL'"),
        (("images_family_test.txt", "Boeing 707", "Boeing 747"), r"images_family_test.txt:1: .*'Boeing 747' is not in"),
        (("images_box.txt", "0100001 3 4 35 26", "0100001 3 4 35"), r"images_box.txt:1: expected 'IMAGE_NAME xmin"),
        (("images_box.txt", "0100001 3 4 35 26", "0100001 0 4 35 26"), r"images_box.txt:1: box .* not 1-based"),
        (("images_family_train.txt", "0100003 Boeing 737", "0100003 Boeing 707"), "variant '737-800' has several family"),
        (("images_box.txt", "0100001 3 4 35 26", "0100001 3 4 35.6 26"),
         r"images_box.txt:1: box coordinates must be integer pixels, got 3 4 35.6 26"),
        (("images_box.txt", "0100002 3 4 35 26", "0100002 3.0 4 35 26.0"), None),  # integral: read as integers
    ],
)
def test_aircraft_errors_name_file_and_line(tmp_path: Path, edit: tuple[str, str, str], message: str) -> None:
    release = _write_aircraft(tmp_path)
    name, old, new = edit
    path = release / "data" / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    if message is None:
        assert aircraft.read_boxes(path).filter(pl.col("image_name") == "0100002").row(0)[1:5] == (2, 3, 34, 25)
        return
    with pytest.raises(MetadataError, match=message):
        aircraft.read_aircraft(release, progress=False)


@pytest.mark.parametrize("name", ["images_variant_test.txt", "images_manufacturer_val.txt"])
def test_aircraft_empty_split_is_an_error(tmp_path: Path, name: str) -> None:
    release = _write_aircraft(tmp_path)
    (release / "data" / name).write_text("")
    with pytest.raises(MetadataError, match=rf"{name}: the {name[:-4].rsplit('_', 1)[1]} split lists no image"):
        aircraft.build_aircraft(release, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_aircraft_missing_image_is_reported(tmp_path: Path) -> None:
    release = _write_aircraft(tmp_path)
    (release / "data" / "images" / "0100010.jpg").unlink()
    with pytest.raises(MetadataError, match=r"1 images missing or unreadable.*0100010.jpg \(missing\)"):
        aircraft.read_aircraft(release, progress=False)


def test_aircraft_box_outside_image_is_reported(tmp_path: Path) -> None:
    release = _write_aircraft(tmp_path)
    path = release / "data" / "images_box.txt"
    lines = path.read_text().splitlines(keepends=True)
    name = lines[4].split()[0]
    width, height = Image.open(release / "data" / "images" / f"{name}.jpg").size
    lines[4] = f"{name} 3 4 {width} {height}\n"  # 1-based: ends on the last pixel, inside
    path.write_text("".join(lines))
    aircraft.read_aircraft(release, progress=False)
    lines[4] = f"{name} 3 4 {width + 1} {height}\n"  # one pixel past the right border
    path.write_text("".join(lines))
    with pytest.raises(MetadataError, match=rf"images_box.txt:5: box \(3, 4, {width + 1}, {height}\) of image {name} "
                       rf"reaches past the border of its {width}x{height} image"):
        aircraft.build_aircraft(release, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _flat_metadata(root: Path, n_classes: int, train_per_class: int) -> Path:
    from inatloc_nb.datasets.build import write_dataset

    rows, boxes = [], []
    for label in range(n_classes):
        for split, count in (("train", train_per_class), ("val", 1), ("test", 1)):
            for k in range(count):
                image_id = f"{label:04d}/{split}{k}.jpg"
                rows.append((split, image_id, 64, 48, label))
                if split != "train":
                    boxes.append((split, image_id, 1, 2, 50, 30))  # wider than the height: sizes read as w,h
    images = pl.DataFrame(rows, schema=["split", "image_id", "width", "height", "label"], orient="row")
    box = pl.DataFrame(boxes, schema=["split", "image_id", "x0", "y0", "x1", "y1"], orient="row")
    return write_dataset(root, images, box, {"c0": [str(i) for i in range(n_classes)]})


def test_make_dataset_cub_with_the_paper_hierarchy(tmp_path: Path) -> None:
    from inatloc_nb.cli import main

    meta = _flat_metadata(tmp_path / "cub_meta", 200, 1)
    assert main(["make-dataset", "cub", str(meta), "--out", str(tmp_path / "cub")]) == 0
    ds = WSOLDataset.from_folder(tmp_path / "cub")
    assert ds.levels == ("species", "genus", "family", "order") and ds.hierarchy.root == "Aves"
    assert [len(ds.class_names(lv)) for lv in ds.levels][0] == 184
    assert {s: ds.images(s).height for s in ds.splits} == {"train": 184, "val": 184, "test": 184}
    first = ds.images("test").row(0, named=True)
    assert first["image_id"] == "0000/test0.jpg" and ds.class_names()[first["label"]] == "Phoebastria nigripes"


@pytest.mark.parametrize("inside", [False, True])
def test_make_dataset_cub_on_the_raw_release_says_what_is_needed(tmp_path: Path, inside: bool,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from inatloc_nb.cli import main

    raw = tmp_path / "CUB_200_2011"
    (raw / "images" / "001.Black_footed_Albatross").mkdir(parents=True)
    (raw / "images.txt").write_text("1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg\n")
    (raw / "bounding_boxes.txt").write_text("1 60.0 27.0 325.0 304.0\n")
    (raw / "train_test_split.txt").write_text("1 0\n")
    given = raw if inside else tmp_path
    assert main(["make-dataset", "cub", str(given), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{given}: this is the raw CUB-200-2011 release" in err
    assert "metadata/CUB of https://github.com/clovaai/wsolevaluation" in err and "CUBV2" in err
    assert not (tmp_path / "out").exists()
    assert main(["make-dataset", "imagenet", str(raw / "images"), "--out", str(tmp_path / "out")]) == 2
    assert "no split folder (train, val, test) found; make-dataset needs" in capsys.readouterr().err
    meta = _flat_metadata(tmp_path / "cub_meta", 200, 1)  # WSOL metadata, but an image folder that is not there
    assert main(["make-dataset", "cub", str(meta), "--images", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "nowhere: image folder not found" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_make_dataset_imagenet_samples_train_and_keeps_levels(tmp_path: Path) -> None:
    from inatloc_nb.cli import main

    meta = _flat_metadata(tmp_path / "in_meta", 1000, 3)
    assert main(["make-dataset", "imagenet", str(meta), "--out", str(tmp_path / "in"),
                 "--train-per-class", "2", "--seed", "1"]) == 0
    ds = WSOLDataset.from_folder(tmp_path / "in")
    shipped = imagenet.ilsvrc_hierarchy()
    assert ds.levels == shipped.levels
    assert {s: ds.images(s).height for s in ds.splits} == {"train": 1854, "val": 927, "test": 927}
    for level in ("c0", "c5", shipped.levels[-1]):  # same partition of the classes at every level
        assert len(ds.class_names(level)) == len(shipped.level_names(level))
    leaf = ds.labels("test", "c0")
    mine, ref = ds.labels("test", "c9"), shipped.level_index("c9")[leaf]
    assert len(set(zip(mine.tolist(), ref.tolist()))) == len(set(ref.tolist())) == len(set(mine.tolist()))


def test_evaluate_and_center_accept_a_split_folder(tmp_path: Path, capsys) -> None:
    import json

    from inatloc_nb.cli import main
    from inatloc_nb.metrics import center_map

    meta = _flat_metadata(tmp_path / "meta", 4, 1)
    maps = tmp_path / "maps"
    for image_id in (meta / "test" / "image_ids.txt").read_text().split():
        (maps / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / image_id.replace(".jpg", ".npy"), center_map().astype(np.float32))
    results = []
    for argv in (["--metadata", str(meta), "--split", "test"], ["--metadata", str(meta / "test")]):
        assert main(["evaluate", "--scoremaps", str(maps), *argv, "--json"]) == 0
        assert main(["center", *argv, "--json"]) == 0
        results.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert results[0] == results[1] and results[0][0]["n_images"] == 4
    assert results[0][0]["maxboxacc_v2"] == results[0][1]["maxboxacc_v2"]
    assert main(["center", "--metadata", str(meta / "test"), "--split", "val"]) == 2
    assert "is the split folder 'test', but split 'val' was asked for" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["aircraft", "cub", "imagenet"])
def test_fig_a1_configs_parse_and_refuse_placeholders(name: str) -> None:
    from inatloc_nb.sweep import ConfigError, SweepConfig, plan

    config = SweepConfig.from_yaml(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert config.check_images and {g.axes["method"] for g in config.grids} >= {("cam",)}
    with pytest.raises(ConfigError, match="edit the path"):
        plan(config, "unused")


def test_aircraft_config_runs_on_a_built_folder(tmp_path: Path) -> None:
    import yaml

    from inatloc_nb.sweep import SweepConfig, plan

    from inatloc_nb.cli import main

    out = tmp_path / "aircraft"
    assert main(["make-dataset", "aircraft", str(_write_aircraft(tmp_path)), "--out", str(out), "--quiet"]) == 0
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "aircraft.yaml").read_text())
    raw["datasets"]["aircraft"] = str(out)
    runs = plan(SweepConfig.from_dict(raw), tmp_path / "results")  # levels checked, images decoded
    assert {spec.level for spec, _ in runs} == {"leaf", "family", "manufacturer"}
    assert not any(finished for _, finished in runs)


def test_dag_to_tree_visit_order_and_parent_order() -> None:
    # y and v both hang under A and B; A and B each also have one leaf of their own. Whichever
    # node is visited first decides for both: it keeps its first-tried parent (a tie).
    dag = {"A": ["r"], "B": ["r"], "a": ["A"], "b": ["B"], "y": ["B", "A"], "v": ["A", "B"]}
    assert dag_to_tree(dag, "r") == {"A": "r", "a": "A", "y": "A", "v": "A"}
    assert dag_to_tree(dag, "r", sort_parents=False) == {"A": "r", "a": "A", "y": "A", "v": "A"}  # v first
    assert dag_to_tree(dag, "r", order=["y", "v", "A", "B", "a", "b"], sort_parents=False) == {
        "B": "r", "b": "B", "y": "B", "v": "B"}
    with pytest.raises(HierarchyError, match="visit order must list every node"):
        dag_to_tree(dag, "r", order=["y"])


def test_stats_cli_shows_the_imagenet_levels(capsys) -> None:
    import json

    from inatloc_nb.cli import main

    assert main(["stats", "--dataset", "ilsvrc", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hierarchy"]["c0"] == 927 and len(out["hierarchy"]) == 18
