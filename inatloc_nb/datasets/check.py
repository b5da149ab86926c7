"""The dataset doctor: check a Choe-format dataset and its images before a long sweep.

:func:`check_dataset` reads every split's metadata (any malformation is reported with file
and line by :mod:`inatloc_nb.datasets.metadata`), then decodes every image completely in a thread
pool (Pillow releases the GIL while decoding), so truncated files are caught, and compares:

- ``missing``: no file at ``image_root / image_id``;
- ``unreadable``: the file is not an image Pillow can open;
- ``truncated``: the image data ends early;
- ``size``: the decoded size differs from ``image_sizes.txt``;
- ``box``: a box of ``localization.txt`` reaches outside the decoded image.

Each problem names the split file and line (or the image path). ``inatloc-nb check`` prints
a summary per split and the first offending lines, and exits with 1 when anything is wrong.
With ``decode=False`` (``--metadata-only``) no image is read: the metadata of every split and
the hierarchy its ``class_labels_<level>.txt`` files define are checked, as when only the
metadata has been downloaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.datasets.metadata import IMAGE_SIZES, LOCALIZATION, id_lines, read_splits

__all__ = ["KINDS", "Problem", "CheckReport", "decode_image", "check_dataset", "default_image_root"]

KINDS = ("missing", "unreadable", "truncated", "size", "box")


@dataclass(frozen=True)
class Problem:
    """One finding: its kind (:data:`KINDS`), split, image id and where/what (file:line: detail)."""

    kind: str
    split: str
    image_id: str
    detail: str


@dataclass
class CheckReport:
    """Images checked per split and every problem found."""

    images: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    decoded: bool = True
    """Whether the images were decoded (False: metadata only)."""

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def summary(self) -> pl.DataFrame:
        """One row per split: ``split, images`` and the count of each problem kind."""
        rows = []
        for split, n in self.images.items():
            found = [p.kind for p in self.problems if p.split == split]
            rows.append({"split": split, "images": n, **{k: found.count(k) for k in KINDS}})
        return pl.DataFrame(rows, schema={"split": pl.String, "images": pl.Int64, **{k: pl.Int64 for k in KINDS}})

    def first(self, n: int = 10) -> list[Problem]:
        """Up to ``n`` problems of each kind, in file order."""
        out: list[Problem] = []
        for kind in KINDS:
            out += [p for p in self.problems if p.kind == kind][:n]
        return out


def decode_image(path: Path) -> tuple[str | None, tuple[int, int] | None, str]:
    """Decode ``path`` fully: ``(problem kind or None, (width, height) or None, detail)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            size = image.size
            image.load()
    except FileNotFoundError:
        return "missing", None, "no such file"
    except UnidentifiedImageError as exc:
        return "unreadable", None, str(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        kind = "truncated" if "truncat" in str(exc).lower() or "premature" in str(exc).lower() else "unreadable"
        return kind, None, f"{exc.__class__.__name__}: {exc}"
    return None, size, ""


def default_image_root(metadata_root: str | Path) -> Path:
    """``METADATA/images`` (where ``synth`` and ``make-dataset`` put images), or an error."""
    root = Path(metadata_root) / "images"
    if not root.is_dir():
        raise InatlocError(f"{metadata_root}: no images/ folder inside; give the image root (--image-root)")
    return root


def check_dataset(
    metadata_root: str | Path,
    image_root: str | Path | None = None,
    splits: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    size_order: str = "auto",
    decode: bool = True,
) -> CheckReport:
    """Check every image of the chosen splits (default: all present); see the module docstring.

    Malformed metadata raises :class:`MetadataError` (file and line) before any image is read.
    ``size_order`` is how ``image_sizes.txt`` is read (:func:`inatloc_nb.datasets.metadata.read_splits`:
    with ``"auto"`` a split without boxes, such as ``make-dataset``'s ``train``, takes the order
    detected on the splits with boxes).
    ``decode=False`` reads no image: every split's metadata and the hierarchy of its levels
    (:meth:`inatloc_nb.datasets.dataset.WSOLDataset.from_folder`) are checked, nothing else.
    """
    from inatloc_nb.core.progress import track

    root = Path(metadata_root)
    metas = read_splits(root, splits, size_order)  # type: ignore[arg-type]
    if not decode:
        from inatloc_nb.datasets.dataset import WSOLDataset

        WSOLDataset.from_folder(root, size_order=size_order)
        return CheckReport(images={split: meta.images.height for split, meta in metas.items()}, decoded=False)
    image_root = Path(image_root) if image_root is not None else default_image_root(root)
    jobs = [(split, image_id) for split, meta in metas.items() for image_id in meta.images["image_id"]]
    report = CheckReport(images={split: meta.images.height for split, meta in metas.items()})
    with ThreadPoolExecutor(max_workers=workers) as pool, track(
            total=len(jobs), desc="decoding images", unit="img", show=progress) as bar:
        results = []
        for result in pool.map(lambda job: decode_image(image_root / job[1]), jobs, chunksize=64):
            results.append(result)
            bar.update()
    decoded: dict[str, dict[str, tuple[int, int]]] = {split: {} for split in metas}
    for (split, image_id), (kind, size, detail) in zip(jobs, results):
        if kind is not None:
            report.problems.append(Problem(kind, split, image_id, f"{image_root / image_id}: {detail}"))
        else:
            decoded[split][image_id] = size  # type: ignore[assignment]
    for split, meta in metas.items():
        report.problems += _compare(root / split, meta.images, meta.boxes, decoded[split], split)
    return report


def _compare(split_dir: Path, images: pl.DataFrame, boxes: pl.DataFrame, actual: dict[str, tuple[int, int]],
             split: str) -> list[Problem]:
    """Size and box problems against the decoded sizes."""
    problems = []
    if images["width"].null_count() == 0:
        size_lines = id_lines(split_dir / IMAGE_SIZES)
        for image_id, width, height in images.select("image_id", "width", "height").iter_rows():
            if image_id in actual and actual[image_id] != (width, height):
                line = size_lines.get(image_id, ["?"])[0]
                problems.append(Problem("size", split, image_id, f"{split_dir / IMAGE_SIZES}:{line}: says "
                                        f"{width}x{height}, the image is {actual[image_id][0]}x{actual[image_id][1]}"))
    box_lines = id_lines(split_dir / LOCALIZATION)
    seen: dict[str, int] = {}
    for image_id, x0, y0, x1, y1 in boxes.select("image_id", "x0", "y0", "x1", "y1").iter_rows():
        k = seen[image_id] = seen.get(image_id, -1) + 1
        if image_id not in actual:
            continue
        width, height = actual[image_id]
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            lines = box_lines.get(image_id, [])
            line = lines[k] if k < len(lines) else "?"
            problems.append(Problem("box", split, image_id, f"{split_dir / LOCALIZATION}:{line}: box "
                                    f"({x0}, {y0}, {x1}, {y1}) outside the {width}x{height} image"))
    return problems
