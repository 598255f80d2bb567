"""The DuckDB store: one embedded database file holding the pipeline's tables.

Tables are replaced whole inside one transaction, so a reader sees the old table or the new one, never half of
either, and a failed write leaves the old table in place. DuckDB lets one process write at a time; `connect`
waits for the lock instead of failing, so concurrent runs take turns.
"""

import time
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

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

TABLES: dict[str, list[Column]] = {
    "raw_samples": [
        *SAMPLE_COLUMNS,
        *STATUS_COLUMNS,
        ("sample_json", "VARCHAR", "the manifest line as written"),
    ],
    "image_pair_stats": [
        *SAMPLE_COLUMNS,
        SIMILARITY_COLUMN,
        *STATUS_COLUMNS,
        ("sample_json", "VARCHAR", "the manifest line as written"),
    ],
    "filtered_samples": [
        *SAMPLE_COLUMNS[:3],
        SIMILARITY_COLUMN,
        ("sample_json", "VARCHAR", "the output line: original fields plus __dj__stats__"),
    ],
}
INPUT_ORDER = "manifest, line_number"

LOCK_WAIT_SECONDS = 120.0


@contextmanager
def connect(database: Path, *, read_only: bool = False, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database file, waiting (with backoff) while another process holds the write lock."""
    database = Path(database)
    if not read_only:
        database.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            conn = duckdb.connect(str(database), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        yield conn
    finally:
        conn.close()


def replace_table(conn: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Any]) -> int:
    """Replace `table` with `rows` (dataclasses or dicts holding at least the table's columns), atomically."""
    columns = TABLES[table]
    frame = pd.DataFrame(
        [asdict(row) if is_dataclass(row) else row for row in rows],
        columns=[name for name, _, _ in columns],
    )
    definition = ", ".join(f'"{name}" {sql_type}' for name, sql_type, _ in columns)
    select = ", ".join(f'CAST("{name}" AS {sql_type})' for name, sql_type, _ in columns)
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f'CREATE OR REPLACE TABLE "{table}" ({definition})')
        if len(frame):
            conn.register("incoming_rows", frame)
            conn.execute(f'INSERT INTO "{table}" SELECT {select} FROM incoming_rows')
            conn.unregister("incoming_rows")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(frame)


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()
    return bool(found and found[0])


def read_rows(conn: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str] | None = None) -> list[dict]:
    """Rows of `table` as dicts, in input order (manifest path, then line number); all columns by default."""
    if not table_exists(conn, table):
        raise LookupError(f"table {table!r} does not exist yet: materialize it first")
    columns = list(columns or [name for name, _, _ in TABLES[table]])
    selected = ", ".join(f'"{name}"' for name in columns)
    rows = conn.execute(f'SELECT {selected} FROM "{table}" ORDER BY {INPUT_ORDER}').fetchall()
    return [dict(zip(columns, row)) for row in rows]


def row_count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
