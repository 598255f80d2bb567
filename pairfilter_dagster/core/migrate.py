"""From the single DuckDB store of earlier versions (`pairfilter.duckdb` in the state folder) to the result files:
each shard's samples and stats, the filtered table and every embedding of the cache are written as files, then the
old file is renamed `pairfilter.duckdb.migrated` (kept until you delete it). Remembered file hashes are not carried
over (each file is read once more). A migration that stops half way is simply run again: every file is written
whole, and the old store is renamed last."""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import duckdb
import numpy as np

from .catalog import read_view_rows, write_catalog
from .embedding.cache_files import DEFAULT_BLOCK, block_table, write_block
from .publish import finish_publish
from .results import ResultFiles
from .schema import FilteredRow, Row, Sample, StatsRow, column_names
from .tables import table_file

MIGRATED_SUFFIX = ".migrated"
CHUNK_ROWS = 10_000


@dataclass
class Migration:
    shards: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    embeddings: int = 0
    published: list[str] = field(default_factory=list)
    kept_as: Path | None = None


def migrate_store(database: Path, results: ResultFiles, catalog: Path, storage_options: Any = None) -> Migration:
    done = Migration()
    with duckdb.connect(str(database), read_only=True) as conn:
        tables = {row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "pending_publish" in tables:  # a run killed between its commit and its rename
            done.published = [path for path, temp_path, digest in conn.execute(
                "SELECT path, temp_path, sha256 FROM pending_publish").fetchall()
                if finish_publish(path, temp_path, digest, storage_options)]
        for row_type in (Sample, StatsRow):
            if row_type.TABLE not in tables:
                continue
            shards = [row[0] for row in conn.execute(f'SELECT DISTINCT manifest FROM "{row_type.TABLE}" ORDER BY 1').fetchall()]
            done.shards = max(done.shards, len(shards))
            for shard in shards:
                with table_file(results.shard_file(row_type, shard), row_type, shard) as table:
                    for chunk in old_rows(conn, row_type, "WHERE manifest = ?", [shard]):
                        table.write(chunk)
                done.rows[row_type.TABLE] = done.rows.get(row_type.TABLE, 0) + table.rows_written
        if FilteredRow.TABLE in tables:
            with table_file(results.filtered_file, FilteredRow) as table:
                for chunk in old_rows(conn, FilteredRow, "", []):
                    table.write(chunk)
            done.rows[FilteredRow.TABLE] = table.rows_written
        if "embedding_cache" in tables:
            done.embeddings = migrate_embeddings(conn, results)
    kept_as = database.with_name(database.name + MIGRATED_SUFFIX)
    os.replace(database, kept_as)
    wal = database.with_name(database.name + ".wal")
    if wal.exists():
        os.replace(wal, kept_as.with_name(kept_as.name + ".wal"))
    done.kept_as = kept_as
    write_catalog(results, catalog)
    return done


def old_rows(conn: duckdb.DuckDBPyConnection, row_type: type[Row], where: str, params: list) -> Iterator[list[Any]]:
    names = column_names(row_type)
    found = [row[0] for row in conn.execute(f'DESCRIBE "{row_type.TABLE}"').fetchall()]
    if found != names:
        raise RuntimeError(f"table {row_type.TABLE!r} of the old store has columns {found}, this version reads {names}: "
                           "materialize every shard again in a new data folder instead")
    return read_view_rows(conn, row_type, CHUNK_ROWS, where, params)


def migrate_embeddings(conn: duckdb.DuckDBPyConnection, results: ResultFiles) -> int:
    """Every (model, image) embedding, in blocks of `DEFAULT_BLOCK` under `<model>/_migrated/`."""
    written = 0
    for (model_key,) in conn.execute("SELECT DISTINCT model_key FROM embedding_cache ORDER BY 1").fetchall():
        result = conn.execute("SELECT content_hash, embedding FROM embedding_cache WHERE model_key = ? "
                              "ORDER BY content_hash", [model_key])
        block = 0
        while rows := result.fetchmany(DEFAULT_BLOCK):
            embeddings = {content_hash: np.frombuffer(blob, dtype="<f4") for content_hash, blob in rows}
            write_block(results.cache_folder(model_key) / f"_migrated/{block:05d}.parquet",
                        block_table(model_key, embeddings))
            block += 1
            written += len(rows)
    return written
