"""Content hashes of local image files remembered by file identity (device, inode, size, mtime, ctime), as git's
index does, so that a re-scored shard's unchanged files are not read and hashed again.

An entry is used only when nothing about the file changed, its real path still lies in the roots and it still
fits the limits (the image's size is remembered with the hash); and only when the file was last changed well
before the entry was recorded: two writes within one tick of the file system's clock leave the same timestamps,
so a file changed just before (or while) it was hashed is read again next time. A replaced file has another inode
or ctime, which no one can set back. Anything in doubt is read and hashed as if there were no entry."""

import os
import stat
import time
from typing import Iterable, Sequence

import duckdb
import pandas as pd

from .images import ImageAccess, ImageFile, ImageRefused, check_dimensions, file_identity, is_within

TABLE = "image_file_hashes"
RACY_NS = 2 * 10**9
"""How long after its last change a file's entry must have been recorded to be trusted (coarse file clocks tick
every few milliseconds; two seconds covers any)."""
IDENTITY = ("device", "inode", "size", "mtime_ns", "ctime_ns")
CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    path VARCHAR PRIMARY KEY,
    device UBIGINT, inode UBIGINT, size UBIGINT, mtime_ns BIGINT, ctime_ns BIGINT,
    width INTEGER, height INTEGER,
    content_hash VARCHAR NOT NULL,
    recorded_ns BIGINT NOT NULL
)"""


class FileHashes:
    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        """`conn` should be a cursor of its own: entries commit independently of other open transactions."""
        self.conn = conn
        conn.execute(CREATE_TABLE)

    def known(self, paths: Sequence[str], access: ImageAccess) -> dict[str, ImageFile]:
        """The paths whose remembered hash still holds, as the `ImageFile` hashing them would give."""
        if not paths:
            return {}
        self.conn.register("wanted_paths", pd.DataFrame({"path": list(paths)}, dtype=object))
        try:
            rows = self.conn.execute(f"SELECT t.* EXCLUDE (path), t.path FROM {TABLE} t JOIN wanted_paths USING (path)"
                                     ).fetchall()
        finally:
            self.conn.unregister("wanted_paths")
        folders: dict[str, str] = {}
        found = {}
        for *identity, width, height, content_hash, recorded_ns, path in rows:
            if still_holds(path, tuple(identity), (width, height), recorded_ns, access, folders):
                found[path] = ImageFile(path, content_hash, identity=tuple(identity), dims=(width, height))
        return found

    def remember(self, files: Iterable[ImageFile]) -> None:
        entries = [f for f in files if f.content_hash and f.identity and f.dims]
        if not entries:
            return
        now = time.time_ns()
        frame = pd.DataFrame([(f.path, *f.identity, *f.dims, f.content_hash, now) for f in entries],  # type: ignore[misc]
                             columns=["path", *IDENTITY, "width", "height", "content_hash", "recorded_ns"])
        self.conn.register("new_file_hashes", frame)
        try:
            self.conn.execute(f"INSERT OR REPLACE INTO {TABLE} SELECT path, {', '.join(IDENTITY)}, width, height, "
                              "content_hash, recorded_ns FROM new_file_hashes")
        finally:
            self.conn.unregister("new_file_hashes")


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
