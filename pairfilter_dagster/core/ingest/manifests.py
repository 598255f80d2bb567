"""The manifests under <data>/raw/: each is a shard, named by its path relative to raw/; what cannot be read there
(what changed among them since last time: `changes`).

Listing never loses a shard without a word: a manifest that cannot be read (not a regular file, a dangling or
escaping symlink, no permission, a name that is not UTF-8) is still listed, with its problem, and a folder that
cannot be read is named, so its shards are never taken for removed. Symlinked folders and manifests are followed
while their real path stays inside the allowed roots (the data folder and the image roots)."""

import functools
import gzip
import os
import stat
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from upath import UPath

from ..images import file_kind, is_within
from ..locations import AnyPath, as_path, is_remote_path, open_remote, remote_fingerprint

SHARD_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".tar")
"""What the readers in `formats` read; kept here, where the listing needs it without importing them."""
RAW_FOLDER = "."
"""How the listing names raw/ itself among the folders it could not read."""


@dataclass(frozen=True)
class ShardFile:
    name: str
    """The path relative to raw/, in POSIX form: the shard name, partition key and `manifest` column (bytes that
    are not UTF-8 written as \\xNN)."""
    path: AnyPath
    problem: str = ""
    """Why the manifest cannot be read; empty when it can."""
    fingerprint: str = ""
    """A remote shard's identity from its listing (empty for local files, which are hashed)."""


@dataclass
class ShardListing:
    raw_dir: AnyPath
    files: dict[str, ShardFile] = field(default_factory=dict)
    unreadable_folders: dict[str, str] = field(default_factory=dict)
    """{folder relative to raw/ (`.` for raw/ itself): why its contents cannot be listed}."""

    @property
    def names(self) -> list[str]:
        return sorted(self.files)

    @property
    def readable(self) -> dict[str, AnyPath]:
        return {name: f.path for name, f in sorted(self.files.items()) if not f.problem}

    @property
    def problems(self) -> dict[str, str]:
        """{manifest or folder under raw/: why it cannot be read}: nothing in it is in this run's results."""
        found = {f"raw/{name}": f.problem for name, f in self.files.items() if f.problem}
        found.update({folder_label(name): why for name, why in self.unreadable_folders.items()})
        return dict(sorted(found.items()))

    def split(self, shards: Sequence[str]) -> "ShardSplit":
        """The shards of a run: those to read, those that cannot be read (with why), those that are gone."""
        readable, folders = self.readable, self.unreadable_folders
        why_unlisted = lambda shard: next(  # noqa: E731
            f"inside {folder_label(folder)}, which cannot be read ({folders[folder]})" for folder in folders
            if folder == RAW_FOLDER or shard.startswith(f"{folder}/")
        )
        return ShardSplit(
            readable={shard: readable[shard] for shard in shards if shard in readable},
            unreadable={shard: self.files[shard].problem if shard in self.files else why_unlisted(shard)
                        for shard in shards if shard not in readable and self.may_hold(shard)},
            gone=[shard for shard in shards if not self.may_hold(shard)],
        )

    def may_hold(self, shard: str) -> bool:
        """Whether `shard` may still exist: listed, or under a folder that could not be read. Only a shard for
        which this is false is really gone."""
        return shard in self.files or any(
            folder == RAW_FOLDER or shard.startswith(f"{folder}/") for folder in self.unreadable_folders
        )


@dataclass(frozen=True)
class ShardSplit:
    readable: dict[str, AnyPath]
    unreadable: dict[str, str]
    gone: list[str]


def folder_label(folder: str) -> str:
    return "raw/" if folder == RAW_FOLDER else f"raw/{folder}/"


def unreadable_message(problems: dict[str, str]) -> str:
    return "cannot read " + "; ".join(f"raw/{shard}: {problem}" for shard, problem in problems.items())


def list_shards(raw_dir: AnyPath, roots: Sequence[str] | None = None) -> ShardListing:
    """Every shard file (`*.jsonl`, `*.parquet`, `*.tar`) under `raw_dir` (subfolders and symlinks within `roots`
    followed), readable or not, and the folders that could not be listed. `roots` are real paths; default: the
    folder holding raw/."""
    raw_dir = as_path(raw_dir)
    if is_remote_path(raw_dir):
        return list_remote_shards(raw_dir)
    listing = ShardListing(raw_dir)
    if os.path.lexists(raw_dir):
        walk(listing, str(raw_dir), "", tuple(roots or (os.path.realpath(raw_dir.parent),)), frozenset())
    listing.files = dict(sorted(listing.files.items()))
    return listing


def list_remote_shards(raw_dir: UPath) -> ShardListing:
    """One listing call (no cached listing: another client may have written since), each object's fingerprint from
    it; a Parquet or tar object is opened once per fingerprint to check that it is one."""
    listing = ShardListing(raw_dir)
    fs, root = raw_dir.fs, raw_dir.path.rstrip("/")
    try:
        fs.invalidate_cache(root)
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return listing
    except Exception as exc:  # the store's own error types: no permission, no such bucket, no network
        listing.unreadable_folders[RAW_FOLDER] = f"cannot list {raw_dir}: {type(exc).__name__}: {exc}"
        return listing
    for key, info in sorted(found.items()):
        relative = key[len(root) + 1:] if key.startswith(f"{root}/") else ""
        if info.get("type", "file") == "file" and relative.endswith(SHARD_FILE_SUFFIXES):
            fingerprint = remote_fingerprint(info)
            path = raw_dir / relative
            listing.files[relative] = ShardFile(relative, path, remote_problem(path, fingerprint), fingerprint)
    return listing


@functools.lru_cache(maxsize=65536)
def remote_problem(path: UPath, fingerprint: str) -> str:
    try:
        with open_remote(path) as handle:
            return format_problem(str(path), handle)
    except OSError as exc:
        return f"cannot open it: {exc.strerror or exc}"


def walk(listing: ShardListing, folder: str, relative: str, roots: tuple[str, ...], ancestors: frozenset[str]) -> None:
    name = relative or RAW_FOLDER
    real = os.path.realpath(folder)
    if not is_within(real, roots):
        listing.unreadable_folders[name] = f"resolves to {real}, outside the data folder and image_roots: not read"
        return
    if real in ancestors:
        listing.unreadable_folders[name] = "a symlink loop (the folder contains itself): not read again"
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        listing.unreadable_folders[name] = f"cannot list the folder: {exc.strerror or exc}"
        return
    for entry in entries:
        child = f"{relative}/{entry.name}" if relative else entry.name
        if entry.is_symlink() and not os.path.exists(entry.path):
            problem = f"a symlink to {os.readlink(entry.path)}, which does not exist"
            if entry.name.endswith(SHARD_FILE_SUFFIXES):
                add_file(listing, child, entry.path, problem)
            else:
                listing.unreadable_folders[printable(child)] = problem
        elif entry.is_dir():
            if entry.name.endswith(SHARD_FILE_SUFFIXES):
                add_file(listing, child, entry.path, f"a folder, not a manifest file (the manifests inside it are "
                         f"read as {printable(child)}/...)")
            walk(listing, entry.path, child, roots, ancestors | {real})
        elif entry.name.endswith(SHARD_FILE_SUFFIXES):
            add_file(listing, child, entry.path, manifest_problem(entry.path, roots))


def add_file(listing: ShardListing, relative: str, path: str, problem: str) -> None:
    name = printable(relative)
    if name != relative and not problem:
        problem = "the file name is not valid UTF-8: rename it"
    listing.files[name] = ShardFile(name, Path(path), problem)


def printable(relative: str) -> str:
    """A name read from the file system, with any bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(relative).decode("utf-8", errors="backslashreplace")


def manifest_problem(path: str, roots: Sequence[str]) -> str:
    real = os.path.realpath(path)
    if not is_within(real, roots):
        return f"resolves to {real}, outside the data folder and image_roots: not read"
    try:
        with open_manifest(Path(path)) as handle:
            return format_problem(path, handle)
    except OSError as exc:
        return str(exc) if isinstance(exc, NotRegularFile) else f"cannot open it: {exc.strerror or exc}"


def format_problem(path: str, handle: BinaryIO) -> str:
    """Why a Parquet or tar shard is not one, from its magic bytes (cheap: the listing opens every shard)."""
    if path.endswith(".parquet"):
        head = handle.read(4)
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(size - 4, 0))
        if size < 12 or head != PARQUET_MAGIC or handle.read(4) != PARQUET_MAGIC:
            return "not a Parquet file (no PAR1 magic at its start and end)"
    elif path.endswith(".gz") and handle.read(2) != GZIP_MAGIC:
        return "not a gzip file"
    elif path.endswith(".tar"):
        import tarfile

        try:
            tarfile.open(fileobj=handle, mode="r:").close()
        except (tarfile.TarError, EOFError):
            return "not a tar file"
    return ""


PARQUET_MAGIC, GZIP_MAGIC = b"PAR1", b"\x1f\x8b"


class NotRegularFile(OSError):
    pass


@contextmanager
def open_manifest(path: AnyPath) -> Iterator[BinaryIO]:
    """The manifest, opened for reading without ever blocking (a named pipe is refused, not waited on); a remote
    one streamed through its filesystem."""
    path = as_path(path)
    if is_remote_path(path):
        with open_remote(path) as remote:
            yield remote
        return
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"not a regular file ({file_kind(mode)})")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


@contextmanager
def open_lines(path: AnyPath) -> Iterator[BinaryIO]:
    """A manifest's content, decompressed when it is a `.jsonl.gz`."""
    with open_manifest(path) as handle:
        if str(path).endswith(".gz"):
            with gzip.GzipFile(fileobj=handle, mode="rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield handle


GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
"""What a damaged `.jsonl.gz` raises part way: its lines up to there are read, then one sample says why."""


def count_lines(path: AnyPath) -> int:
    """Lines in a manifest (decompressed), counted from its bytes (a last line without a newline counts),
    independently of parsing: the reconciliation check compares it with the number of samples. A damaged gzip
    stream counts one more: the sample that says so."""
    count, last = 0, b"\n"
    with open_lines(path) as handle:
        read = handle.readline if str(path).endswith(".gz") else handle.read  # lines: up to where the reader stops
        try:
            for block in iter(lambda: read(1 << 20), b""):
                count += block.count(b"\n")
                last = block[-1:]
        except GZIP_ERRORS:
            return count + (last != b"\n") + 1
    return count + (last != b"\n")
