"""Where the results live: per shard, files on the output location (local or any fsspec URL), no shared database.

```
<output>/results/
  raw_samples/<shard>.parquet              one per shard: its samples, usable or not (replaced at each ingest)
  image_pair_stats/<shard>.parquet         one per shard: its scores (replaced when the shard is re-scored)
  embedding_cache/<model key>/<shard>/<time>-<token>-<n>.parquet
                                           new embeddings, one file per block, never rewritten (content-addressed)
  filtered_samples.parquet                 the whole dataset's kept samples (the dataset step's own file)
```
`<shard>` is the shard's path relative to raw/ (`more/b.jsonl` -> `more/b.jsonl.parquet`), so a file names its
shard, and runs of different shards never write the same file: many runs write at once, on one machine or many.
DuckDB queries these files (`catalog`)."""

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .locations import AnyPath, as_path, is_remote_path
from .schema import FilteredRow, Row, Sample, StatsRow

RESULTS_FOLDER = "results"
CACHE_FOLDER = "embedding_cache"
SUFFIX = ".parquet"
SHARD_TABLES: tuple[type[Row], ...] = (Sample, StatsRow)
MODEL_FOLDER_CHARS = 16
"""The model key (a sha256) is shortened in folder names; the files hold it whole."""


@dataclass(frozen=True)
class ResultFiles:
    root: AnyPath
    storage_options: Any = None

    @classmethod
    def under(cls, output_root: AnyPath, storage_options: Any = None) -> "ResultFiles":
        return cls(output_root / RESULTS_FOLDER, storage_options)

    @property
    def remote(self) -> bool:
        return is_remote_path(self.root)

    def table_folder(self, row_type: type[Row]) -> AnyPath:
        return self.root / row_type.TABLE

    def shard_file(self, row_type: type[Row], shard: str) -> AnyPath:
        """Raises ValueError for a shard that is no path inside raw/ (a partition added by hand, `../x`): its file
        would lie outside the table's folder."""
        if not is_shard_name(shard):
            raise ValueError(f"shard {shard!r}: not a path relative to raw/, so it has no result file")
        return self.table_folder(row_type) / f"{shard}{SUFFIX}"

    @property
    def filtered_file(self) -> AnyPath:
        return self.root / f"{FilteredRow.TABLE}{SUFFIX}"

    @property
    def cache_root(self) -> AnyPath:
        return self.root / CACHE_FOLDER

    def cache_folder(self, model_key: str) -> AnyPath:
        return self.cache_root / model_key[:MODEL_FOLDER_CHARS]

    def shards(self, row_type: type[Row]) -> list[str]:
        """The shards that have a file of the table, sorted."""
        folder = self.table_folder(row_type)
        return sorted(relative[: -len(SUFFIX)] for relative in parquet_files(folder))

    def files(self, row_type: type[Row], shards: Iterable[str] | None = None) -> list[str]:
        """The table's files (of `shards` only, if given: those that exist), as DuckDB reads them."""
        found = self.shards(row_type)
        wanted = found if shards is None else sorted(set(found) & set(shards))
        return [url_of(self.shard_file(row_type, shard)) for shard in wanted]

    def remove(self, shards: Iterable[str]) -> list[str]:
        """Delete the shards' samples and stats files; returns the files deleted."""
        removed = []
        for shard in filter(is_shard_name, shards):  # any other name has no file: nothing of it to delete
            for row_type in SHARD_TABLES:
                path = self.shard_file(row_type, shard)
                if path.exists():
                    path.unlink()
                    removed.append(str(path))
        return removed


class DamagedResultFile(RuntimeError):
    """A result file that is not a whole Parquet file (a disk fault, a hand edit): the message says which and how
    to make it again."""


def damaged(path: str, cause: Exception) -> DamagedResultFile:
    table, _, rest = path.partition(f"/{RESULTS_FOLDER}/")[2].partition("/")
    if table == CACHE_FOLDER:
        remedy = "run again: its embeddings are computed again where they are needed"
    elif rest and table in {t.TABLE for t in SHARD_TABLES}:
        remedy = f"materialize its shard ({rest[: -len(SUFFIX)]}) again"
    else:
        remedy = "materialize filtered_samples again"
    return DamagedResultFile(f"{path} is not a whole Parquet file (damaged, or not written by pairfilter): delete it "
                             f"and {remedy}. ({cause})")


DUCKDB_DAMAGED = re.compile(r"(?:No magic bytes found at end of file|too small to be a Parquet file|"
                            r"Could not read Parquet metadata)[^']*'([^']+)'")


def damaged_in(exc: Exception) -> DamagedResultFile | None:
    """The damaged file a DuckDB error names, if it names one."""
    found = DUCKDB_DAMAGED.search(str(exc))
    return damaged(found.group(1), exc) if found else None


def is_shard_name(shard: str) -> bool:
    """Whether `shard` can be a shard's path relative to raw/ (as listings give them): relative, no empty, `.` or
    `..` part."""
    return bool(shard) and not any(part in ("", ".", "..") for part in shard.split("/"))


def parquet_files(folder: AnyPath) -> list[str]:
    """Paths relative to `folder` of the Parquet files under it, at any depth; temp files (hidden) excluded. A
    remote folder is listed afresh (fsspec would otherwise answer from an earlier listing)."""
    if is_remote_path(folder):
        fs, base = folder.fs, folder.path.rstrip("/")
        fs.invalidate_cache(base)
        found = fs.find(base) if fs.exists(base) else []
        relative = [path[len(base) + 1:] for path in found]
    else:
        relative = [os.path.relpath(os.path.join(top, name), folder)
                    for top, _, names in os.walk(folder) for name in names]
    return sorted(path for path in relative if path.endswith(SUFFIX)
                  and not any(part.startswith(".") for part in path.split("/")))


def url_of(path: AnyPath) -> str:
    """The path as DuckDB (through fsspec for a URL) opens it."""
    return str(as_path(path)) if not is_remote_path(path) else f"{path.protocol}://{path.path}"
