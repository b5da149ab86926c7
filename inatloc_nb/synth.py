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
from tqdm.auto import tqdm

from inatloc_nb.errors import InatlocError
from inatloc_nb.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from inatloc_nb.metadata import SplitMetadata, write_class_names, write_split

#: Level names, finest first, as in the iNatLoc500 metadata.
LEVELS = ("species", "genus", "family", "order", "class", "phylum")
#: The ranks below the root, root first: the order of ``SynthConfig.branching``.
RANKS = tuple(reversed(LEVELS))
ROOT_LEVEL = "kingdom"
ROOT_NAME = "Synthozoa"
SPLITS = ("train", "val", "test")

# (name, pattern, colour where the pattern is 0, colour where it is 1), RGB in [0, 1]
HABITATS = (
    ("water", "waves", (0.05, 0.20, 0.45), (0.30, 0.55, 0.85)),
    ("meadow", "blotches", (0.15, 0.40, 0.10), (0.55, 0.70, 0.25)),
    ("desert", "speckle", (0.70, 0.55, 0.35), (0.92, 0.82, 0.60)),
    ("rock", "blotches", (0.30, 0.30, 0.32), (0.62, 0.62, 0.60)),
    ("forest floor", "speckle", (0.25, 0.17, 0.08), (0.45, 0.40, 0.15)),
    ("snow", "waves", (0.78, 0.82, 0.90), (0.97, 0.98, 1.00)),
)
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
_TEXTURE_CONTRAST = 0.5  # texture darkens the body colour by this fraction
_MARK_OFFSET = 0.45  # mark centre along the head axis, in object radii
_OUTLINE_POINTS = 96


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
        """A preset (``"tiny"``, ``"demo"`` or ``"wide"``) with some fields replaced."""
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
}


Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Appearance:
    """The attribute values of one species: habitat (phylum), silhouette kind (class), sides
    or lobes and aspect ratio (order), body colour (family), texture and its frequency
    (genus), mark colours and shape (species). ``phase`` varies blob outlines by class."""

    habitat: int
    silhouette: str
    sides: int
    aspect: float
    phase: float
    colour: Colour
    texture: str
    frequency: float
    mark_outer: Colour
    mark_inner: Colour
    mark_shape: str


@dataclass(frozen=True)
class Distractor:
    """A small background shape: ``sides`` 0 is an ellipse, otherwise a regular polygon."""

    sides: int
    centre: tuple[float, float]
    radius: float
    aspect: float
    angle: float
    colour: Colour


@dataclass(frozen=True)
class ImageSpec:
    """Everything drawn in one image; :meth:`SynthWorld.render` is a pure function of it."""

    species: int
    habitat: int
    centre: tuple[float, float]
    radius: float
    angle: float
    aspect: float
    texture_phase: tuple[float, float]
    clutter: tuple[Distractor, ...]
    pixel_seed: int


@dataclass(frozen=True)
class Rendering:
    """An RGB uint8 image with the masks of the object and of its species mark."""

    image: np.ndarray
    object_mask: np.ndarray
    mark_mask: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Inclusive bounding box ``(x0, y0, x1, y1)`` of the object's pixels."""
        ys, xs = np.nonzero(self.object_mask)
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


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

    # --- drawing -----------------------------------------------------------------------------

    def render(self, spec: ImageSpec) -> Rendering:
        """Draw ``spec``: background, clutter, textured object, species mark, pixel noise."""
        size = self.config.image_size
        rng = np.random.default_rng(spec.pixel_seed)
        image = _background(spec.habitat, size, rng)
        for d in spec.clutter:
            outline = _polygon_outline(d.sides) if d.sides else _ellipse_outline()
            _fill(image, _place(outline * (1.0, d.aspect), d.centre, d.radius, d.angle), d.colour)

        look = self.appearance(spec.species)
        aspect = look.aspect * spec.aspect
        outline = _silhouette(look.silhouette, look.sides, look.phase) * (1.0, aspect)
        object_mask = np.zeros((size, size), np.uint8)
        _fill(object_mask, _place(outline, spec.centre, spec.radius, spec.angle), 1)
        object_mask = object_mask.astype(bool)

        # object coordinates (u along the head axis, v across), in object radii
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        theta = math.radians(spec.angle)
        dx, dy = xs - spec.centre[0], ys - spec.centre[1]
        u = (dx * math.cos(theta) + dy * math.sin(theta)) / spec.radius
        v = (-dx * math.sin(theta) + dy * math.cos(theta)) / spec.radius
        pattern = _texture(look.texture, look.frequency, u + spec.texture_phase[0], v + spec.texture_phase[1])
        body = np.asarray(look.colour, np.float32) * (1.0 - _TEXTURE_CONTRAST * pattern)[..., None]
        image[object_mask] = body[object_mask]

        mark_r = self.config.mark_size * math.sqrt(aspect)  # a constant share of the body area
        mu = u - _MARK_OFFSET
        outer = _mark_region(look.mark_shape, mu, v, mark_r) & object_mask
        inner = _mark_region(look.mark_shape, mu, v, 0.5 * mark_r) & object_mask
        image[outer] = look.mark_outer
        image[inner] = look.mark_inner

        if self.config.noise:
            image += rng.normal(0.0, self.config.noise / 255.0, image.shape).astype(np.float32)
        pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Rendering(pixels, object_mask, outer)


# --- geometry and textures ---------------------------------------------------------------------


def _ellipse_outline() -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, _OUTLINE_POINTS, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _polygon_outline(sides: int, inner: float | None = None) -> np.ndarray:
    """A regular polygon, or a star with ``sides`` points and inner radius ``inner``; one
    vertex on +x."""
    if inner is None:
        t, r = np.arange(sides) * (2 * np.pi / sides), np.ones(sides)
    else:
        k = np.arange(2 * sides)
        t, r = k * (np.pi / sides), np.where(k % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _silhouette(kind: str, n: int, phase: float) -> np.ndarray:
    """Unit-radius outline of a silhouette kind with ``n`` sides or lobes, head on +x."""
    t = np.linspace(0.0, 2 * np.pi, _OUTLINE_POINTS, endpoint=False)
    if kind == "ellipse":
        return _ellipse_outline()
    if kind == "polygon":
        return _polygon_outline(n)
    if kind == "star":
        return _polygon_outline(n, inner=0.5)
    if kind == "blob":
        r = 1.0 + 0.2 * np.cos(n * t + 1.0 + phase) + 0.12 * np.cos((n + 2) * t + 2.5 + phase)
    elif kind == "flower":
        r = 0.6 + 0.4 * np.abs(np.cos(0.5 * n * t))
    else:  # egg: blunt head on +x, narrower tail
        r = 0.8 + 0.2 * np.cos(t)
    r = r / r.max()
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _place(outline: np.ndarray, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Scale, rotate (degrees, clockwise on screen) and translate a unit outline to pixels."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x, y = outline[:, 0] * radius, outline[:, 1] * radius
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


_SHIFT = 4  # fixed-point bits for sub-pixel polygon vertices


def _fill(canvas: np.ndarray, points: np.ndarray, colour: float | Colour) -> None:
    """Fill a polygon given in float pixel coordinates (pixel centres at integers)."""
    pts = np.round(points * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], colour, lineType=cv2.LINE_8, shift=_SHIFT)


def _texture(kind: str, freq: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary body pattern (1 = darker) in object coordinates."""
    if kind == "stripes":
        t = np.sin(2 * np.pi * freq * u) > 0
    elif kind == "bands":
        t = np.sin(2 * np.pi * freq * v) > 0
    elif kind == "spots":
        fu, fv = (freq * u) % 1.0 - 0.5, (freq * v) % 1.0 - 0.5
        t = fu * fu + fv * fv < 0.09
    elif kind == "checks":
        t = (np.floor(freq * u) + np.floor(freq * v)) % 2 == 1
    elif kind == "rings":
        t = np.sin(2 * np.pi * freq * np.hypot(u, v)) > 0
    else:
        t = np.zeros_like(u, dtype=bool)
    return t.astype(np.float32)


def _mark_region(shape: str, du: np.ndarray, dv: np.ndarray, r: float) -> np.ndarray:
    """Pixels of a mark of radius ``r`` centred at object coordinates (0, 0) of ``du, dv``."""
    if shape == "disk":
        return du * du + dv * dv <= r * r
    if shape == "square":
        return np.maximum(np.abs(du), np.abs(dv)) <= 0.85 * r
    return np.abs(du) + np.abs(dv) <= 1.2 * r


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Noise in [0, 1] varying over about ``cells`` blobs per side."""
    coarse = rng.random((cells + 1, cells + 1), dtype=np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _background(habitat: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """RGB float32 image of a habitat texture."""
    _, pattern, c0, c1 = HABITATS[habitat]
    if pattern == "waves":
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        tilt = rng.uniform(-0.4, 0.4)
        phase = rng.uniform(0, 2 * np.pi, 2)
        wobble = 0.08 * np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * xs + phase[0])
        level = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(5.0, 8.0) * (ys + tilt * xs + wobble) + phase[1])
    elif pattern == "blotches":
        level = 0.7 * _smooth_noise(size, 4, rng) + 0.3 * _smooth_noise(size, 10, rng)
    else:  # speckle: smooth dunes with scattered grains
        level = 0.6 * _smooth_noise(size, 3, rng) + 0.4 * (rng.random((size, size), dtype=np.float32) < 0.12)
    c0a, c1a = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    return c0a + (c1a - c0a) * level[..., None].astype(np.float32)


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
    with tqdm(total=total, desc=f"synth {preset}", unit="img", disable=not progress) as bar:
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
