"""Image files: read once through the checks that keep one file from harming the run, hashed (one embedding per
distinct picture) and decoded as Data-Juicer does.

Every read goes through `read_image_bytes`: the file is opened once (never blocking: a named pipe is refused, not
waited on), and the opened file itself is checked: a regular file, inside the allowed roots (its real path, so a
symlink swapped after ingestion cannot point the pipeline elsewhere), no larger than `max_bytes`. Hashing and
decoding each read the file this way, and decoding checks that it got the bytes that were hashed."""

import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .held_reads import HELD_READS
from .image_refs import MemberRef, parse_member_ref, read_member
from .locations import filesystem_for, is_remote, read_remotely, url_within
from .schema import Status

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""PIL's own default `Image.MAX_IMAGE_PIXELS`: above it PIL warns of a possible decompression bomb."""
PIL_HARD_PIXEL_LIMIT = 2 * DEFAULT_MAX_IMAGE_PIXELS
"""Above twice its limit PIL refuses to open an image at all, so `max_image_pixels` cannot go higher."""
DEFAULT_MAX_IMAGE_BYTES = 256 * 2**20
"""Far above any photo (a 89-megapixel PNG is rarely larger); a file larger than this is not read at all."""
DEFAULT_MAX_ASPECT_RATIO = 100.0
"""The processor resizes the shortest side to the model's size (224), so a 1 x 100000 strip would become
224 x 22.4 million pixels (gigabytes); at 1:100 that is about 60 MB of float32."""
DEFAULT_CONCURRENT_READS = 32
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class ImageAccess:
    """Where image files may be read and how large they may be."""

    roots: tuple[str, ...] = ()
    """Real paths of the folders images must lie in, or URLs of remote ones; empty: anywhere."""
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    image_column: str = "images"
    """The Parquet column that holds the images (items referenced as `parquet:...`, see `image_refs`)."""
    storage_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """For the filesystem of remote images (`locations`)."""
    concurrent_reads: int = DEFAULT_CONCURRENT_READS
    """Remote images hashed at once: a read waits on the network, not the CPU."""


@dataclass(frozen=True)
class ImageFile:
    """One image path as found on disk: its content hash, or why it cannot be used."""

    path: str
    content_hash: str | None
    status: Status = Status.OK
    error: str = ""
    identity: tuple[int, ...] | None = None
    """(device, inode, size, mtime_ns, ctime_ns) of the local file read, from the open file itself (`file_hashes`)."""
    dims: tuple[int, int] | None = None


class ImageRefused(Exception):
    """An image file that cannot be used, with the sample status it gives."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ImageDecodeError(Exception):
    """An image file exists but cannot be decoded."""


def is_within(real_path: str, roots: Sequence[str]) -> bool:
    """Whether a real path (symlinks and `..` resolved) lies inside one of the real-path roots (remote roots
    never hold a local path)."""
    return any(not is_remote(root) and os.path.commonpath([real_path, root]) == root for root in roots)


def read_image_bytes(path: str, access: ImageAccess = ImageAccess()) -> bytes:
    """The file's bytes, read from one open file that passed every check (or, for an image held in a shard, its
    bytes there); raises `ImageRefused`."""
    member = parse_member_ref(path)
    if member is not None:
        return read_held_image(member, access)
    if is_remote(path):
        return read_remote_image(path, access)
    return read_local_image(path, access)[0]


def read_local_image(path: str, access: ImageAccess) -> tuple[bytes, os.stat_result]:
    """The bytes of a local file, and its status as opened (before the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageRefused(Status.MISSING_IMAGE, f"image file not found: {path}") from None
    except OSError as exc:
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot read {path}: not a regular file ({file_kind(info.st_mode)})")
        if access.roots:
            real = opened_real_path(fd, path, info)
            if real is None or not is_within(real, access.roots):
                raise ImageRefused(Status.PATH_NOT_ALLOWED, f"image path {path} now resolves to {real or 'another file'}, "
                                   f"outside the allowed image roots {list(access.roots)} (changed after ingestion?)")
        if info.st_size > access.max_bytes:
            raise ImageRefused(Status.IMAGE_TOO_LARGE, too_many_bytes(path, info.st_size, access))
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(access.max_bytes + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return checked_size(path, data, access), info


def checked_size(path: str, data: bytes, access: ImageAccess) -> bytes:
    if len(data) > access.max_bytes:
        raise ImageRefused(Status.IMAGE_TOO_LARGE, too_many_bytes(path, len(data), access))
    if not data:
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"image is empty: {path}")
    return data


def read_held_image(member: MemberRef, access: ImageAccess) -> bytes:
    try:
        data = read_member(member, access.max_bytes, access.image_column, access.storage_options)
    except (OSError, LookupError) as exc:
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot read {member}: {exc}") from None
    except Exception as exc:  # pyarrow and the stores raise their own types
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot read {member}: {type(exc).__name__}: {exc}") from None
    return checked_size(str(member), data, access)


def read_remote_image(url: str, access: ImageAccess) -> bytes:
    """One ranged read of at most `max_bytes + 1` bytes, after the URL is checked against the roots again."""
    if access.roots and not url_within(url, access.roots):
        raise ImageRefused(Status.PATH_NOT_ALLOWED, f"image {url} is outside the allowed image roots {list(access.roots)}")
    try:
        fs, path = filesystem_for(url, access.storage_options, setting="image_roots")
        data = fs.cat_file(path, start=0, end=access.max_bytes + 1)
    except FileNotFoundError:
        raise ImageRefused(Status.MISSING_IMAGE, f"image file not found: {url}") from None
    except Exception as exc:  # the stores raise their own types (no permission, throttled, network)
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot read {url}: {type(exc).__name__}: {exc}") from None
    return checked_size(url, data, access)


def opened_real_path(fd: int, path: str, info: os.stat_result) -> str | None:
    """The real path of the file behind `fd`: from /proc on Linux; elsewhere the real path of `path`, if it still
    names the same file (None when it no longer does)."""
    proc_link = f"/proc/self/fd/{fd}"
    if os.path.islink(proc_link):
        return os.readlink(proc_link)
    real = os.path.realpath(path)
    try:
        now = os.stat(real)
    except OSError:
        return None
    return real if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino) else None


def file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a named pipe", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a file")


def too_many_bytes(path: str, size: int, access: ImageAccess) -> str:
    return f"image too large: {path} is {size} bytes, more than max_image_bytes={access.max_bytes}"


def inspect_image_file(path: str, access: ImageAccess = ImageAccess()) -> ImageFile:
    """Hash the file's bytes. A missing, empty, unidentifiable or too large file (bytes, pixels, or aspect ratio)
    gets a status instead of a hash; only the image header is parsed here, so a decompression bomb is never
    decoded."""
    identity = None
    try:
        if is_local_file(path):
            data, info = read_local_image(path, access)
            identity = file_identity(info)
        else:
            data = read_image_bytes(path, access)
        dims = check_header(path, data, access)
    except ImageRefused as refused:
        return ImageFile(path, None, refused.status, refused.reason)
    if read_remotely(path):
        HELD_READS.offer(path, data)
    return ImageFile(path, hashlib.sha256(data).hexdigest(), identity=identity, dims=dims)


def is_local_file(path: str) -> bool:
    """A path of the local disk (not a URL, nor a reference to an image held in a shard)."""
    return not read_remotely(path) and parse_member_ref(path) is None


def file_identity(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def check_header(path: str, data: bytes, access: ImageAccess) -> tuple[int, int]:
    """(width, height), from the header; raises `ImageRefused` beyond the limits."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning, under -W error
        raise ImageRefused(Status.IMAGE_TOO_LARGE,
                           f"image too large: {path}: {exc} (max_image_pixels={access.max_pixels})") from None
    except UnidentifiedImageError:
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot decode {path}: not an image format PIL knows; the file "
                           f"starts with {data[:20]!r}") from None
    except Exception as exc:  # PIL raises many types (SyntaxError, ValueError, struct.error, ...)
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"cannot decode {path}: {type(exc).__name__}: {exc}") from None
    check_dimensions(path, width, height, access)
    return width, height


def check_dimensions(path: str, width: int, height: int, access: ImageAccess) -> None:
    if width * height > access.max_pixels:
        raise ImageRefused(Status.IMAGE_TOO_LARGE, f"image too large: {path} is {width}x{height} = "
                           f"{width * height} pixels, more than max_image_pixels={access.max_pixels}")
    if max(width, height) > access.max_aspect_ratio * max(min(width, height), 1):
        raise ImageRefused(Status.IMAGE_TOO_LARGE, f"image too elongated: {path} is {width}x{height}, an aspect "
                           f"ratio above max_image_aspect_ratio={access.max_aspect_ratio:g}")


def read_verified(path: str, content_hash: str, access: ImageAccess = ImageAccess()) -> bytes:
    """The file's bytes, if they are still the ones hashed as `content_hash`: a picture replaced during the run
    never has its embedding stored under another picture's hash."""
    data = (HELD_READS.take(path) if read_remotely(path) else None) or read_image_bytes(path, access)
    if hashlib.sha256(data).hexdigest() != content_hash:
        raise ImageRefused(Status.UNREADABLE_IMAGE, f"{path} changed while the run read it (its content is no longer "
                           "the one hashed); score it again in the next run")
    return data


def decode_rgb(path: str, data: bytes | None = None, *, draft_edge: int | None = None) -> Image.Image:
    """Decode (the file at `path`, or its bytes `data`), turn upright by EXIF orientation, convert to RGB
    (Data-Juicer's `load_image`). `draft_edge`: a JPEG may decode at 1/2, 1/4 or 1/8 scale (`Image.draft`) as long
    as both sides stay at least this long (precision fast; other formats ignore it).

    16-bit grayscale (PNG) is scaled to 8 bits first: PIL's own conversion clips it, turning a photo white."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as opened:
            if draft_edge:
                opened.draft(None, (draft_edge, draft_edge))
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
