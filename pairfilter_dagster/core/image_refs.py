"""Images held inside a shard, named in the `images` column by a reference of their own, never a path: a member of
a WebDataset tar (`tar:<shard path>#<offset>+<size>`: its bytes' place in the file) or an item of a Parquet cell
(`parquet:<shard path>#<row>.<item>`: 0-based). Every path in that column is absolute, so neither kind can be
mistaken for one, and no sample can name one: the shard readers make them.

Reading a tar member is one seek; reading a Parquet item reads its row group's image column, kept for the next
items of the same group (scoring reads in input order)."""

import functools
import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Any

REF = re.compile(r"^(tar|parquet):(/.*)#(\d+)[+.](\d+)$")


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
    return str(MemberRef("tar", os.path.abspath(shard_path), offset, size))


def parquet_item_ref(shard_path: str, row: int, item: int) -> str:
    return str(MemberRef("parquet", os.path.abspath(shard_path), row, item))


def parse_member_ref(ref: str) -> MemberRef | None:
    found = REF.match(ref)
    return MemberRef(found[1], found[2], int(found[3]), int(found[4])) if found else None


def read_member(ref: MemberRef, max_bytes: int, image_column: str) -> bytes:
    """The member's bytes, at most `max_bytes + 1` of them (the caller refuses more); OSError when the shard is
    gone, changed or not a regular file."""
    if ref.kind == "tar":
        fd = os.open(ref.shard_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise OSError(f"{ref.shard_path} is not a regular file")
            handle.seek(ref.first)
            data = handle.read(min(ref.second, max_bytes + 1))
        if len(data) < min(ref.second, max_bytes + 1):
            raise OSError(f"the tar ends inside the member at byte {ref.first} (truncated, or changed since ingestion)")
        return data
    return parquet_item(ref, image_column)


def parquet_item(ref: MemberRef, image_column: str) -> bytes:
    groups = row_groups(ref.shard_path, os.stat(ref.shard_path).st_mtime_ns)
    group, row = groups.locate(ref.first)
    cell = groups.column(group, image_column)[row]
    item = cell[ref.second]
    data = item.get("bytes") if isinstance(item, dict) else item
    if not isinstance(data, bytes):
        raise OSError(f"row {ref.first + 1} item {ref.second} of {ref.shard_path} holds no image bytes (changed?)")
    return data


class RowGroups:
    """One Parquet file's row groups, the image column of the last one read kept in memory (one per thread)."""

    def __init__(self, path: str) -> None:
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(path)
        starts, total = [], 0
        for index in range(self.file.num_row_groups):
            starts.append(total)
            total += self.file.metadata.row_group(index).num_rows
        self.starts = starts
        self.local = threading.local()
        self.lock = threading.Lock()  # one file handle under the ParquetFile

    def locate(self, row: int) -> tuple[int, int]:
        group = max(i for i, start in enumerate(self.starts) if start <= row)
        return group, row - self.starts[group]

    def column(self, group: int, name: str) -> list[Any]:
        if getattr(self.local, "key", None) != (group, name):
            with self.lock:
                self.local.values = self.file.read_row_group(group, columns=[name]).column(0).to_pylist()
            self.local.key = (group, name)
        return self.local.values


@functools.lru_cache(maxsize=8)
def row_groups(path: str, mtime_ns: int) -> RowGroups:
    """Keyed by the file's modification time too: a rewritten shard is opened anew."""
    return RowGroups(path)
