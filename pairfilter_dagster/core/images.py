"""Image files: content hashes (one embedding per distinct picture) and decoding as Data-Juicer does."""

import hashlib
from dataclasses import dataclass

from PIL import Image, ImageOps

from .status import Status


@dataclass(frozen=True)
class ImageFile:
    """One image path as found on disk: its content hash, or why it cannot be used."""

    path: str
    content_hash: str | None
    status: Status = Status.OK
    error: str = ""


class ImageDecodeError(Exception):
    """An image file exists but cannot be decoded."""


def inspect_image_file(path: str) -> ImageFile:
    """Hash the file's bytes; a missing or empty file gets a status instead of a hash."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return ImageFile(path, None, Status.MISSING_IMAGE, f"image file not found: {path}")
    except OSError as exc:
        return ImageFile(path, None, Status.UNREADABLE_IMAGE, f"cannot read {path}: {exc.strerror or exc}")
    if not data:
        return ImageFile(path, None, Status.UNREADABLE_IMAGE, f"image file is empty: {path}")
    return ImageFile(path, hashlib.sha256(data).hexdigest())


def decode_rgb(path: str) -> Image.Image:
    """Open, turn upright by EXIF orientation, decode fully, convert to RGB (Data-Juicer's `load_image`)."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise ImageDecodeError(f"cannot decode {path}: {type(exc).__name__}: {exc}") from exc
