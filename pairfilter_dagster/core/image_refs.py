"""Images held inside a shard, named in the `images` column by a reference of their own, never a path: a member of
a WebDataset tar (`tar:<shard path>#<offset>+<size>`: its bytes' place in the file) or an item of a Parquet cell
(`parquet:<shard path>#<row>.<item>`: 0-based). Every path in that column is absolute, so neither kind can be
mistaken for one, and no sample can name one: the shard readers make them.

Reading a tar member is one seek; reading a Parquet item reads its row group's image column, kept for the next
items of the same group (scoring reads in input order)."""

import os
import re
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .locations import filesystem_for, is_remote

REF = re.compile(r"^(tar|parquet):(/.*|[a-z][a-z0-9+.\-]*://.*)#(\d+)[+.](\d+)$")


@dataclass(frozen=True)
class MemberRef:
    kind: str
    shard_path: str
    first: int
    """tar: the offset of the member's bytes; parquet: the 0-based row."""
    second: int
    """tar: the member's size; parquet: the 0-based item of the row's image list."""

    def __str__(self) -> str:
        return f"{self.kind}:{self.shard_path}#{self.first}{'+' if self.kind == 'tar' else '.'}{self.second}"


def tar_member_ref(shard_path: str, offset: int, size: int) -> str:
    return str(MemberRef("tar", absolute(shard_path), offset, size))


def parquet_item_ref(shard_path: str, row: int, item: int) -> str:
    return str(MemberRef("parquet", absolute(shard_path), row, item))


def absolute(shard_path: str) -> str:
    return shard_path if is_remote(shard_path) else os.path.abspath(shard_path)


def parse_member_ref(ref: str) -> MemberRef | None:
    found = REF.match(ref)
    return MemberRef(found[1], found[2], int(found[3]), int(found[4])) if found else None


def read_member(ref: MemberRef, max_bytes: int, image_column: str, storage_options: Mapping[str, Any]) -> bytes:
    """The member's bytes, at most `max_bytes + 1` of them (the caller refuses more); OSError when the shard is
    gone, changed or not a regular file."""
    if ref.kind == "tar":
        wanted = min(ref.second, max_bytes + 1)
        if is_remote(ref.shard_path):
            fs, path = filesystem_for(ref.shard_path, storage_options)
            data = fs.cat_file(path, start=ref.first, end=ref.first + wanted)  # one ranged read
        else:
            fd = os.open(ref.shard_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise OSError(f"{ref.shard_path} is not a regular file")
                handle.seek(ref.first)
                data = handle.read(wanted)
        if len(data) < wanted:
            raise OSError(f"the tar ends inside the member at byte {ref.first} (truncated, or changed since ingestion)")
        return data
    return parquet_item(ref, image_column, storage_options)


def parquet_item(ref: MemberRef, image_column: str, storage_options: Mapping[str, Any]) -> bytes:
    if is_remote(ref.shard_path):
        fs, path = filesystem_for(ref.shard_path, storage_options)
        groups = row_groups(ref.shard_path, str(fs.ukey(path)), lambda: fs.open(path, "rb"))
    else:
        groups = row_groups(ref.shard_path, str(os.stat(ref.shard_path).st_mtime_ns), None)
    group, row = groups.locate(ref.first)
    cell = groups.column(group, image_column)[row]
    item = cell[ref.second]
    data = item.get("bytes") if isinstance(item, dict) else item
    if not isinstance(data, bytes):
        raise OSError(f"row {ref.first + 1} item {ref.second} of {ref.shard_path} holds no image bytes (changed?)")
    return data


class RowGroups:
    """One Parquet file's row groups, the image columns of the last two read kept in memory for every thread (the
    threads hashing a chunk read the same groups, in input order)."""

    KEPT_GROUPS = 2

    def __init__(self, path: str, opener: Callable[[], Any] | None) -> None:
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(opener() if opener is not None else path)
        starts, total = [], 0
        for index in range(self.file.num_row_groups):
            starts.append(total)
            total += self.file.metadata.row_group(index).num_rows
        self.starts = starts
        self.columns: OrderedDict[tuple[int, str], list[Any]] = OrderedDict()
        self.lock = threading.Lock()  # one file handle under the ParquetFile; a group is read once

    def locate(self, row: int) -> tuple[int, int]:
        group = max(i for i, start in enumerate(self.starts) if start <= row)
        return group, row - self.starts[group]

    def column(self, group: int, name: str) -> list[Any]:
        with self.lock:
            if (group, name) not in self.columns:
                self.columns[group, name] = self.file.read_row_group(group, columns=[name]).column(0).to_pylist()
                while len(self.columns) > self.KEPT_GROUPS:
                    self.columns.popitem(last=False)
            return self.columns[group, name]


OPEN_FILES: "OrderedDict[tuple[str, str], RowGroups]" = OrderedDict()
OPEN_FILES_LOCK = threading.Lock()


def row_groups(path: str, version: str, opener: Callable[[], Any] | None) -> RowGroups:
    """The last 8 files read, keyed by version (modification time, or the store's key of the object): a rewritten
    shard is opened anew. `opener` opens a remote one."""
    with OPEN_FILES_LOCK:
        if (path, version) in OPEN_FILES:
            OPEN_FILES.move_to_end((path, version))
            return OPEN_FILES[path, version]
    groups = RowGroups(path, opener)
    with OPEN_FILES_LOCK:
        OPEN_FILES[path, version] = groups
        while len(OPEN_FILES) > 8:
            OPEN_FILES.popitem(last=False)
    return groups
