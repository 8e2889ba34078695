"""Image decoding with one policy for odd and broken files.

:func:`load_image` always returns a fully decoded 8-bit RGB :class:`PIL.Image.Image` or raises a one-line
:class:`~rlptune.errors.RlptuneError` that names the file:

* converted: grayscale (``L``, ``1``), CMYK, YCbCr/LAB/HSV, palette (``P``, with or without transparency),
  alpha images (``LA``, ``RGBA``, ``PA``...; alpha is composited on white), 16-bit and 32-bit integer grayscale
  (``I;16*``, ``I``: values above 255 are read as 16-bit and scaled by 255/65535), float grayscale (``F``);
  multi-frame files (GIF, TIFF) give their first frame. EXIF orientation is *not* applied, as in CLIP's and the
  CoOp toolkit's own loading.
* rejected: a missing file, a zero-byte file, a truncated or corrupt file, a file that is not an image, and an
  image with more than :data:`MAX_IMAGE_PIXELS` pixels (a decompression-bomb guard; pass ``max_pixels`` to change
  it).

:func:`check_images` applies this to a whole dataset with a policy: ``"error"`` stops at the first bad image,
``"skip"`` drops bad images and reports each one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from ..errors import RlptuneError
from .common import Leftovers, is_leftover
from .items import DatasetSplits

log = logging.getLogger(__name__)

#: Largest image (width x height) :func:`load_image` decodes: 100 megapixels, e.g. 10000 x 10000. Larger files
#: are refused before their pixel data is decoded (a decompression bomb can claim gigapixels in a few bytes).
MAX_IMAGE_PIXELS = 100_000_000

POLICIES = ("error", "skip")

_WHITE = (255, 255, 255)


def load_image(path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``path`` fully and return an RGB image; raise :class:`RlptuneError` naming the file otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise RlptuneError(f"{path}: image not found") from None
    except (OSError, ValueError) as exc:
        raise RlptuneError(f"{path}: cannot read image ({exc})") from None
    if not path.is_file():
        raise RlptuneError(f"{path}: expected an image file, found a folder or special file")
    if size == 0:
        raise RlptuneError(f"{path}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # rlptune enforces its own limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise RlptuneError(
                        f"{path}: image is {width}x{height} = {width * height} pixels, above the limit of "
                        f"{max_pixels} (decompression-bomb guard; raise max_pixels if the image is genuine)"
                    )
                im.load()  # the first frame of a multi-frame file
                return _to_rgb(im)
    except RlptuneError:
        raise
    except Image.DecompressionBombError as exc:
        raise RlptuneError(f"{path}: image refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise RlptuneError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except MemoryError:
        raise RlptuneError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, struct.error...)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if "truncated" in detail.lower():
            extra = detail.replace("image file is truncated", "").strip(" ()")
            raise RlptuneError(f"{path}: image file is truncated" + (f" ({extra})" if extra else "")) from None
        raise RlptuneError(f"{path}: image file is corrupt ({detail})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA") if (mode == "PA" or "transparency" in im.info) else im.convert("RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if arr.size and arr.max() > 255:
            arr = arr * 255 // 65535
        gray = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV and anything else Pillow can convert.
    return im.convert("RGB")


@dataclass(frozen=True)
class SkippedImage:
    """An image :func:`check_images` dropped: which split, the item's relative path, and why."""

    split: str
    path: str
    reason: str


def check_images(
    splits: DatasetSplits,
    policy: str = "error",
    *,
    which: Iterable[str] = ("train", "val", "test"),
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> tuple[DatasetSplits, list[SkippedImage]]:
    """Decode every image of the chosen splits once, applying ``policy`` to the ones that fail.

    ``"error"``: raise the first failure's :class:`RlptuneError` (it names the file). ``"skip"``: drop failing
    items from every split they appear in, log a warning with the count, and return them as
    :class:`SkippedImage` records (write them out with :func:`skipped_report` if a file is wanted).
    Returns ``(splits without the skipped items, skipped)``; with nothing skipped the splits are returned as is.
    """
    if policy not in POLICIES:
        raise RlptuneError(f"image policy {policy!r} is not one of {', '.join(POLICIES)}")
    which = tuple(which)
    for name in which:
        splits.split(name)  # validates the split name
    verdict: dict[str, str | None] = {}
    skipped: list[SkippedImage] = []
    for name in which:
        for item in splits.split(name):
            if item.path not in verdict:
                try:
                    load_image(splits.abspath(item), max_pixels=max_pixels)
                    verdict[item.path] = None
                except RlptuneError as exc:
                    if policy == "error":
                        raise
                    verdict[item.path] = str(exc)
            if verdict[item.path] is not None:
                skipped.append(SkippedImage(name, item.path, str(verdict[item.path])))
    if not skipped:
        return splits, []
    bad = {s.path for s in skipped}
    changes = {n: [it for it in splits.split(n) if it.path not in bad] for n in which}
    log.warning("%s: skipped %d unreadable image(s), e.g. %s", splits.name, len(bad), skipped[0].reason)
    return dataclasses.replace(splits, **changes), skipped


def skipped_report(skipped: Iterable[SkippedImage]) -> list[dict[str, str]]:
    """The skipped images as JSON-ready records (``split``, ``path``, ``reason``)."""
    return [dataclasses.asdict(s) for s in skipped]


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def collect_images(paths: "str | os.PathLike | Iterable[str | os.PathLike]") -> list[Path]:
    """Files given directly plus image files found (recursively, sorted) in given folders; one path or many.

    In folders, what archive tools and operating systems leave (``__MACOSX/``, ``._*``, hidden names; see
    :func:`rlptune.data.common.is_leftover`) is skipped, with one warning per folder, as the dataset loaders do."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    given = list(paths)
    for raw in given:
        path = Path(raw)
        if path.is_dir():
            out.extend(_folder_images(path))
        elif path.is_file():
            out.append(path)
        else:
            raise RlptuneError(f"{path}: no such image or folder")
    if not out:
        raise RlptuneError(f"no images found in {', '.join(str(p) for p in given) or 'an empty list'}")
    return out


def _folder_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (symlinked folders not followed), sorted, leftovers skipped and reported."""
    leftovers = Leftovers(folder)
    found: list[Path] = []
    try:
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):
            kept = []
            for name in sorted(dirnames):
                if is_leftover(name):
                    leftovers.add(os.path.join(dirpath, name), is_dir=True)
                else:
                    kept.append(name)
            dirnames[:] = kept
            for name in sorted(filenames):
                full = Path(dirpath, name)
                if is_leftover(name):
                    leftovers.add(full)
                elif full.suffix.lower() in IMAGE_SUFFIXES and full.is_file():
                    found.append(full)
    except OSError as exc:
        raise RlptuneError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    leftovers.warn(folder)
    return sorted(found)


def _raise(exc: OSError) -> None:
    raise exc
