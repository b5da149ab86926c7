"""Opening dataset images with errors that name the image: every loader goes through here.

:func:`open_image` decodes one image fully (so a truncated file fails here, not inside a
transform) and raises :class:`ImageError` naming the image id and path for a missing file,
a folder, an empty, truncated or non-image file. :func:`fastai_image_block` is fastai's
``ImageBlock`` built on it. Errors raised in DataLoader worker processes come back wrapped
with the worker's traceback in the message; :func:`clear_worker_errors` turns them back
into one-line errors.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from inatloc_nb.core.errors import InatlocError

#: What to do about a bad image, appended to every :class:`ImageError`.
ADVICE = ("replace the file or remove the image from the metadata "
          "(`inatloc-nb check` lists every unreadable image of a dataset)")
_WORKER = re.compile(r"Caught (\w+) in DataLoader worker process \d+")


class ImageError(InatlocError):
    """An image of a dataset that cannot be opened."""


def open_image(path: str | Path, image_id: str | None = None):
    """The image at ``path`` as a fully decoded RGB ``PIL.Image``.

    Raises :class:`ImageError` naming ``image_id`` (default: the path) and the path when the
    file is missing, is a folder, is empty, truncated or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    what = f"image {image_id!r} ({path})" if image_id is not None else f"image {path}"

    def fail(problem: str) -> ImageError:
        return ImageError(f"{what}: {problem}; {ADVICE}")

    if path.is_dir():
        raise fail("is a folder, not an image file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise fail("file not found (check the image root)") from None
    except OSError as exc:
        raise fail(f"cannot access the file ({exc.strerror or exc})") from None
    if size == 0:
        raise fail("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise fail("not an image PIL can read (wrong extension or a damaged header)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise fail(f"damaged or truncated image data ({exc})") from None


def _open_for_fastai(path: Path, image_root: Path | None = None) -> Any:
    from fastai.vision.core import PILImage

    image_id = None
    if image_root is not None:
        try:
            image_id = Path(path).relative_to(image_root).as_posix()
        except ValueError:
            image_id = None
    return PILImage(open_image(path, image_id))


def fastai_image_block(image_root: str | Path | None = None) -> Any:
    """fastai's ``ImageBlock`` whose items are opened with :func:`open_image`; image ids are
    the paths relative to ``image_root``."""
    from fastai.data.block import TransformBlock
    from fastai.data.transforms import IntToFloatTensor

    root = None if image_root is None else Path(image_root)
    return TransformBlock(type_tfms=partial(_open_for_fastai, image_root=root), batch_tfms=IntToFloatTensor)


def worker_error_message(exc: BaseException) -> str | None:
    """The original one-line message of an exception re-raised from a DataLoader worker
    (torch puts the worker's traceback in the message), or ``None`` for other exceptions."""
    text = str(exc)
    found = _WORKER.search(text)
    if found is None:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    name, sep, message = last.partition(": ")
    return message if sep and name.rsplit(".", 1)[-1] == found.group(1) else last


@contextmanager
def clear_worker_errors() -> Iterator[None]:
    """Re-raise DataLoader worker failures as one-line :class:`InatlocError` (an ``ImageError``
    for a bad image); other exceptions pass unchanged."""
    try:
        yield
    except Exception as exc:
        message = worker_error_message(exc)
        if message is None:
            raise
        if isinstance(exc, ImageError) or message.startswith("image "):
            raise ImageError(message) from None
        if isinstance(exc, InatlocError):
            raise type(exc)(message) from None
        raise InatlocError(f"a data-loading worker failed: {message} "
                           "(rerun with --num-workers 0 to see the full traceback)") from exc
