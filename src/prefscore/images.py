"""Reading images from paths, bytes, PIL images or arrays, with clear errors.

Images are returned in their stored mode (no RGB conversion, no EXIF rotation): each metric's
preprocessing decides when and how to convert, because the official pipelines differ there.
"""

from __future__ import annotations

import errno
import io
import os
import re
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

#: Default limit on decoded pixels: what Pillow itself refuses as a decompression bomb (2 x
#: ``Image.MAX_IMAGE_PIXELS`` = 178,956,970 pixels with Pillow's default).
DEFAULT_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int | None) -> int:
    """Set the largest image (width x height) prefscore decodes in this process; returns the old limit.

    Larger images become error rows ("over the pixel limit") instead of being decoded: a small file
    can declare a huge size (a decompression bomb) and exhaust memory. ``None`` restores the default
    (:data:`DEFAULT_MAX_PIXELS`). A limit above Pillow's own guard also raises that guard
    (``PIL.Image.MAX_IMAGE_PIXELS``) for this process, so real panoramas up to ``limit`` decode.
    The command line's ``--max-pixels N`` calls this.
    """
    global _max_pixels
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"max_pixels must be a positive integer, not {limit!r}")
    old, _max_pixels = _max_pixels, (DEFAULT_MAX_PIXELS if limit is None else limit)
    return old


def get_max_pixels() -> int:
    """The current pixel limit (see :func:`set_max_pixels`)."""
    return _max_pixels


def _allow_in_pillow(limit: int) -> None:
    """Pillow refuses images over 2 x ``MAX_IMAGE_PIXELS`` and warns over 1 x: make it accept ``limit``."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit and limit > DEFAULT_MAX_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def _too_large(name: str, detail: str, limit: int) -> ImageError:
    found = re.search(r"\((\d+) pixels\)", detail)  # Pillow's own refusal: "Image size (N pixels) exceeds ..."
    if found:
        detail = f"{int(found.group(1)):,} pixels"
    return ImageError(name, f"too many pixels: {detail}, over the limit of {limit:,} (a guard against decompression "
                            f"bombs; raise it with --max-pixels N or prefscore.images.set_max_pixels(N))")


def describe(item: ImageInput, index: int | None = None) -> str:
    """A short human name for an input item: its path, or its type and position."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    kind = type(item).__name__
    return f"<{kind} #{index}>" if index is not None else f"<{kind}>"


def load_image(item: ImageInput, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode one image fully (so truncation is caught here) and return it in its stored mode.

    Accepts a file path, the encoded bytes of a file, a PIL image, or an ``HxWxC`` / ``HxW`` uint8
    array (C = 1, 3 or 4). Raises :class:`ImageError` naming the item and the reason. Encoded images
    declaring more than ``max_pixels`` pixels (default: :func:`get_max_pixels`) are refused before
    decoding.
    """
    name = name or describe(item)
    limit = max_pixels or _max_pixels
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray):
        image = _from_array(item, name)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageError(name, "empty data (0 bytes)")
        image = _open(io.BytesIO(bytes(item)), name, limit)
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        _check_path(path, name)
        image = _open(path, name, limit)
    else:
        raise ImageError(name, f"unsupported input type {type(item).__name__} (expected a path, bytes, PIL image or uint8 array)")
    if image.mode not in SUPPORTED_MODES:
        raise ImageError(name, f"unsupported image mode {image.mode!r}")
    if image.width < 1 or image.height < 1:
        raise ImageError(name, f"image has no pixels ({image.width}x{image.height})")
    return image


def _check_path(path: Path, name: str) -> None:
    """The reason a path cannot be an image file: missing, a dangling or looping link, a folder, empty."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(name, "symbolic link loop (the link points back to itself)") from None
        if exc.errno == errno.ENOENT:
            try:
                target = os.readlink(path)
            except OSError:  # not a link
                raise ImageError(name, "file not found") from None
            raise ImageError(name, f"dangling symbolic link (its target {target} does not exist)") from None
        raise ImageError(name, f"cannot read: {exc.strerror or exc}") from None
    if path.is_dir():
        try:
            with os.scandir(path):
                pass
        except OSError as exc:
            raise ImageError(name, f"folder cannot be read: {exc.strerror or exc}") from None
        raise ImageError(name, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageError(name, "empty file (0 bytes)")


def _open(source, name: str, limit: int) -> Image.Image:
    _allow_in_pillow(limit)
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise _too_large(name, str(exc), limit) from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image file (format not recognised)") from None
    except OSError as exc:
        raise ImageError(name, f"cannot open: {exc}") from None
    except Exception as exc:  # a malformed header can make a format plugin fail in any way
        raise ImageError(name, f"cannot open: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width * height > limit:
        image.close()
        raise _too_large(name, f"{width}x{height} = {width * height:,} pixels", limit)
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _too_large(name, str(exc), limit) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageError(name, f"cannot decode: {reason}") from None
    except MemoryError:
        raise ImageError(name, f"cannot decode: out of memory for a {width}x{height} image") from None
    return image


def check_image(path: str | os.PathLike, name: str | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image file after a cheap integrity check (header, size limit and
    Pillow's ``verify``) without decoding its pixels; :class:`ImageError` with the reason otherwise."""
    path = Path(path)
    name = name or str(path)
    limit = max_pixels or _max_pixels
    _check_path(path, name)
    _allow_in_pillow(limit)
    try:
        with Image.open(path) as image:
            size = image.size
            if size[0] * size[1] > limit:
                raise _too_large(name, f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels", limit)
            image.verify()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_large(name, str(exc), limit) from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image file (format not recognised)") from None
    except Exception as exc:  # verify() and format plugins raise many kinds
        raise ImageError(name, f"cannot read: {exc}") from None
    return size


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
    Nothing found is dropped silently: a sub-folder that cannot be listed and a dangling or looping
    symbolic link are returned in ``images`` too, and :func:`load_image` gives each its reason (an
    error row); a link to a folder already searched is not searched twice and is returned in
    ``skipped``. Hidden files and folders (starting with ".") are ignored.
    """
    images: list[Path] = []
    skipped: list[Path] = []
    for p in paths:
        p = Path(p)
        try:
            is_dir = p.is_dir()
        except OSError:  # e.g. inside a folder without search permission: an error row (load_image says why)
            is_dir = False
        if is_dir:
            _scan(p, recursive, suffixes, images, skipped, set())
        else:
            images.append(p)
    return images, skipped


def _scan(folder: Path, recursive: bool, suffixes, images: list[Path], skipped: list[Path], seen: set) -> None:
    try:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:  # a link to a folder already searched: reported, not searched twice
            skipped.append(folder)
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:  # unreadable folder: one error row (load_image says why)
        images.append(folder)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        try:
            is_dir = entry.is_dir()
            is_file = entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            if recursive:
                _scan(path, recursive, suffixes, images, skipped, seen)
            continue
        if not is_file and entry.is_symlink():  # dangling or looping link: an error row
            images.append(path)
        elif is_file:
            (images if path.suffix.lower() in suffixes else skipped).append(path)
