"""Image files: content hashes (one embedding per distinct picture) and decoding as Data-Juicer does."""

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .schema import Status

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""PIL's own default `Image.MAX_IMAGE_PIXELS`: above it PIL warns of a possible decompression bomb."""
PIL_HARD_PIXEL_LIMIT = 2 * DEFAULT_MAX_IMAGE_PIXELS
"""Above twice its limit PIL refuses to open an image at all, so `max_image_pixels` cannot go higher."""
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class ImageFile:
    """One image path as found on disk: its content hash, or why it cannot be used."""

    path: str
    content_hash: str | None
    status: Status = Status.OK
    error: str = ""


class ImageDecodeError(Exception):
    """An image file exists but cannot be decoded."""


def inspect_image_file(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageFile:
    """Hash the file's bytes. A missing, empty, unidentifiable or too large file gets a status instead of a
    hash; only the image header is parsed here, so a decompression bomb is never decoded."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return ImageFile(path, None, Status.MISSING_IMAGE, f"image file not found: {path}")
    except OSError as exc:
        return ImageFile(path, None, Status.UNREADABLE_IMAGE, f"cannot read {path}: {exc.strerror or exc}")
    if not data:
        return ImageFile(path, None, Status.UNREADABLE_IMAGE, f"image file is empty: {path}")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning, under -W error
        return ImageFile(path, None, Status.IMAGE_TOO_LARGE,
                         f"image too large: {path}: {exc} (max_image_pixels={max_pixels})")
    except UnidentifiedImageError:
        return ImageFile(path, None, Status.UNREADABLE_IMAGE,
                         f"cannot decode {path}: not an image format PIL knows; the file starts with {data[:20]!r}")
    except Exception as exc:  # PIL raises many types (SyntaxError, ValueError, struct.error, ...)
        return ImageFile(path, None, Status.UNREADABLE_IMAGE, f"cannot decode {path}: {type(exc).__name__}: {exc}")
    if width * height > max_pixels:
        return ImageFile(path, None, Status.IMAGE_TOO_LARGE, f"image too large: {path} is {width}x{height} = "
                         f"{width * height} pixels, more than max_image_pixels={max_pixels}")
    return ImageFile(path, hashlib.sha256(data).hexdigest())


def decode_rgb(path: str) -> Image.Image:
    """Open, turn upright by EXIF orientation, decode fully, convert to RGB (Data-Juicer's `load_image`).

    16-bit grayscale (PNG) is scaled to 8 bits first: PIL's own conversion clips it, turning a photo white."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            if image.mode in SIXTEEN_BIT_MODES:
                image = eight_bit_gray(image)
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise ImageDecodeError(f"cannot decode {path}: {type(exc).__name__}: {exc}") from exc


def eight_bit_gray(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image as 8-bit: values >> 8, or as they are when all fit in 8 bits."""
    values = np.asarray(image).astype(np.int64)
    if values.max(initial=0) > 255:
        values = values >> 8
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))  # 2-D uint8: mode L
