"""The embeddings a run computed, handed on to the next job (dedup, retrieval, clustering) in clip-retrieval's layout:
`img_emb/img_emb_<name>.npy` (float32 unit vectors, one row per distinct image of a shard's ok samples, in the order
they first appear) and `metadata/metadata_<name>.parquet` aligned with it row for row. Read from the embedding cache
files: no model runs.

A shard's key is its manifest's path relative to raw/ (`more/b.jsonl`), which is no file name: `<name>` is the key
with every character outside `[A-Za-z0-9._-]` (the `/` above all) turned into `_` and the `.jsonl` dropped, then `-`
and the first 8 hex digits of the key's sha256, so that `more/b.jsonl` and `more_b.jsonl` never share a file
(`more_b-<8 hex>`). The metadata's `shard` column holds the key itself."""

import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from ..catalog import quoted, scalar
from ..locations import AnyPath
from ..publish import StagedSink, staged_file
from ..queries import OK
from ..results import ResultFiles, url_of
from ..schema import StatsRow
from .cache_files import EmbeddingFiles

IMG_EMB, METADATA = "img_emb", "metadata"
METADATA_COLUMNS = ("content_hash", "image_path", "sample_id", "shard", "model", "model_key")
CHUNK_ROWS = 10_000

FIRST_SEEN = f"""
WITH refs AS (
    SELECT unnest(image_hashes) AS content_hash, unnest(images) AS image_path,
           generate_subscripts(images, 1) AS position, sample_id, line_number
    FROM {{stats}} WHERE status = {OK}
)
SELECT content_hash, image_path, sample_id FROM refs
QUALIFY row_number() OVER (PARTITION BY content_hash ORDER BY line_number, position) = 1
ORDER BY line_number, position"""
"""Each distinct image of a shard's ok samples once, in the order first seen: its first path, and first sample."""


def shard_file_name(shard: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", shard.removesuffix(".jsonl"))
    return f"{readable}-{hashlib.sha256(shard.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class ExportedShard:
    shard: str
    img_emb: AnyPath
    metadata: AnyPath
    rows: int
    dimension: int


def npy_header(rows: int, dimension: int) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (rows, dimension)})
    return header.getvalue()


def shard_paths(directory: AnyPath, shard: str) -> tuple[AnyPath, AnyPath]:
    name = shard_file_name(shard)
    return directory / IMG_EMB / f"img_emb_{name}.npy", directory / METADATA / f"metadata_{name}.parquet"


def export_shard(conn: duckdb.DuckDBPyConnection, results: ResultFiles, shard: str, *, model: str, model_key: str,
                 directory: AnyPath, chunk_rows: int = CHUNK_ROWS) -> ExportedShard:
    """Write one shard's two files, chunk by chunk, the embeddings looked up in the cache files; each file is staged
    and both are published (npy first) only once both are whole, so a failure leaves the previous pair as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stats_file = results.shard_file(StatsRow, shard)
    # A shard never scored (its manifest could not be read) has no stats file: it has no image, its files are empty.
    stats = f"read_parquet({quoted(url_of(stats_file))})" if stats_file.exists() else \
        f"(SELECT * FROM {StatsRow.TABLE} LIMIT 0)"
    rows = scalar(conn, f"SELECT count(*) FROM ({FIRST_SEEN.format(stats=stats)})")
    img_emb, metadata = shard_paths(directory, shard)
    schema = pa.schema([(name, pa.string()) for name in METADATA_COLUMNS])
    result = conn.execute(FIRST_SEEN.format(stats=stats))
    with EmbeddingFiles(results, model_key) as cache, staged_file(img_emb) as npy, staged_file(metadata) as parquet:
        dimension = cache.dimension()
        npy.write(npy_header(rows, dimension))
        with pq.ParquetWriter(StagedSink(parquet), schema) as writer:
            while chunk := result.fetchmany(chunk_rows):
                hashes, paths, sample_ids = zip(*chunk)
                found = cache.get_many(hashes)
                if len(found) < len(set(hashes)):
                    raise LookupError(f"shard {shard!r}: {len(set(hashes)) - len(found)} of its images have no embedding "
                                      f"in the cache for model {model_key[:16]}: materialize image_pair_stats for the "
                                      "shard again")
                npy.write(np.stack([found[h] for h in hashes]).astype("<f4").tobytes())
                columns: dict[str, Any] = {"content_hash": hashes, "image_path": paths, "sample_id": sample_ids,
                                           "shard": [shard] * len(chunk), "model": [model] * len(chunk),
                                           "model_key": [model_key] * len(chunk)}
                writer.write_table(pa.table({name: list(columns[name]) for name in METADATA_COLUMNS}, schema=schema))
        npy.publish()
        parquet.publish()
    return ExportedShard(shard, img_emb, metadata, rows, dimension)


def exported_rows(directory: AnyPath, shard: str) -> tuple[tuple[int, ...] | None, int | None]:
    """(shape of the npy array, rows of the parquet file) of a shard's files as they are on disk, from their headers;
    None for a file that is missing, or an npy file whose length does not match its header."""
    import pyarrow.parquet as pq

    img_emb, metadata = shard_paths(directory, shard)
    if not metadata.is_file():
        return (npy_shape(img_emb) if img_emb.is_file() else None), None
    with metadata.open("rb") as handle:
        return (npy_shape(img_emb) if img_emb.is_file() else None), pq.read_metadata(handle).num_rows


def npy_shape(path: AnyPath) -> tuple[int, ...] | None:
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
        whole = handle.tell() + int(np.prod(shape)) * dtype.itemsize == path.stat().st_size
    return tuple(shape) if whole else None
