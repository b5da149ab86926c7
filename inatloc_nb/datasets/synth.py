"""A synthetic iNaturalist-like world for studying label granularity on a laptop CPU.

Every image shows one animal-like object on a habitat background. The taxonomy is a uniform
tree ``kingdom -> phylum -> class -> order -> family -> genus -> species`` whose shape is set
by one branching factor per rank (``SynthConfig.branching``, root first). Each rank owns one
visual attribute, so the evidence a classifier needs moves across the image as the training
labels get coarser, the way the paper explains its result:

========  ======================================  ====================================
rank      attribute                               where the evidence lies
========  ======================================  ====================================
phylum    habitat background (water waves,        the background; the image shows its
          meadow blotches, desert speckle, ...)   phylum's habitat with probability
                                                  ``habitat_correlation``, another one
                                                  otherwise
class     silhouette kind (ellipse, polygon,      the whole object outline
          star, blob, flower, egg)
order     silhouette variant (number of sides     the whole object outline
          or lobes, aspect ratio)
family    body colour                             every object pixel
genus     body texture (stripes, spots, checks,   every object pixel
          rings, bands, plain) and its scale
species   a small two-colour mark near the        a patch of about 10% of the object
          object's head                           area
========  ======================================  ====================================

An attribute value is a function of the node's index at its rank, so every node at a rank
looks different from its siblings (and from all other nodes while the palette lasts). Each
species has a unique mark (outer colour x inner colour x shape), so a species classifier can
rely on the mark alone; a genus, family or order classifier needs the whole object; a phylum
classifier can solve most images from the background alone. Species siblings differ only
inside the mark.

Nuisance factors: object size, position and rotation, aspect jitter, background clutter
(small distractor shapes, some in body colours), pixel noise and class imbalance at the
species level (train counts spread log-uniformly between ``per_class[0]`` and
``per_class[0] / species_imbalance``). All randomness of an image comes from
``numpy.random.default_rng((seed, split, species, index))``, so the same seed gives
byte-identical images and metadata, whatever order images are produced in.

Output folder (``generate``)::

    DIR/images/<split>/<species name>/<index>.png    the images (image ids are relative
                                                    to DIR/images)
    DIR/{train,val,test}/                           Choe-format metadata with
                                                    class_labels_<level>.txt for every
                                                    coarser level and one exact box per image
    DIR/class_names.txt, DIR/class_names_<level>.txt
    DIR/synth_attributes.csv                        what was drawn in each image
    DIR/synth_config.json                           preset, seed and configuration (written
                                                    last: its presence marks a complete folder)

The box is the exact bounding box (inclusive) of the object's pixels. See
``docs/synthetic.md`` for the presets.
"""
from __future__ import annotations

import colorsys
import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import polars as pl
from inatloc_nb.core.progress import track

from inatloc_nb.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.datasets.metadata import SPLITS, SplitMetadata, write_class_names, write_split
from inatloc_nb.datasets.synth_draw import (
    HABITATS,
    Appearance,
    Colour,
    Distractor,
    ImageSpec,
    Rendering,
    draw,
)

#: Level names, finest first, as in the iNatLoc500 metadata.
LEVELS = ("species", "genus", "family", "order", "class", "phylum")
#: The ranks below the root, root first: the order of ``SynthConfig.branching``.
RANKS = tuple(reversed(LEVELS))
ROOT_LEVEL = "kingdom"
ROOT_NAME = "Synthozoa"

SILHOUETTES = ("ellipse", "polygon", "star", "blob", "flower", "egg")
# (number of sides or lobes, aspect ratio); consecutive entries differ clearly in both
SILHOUETTE_VARIANTS = ((5, 1.0), (3, 0.5), (6, 0.8), (4, 0.4), (7, 0.65))
TEXTURES = ("stripes", "spots", "checks", "rings", "bands", "plain")
TEXTURE_FREQUENCIES = (1.6, 2.6)  # cycles per object radius
MARK_COLOURS = (
    (0.95, 0.05, 0.05), (1.0, 0.95, 0.1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
    (0.95, 0.1, 0.9), (0.1, 0.95, 0.95), (1.0, 0.5, 0.0), (0.4, 1.0, 0.1),
)
MARK_SHAPES = ("disk", "square", "diamond")


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic world. Lengths are fractions of the image side.

    ``branching``: children per node for phylum, class, order, family, genus, species (root
    first). ``per_class``: (train, val, test) images per species; train is the count of the
    most frequent species. ``species_imbalance``: largest / smallest train count.
    ``object_size``: range of the object's diameter. ``position_jitter``: 0 centres the
    object, 1 lets it reach the image border. ``rotation``: maximum rotation in degrees.
    ``clutter``: range of the number of distractors; ``clutter_object_colours``: probability
    that a distractor takes a body colour. ``mark_size``: mark radius in object radii (for a round object; scaled by the square root
    of the aspect ratio, so the mark covers about the same share of every body).
    ``noise``: standard deviation of pixel noise (0-255 scale).
    """

    branching: tuple[int, ...] = (2, 2, 1, 1, 1, 2)
    image_size: int = 48
    per_class: tuple[int, int, int] = (6, 2, 2)
    species_imbalance: float = 1.0
    habitat_correlation: float = 0.9
    n_habitats: int | None = None
    object_size: tuple[float, float] = (0.45, 0.75)
    position_jitter: float = 0.8
    rotation: float = 180.0
    aspect_jitter: float = 0.05
    clutter: tuple[int, int] = (0, 3)
    clutter_object_colours: float = 0.5
    clutter_size: tuple[float, float] = (0.05, 0.12)
    mark_size: float = 0.27
    noise: float = 4.0

    def __post_init__(self) -> None:
        for name in ("branching", "per_class", "object_size", "clutter", "clutter_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.branching) != len(RANKS) or min(self.branching) < 1:
            raise InatlocError(f"branching needs {len(RANKS)} positive factors "
                               f"({', '.join(RANKS)}), got {self.branching}")
        if self.image_size < 16:
            raise InatlocError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if len(self.per_class) != 3 or self.per_class[0] < 1 or min(self.per_class) < 0:
            raise InatlocError(f"per_class must be (train >= 1, val >= 0, test >= 0), got {self.per_class}")
        if self.species_imbalance < 1:
            raise InatlocError(f"species_imbalance must be >= 1, got {self.species_imbalance}")
        if not 0 <= self.habitat_correlation <= 1:
            raise InatlocError(f"habitat_correlation must lie in [0, 1], got {self.habitat_correlation}")
        if not 2 <= self.habitats <= len(HABITATS) or self.habitats < self.n_nodes("phylum"):
            raise InatlocError(f"need between max(2, #phyla = {self.n_nodes('phylum')}) and "
                               f"{len(HABITATS)} habitats, got {self.habitats}")
        for name in ("object_size", "clutter_size"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise InatlocError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if not 0 <= self.clutter[0] <= self.clutter[1]:
            raise InatlocError(f"clutter must be a range 0 <= min <= max, got {self.clutter}")
        n_marks = len(MARK_COLOURS) ** 2 * len(MARK_SHAPES)
        if self.n_nodes("species") > n_marks:
            raise InatlocError(f"at most {n_marks} species have distinct marks, the branching "
                               f"{self.branching} gives {self.n_nodes('species')}")
        for name in ("position_jitter", "clutter_object_colours", "mark_size"):
            if not 0 <= getattr(self, name) <= 1:
                raise InatlocError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.rotation < 0 or self.aspect_jitter < 0 or self.noise < 0:
            raise InatlocError("rotation, aspect_jitter and noise must be non-negative")

    @property
    def habitats(self) -> int:
        """Number of habitats: ``n_habitats`` or max(2, number of phyla)."""
        return self.n_habitats if self.n_habitats is not None else max(2, self.n_nodes("phylum"))

    def n_nodes(self, level: str) -> int:
        """Number of taxa at ``level``."""
        return math.prod(self.branching[: RANKS.index(level) + 1])

    @classmethod
    def preset(cls, name: str, **overrides: object) -> SynthConfig:
        """A preset (a key of :data:`PRESETS`) with some fields replaced."""
        if name not in PRESETS:
            raise InatlocError(f"unknown synthetic preset {name!r}; choose from {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise InatlocError(f"unknown synthetic world parameters {unknown}; known: {sorted(fields)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(),
    "demo": SynthConfig(
        branching=(2, 2, 2, 2, 2, 2), image_size=64, per_class=(50, 8, 8), species_imbalance=2.0,
    ),
    # A second taxonomy shape: three phyla (habitats), 96 species, a long-tailed species
    # distribution (train counts 7-30) and fewer evaluation images per species.
    "wide": SynthConfig(
        branching=(3, 2, 2, 2, 2, 2), image_size=64, per_class=(30, 6, 6), species_imbalance=4.0,
    ),
    # A third shape: three genera per family (48 genera, 96 species) and a steeper long tail
    # (train counts 4-40, largest / smallest 10).
    "longtail": SynthConfig(
        branching=(2, 2, 2, 2, 3, 2), image_size=64, per_class=(40, 6, 6), species_imbalance=10.0,
    ),
}


class SynthWorld:
    """The taxonomy and attribute tables of one configuration; samples and draws images."""

    def __init__(self, config: SynthConfig, seed: int = 0):
        self.config = config
        self.seed = int(seed)
        n_species = config.n_nodes("species")
        species = np.arange(n_species)
        #: index of each species' ancestor at every level
        self.lineage: dict[str, np.ndarray] = {
            level: species // (n_species // config.n_nodes(level)) for level in LEVELS
        }
        self.names: dict[str, list[str]] = {
            level: [f"{level}{i:0{len(str(config.n_nodes(level) - 1))}d}" for i in range(config.n_nodes(level))]
            for level in LEVELS
        }
        n_family = config.n_nodes("family")
        self.body_colours: list[Colour] = [
            colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.8 - 0.3 * (i // 7 % 2), 0.95 - 0.35 * (i % 2))
            for i in range(n_family)
        ]

    # --- taxonomy ----------------------------------------------------------------------------

    def hierarchy(self):
        """The world's taxonomy as a ``Hierarchy`` (the one its generated folder loads with),
        without drawing any image."""
        from inatloc_nb.hierarchies.taxonomy import Hierarchy

        table = pl.DataFrame({level: [self.names[level][i] for i in self.lineage[level]] for level in LEVELS})
        return Hierarchy.from_lineage(table, LEVELS, ROOT_NAME, root_level=ROOT_LEVEL)

    def appearance(self, species: int) -> Appearance:
        """What each rank contributes to the look of ``species`` (see the module docstring)."""
        at = {level: int(self.lineage[level][species]) for level in LEVELS}
        sides, aspect = SILHOUETTE_VARIANTS[at["order"] % len(SILHOUETTE_VARIANTS)]
        n_col = len(MARK_COLOURS)
        return Appearance(
            habitat=at["phylum"],
            silhouette=SILHOUETTES[at["class"] % len(SILHOUETTES)],
            sides=sides,
            aspect=aspect,
            phase=0.7 * at["class"],
            colour=self.body_colours[at["family"]],
            texture=TEXTURES[at["genus"] % len(TEXTURES)],
            frequency=TEXTURE_FREQUENCIES[at["genus"] // len(TEXTURES) % len(TEXTURE_FREQUENCIES)],
            mark_outer=MARK_COLOURS[species % n_col],
            mark_inner=MARK_COLOURS[species // n_col % n_col],
            mark_shape=MARK_SHAPES[species // n_col**2],
        )

    def siblings(self, species: int) -> list[int]:
        """The other species of ``species``' genus."""
        genus = self.lineage["genus"][species]
        return [int(s) for s in np.flatnonzero(self.lineage["genus"] == genus) if s != species]

    def split_counts(self, split: str) -> np.ndarray:
        """Images per species in ``split``; train counts follow ``species_imbalance``."""
        n_species = self.config.n_nodes("species")
        n = self.config.per_class[SPLITS.index(split)]
        if split != "train":
            return np.full(n_species, n, dtype=np.int64)
        rng = np.random.default_rng((self.seed, len(SPLITS)))
        exponent = rng.permutation(np.linspace(0.0, 1.0, n_species))
        return np.maximum(1, np.round(n * self.config.species_imbalance ** -exponent)).astype(np.int64)

    def image_id(self, split: str, species: int, index: int) -> str:
        """Image id (relative to the image root) of image ``index`` of ``species`` in ``split``."""
        return f"{split}/{self.names['species'][species]}/{index:04d}.png"

    # --- sampling ----------------------------------------------------------------------------

    def spec(self, split: str, species: int, index: int) -> ImageSpec:
        """Sample the content of one image, reproducibly from (seed, split, species, index)."""
        cfg, size = self.config, self.config.image_size
        rng = np.random.default_rng((self.seed, SPLITS.index(split), species, index))
        phylum_habitat = self.appearance(species).habitat
        habitat = phylum_habitat
        if rng.random() >= cfg.habitat_correlation:
            others = [h for h in range(cfg.habitats) if h != phylum_habitat]
            habitat = int(rng.choice(others))
        radius = 0.5 * size * rng.uniform(*cfg.object_size)
        reach = max(0.0, 0.5 * size - radius) * cfg.position_jitter
        centre = tuple(0.5 * (size - 1) + reach * rng.uniform(-1, 1, 2))
        angle = rng.uniform(-cfg.rotation, cfg.rotation)
        aspect = float(np.exp(rng.normal(0.0, cfg.aspect_jitter)))
        phase = tuple(rng.uniform(0, 1, 2))
        clutter = tuple(self._distractor(rng) for _ in range(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1)))
        return ImageSpec(species, habitat, (float(centre[0]), float(centre[1])), float(radius), float(angle),
                         aspect, (float(phase[0]), float(phase[1])), clutter, int(rng.integers(2**63)))

    def _distractor(self, rng: np.random.Generator) -> Distractor:
        size = self.config.image_size
        if rng.random() < self.config.clutter_object_colours:
            colour = self.body_colours[rng.integers(len(self.body_colours))]
        else:
            colour = tuple(rng.uniform(0.1, 0.9, 3))
        return Distractor(
            sides=int(rng.choice([0, 3, 4])),
            centre=(float(rng.uniform(0, size)), float(rng.uniform(0, size))),
            radius=float(0.5 * size * rng.uniform(*self.config.clutter_size)),
            aspect=float(rng.uniform(0.5, 1.0)),
            angle=float(rng.uniform(0, 360)),
            colour=tuple(float(c) for c in colour),
        )

    def render(self, spec: ImageSpec) -> Rendering:
        """Draw ``spec`` (:func:`inatloc_nb.datasets.synth_draw.draw`) with its species' appearance."""
        cfg = self.config
        return draw(spec, self.appearance(spec.species), cfg.image_size, cfg.mark_size, cfg.noise)


# --- writing a dataset -------------------------------------------------------------------------


def generate(
    preset: str = "tiny", seed: int = 0, *, out: str | Path, progress: bool = True, **overrides: object
) -> Path:
    """Generate a synthetic dataset in ``out`` and return ``out``.

    ``overrides`` replace :class:`SynthConfig` fields of the preset. The folder loads with
    ``WSOLDataset.from_folder(out, image_root=out / "images")``. An existing folder is
    accepted only if empty or a previous synthetic dataset (whose images are replaced).
    """
    config = SynthConfig.preset(preset, **overrides)
    world = SynthWorld(config, seed)
    out = Path(out)
    _prepare_folder(out)
    counts = {split: world.split_counts(split) for split in SPLITS}
    total = int(sum(c.sum() for c in counts.values()))
    records: list[dict[str, object]] = []
    boxes: list[tuple[int, int, int, int]] = []
    with track(total=total, desc=f"synth {preset}", unit="img", show=progress) as bar:
        for split in SPLITS:
            for species, n in enumerate(counts[split].tolist()):
                for index in range(n):
                    spec = world.spec(split, species, index)
                    drawn = world.render(spec)
                    image_id = world.image_id(split, species, index)
                    ok, png = cv2.imencode(".png", cv2.cvtColor(drawn.image, cv2.COLOR_RGB2BGR))
                    if not ok:
                        raise InatlocError(f"could not encode image {image_id}")
                    atomic_write_bytes(out / "images" / image_id, png.tobytes())
                    boxes.append(drawn.box)
                    records.append(_record(world, split, image_id, spec))
                    bar.update()

    table = pl.DataFrame(records)
    box_table = pl.DataFrame(boxes, schema=["x0", "y0", "x1", "y1"], orient="row")
    table = pl.concat([table, box_table], how="horizontal")
    for split in SPLITS:
        rows = table.filter(pl.col("split") == split)
        if rows.height == 0:
            continue
        species = rows["species"].to_numpy()
        images = rows.select(
            "image_id", width=pl.lit(config.image_size), height=pl.lit(config.image_size),
            label=pl.col("species"),
            **{f"label_{lv}": pl.Series(world.lineage[lv][species]) for lv in LEVELS[1:]},
            **{f"label_{ROOT_LEVEL}": pl.lit(0)},
        )
        write_split(out / split, SplitMetadata(split, images, rows.select("image_id", "x0", "y0", "x1", "y1")))
    write_class_names(out / "class_names.txt", world.names["species"])
    for level in LEVELS[1:]:
        write_class_names(out / f"class_names_{level}.txt", world.names[level])
    write_class_names(out / f"class_names_{ROOT_LEVEL}.txt", [ROOT_NAME])
    atomic_write_text(out / "synth_attributes.csv", table.write_csv())
    atomic_write_json(out / "synth_config.json",
                      {"preset": preset, "seed": int(seed), "config": dataclasses.asdict(config),
                       "levels": list(LEVELS), "root": [ROOT_LEVEL, ROOT_NAME]})
    return out


def _record(world: SynthWorld, split: str, image_id: str, spec: ImageSpec) -> dict[str, object]:
    phylum = int(world.lineage["phylum"][spec.species])
    return {
        "split": split, "image_id": image_id, "species": spec.species, "phylum": phylum,
        "habitat": HABITATS[spec.habitat][0], "habitat_matches_phylum": spec.habitat == phylum,
        "centre_x": round(spec.centre[0], 3), "centre_y": round(spec.centre[1], 3),
        "radius": round(spec.radius, 3), "angle": round(spec.angle, 2), "n_clutter": len(spec.clutter),
    }


def _prepare_folder(out: Path) -> None:
    """Refuse a non-empty folder that is not a previous synthetic dataset; clear old images."""
    if out.exists() and not out.is_dir():
        raise InatlocError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "synth_config.json").is_file():
            raise InatlocError(f"{out} is not empty and holds no synthetic dataset; choose an empty folder")
        (out / "synth_config.json").unlink()
        shutil.rmtree(out / "images", ignore_errors=True)
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
