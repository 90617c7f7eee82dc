"""Reading images from paths, bytes, PIL images or arrays, with clear errors.

Images are returned in their stored mode (no RGB conversion, no EXIF rotation): each metric's
preprocessing decides when and how to convert, because the official pipelines differ there.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})

# Modes whose conversion to RGB Pillow defines and which the official pipelines accept.
SUPPORTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L", "I", "La"}


def describe(item: ImageInput, index: int | None = None) -> str:
    """A short human name for an input item: its path, or its type and position."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    kind = type(item).__name__
    return f"<{kind} #{index}>" if index is not None else f"<{kind}>"


def load_image(item: ImageInput, name: str | None = None) -> Image.Image:
    """Decode one image fully (so truncation is caught here) and return it in its stored mode.

    Accepts a file path, the encoded bytes of a file, a PIL image, or an ``HxWxC`` / ``HxW`` uint8
    array (C = 1, 3 or 4). Raises :class:`ImageError` naming the item and the reason.
    """
    name = name or describe(item)
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray):
        image = _from_array(item, name)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageError(name, "empty data (0 bytes)")
        image = _open(io.BytesIO(bytes(item)), name)
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            raise ImageError(name, "file not found")
        if path.is_dir():
            raise ImageError(name, "is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageError(name, "empty file (0 bytes)")
        image = _open(path, name)
    else:
        raise ImageError(name, f"unsupported input type {type(item).__name__} (expected a path, bytes, PIL image or uint8 array)")
    if image.mode not in SUPPORTED_MODES:
        raise ImageError(name, f"unsupported image mode {image.mode!r}")
    if image.width < 1 or image.height < 1:
        raise ImageError(name, f"image has no pixels ({image.width}x{image.height})")
    return image


def _open(source, name: str) -> Image.Image:
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageError(name, "not an image file (format not recognised)") from None
    except OSError as exc:
        raise ImageError(name, f"cannot open: {exc}") from None
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageError(name, f"cannot decode: {reason}") from None
    return image


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageError(name, f"array dtype {array.dtype} is not supported (expected uint8 HxWxC)")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array, "L")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[2] == 3 else "RGBA")
    raise ImageError(name, f"array of shape {array.shape} is not an image (expected HxW or HxWxC, C in 1, 3, 4)")


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Pillow's own ``convert("RGB")`` (alpha dropped, not composited), with a clear error."""
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(name, f"cannot convert mode {image.mode!r} to RGB: {exc}") from None


def find_images(paths, recursive: bool = True, suffixes=IMAGE_SUFFIXES) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into ``(images, skipped)``.

    Folders are searched (recursively by default) for files with one of ``suffixes``; other files there
    (captions, metadata) are returned in ``skipped`` so the caller can report them. Files named
    explicitly are always kept, whatever their suffix, so a bad file given by name gets an error.
    Hidden files and folders (starting with ".") are ignored.
    """
    images: list[Path] = []
    skipped: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            images.append(p)
            continue
        found = p.rglob("*") if recursive else p.glob("*")
        for f in sorted(found):
            rel = f.relative_to(p).parts
            if not f.is_file() or any(part.startswith(".") for part in rel):
                continue
            (images if f.suffix.lower() in suffixes else skipped).append(f)
    return images, skipped
