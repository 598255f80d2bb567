"""DuckDB as the query engine, not the source of truth: views named after the tables (raw_samples, image_pair_stats,
filtered_samples, embedding_cache) over the result files (`results`), through fsspec for a URL.

Every step queries an in-memory database of such views (`query_engine`), over the files of its own shards where it
has some, so many runs query at once and none writes a database. The catalog file (`<state>/catalog.duckdb`) holds
the same views for people (the DuckDB CLI, a notebook): it holds no data, and `pairfilter-catalog` deletes and
rebuilds it from the files."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb

from .embedding.cache_files import CACHE_VIEW_COLUMNS
from .locations import is_remote_path
from .results import SHARD_TABLES, ResultFiles, damaged_in, parquet_files, url_of
from .schema import FilteredRow, Row, column_names, columns, row_reader

CATALOG_FILE = "catalog.duckdb"
CACHE_VIEW = "embedding_cache"
INPUT_ORDER = "manifest, line_number"


def one(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    """The single row an aggregate query returns."""
    row = conn.execute(sql, list(params)).fetchone()
    if row is None:
        raise LookupError(f"no row from {sql!r}")
    return row


def scalar(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> Any:
    return one(conn, sql, params)[0]


def shard_filter(shards: Sequence[str] | None) -> tuple[str, list]:
    """A WHERE clause (and its parameters) selecting the rows of `shards`; none selects every row."""
    return ("", []) if shards is None else ("WHERE list_contains(?, manifest)", [list(shards)])


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_view(conn: duckdb.DuckDBPyConnection, name: str, typed_columns: Sequence[tuple[str, str]],
                files: Sequence[str] | str) -> None:
    """A view of `files` (a list, or a glob) with exactly these columns; with no file, an empty view of them."""
    names = ", ".join(f'"{column}"' for column, _ in typed_columns)
    if files:
        source = quoted(files) if isinstance(files, str) else f"[{', '.join(map(quoted, files))}]"
        select = f"SELECT {names} FROM read_parquet({source}, hive_partitioning = false)"
    else:
        select = "SELECT " + ", ".join(f'CAST(NULL AS {sql_type}) AS "{column}"' for column, sql_type in typed_columns) \
                 + " LIMIT 0"
    conn.execute(f'CREATE OR REPLACE VIEW "{name}" AS {select}')


def typed_columns(row_type: type[Row]) -> list[tuple[str, str]]:
    return [(c.name, c.sql_type) for c in columns(row_type)]


def register_filesystem(conn: duckdb.DuckDBPyConnection, results: ResultFiles) -> None:
    """DuckDB reads a URL's files through the same fsspec filesystem (and options) as everything else."""
    if is_remote_path(results.root):
        conn.register_filesystem(results.root.fs)


def create_views(conn: duckdb.DuckDBPyConnection, results: ResultFiles, shards: Iterable[str] | None = None,
                 *, catalog: bool = False, with_cache: bool = False) -> None:
    """The views; the shard tables over the files of `shards` only, if given. In the catalog of a local folder the
    views are globs, read at query time (new shards included); elsewhere they list the files there are now (a
    glob through fsspec is one listing per query). Steps never read the embedding cache view (the cache reads its
    own files): it is made for the catalog, or when asked."""
    register_filesystem(conn, results)
    wanted = None if shards is None else list(shards)
    globs = catalog and not results.remote
    for row_type in SHARD_TABLES:
        files = results.files(row_type, wanted)
        glob = f"{url_of(results.table_folder(row_type))}/**/*.parquet"
        create_view(conn, row_type.TABLE, typed_columns(row_type), glob if globs and files and wanted is None else files)
    filtered = results.filtered_file
    create_view(conn, FilteredRow.TABLE, typed_columns(FilteredRow), [url_of(filtered)] if filtered.exists() else [])
    if not (catalog or with_cache):
        return
    blocks = [url_of(results.cache_root / name) for name in parquet_files(results.cache_root)]
    create_view(conn, CACHE_VIEW, CACHE_VIEW_COLUMNS, f"{url_of(results.cache_root)}/**/*.parquet"
                if blocks and not results.remote else blocks)


@contextmanager
def damaged_files_named() -> Iterator[None]:
    """A DuckDB error about a result file that is not whole Parquet becomes `DamagedResultFile`, saying what to do."""
    try:
        yield
    except duckdb.Error as exc:
        found = damaged_in(exc)
        if found is None:
            raise
        raise found from exc


@contextmanager
def query_engine(results: ResultFiles, shards: Iterable[str] | None = None, *,
                 with_cache: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the views over the result files (of `shards` only, if given)."""
    conn = duckdb.connect()
    try:
        with damaged_files_named():
            create_views(conn, results, shards, with_cache=with_cache)
            yield conn
    finally:
        conn.close()


def write_catalog(results: ResultFiles, database: Path, *, count: bool = False) -> dict[str, int]:
    """Replace the catalog file with views over every result file (written beside it, then renamed into place:
    readers see the old catalog or the new); returns the rows each view reads now, if asked to `count` (a look at
    every file's footer: worth it for people, not for each run)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    temp = database.with_name(f".{database.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    with duckdb.connect(str(temp)) as conn, damaged_files_named():
        create_views(conn, results, catalog=True)
        rows = {name: scalar(conn, f'SELECT count(*) FROM "{name}"') for name in catalog_views()} if count else {}
    os.replace(temp, database)
    return rows


def catalog_views() -> list[str]:
    return [*(row_type.TABLE for row_type in SHARD_TABLES), FilteredRow.TABLE, CACHE_VIEW]


@contextmanager
def open_catalog(database: Path, results: ResultFiles) -> Iterator[duckdb.DuckDBPyConnection]:
    """The catalog file, read-only, with the results' filesystem registered (for views over a URL)."""
    conn = duckdb.connect(str(database), read_only=True)
    try:
        register_filesystem(conn, results)
        yield conn
    finally:
        conn.close()


def read_view_rows(conn: duckdb.DuckDBPyConnection, row_type: type[Row], chunk_size: int = 2048, where: str = "",
                   params: Sequence[Any] = ()) -> Iterator[list[Any]]:
    """The rows of a view (or table) as `row_type`, in input order, in chunks; `where` (with its `params`) selects
    some."""
    names = column_names(row_type)
    selected = ", ".join(f'"{name}"' for name in names)
    result = conn.execute(f'SELECT {selected} FROM "{row_type.TABLE}" {where} ORDER BY {INPUT_ORDER}', list(params))
    read = row_reader(row_type, names)
    while records := result.fetchmany(chunk_size):
        yield [read(record) for record in records]


def table_fingerprint(conn: duckdb.DuckDBPyConnection, table: str, names: Sequence[str],
                      shards: Sequence[str] | None = None) -> tuple[int, int]:
    """(row count, XOR of the rows' hashes over the columns `names`), over the rows of `shards` if given: changes
    when any of those rows does."""
    row = ", ".join(f'"{name}"' for name in names)  # one string per row: hash() of several values mixes weakly
    where, params = shard_filter(shards)
    count, fingerprint = one(
        conn, f'SELECT count(*), coalesce(bit_xor(hash(concat_ws(chr(31), {row}))), 0) FROM "{table}" {where}', params
    )
    return count, int(fingerprint)

