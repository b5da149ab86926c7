"""Drawing the synthetic world's images (:mod:`inatloc_nb.datasets.synth`): what one image shows
(:class:`ImageSpec`, a species' :class:`Appearance`) and :func:`draw`, a pure function of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# (name, pattern, colour where the pattern is 0, colour where it is 1), RGB in [0, 1]
HABITATS = (
    ("water", "waves", (0.05, 0.20, 0.45), (0.30, 0.55, 0.85)),
    ("meadow", "blotches", (0.15, 0.40, 0.10), (0.55, 0.70, 0.25)),
    ("desert", "speckle", (0.70, 0.55, 0.35), (0.92, 0.82, 0.60)),
    ("rock", "blotches", (0.30, 0.30, 0.32), (0.62, 0.62, 0.60)),
    ("forest floor", "speckle", (0.25, 0.17, 0.08), (0.45, 0.40, 0.15)),
    ("snow", "waves", (0.78, 0.82, 0.90), (0.97, 0.98, 1.00)),
)
_TEXTURE_CONTRAST = 0.5  # texture darkens the body colour by this fraction
_MARK_OFFSET = 0.45  # mark centre along the head axis, in object radii
_OUTLINE_POINTS = 96


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
    """Everything drawn in one image; :func:`draw` is a pure function of it and the species' look."""

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


def draw(spec: ImageSpec, look: Appearance, size: int, mark_size: float, noise: float) -> Rendering:
    """Draw ``spec`` with the species' look ``look`` on a ``size`` x ``size`` image: background,
    clutter, textured object, species mark (radius ``mark_size`` in object radii), pixel noise
    (standard deviation ``noise`` on the 0-255 scale)."""
    rng = np.random.default_rng(spec.pixel_seed)
    image = _background(spec.habitat, size, rng)
    for d in spec.clutter:
        outline = _polygon_outline(d.sides) if d.sides else _ellipse_outline()
        _fill(image, _place(outline * (1.0, d.aspect), d.centre, d.radius, d.angle), d.colour)

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

    mark_r = mark_size * math.sqrt(aspect)  # a constant share of the body area
    mu = u - _MARK_OFFSET
    outer = _mark_region(look.mark_shape, mu, v, mark_r) & object_mask
    inner = _mark_region(look.mark_shape, mu, v, 0.5 * mark_r) & object_mask
    image[outer] = look.mark_outer
    image[inner] = look.mark_inner

    if noise:
        image += rng.normal(0.0, noise / 255.0, image.shape).astype(np.float32)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Rendering(pixels, object_mask, outer)


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
