"""The synthetic world: determinism, metadata, exact boxes, habitats, species marks, CLI."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from inatloc_nb.cli import main
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.datasets.metadata import read_split
from inatloc_nb.datasets.synth import LEVELS, PRESETS, SPLITS, SynthConfig, SynthWorld, generate


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    again = generate("tiny", seed=0, out=tmp_path / "again", progress=False)
    first, second = _digest(tiny_dataset_dir), _digest(again)
    assert len(first) > 60 and any(k.endswith(".png") for k in first)
    assert first == second


def test_different_seeds_differ(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    other = _digest(generate("tiny", seed=1, out=tmp_path / "seed1", progress=False))
    base = _digest(tiny_dataset_dir)
    pngs = [k for k in base if k.endswith(".png") and k in other]
    assert pngs and all(base[k] != other[k] for k in pngs)
    assert base["train/localization.txt"] != other["train/localization.txt"]
    # the taxonomy does not depend on the seed
    assert base["class_names.txt"] == other["class_names.txt"]


def test_regenerating_into_a_synth_folder_replaces_it(tmp_path: Path) -> None:
    out = generate("tiny", seed=0, out=tmp_path / "d", progress=False, per_class=(3, 1, 1))
    generate("tiny", seed=0, out=out, progress=False, per_class=(2, 1, 1))
    ids = (out / "train" / "image_ids.txt").read_text().split()
    assert sorted(str(p.relative_to(out / "images")) for p in (out / "images" / "train").rglob("*.png")) == sorted(ids)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(InatlocError, match="not empty"):
        generate("tiny", out=tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_metadata_loads_with_every_level(tiny_dataset, tiny_dataset_dir: Path) -> None:
    config = PRESETS["tiny"]
    world = SynthWorld(config, 0)
    hierarchy = tiny_dataset.hierarchy
    assert tuple(hierarchy.levels)[: len(LEVELS)] == LEVELS
    for level in LEVELS:
        assert len(hierarchy.level_names(level)) == config.n_nodes(level)
    # the fine -> coarse map of the hierarchy is the generator's lineage
    for level in LEVELS:
        names = hierarchy.level_names(level)
        mapped = [names[i] for i in hierarchy.level_index(level)]
        assert mapped == [world.names[level][i] for i in world.lineage[level]]
    for split in SPLITS:
        images = tiny_dataset.images(split)
        counts = world.split_counts(split)
        assert images.height == counts.sum()
        assert (images["width"] == config.image_size).all() and (images["height"] == config.image_size).all()
        for level in LEVELS:
            np.testing.assert_array_equal(
                tiny_dataset.labels(split, level), world.lineage[level][tiny_dataset.labels(split, "species")]
            )
        assert tiny_dataset.check_images(split, progress=False) == counts.sum()
    assert tiny_dataset.hierarchy.root == "Synthozoa"


def test_boxes_are_the_exact_object_extent(tiny_dataset_dir: Path) -> None:
    world = SynthWorld(PRESETS["tiny"], 0)
    for split in SPLITS:
        meta = read_split(tiny_dataset_dir / split)
        boxes = {r[0]: r[1:] for r in meta.boxes.iter_rows()}
        assert meta.boxes.height == meta.images.height  # one box per image
        for image_id, label in meta.images.select("image_id", "label").iter_rows():
            index = int(Path(image_id).stem)
            drawn = world.render(world.spec(split, label, index))
            on_disk = cv2.cvtColor(cv2.imread(str(tiny_dataset_dir / "images" / image_id)), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(on_disk, drawn.image)
            ys, xs = np.nonzero(drawn.object_mask)
            assert boxes[image_id] == (xs.min(), ys.min(), xs.max(), ys.max())
            # the box is tight: the object touches all four sides of it
            x0, y0, x1, y1 = boxes[image_id]
            inside = drawn.object_mask[y0 : y1 + 1, x0 : x1 + 1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


@pytest.mark.parametrize("correlation", [0.9, 0.6])
def test_habitat_follows_phylum_with_the_configured_probability(correlation: float) -> None:
    world = SynthWorld(SynthConfig.preset("tiny", habitat_correlation=correlation), seed=3)
    n_species = world.config.n_nodes("species")
    specs = [world.spec("train", s, i) for s in range(n_species) for i in range(150)]
    matches = np.array([spec.habitat == world.lineage["phylum"][spec.species] for spec in specs])
    # binomial standard error with 1200 draws is at most 0.015 (the seed is fixed)
    assert abs(matches.mean() - correlation) < 0.045
    mismatched = {spec.habitat for spec in specs if spec.habitat != world.lineage["phylum"][spec.species]}
    assert mismatched <= set(range(world.config.habitats))


def test_attribute_table_records_the_habitats(tiny_dataset_dir: Path) -> None:
    table = pl.read_csv(tiny_dataset_dir / "synth_attributes.csv")
    n_images = sum(read_split(tiny_dataset_dir / s).images.height for s in SPLITS)
    assert table.height == n_images
    assert set(table["habitat"]) <= {"water", "meadow"}
    assert 0.6 < table["habitat_matches_phylum"].mean() <= 1.0


def test_species_siblings_differ_only_inside_the_mark() -> None:
    world = SynthWorld(PRESETS["demo"], 0)
    for species in (0, 13, 50):
        sibling = world.siblings(species)[0]
        spec = world.spec("val", species, 2)
        a, b = world.render(spec), world.render(dataclasses.replace(spec, species=sibling))
        changed = (a.image != b.image).any(axis=2)
        assert changed.sum() > 0
        assert not (changed & ~(a.mark_mask | b.mark_mask)).any()
        np.testing.assert_array_equal(a.object_mask, b.object_mask)
        assert a.mark_mask.sum() < 0.2 * a.object_mask.sum()
        # a species of another family differs over the whole body, not just at the mark
        cousin = (species + 4) % world.config.n_nodes("species")
        assert world.lineage["family"][cousin] != world.lineage["family"][species]
        other = world.render(dataclasses.replace(spec, species=cousin))
        outside = (a.image != other.image).any(axis=2) & a.object_mask & ~a.mark_mask
        assert outside.sum() > 0.9 * (a.object_mask & ~a.mark_mask).sum()


def test_species_imbalance_sets_the_train_counts() -> None:
    world = SynthWorld(SynthConfig.preset("demo", species_imbalance=3.0, per_class=(60, 5, 5)), seed=0)
    train = world.split_counts("train")
    assert train.max() == 60 and train.min() == 20
    assert (world.split_counts("test") == 5).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"branching": (2, 2)}, "branching"),
        ({"per_class": (0, 1, 1)}, "per_class"),
        ({"habitat_correlation": 1.5}, "habitat_correlation"),
        ({"n_habitats": 9}, "habitats"),
        ({"object_size": (0.8, 0.3)}, "object_size"),
        ({"wings": 2}, "unknown synthetic world parameters"),
    ],
)
def test_bad_parameters_are_reported(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InatlocError, match=message):
        SynthConfig.preset("tiny", **overrides)


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["synth", "--preset", "tiny", "--seed", "5", "--out", str(out), "--image-size", "32",
            "--per-class", "2,1,1", "--quiet"]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    expected = generate("tiny", seed=5, out=tmp_path / "api", progress=False, image_size=32, per_class=(2, 1, 1))
    assert _digest(out) == _digest(expected)
    meta = read_split(out / "val")
    assert meta.images.height == PRESETS["tiny"].n_nodes("species")
    assert set(meta.levels) >= set(LEVELS[1:])
    assert main(["synth", "--out", str(out), "--preset", "tiny", "--image-size", "4", "--quiet"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_longtail_preset_and_world_draw_specs():
    from inatloc_nb.sweep import ConfigError, SweepConfig
    from inatloc_nb.training.run_config import parse_synth_spec

    world = SynthWorld(PRESETS["longtail"], 1)
    counts = world.split_counts("train")
    assert world.config.n_nodes("genus") == 48 and len(counts) == 96
    assert counts.max() == 40 and counts.min() == 4
    assert parse_synth_spec("synth:longtail:1") == ("longtail", 1)
    assert parse_synth_spec("synth:demo") == ("demo", 0)
    config = SweepConfig.from_dict({"datasets": {"w1": "synth:wide:1"}, "levels": ["species"], "lrs": [0.1]})
    assert config.datasets == {"w1": "synth:wide:1"}
    with pytest.raises(ConfigError, match="datasets.w1: unknown synthetic preset or bad spec 'synth:wide:x'"):
        SweepConfig.from_dict({"datasets": {"w1": "synth:wide:x"}, "levels": ["species"], "lrs": [0.1]})
