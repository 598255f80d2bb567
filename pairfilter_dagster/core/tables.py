"""Table files: the rows of one table of one shard (or of the whole dataset) as one Parquet file, written chunk by
chunk and published whole (`publish.staged_file`: temp + rename on disk, one upload on an object store), read back
chunk by chunk as typed rows. A failure or a kill before the end leaves the previous file as it was."""

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .locations import AnyPath
from .publish import StagedFile, StagedSink, staged_file
from .results import damaged
from .schema import Row, column_names, column_values, columns, row_reader

ARROW_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "VARCHAR[]": pa.list_(pa.string()),
               "DOUBLE[]": pa.list_(pa.float64()), "INTEGER[][]": pa.list_(pa.list_(pa.int32()))}
TABLE_KEY, SHARD_KEY = b"pairfilter.table", b"pairfilter.shard"
"""File metadata naming the table and the shard a file holds (a shard with no rows names it too)."""
ROW_GROUP_ROWS = 10_000


def arrow_schema(row_type: type[Row], shard: str | None = None) -> pa.Schema:
    metadata = {TABLE_KEY: row_type.TABLE.encode(), **({SHARD_KEY: shard.encode()} if shard is not None else {})}
    return pa.schema([(c.name, ARROW_TYPES[c.sql_type]) for c in columns(row_type)], metadata=metadata)


def arrow_rows(rows: Sequence[Row], schema: pa.Schema) -> pa.Table:
    try:
        return pa.table({name: column_values(rows, name) for name in schema.names}, schema=schema)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ValueError(f"rows for {schema.metadata[TABLE_KEY].decode()}: {exc}") from exc


class TableFileWriter:
    """Writes chunks of rows into the staged file that `table_file` opened."""

    def __init__(self, staged: StagedFile, row_type: type[Row], shard: str | None) -> None:
        self.shard = shard
        self.rows_written = 0
        self._schema = arrow_schema(row_type, shard)
        self._writer = pq.ParquetWriter(StagedSink(staged), self._schema, compression="zstd")

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if self.shard is not None and any(row.manifest != self.shard for row in rows):
            others = sorted({row.manifest for row in rows} - {self.shard})
            raise ValueError(f"rows of shards {others} written to the file of shard {self.shard!r}")
        self._writer.write_table(arrow_rows(rows, self._schema), row_group_size=ROW_GROUP_ROWS)
        self.rows_written += len(rows)

    def close(self) -> None:
        self._writer.close()


@contextmanager
def table_file(path: AnyPath, row_type: type[Row], shard: str | None = None) -> Iterator[TableFileWriter]:
    """Replace the file at `path` with the rows written in the block (the rows of `shard` only, if given), once
    the block ends without an error; memory holds one chunk at a time."""
    with staged_file(path) as staged:
        writer = TableFileWriter(staged, row_type, shard)
        try:
            yield writer
        finally:
            writer.close()
        staged.publish()


def read_rows(path: AnyPath, row_type: type[Row], chunk_size: int = 2048,
              only: Sequence[str] | None = None) -> Iterator[list[Any]]:
    """The rows of a table file as `row_type`, in the order written, in chunks. With `only`, just those columns are
    read and the rows' other fields keep their (empty) defaults: list columns cost most to read."""
    names = list(only or column_names(row_type))
    read = row_reader(row_type, names)
    with path.open("rb") as handle:
        try:
            batches = pq.ParquetFile(handle).iter_batches(batch_size=chunk_size, columns=names)
            for batch in batches:
                values = [batch.column(name).to_pylist() for name in names]
                yield [read(record) for record in zip(*values)]
        except pa.ArrowException as exc:
            raise damaged(str(path), exc) from exc


def file_shard(path: AnyPath) -> str | None:
    """The shard a table file says it holds (None for a whole-dataset file)."""
    with path.open("rb") as handle:
        metadata = pq.read_schema(handle).metadata or {}
    shard = metadata.get(SHARD_KEY)
    return shard.decode() if shard is not None else None
