"""FGVC-Aircraft (release ``fgvc-aircraft-2013b``) as a WSOL dataset with its label hierarchy.

The release's ``data/`` folder holds, per split ``S`` in ``train, val, test`` (and
``trainval``), ``images_variant_S.txt``, ``images_family_S.txt`` and
``images_manufacturer_S.txt``: one line per image, a seven-digit image name, one space and
the label (which may itself contain spaces and slashes, e.g. ``F/A-18``); ``variants.txt``,
``families.txt`` and ``manufacturers.txt`` list the names (one per line, the line order is
our class index); ``images_box.txt`` has ``NAME xmin ymin xmax ymax`` with **1-based**
inclusive pixels (the top-left pixel is (1, 1), as the release's README says); images are
``images/NAME.jpg``. The release puts a 20-pixel copyright banner at the bottom of each
image; boxes are in full-image coordinates and the images are used as they are.

:func:`build_aircraft` writes a Choe-format folder: ``train`` = D_w, ``val`` = D_f, ``test``
= D_test (the release's ``trainval`` files are not used), image ids ``NAME.jpg`` under the
image root ``data/images``, boxes shifted to 0-based, sizes read from the JPEG headers, and
the hierarchy variant < family < manufacturer (``class_labels_family.txt``,
``class_labels_manufacturer.txt``; the finest level reads back as ``leaf``), and
``images`` linked to the release's ``data/images``. Everything is read and checked before
anything is written: a box that is not four integers, or that reaches past its image (``xmax``
beyond the width, ``ymax`` beyond the height), is an error naming ``images_box.txt``, its line
and the image size, and so is a split that lists no image.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from inatloc_nb.core.errors import MetadataError
from inatloc_nb.datasets.build import link_images, write_dataset
from inatloc_nb.datasets.metadata import SPLITS

__all__ = ["AIRCRAFT_LEVELS", "SPLITS", "read_image_labels", "read_names", "read_boxes", "read_aircraft",
           "build_aircraft"]

#: The release's label levels, finest first, and the files naming their classes.
AIRCRAFT_LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


def _data_dir(root: str | Path) -> Path:
    root = Path(root)
    for candidate in (root / "data", root):
        if (candidate / "variants.txt").is_file():
            return candidate
    raise MetadataError("not an FGVC-Aircraft release: no data/variants.txt (give the fgvc-aircraft-2013b folder)",
                        root)


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise MetadataError("file of the FGVC-Aircraft release not found", path)
    text = path.read_text(encoding="utf-8")
    return [(k, line.rstrip("\r")) for k, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_names(path: str | Path) -> list[str]:
    """Class names, one per line (line order = class index); raises on a repeated name."""
    path = Path(path)
    names: dict[str, int] = {}
    for line_no, line in _lines(path):
        name = line.strip()
        if name in names:
            raise MetadataError(f"class {name!r} repeats line {names[name]}", path, line_no)
        names[name] = line_no
    return list(names)


def read_image_labels(path: str | Path) -> dict[str, str]:
    """``{image name: label}`` from ``NAME LABEL`` lines (the label may contain spaces)."""
    return {name: label for name, (label, _) in _image_labels(Path(path)).items()}


def _image_labels(path: Path) -> dict[str, tuple[str, int]]:
    labels: dict[str, tuple[str, int]] = {}
    for line_no, line in _lines(path):
        name, _, label = line.partition(" ")
        if not name.isdigit() or not label.strip():
            raise MetadataError(f"expected 'IMAGE_NAME LABEL' (a digit image name, one space, a label), "
                                f"got {line!r}", path, line_no)
        if name in labels:
            raise MetadataError(f"image {name} is listed twice", path, line_no)
        labels[name] = (label.strip(), line_no)
    return labels


def read_boxes(path: str | Path) -> pl.DataFrame:
    """``image_name, x0, y0, x1, y1`` from ``images_box.txt``, converted to 0-based pixels, and
    ``line``, the 1-based line of each box. A coordinate that is not an integer (``12.5``; an
    integral ``12.0`` is read as 12) is an error naming the file and line, never truncated."""
    path = Path(path)
    rows = []
    seen: dict[str, int] = {}
    for line_no, line in _lines(path):
        fields = line.split()
        if len(fields) != 5 or not fields[0].isdigit():
            raise MetadataError(f"expected 'IMAGE_NAME xmin ymin xmax ymax', got {line!r}", path, line_no)
        coords = [_pixel(v) for v in fields[1:]]
        if None in coords:
            raise MetadataError(f"box coordinates must be integer pixels, got {' '.join(fields[1:])}", path, line_no)
        if fields[0] in seen:
            raise MetadataError(f"image {fields[0]} has a second box (line {seen[fields[0]]} is the first)",
                                path, line_no)
        x0, y0, x1, y1 = coords
        if min(coords) < 1 or x1 < x0 or y1 < y0:
            raise MetadataError(f"box {coords} is not 1-based with xmin <= xmax, ymin <= ymax", path, line_no)
        seen[fields[0]] = line_no
        rows.append((fields[0], x0 - 1, y0 - 1, x1 - 1, y1 - 1, line_no))
    return pl.DataFrame(rows, schema=["image_name", "x0", "y0", "x1", "y1", "line"], orient="row")


def _pixel(text: str) -> int | None:
    """An integer coordinate (``12`` or ``12.0``), else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _image_sizes(folder: Path, names: list[str], progress: bool) -> list[tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError
    from inatloc_nb.core.progress import track

    sizes, problems = [], []
    for name in track(names, desc="reading image sizes", unit="img", show=progress):
        path = folder / f"{name}.jpg"
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except FileNotFoundError:
            problems.append(f"{path} (missing)")
        except (OSError, UnidentifiedImageError) as exc:
            problems.append(f"{path} (unreadable: {exc})")
    if problems:
        raise MetadataError(f"{len(problems)} images missing or unreadable: {problems[:10]}", folder)
    return sizes


def read_aircraft(root: str | Path, progress: bool = True) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, list[str]]]:
    """Read the release into ``(images, boxes, names)`` for :func:`inatloc_nb.datasets.build.write_dataset`.

    ``images``: ``split, image_id, width, height, label, label_family, label_manufacturer``;
    ``boxes``: ``split, image_id, x0, y0, x1, y1`` (0-based); ``names``: the class names of
    each level. Raises ``MetadataError`` naming the file and line of a malformed line, a label
    not in the names file, an image whose three label files disagree on the image list, a
    variant under two families (or family under two manufacturers), or an image without a box.
    """
    data = _data_dir(root)
    names = {level: read_names(data / file) for level, file in AIRCRAFT_LEVELS.items()}
    boxes = read_boxes(data / "images_box.txt")
    frames = []
    for split in SPLITS:
        per_level = {}
        for level in AIRCRAFT_LEVELS:
            path = data / f"images_{level}_{split}.txt"
            labels = _image_labels(path)
            if not labels:
                raise MetadataError(f"the {split} split lists no image (train, val and test are D_w, D_f "
                                    "and D_test: none may be empty)", path)
            index = {n: i for i, n in enumerate(names[level])}
            for image, (label, line_no) in labels.items():
                if label not in index:
                    raise MetadataError(f"image {image}: {level} {label!r} is not in {AIRCRAFT_LEVELS[level]}",
                                        path, line_no)
            per_level[level] = (path, {image: index[label] for image, (label, _) in labels.items()})
        variant_path, variant = per_level["variant"]
        for level in ("family", "manufacturer"):
            path, other = per_level[level]
            if set(other) != set(variant):
                odd = sorted(set(other) ^ set(variant))
                raise MetadataError(f"{path.name} and {variant_path.name} list different images, e.g. {odd[:5]}", path)
        frames.append(pl.DataFrame({
            "split": split, "image_name": list(variant), "label": list(variant.values()),
            **{f"label_{lv}": [per_level[lv][1][i] for i in variant] for lv in ("family", "manufacturer")},
        }))
    images = pl.concat(frames)
    _check_tree(images, names, data)
    dup = images.filter(pl.col("image_name").is_duplicated())["image_name"].unique().sort()
    if len(dup):
        raise MetadataError(f"images listed in two splits: {dup.head(5).to_list()}", data)
    no_box = images.join(boxes, on="image_name", how="anti")["image_name"]
    if len(no_box):
        raise MetadataError(f"{len(no_box)} images without a box, e.g. {no_box.head(5).to_list()}",
                            data / "images_box.txt")
    sizes = _image_sizes(data / "images", images["image_name"].to_list(), progress)
    images = images.with_columns(
        pl.Series("width", [w for w, _ in sizes]), pl.Series("height", [h for _, h in sizes]),
        image_id=pl.col("image_name") + ".jpg",
    )
    boxes = images.select("split", "image_name", "image_id", "width", "height").join(boxes, on="image_name")
    _check_inside(boxes, data / "images_box.txt")
    boxes = boxes.select("split", "image_id", "x0", "y0", "x1", "y1")
    images = images.select("split", "image_id", "width", "height", "label", "label_family", "label_manufacturer")
    return images, boxes, names


def _check_inside(boxes: pl.DataFrame, path: Path) -> None:
    """Every box within its image (0-based inclusive ``x1 <= width - 1``, as the release's
    1-based ``xmax <= width``); else an error naming the line, the box and the image size."""
    past = boxes.filter((pl.col("x1") >= pl.col("width")) | (pl.col("y1") >= pl.col("height"))).sort("line")
    if past.height:
        row = past.row(0, named=True)
        box = tuple(row[c] + 1 for c in ("x0", "y0", "x1", "y1"))
        raise MetadataError(
            f"box {box} of image {row['image_name']} reaches past the border of its {row['width']}x{row['height']} "
            f"image (xmax must be at most the width, ymax at most the height; 1-based pixels)"
            + (f"; {past.height} boxes in all" if past.height > 1 else ""), path, int(row["line"]))


def _check_tree(images: pl.DataFrame, names: dict[str, list[str]], data: Path) -> None:
    """Every variant has one family and every family one manufacturer."""
    for child, parent in (("label", "label_family"), ("label_family", "label_manufacturer")):
        pairs = images.group_by(child, parent).agg(pl.col("image_name").first()).sort(child, parent)
        clash = pairs.filter(pl.col(child).is_duplicated())
        if clash.height:
            level = "variant" if child == "label" else "family"
            up = "family" if child == "label" else "manufacturer"
            row = clash.row(0, named=True)
            raise MetadataError(
                f"{level} {names[level][row[child]]!r} has several {up} labels "
                f"(e.g. {[names[up][v] for v in clash.filter(pl.col(child) == row[child])[parent]]}, image "
                f"{row['image_name']})", data)


def build_aircraft(root: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Write the release as a Choe-format dataset folder ``out`` (see the module docstring)."""
    images, boxes, names = read_aircraft(root, progress=progress)
    written = write_dataset(out, images, boxes, names)
    link_images(written, _data_dir(root) / "images")
    return written
