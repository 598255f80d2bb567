"""Publishing outputs: the Data-Juicer line of a kept sample, and files that appear whole or not at all.

A kept line is the manifest line as written, every byte of it, with `__dj__stats__` merged in and its relative
image paths rewritten relative to the output file's folder (where Data-Juicer resolves them on reading).

A file is written to a temp file beside it (`.<name>.<host>.<pid>.<random>.tmp`, with the usual permissions),
fsynced, and renamed over the old one; a file for a remote location is staged in a local folder and uploaded in
one request, which an object store makes visible whole. A write that fails removes its temp file; one that is
killed leaves it, and the next write of that file (or the next store connection) removes the temp files of
processes that are gone. Files that belong together (the filtered table and its JSONL) are published as one
(`publish_together`): a run killed between their renames has them completed by the next run, so they never
disagree for longer than that."""

import functools
import hashlib
import io
import json
import os
import secrets
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from .jsonline import one_physical_line, set_members
from .locations import AnyPath, as_location, as_path, is_remote, is_remote_path, join_url, relative_url, scheme_of
from .schema import DJ_STATS_FIELD, SIMILARITY_STAT, FilteredRow, StatsRow

TEMP_SUFFIX = ".tmp"


def dj_record(sample_json: str, scores: Sequence[float], paths: "ImagePaths | None" = None) -> str:
    """The sample's JSON line with Data-Juicer's stats merged into `__dj__stats__` (any other stats kept) and,
    given `paths`, its relative image paths rewritten for the output folder; every other byte as written, on one
    physical line."""
    # json.dumps writes floats with repr(); kept scores are finite, so this is the same text, made faster.
    similarity = f"[{', '.join(repr(float(score)) for score in scores)}]"

    def stats(written: str | None) -> str:
        if written is None:
            return f'{{"{SIMILARITY_STAT}": {similarity}}}'
        return set_members(written, {SIMILARITY_STAT: lambda _: similarity})

    def images(written: str | None) -> str:
        original = json.loads(written or "[]")
        if written is not None and all(os.path.isabs(path) or scheme_of(path) for path in original):
            return written
        return json.dumps([paths.for_output(path) for path in original], ensure_ascii=False)  # type: ignore[union-attr]

    members = {"images": images} if paths is not None else {}
    return one_physical_line(set_members(sample_json.rstrip(), {**members, DJ_STATS_FIELD: stats}))


@dataclass(frozen=True)
class ImagePaths:
    """Relative image paths of one manifest (they resolve against its folder) as seen from the output folder."""

    manifest_folder: str
    output_folder: str

    def for_output(self, image: str) -> str:
        if os.path.isabs(image) or scheme_of(image):
            return image
        if is_remote(self.manifest_folder) or is_remote(self.output_folder):
            return remote_output_path(image, self.manifest_folder, self.output_folder)
        folder, name = os.path.split(image)
        relative = output_relative_folder(self.manifest_folder, folder, self.output_folder)
        return name if relative == os.curdir else f"{relative}{os.sep}{name}"


@functools.lru_cache(maxsize=4096)
def output_relative_folder(manifest_folder: str, image_folder: str, output_folder: str) -> str:
    """Computed once per folder: a dataset's images share few folders, and relpath is slow."""
    return os.path.relpath(os.path.normpath(os.path.join(manifest_folder, image_folder)), output_folder)


def remote_output_path(image: str, manifest_folder: str, output_folder: str) -> str:
    """Relative to the output folder when it is on the image's filesystem and bucket, else the image's URL."""
    target = join_url(manifest_folder, image) if is_remote(manifest_folder) else \
        os.path.normpath(os.path.join(manifest_folder, image))
    return (relative_url(target, output_folder) if is_remote(target) and is_remote(output_folder) else None) or target


@functools.lru_cache(maxsize=4096)
def image_paths(raw_dir: AnyPath, manifest: str, output_dir: AnyPath) -> ImagePaths:
    return ImagePaths(posix_dirname(f"{raw_dir}/{manifest}") if is_remote_path(raw_dir) else
                      os.path.dirname(os.path.join(raw_dir, manifest)), str(output_dir))


def posix_dirname(url: str) -> str:
    return url.rsplit("/", 1)[0]


def filtered_row(row: StatsRow, raw_dir: AnyPath, output_dir: AnyPath) -> FilteredRow:
    """A kept sample as the filtered dataset holds it, its line ready for a file in `output_dir`."""
    paths = image_paths(raw_dir, row.manifest, output_dir)
    return FilteredRow(
        sample_id=row.sample_id, manifest=row.manifest, line_number=row.line_number,
        image_pair_similarity=row.image_pair_similarity,
        sample_json=dj_record(row.sample_json, row.image_pair_similarity, paths),
    )


def staging_folder() -> Path:
    """Where files for remote locations are staged: kept across a killed run, so its upload can be completed."""
    return Path(tempfile.gettempdir()) / "pairfilter-staging"


class StagedFile:
    """Content written to a temp file beside `path` (or in the staging folder, for a remote `path`), invisible
    under `path` until `publish()`."""

    def __init__(self, path: AnyPath) -> None:
        self.path = path
        self.temp_path = temp_folder(path) / f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}" \
                                       f"{TEMP_SUFFIX}"
        self.lines_written = 0
        self.digest = hashlib.sha256()
        self.committed = False
        """Named in a publish record (`publish_together`): its temp file is kept for `complete_pending`."""
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._handle: IO[Any] = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self._handle.write(data)

    def write_line(self, line: str) -> None:
        self.write(f"{line}\n".encode())
        self.lines_written += 1

    def write_lines(self, lines: Sequence[str]) -> None:
        if lines:
            self.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
            self.lines_written += len(lines)

    def finish(self) -> str:
        """Flush and fsync the temp file; returns the SHA-256 of its content."""
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        return self.digest.hexdigest()

    def publish(self) -> None:
        """Rename the finished temp file over `path` (or upload it): readers see the old file or the new one,
        never half."""
        self.finish()
        move_into_place(self.temp_path, self.path)

    def discard(self) -> None:
        try:
            self._handle.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass
        finally:
            if not self.committed:
                self.temp_path.unlink(missing_ok=True)


class StagedSink(io.RawIOBase):
    """A write-only file object over a `StagedFile`, for writers that want one (pyarrow's ParquetWriter, tarfile)."""

    def __init__(self, staged: StagedFile) -> None:
        super().__init__()
        self.staged = staged
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.staged.write(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position


def temp_folder(path: AnyPath) -> Path:
    return staging_folder() if is_remote_path(path) else path.parent


def move_into_place(temp_path: Path, path: AnyPath) -> None:
    if is_remote_path(path):
        path.fs.put_file(str(temp_path), path.path)
        temp_path.unlink()
    else:
        os.replace(temp_path, path)
        sync_folder(Path(path).parent)


@contextmanager
def staged_file(path: AnyPath) -> Iterator[StagedFile]:
    """A `StagedFile` for `path`; publish inside the block. If the block fails or does not publish, the temp file
    is removed and `path` keeps its previous content."""
    path = as_path(path)
    temp_folder(path).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(temp_folder(path), path.name)
    staged = StagedFile(path)
    try:
        yield staged
    finally:
        staged.discard()


def write_atomically(path: AnyPath, data: bytes) -> None:
    with staged_file(path) as staged:
        staged.write(data)
        staged.publish()


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a crash (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path, name: str = "") -> list[Path]:
    """Remove the temp files (of `name`, or of any file) in `folder` that processes of this host left when they
    were killed; a live process's temp file is left alone."""
    removed = []
    host = socket.gethostname()
    for temp in Path(folder).glob(f".{name or '*'}.{host}.*{TEMP_SUFFIX}") if Path(folder).is_dir() else ():
        pid = temp.name[: -len(TEMP_SUFFIX)].split(".")[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish_together(files: Sequence[StagedFile], record_folder: Path) -> None:
    """Publish finished files as one: a record of them (target, temp file, SHA-256) is written first, and is the
    commit; a run killed after it has its renames (uploads) done by the next `complete_pending`."""
    record = [{"path": str(f.path), "temp_path": str(f.temp_path), "sha256": f.finish()} for f in files]
    record_folder.mkdir(parents=True, exist_ok=True)
    record_path = record_folder / f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.json"
    write_atomically(record_path, json.dumps(record).encode())
    for staged in files:
        staged.committed = True  # a publish that fails from here on is completed by `complete_pending`
    for staged in files:
        staged.publish()
    record_path.unlink()


def complete_pending(record_folder: Path, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Finish the renames (uploads) that killed runs committed but did not do; returns the files published."""
    done = []
    host = socket.gethostname()
    for record_path in sorted(record_folder.glob(f"{host}.*.json")) if record_folder.is_dir() else ():
        pid = record_path.name.split(".")[-3]
        if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
            continue  # still publishing (this process is not: its failed publish is completed now)
        done += [entry["path"] for entry in json.loads(record_path.read_text())
                 if finish_publish(entry["path"], entry["temp_path"], entry["sha256"], storage_options)]
        record_path.unlink()
    return done


def finish_publish(path: str, temp_path: str, digest: str, storage_options: dict[str, Any] | None) -> bool:
    """Move a committed temp file into place if it is still there, whole; whether it was."""
    if not (os.path.exists(temp_path) and file_sha256(temp_path) == digest):
        return False
    move_into_place(Path(temp_path), as_location(path, storage_options))
    return True


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
