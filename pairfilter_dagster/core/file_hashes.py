"""Content hashes of local image files remembered by file identity (device, inode, size, mtime, ctime), as git's
index does, so that a re-scored shard's unchanged files are not read and hashed again (per shard: `FileHashes`).

An entry is used only when nothing about the file changed, its real path still lies in the roots and it still
fits the limits (the image's size is remembered with the hash); and only when the file was last changed well
before the entry was recorded: two writes within one tick of the file system's clock leave the same timestamps,
so a file changed just before (or while) it was hashed is read again next time. A replaced file has another inode
or ctime, which no one can set back. Anything in doubt is read and hashed as if there were no entry."""

import os
import stat
import time
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .images import ImageAccess, ImageFile, ImageRefused, check_dimensions, file_identity, is_within
from .publish import write_atomically

RACY_NS = 2 * 10**9
"""How long after its last change a file's entry must have been recorded to be trusted (coarse file clocks tick
every few milliseconds; two seconds covers any)."""
Entry = tuple  # (device, inode, size, mtime_ns, ctime_ns, width, height, content_hash, recorded_ns)
SCHEMA = pa.schema([("path", pa.string()), ("device", pa.uint64()), ("inode", pa.uint64()), ("size", pa.uint64()),
                    ("mtime_ns", pa.int64()), ("ctime_ns", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
                    ("content_hash", pa.string()), ("recorded_ns", pa.int64())])


class FileHashes:
    """The remembered hashes of one shard's local image files, in `path` (a local Parquet file in the state folder:
    inodes mean nothing on another machine). Loaded whole (one shard's files), saved whole at the end of the
    shard's scoring with the entries this run used or made: shards never share the file, so runs never contend."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        self.used: dict[str, Entry] = {}
        if path is not None and path.is_file():
            try:
                table = pq.read_table(path).to_pydict()
            except (OSError, pa.ArrowException):  # damaged: the files are read and hashed again
                table = {}
            for row in zip(*(table.get(name, []) for name in SCHEMA.names)):
                self.entries[row[0]] = tuple(row[1:])

    def known(self, paths: Sequence[str], access: ImageAccess) -> dict[str, ImageFile]:
        """The paths whose remembered hash still holds, as the `ImageFile` hashing them would give."""
        folders: dict[str, str] = {}
        found = {}
        for path in paths:
            entry = self.entries.get(path)
            if entry is None:
                continue
            *identity, width, height, content_hash, recorded_ns = entry
            if still_holds(path, tuple(identity), (width, height), recorded_ns, access, folders):
                found[path] = ImageFile(path, content_hash, identity=tuple(identity), dims=(width, height))
                self.used[path] = entry
        return found

    def remember(self, files: Iterable[ImageFile]) -> None:
        now = time.time_ns()
        for f in files:
            if f.content_hash and f.identity and f.dims:
                self.used[f.path] = (*f.identity, *f.dims, f.content_hash, now)

    def save(self) -> None:
        if self.path is None:
            return
        rows = [(path, *entry) for path, entry in sorted(self.used.items())]
        table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(SCHEMA.names)}, schema=SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, sink.getvalue().to_pybytes())


def still_holds(path: str, identity: tuple[int, ...], dims: tuple[int, int], recorded_ns: int, access: ImageAccess,
                folders: dict[str, str]) -> bool:
    """One lstat, and the real path of the file's folder (once per folder): a symlink is always read again."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or file_identity(info) != identity or info.st_ctime_ns > recorded_ns - RACY_NS:
        return False
    if info.st_size > access.max_bytes:
        return False
    try:
        check_dimensions(path, *dims, access)
    except ImageRefused:
        return False
    if access.roots:
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        return is_within(os.path.join(folders[folder], name), access.roots)
    return True
