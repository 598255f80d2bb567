"""The DuckDB store: one embedded database file holding the pipeline's tables.

Tables (or, for the shard-partitioned tables, the rows of some shards) are replaced inside one transaction, so a
reader sees the old rows or the new ones, never half of either, and a failed write leaves the old rows in place.
A shard is a manifest: its path relative to raw/, the `manifest` column. DuckDB lets one process write at a time;
`connect` waits for the lock instead of failing, so concurrent runs take turns.
"""

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb
import pyarrow as pa

from .schema import Row, column_names, column_values, columns, row_reader

INPUT_ORDER = "manifest, line_number"
ARROW_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "VARCHAR[]": pa.list_(pa.string()),
               "DOUBLE[]": pa.list_(pa.float64()), "INTEGER[][]": pa.list_(pa.list_(pa.int32()))}
"""Each column type as the chunk written is typed: an Arrow table inserts about 3x faster than a pandas frame of
Python objects (a third of the scoring stage's time outside the model went to it)."""

LOCK_WAIT_SECONDS = 3600.0
"""A scoring step holds the write lock while it scores (its table is written in one transaction), so another
run may have to wait as long as a whole scoring step: wait long, and say so once in the run log."""


def one(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    """The single row an aggregate query returns."""
    row = conn.execute(sql, list(params)).fetchone()
    if row is None:
        raise LookupError(f"no row from {sql!r}")
    return row


def scalar(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> Any:
    return one(conn, sql, params)[0]


class StoreLockedError(RuntimeError):
    """Another process held the DuckDB file's lock for longer than we were willing to wait."""


class StoreCorruptError(RuntimeError):
    """The store file is not a DuckDB database: the message says how to start over."""


@contextmanager
def connect(
    database: Path,
    *,
    read_only: bool = False,
    wait_seconds: float = LOCK_WAIT_SECONDS,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database file, waiting (with backoff) while another process holds its lock: DuckDB
    lets one process write, or several read, at a time. `on_wait` hears once that we are waiting."""
    database = Path(database)
    if not read_only:
        database.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay, told = 0.05, False
    while True:
        try:
            conn = duckdb.connect(str(database), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "not a valid DuckDB database file" in str(exc):
                raise StoreCorruptError(
                    f"{database} is not a valid DuckDB file (damaged, or written by something else): move it aside "
                    f"(mv {database} {database}.damaged) and run again; every table is rebuilt from raw/, and every "
                    "image is embedded again (the embedding cache was in it)"
                ) from exc
            if not is_lock_conflict(exc):
                raise
            if time.monotonic() >= deadline:
                raise StoreLockedError(
                    f"{database} stayed locked by another process for {wait_seconds:g} s (lock_wait_seconds); "
                    f"is another pairfilter run still going? DuckDB says: {exc}"
                ) from exc
            if on_wait and not told:
                told = True
                on_wait(f"Waiting for another process to release the DuckDB lock on {database} "
                        f"(up to {wait_seconds:g} s)")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        yield conn
    finally:
        conn.close()


LOCK_CONFLICT = ("Could not set lock on file", "Conflicting lock is held")
"""How DuckDB words another process's lock; any other I/O error (a path that merely contains "lock", such as a
folder named `blocklists`) is raised at once."""


def is_lock_conflict(exc: duckdb.IOException) -> bool:
    return all(words in str(exc) for words in LOCK_CONFLICT)


class TableWriter:
    """Writes chunks of rows of one table inside the transaction that `table_writer` opened."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, row_type: type[Row], shards: Sequence[str] | None) -> None:
        self.conn = conn
        self.table = row_type.TABLE
        self.shards = None if shards is None else set(shards)
        self.rows_written = 0
        self._names = column_names(row_type)
        self._schema = pa.schema([(c.name, ARROW_TYPES[c.sql_type]) for c in columns(row_type)])

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if self.shards is not None:
            unexpected = {row.manifest for row in rows} - self.shards
            if unexpected:
                raise ValueError(f"rows of shards {sorted(unexpected)} written to {self.table} while replacing "
                                 f"{sorted(self.shards)}")
        try:
            incoming = pa.table({name: column_values(rows, name) for name in self._names}, schema=self._schema)
        except (pa.ArrowException, TypeError, ValueError) as exc:  # a value of the wrong type, as DuckDB reports it
            raise duckdb.ConversionException(f"rows for {self.table}: {exc}") from exc
        self.conn.from_arrow(incoming).insert_into(self.table)
        self.rows_written += len(rows)


@contextmanager
def table_writer(
    conn: duckdb.DuckDBPyConnection, row_type: type[Row], shards: Sequence[str] | None = None
) -> Iterator[TableWriter]:
    """Replace a table (or, given `shards`, only the rows of those manifests) with the rows written in the block,
    chunk by chunk, inside one transaction: memory holds one chunk at a time, readers see the old rows until the
    block ends, and a failure (or a kill) leaves the old rows."""
    with transaction(conn):
        if shards is None:
            conn.execute(f'CREATE OR REPLACE TABLE "{row_type.TABLE}" ({table_definition(row_type)})')
        else:
            ensure_table(conn, row_type)
            where, params = shard_filter(shards)
            conn.execute(f'DELETE FROM "{row_type.TABLE}" {where}', params)
        yield TableWriter(conn, row_type, shards)


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Commit what the block does, or roll all of it back if the block raises (a kill, too, leaves nothing)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def table_definition(row_type: type[Row]) -> str:
    """The column list of `CREATE TABLE`."""
    return ", ".join(f'"{c.name}" {c.sql_type}' for c in columns(row_type))


def ensure_table(conn: duckdb.DuckDBPyConnection, row_type: type[Row]) -> None:
    """Create the table empty if it does not exist; refuse one written by another version of the schema (its other
    shards' rows would not fit)."""
    table = row_type.TABLE
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({table_definition(row_type)})')
    found = [row[0] for row in conn.execute(f'DESCRIBE "{table}"').fetchall()]
    expected = column_names(row_type)
    if found != expected:
        raise RuntimeError(
            f"table {table!r} has columns {found}, this version writes {expected}: materialize every shard again "
            f"(`pairfilter-materialize`) after dropping the table, or use a new data folder"
        )


def delete_shards(conn: duckdb.DuckDBPyConnection, row_types: Sequence[type[Row]], shards: Sequence[str]) -> int:
    """Delete the rows of `shards` from the tables in one transaction; returns the rows deleted."""
    deleted = 0
    where, params = shard_filter(shards)
    with transaction(conn):
        for row_type in row_types:
            if table_exists(conn, row_type.TABLE):
                deleted += scalar(conn, f'DELETE FROM "{row_type.TABLE}" {where}', params)
    return deleted


def stored_shards(conn: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    if not table_exists(conn, table):
        return []
    return [row[0] for row in conn.execute(f'SELECT DISTINCT manifest FROM "{table}" ORDER BY 1').fetchall()]


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(scalar(conn, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]))


def read_rows(
    conn: duckdb.DuckDBPyConnection, row_type: type[Row], shards: Sequence[str] | None = None,
    chunk_size: int = 2048, only: Sequence[str] | None = None,
) -> Iterator[list[Any]]:
    """The rows of a table (of `shards` only, if given) as `row_type`, in input order, streamed in chunks (use a
    cursor of its own: other statements on the same connection would end the stream). With `only`, just those
    columns are read and the rows' other fields keep their (empty) defaults: list columns cost most to read."""
    if not table_exists(conn, row_type.TABLE):
        raise LookupError(f"table {row_type.TABLE!r} does not exist yet: materialize it first")
    names = list(only or column_names(row_type))
    selected = ", ".join(f'"{name}"' for name in names)
    where, params = shard_filter(shards)
    result = conn.execute(f'SELECT {selected} FROM "{row_type.TABLE}" {where} ORDER BY {INPUT_ORDER}', params)
    read = row_reader(row_type, names)
    while records := result.fetchmany(chunk_size):
        yield [read(record) for record in records]


def shard_filter(shards: Sequence[str] | None) -> tuple[str, list]:
    """A WHERE clause (and its parameters) selecting the rows of `shards`; none selects every row."""
    return ("", []) if shards is None else ("WHERE list_contains(?, manifest)", [list(shards)])


def table_fingerprint(
    conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], shards: Sequence[str] | None = None
) -> tuple[int, int]:
    """(row count, XOR of the rows' hashes over `columns`), over the rows of `shards` if given: changes when any
    of those rows does."""
    row = ", ".join(f'"{name}"' for name in columns)  # one string per row: hash() of several values mixes weakly
    where, params = shard_filter(shards)
    count, fingerprint = one(
        conn, f'SELECT count(*), coalesce(bit_xor(hash(concat_ws(chr(31), {row}))), 0) FROM "{table}" {where}', params
    )
    return count, int(fingerprint)


def row_count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    return scalar(conn, f'SELECT count(*) FROM "{table}"')
