"""Building the pipeline's tables in the DuckDB store, chunk by chunk: the work behind each asset, Dagster-free.

Each function holds one chunk of rows in memory at a time and replaces its table in one transaction."""

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import duckdb

from . import store
from .cache import EmbeddingCache
from .embedding import ClipEmbedder
from .filtering import FilterSettings, keep_flags
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .outputs import StagedFile, dj_record, staged_file
from .samples import Sample, manifest_names
from .scoring import (
    DEFAULT_CHUNK_SIZE, DEFAULT_WORKERS, EmbeddingEngine, PairScorer, ProgressCallback, ScoringReport, chunked,
)
from .status import Status


TABLE_CHUNK_SIZE = 10_000
"""Rows per chunk where no model runs (ingesting, filtering): large enough to amortise each insert."""


def build_raw_samples(
    conn: duckdb.DuckDBPyConnection,
    samples: Iterable[Sample],
    chunk_size: int = TABLE_CHUNK_SIZE,
    shards: Sequence[str] | None = None,
) -> Counter:
    """Replace `raw_samples` (only the rows of `shards`, if given) with the samples; returns the count per
    status."""
    counts: Counter = Counter()

    def rows_in_chunks() -> Iterator[list[dict]]:
        for chunk in chunked(samples, chunk_size):
            counts.update(s.status.value for s in chunk)
            yield [s.as_row() for s in chunk]

    store.replace_table_in_chunks(conn, "raw_samples", rows_in_chunks(), shards=shards)
    return counts


def image_refs_to_score(conn: duckdb.DuckDBPyConnection, shards: Sequence[str] | None = None) -> int:
    """How many image references the ok samples of `raw_samples` (of `shards`) hold (the progress total)."""
    where, params = store.shard_filter(shards)
    return conn.execute(
        f"SELECT coalesce(sum(len(images)) FILTER (status = 'ok'), 0) FROM raw_samples {where}", params
    ).fetchone()[0]


def build_image_pair_stats(
    conn: duckdb.DuckDBPyConnection,
    embedder: ClipEmbedder,
    *,
    batch_size: int,
    workers: int = DEFAULT_WORKERS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: ProgressCallback | None = None,
    shards: Sequence[str] | None = None,
    engine: EmbeddingEngine | None = None,
) -> ScoringReport:
    """Score every sample of `raw_samples` (of `shards` only, if given) into `image_pair_stats`, through the
    persistent embedding cache; only those shards' rows are replaced. The images to embed go through `engine`
    (default: in this process)."""
    cache = EmbeddingCache(conn.cursor(), embedder.model_key)
    with PairScorer(
        embedder, cache, batch_size=batch_size, workers=workers, max_image_pixels=max_image_pixels,
        on_progress=on_progress, engine=engine,
    ) as scorer:
        sample_chunks = (
            [Sample.from_row(row) for row in rows]
            for rows in store.iter_chunks(conn.cursor(), "raw_samples", chunk_size=chunk_size, shards=shards)
        )
        store.replace_table_in_chunks(conn, "image_pair_stats", scorer.score_all(sample_chunks), shards=shards)
    return scorer.report


def build_filtered_samples(
    conn: duckdb.DuckDBPyConnection,
    settings: FilterSettings,
    jsonl_path: Path,
    chunk_size: int = TABLE_CHUNK_SIZE,
) -> Counter:
    """Keep the samples of `image_pair_stats` that pass `settings`: the `filtered_samples` table and the JSONL
    file, both replaced whole; the file is published inside the table's transaction, so a failure anywhere
    leaves both as they were. Returns counts of total, scored and kept samples."""
    counts: Counter = Counter()

    def kept_in_chunks(reader: duckdb.DuckDBPyConnection, jsonl: StagedFile) -> Iterator[list[dict]]:
        columns = [name for name, _, _ in store.TABLES["filtered_samples"]] + ["status"]
        for rows in store.iter_chunks(reader, "image_pair_stats", columns, chunk_size=chunk_size):
            flags = keep_flags(((row["status"], row["image_pair_similarity"]) for row in rows), settings)
            kept = [
                {**row, "sample_json": dj_record(row["sample_json"], row["image_pair_similarity"])}
                for row, keep in zip(rows, flags)
                if keep
            ]
            counts.update(total=len(rows), scored=sum(r["status"] == Status.OK.value for r in rows), kept=len(kept))
            for row in kept:
                jsonl.write_line(row["sample_json"])
            yield kept

    with staged_file(jsonl_path) as jsonl:
        store.replace_table_in_chunks(
            conn, "filtered_samples", kept_in_chunks(conn.cursor(), jsonl), before_commit=jsonl.publish
        )
    return counts


def prune_removed_manifests(conn: duckdb.DuckDBPyConnection, raw_dir: Path) -> list[str]:
    """Delete from `raw_samples` and `image_pair_stats` the rows of shards whose manifest file is gone from
    `raw_dir`: the whole dataset is built from the manifests that exist. Creates both tables, empty, where no
    shard has been materialized yet. Returns the shards removed."""
    for table in ("raw_samples", "image_pair_stats"):
        store.ensure_table(conn, table)
    on_disk = set(manifest_names(raw_dir))
    stored = set(store.stored_shards(conn, "raw_samples")) | set(store.stored_shards(conn, "image_pair_stats"))
    removed = sorted(stored - on_disk)
    if removed:
        store.delete_shards(conn, ["raw_samples", "image_pair_stats"], removed)
    return removed
