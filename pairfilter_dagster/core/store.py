"""The DuckDB store: one embedded database file holding the pipeline's tables.

Tables are replaced whole inside one transaction, so a reader sees the old table or the new one, never half of
either, and a failed write leaves the old table in place. DuckDB lets one process write at a time; `connect`
waits for the lock instead of failing, so concurrent runs take turns.
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
    ("manifest", "VARCHAR", "manifest path relative to raw/"),
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
) -> int:
    """Replace `table` with rows arriving in chunks, inside one transaction: memory holds one chunk at a time,
    readers see the old table until the last chunk is in, and a failure (or a kill) leaves the old table.
    `before_commit` runs inside the transaction, last: if it raises, the old table stays (used to publish a
    file together with its table)."""
    columns = TABLES[table]
    names = [name for name, _, _ in columns]
    definition = ", ".join(f'"{name}" {sql_type}' for name, sql_type, _ in columns)
    select = ", ".join(f'CAST("{name}" AS {sql_type})' for name, sql_type, _ in columns)
    written = 0
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f'CREATE OR REPLACE TABLE "{table}" ({definition})')
        for chunk in chunks:
            if not chunk:
                continue
            frame = columns_frame(chunk, names)
            conn.register("incoming_rows", frame)
            try:
                conn.execute(f'INSERT INTO "{table}" SELECT {select} FROM incoming_rows')
            finally:
                conn.unregister("incoming_rows")
            written += len(frame)
        if before_commit:
            before_commit()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return written


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


def read_rows(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str] | None = None) -> list[dict]:
    """Rows of `table` as dicts, in input order (manifest path, then line number); all columns by default."""
    return [row for chunk in iter_chunks(conn, table, columns) for row in chunk]


def iter_chunks(
    conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str] | None = None, chunk_size: int = 2048
) -> Iterator[list[dict]]:
    """Rows of `table` as dicts in input order, streamed in chunks (use a cursor of its own: other statements on
    the same connection would end the stream)."""
    if not table_exists(conn, table):
        raise LookupError(f"table {table!r} does not exist yet: materialize it first")
    columns = list(columns or [name for name, _, _ in TABLES[table]])
    selected = ", ".join(f'"{name}"' for name in columns)
    result = conn.execute(f'SELECT {selected} FROM "{table}" ORDER BY {INPUT_ORDER}')
    while rows := result.fetchmany(chunk_size):
        yield [dict(zip(columns, row)) for row in rows]


def table_fingerprint(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str]) -> tuple[int, int]:
    """(row count, XOR of the rows' hashes over `columns`): changes when any row does."""
    row = ", ".join(f'"{name}"' for name in columns)  # one string per row: hash() of several values mixes weakly
    count, fingerprint = conn.execute(
        f'SELECT count(*), coalesce(bit_xor(hash(concat_ws(chr(31), {row}))), 0) FROM "{table}"'
    ).fetchone()
    return count, int(fingerprint)


def row_count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
