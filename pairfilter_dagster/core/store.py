"""The DuckDB store: one embedded database file holding the pipeline's tables.

Tables (or, for the shard-partitioned tables, the rows of some shards) are replaced inside one transaction, so a
reader sees the old rows or the new ones, never half of either, and a failed write leaves the old rows in place.
A shard is a manifest: its path relative to raw/, the `manifest` column. DuckDB lets one process write at a time;
`connect` waits for the lock instead of failing, so concurrent runs take turns.
"""

import time
from contextlib import contextmanager
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import duckdb
import pandas as pd

Column = tuple[str, str, str]
"""(name, DuckDB type, description)."""

SAMPLE_COLUMNS: list[Column] = [
    ("sample_id", "VARCHAR", "`<manifest path relative to raw/>:<1-based line number>`"),
    ("manifest", "VARCHAR", "manifest path relative to raw/: the shard, and the partition key in Dagster"),
    ("line_number", "INTEGER", "1-based line number in the manifest"),
    ("images", "VARCHAR[]", "image paths, resolved against the manifest's folder"),
]
STATUS_COLUMNS: list[Column] = [
    ("status", "VARCHAR", "ok, or why the sample cannot be scored"),
    ("error", "VARCHAR", "empty when ok, else a human-readable reason"),
]
SIMILARITY_COLUMN: Column = (
    "image_pair_similarity", "DOUBLE[]", "cosine similarity of the CLIP embeddings, one per image pair",
)
PAIRS_COLUMN: Column = (
    "image_pairs", "INTEGER[][]", "0-based index pairs of the images, in score order (from the pairing rule)",
)

TABLES: dict[str, list[Column]] = {
    "raw_samples": [
        *SAMPLE_COLUMNS,
        *STATUS_COLUMNS,
        ("sample_json", "VARCHAR", "the manifest line as written"),
        PAIRS_COLUMN,
    ],
    "image_pair_stats": [
        *SAMPLE_COLUMNS,
        SIMILARITY_COLUMN,
        *STATUS_COLUMNS,
        ("image_hashes", "VARCHAR[]", "sha256 of each image file's content (the embedding cache key)"),
        ("sample_json", "VARCHAR", "the manifest line as written"),
        PAIRS_COLUMN,
    ],
    "filtered_samples": [
        *SAMPLE_COLUMNS[:3],
        SIMILARITY_COLUMN,
        ("sample_json", "VARCHAR", "the output line: original fields plus __dj__stats__"),
    ],
}
INPUT_ORDER = "manifest, line_number"

LOCK_WAIT_SECONDS = 3600.0
"""A scoring step holds the write lock while it scores (its table is written in one transaction), so another
run may have to wait as long as a whole scoring step: wait long, and say so once in the run log."""


class StoreLockedError(RuntimeError):
    """Another process held the DuckDB file's lock for longer than we were willing to wait."""


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
            if "lock" not in str(exc).lower():
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


def replace_table(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    rows: Iterable[Any],
    *,
    before_commit: Callable[[], None] | None = None,
) -> int:
    """Replace `table` with `rows` (dataclasses or dicts holding at least the table's columns), atomically."""
    return replace_table_in_chunks(conn, table, [list(rows)], before_commit=before_commit)


def replace_table_in_chunks(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    chunks: Iterable[Sequence[Any]],
    *,
    before_commit: Callable[[], None] | None = None,
    shards: Sequence[str] | None = None,
) -> int:
    """Replace `table` (or, given `shards`, only the rows of those manifests) with rows arriving in chunks, inside
    one transaction: memory holds one chunk at a time, readers see the old rows until the last chunk is in, and a
    failure (or a kill) leaves the old rows. `before_commit` runs inside the transaction, last: if it raises, the
    old rows stay (used to publish a file together with its table)."""
    columns = TABLES[table]
    names = [name for name, _, _ in columns]
    select = ", ".join(f'CAST("{name}" AS {sql_type})' for name, sql_type, _ in columns)
    written = 0
    with transaction(conn):
        if shards is None:
            conn.execute(f'CREATE OR REPLACE TABLE "{table}" ({table_definition(table)})')
        else:
            ensure_table(conn, table)
            where, params = shard_filter(shards)
            conn.execute(f'DELETE FROM "{table}" {where}', params)
        for chunk in chunks:
            if not chunk:
                continue
            frame = columns_frame(chunk, names)
            unexpected = set(frame["manifest"]) - set(shards) if shards is not None and "manifest" in frame else ()
            if unexpected:
                raise ValueError(f"rows of shards {sorted(unexpected)} written to {table} while replacing {shards}")
            conn.register("incoming_rows", frame)
            try:
                conn.execute(f'INSERT INTO "{table}" SELECT {select} FROM incoming_rows')
            finally:
                conn.unregister("incoming_rows")
            written += len(frame)
        if before_commit:
            before_commit()
    return written


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


def table_definition(table: str) -> str:
    """The column list of `CREATE TABLE`, from `TABLES`."""
    return ", ".join(f'"{name}" {sql_type}' for name, sql_type, _ in TABLES[table])


def ensure_table(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    """Create `table` empty if it does not exist; refuse one written by another version of the schema (its other
    shards' rows would not fit)."""
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({table_definition(table)})')
    found = [row[0] for row in conn.execute(f'DESCRIBE "{table}"').fetchall()]
    expected = [name for name, _, _ in TABLES[table]]
    if found != expected:
        raise RuntimeError(
            f"table {table!r} has columns {found}, this version writes {expected}: materialize every shard again "
            f"(`pairfilter-materialize`) after dropping the table, or use a new data folder"
        )


def delete_shards(conn: duckdb.DuckDBPyConnection, tables: Sequence[str], shards: Sequence[str]) -> int:
    """Delete the rows of `shards` from `tables` in one transaction; returns the rows deleted."""
    deleted = 0
    where, params = shard_filter(shards)
    with transaction(conn):
        for table in tables:
            if table_exists(conn, table):
                deleted += conn.execute(f'DELETE FROM "{table}" {where}', params).fetchone()[0]
    return deleted


def stored_shards(conn: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    if not table_exists(conn, table):
        return []
    return [row[0] for row in conn.execute(f'SELECT DISTINCT manifest FROM "{table}" ORDER BY 1').fetchall()]


def columns_frame(rows: Sequence[Any], names: Sequence[str]) -> pd.DataFrame:
    """A data frame of `names` from rows that are dataclasses or dicts, built column by column (fast); a column
    a row lacks becomes NULL."""
    get = (lambda row, name: getattr(row, name, None)) if is_dataclass(rows[0]) else dict.get
    return pd.DataFrame({name: [get(row, name) for row in rows] for name in names})


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()
    return bool(found and found[0])


def read_rows(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[str] | None = None,
    shards: Sequence[str] | None = None,
) -> list[dict]:
    """Rows of `table` (of `shards` only, if given) as dicts, in input order (manifest path, then line number);
    all columns by default."""
    return [row for chunk in iter_chunks(conn, table, columns, shards=shards) for row in chunk]


def iter_chunks(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[str] | None = None,
    chunk_size: int = 2048,
    shards: Sequence[str] | None = None,
) -> Iterator[list[dict]]:
    """Rows of `table` (of `shards` only, if given) as dicts in input order, streamed in chunks (use a cursor of
    its own: other statements on the same connection would end the stream)."""
    if not table_exists(conn, table):
        raise LookupError(f"table {table!r} does not exist yet: materialize it first")
    columns = list(columns or [name for name, _, _ in TABLES[table]])
    selected = ", ".join(f'"{name}"' for name in columns)
    where, params = shard_filter(shards)
    result = conn.execute(f'SELECT {selected} FROM "{table}" {where} ORDER BY {INPUT_ORDER}', params)
    while rows := result.fetchmany(chunk_size):
        yield [dict(zip(columns, row)) for row in rows]


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
    count, fingerprint = conn.execute(
        f'SELECT count(*), coalesce(bit_xor(hash(concat_ws(chr(31), {row}))), 0) FROM "{table}" {where}', params
    ).fetchone()
    return count, int(fingerprint)


def row_count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
