"""The work behind each asset, Dagster-free, each one visible loop: read a chunk, decide, write the chunk, count.

Every stage holds one chunk of rows in memory at a time and replaces its table (or its shards' rows) through one
`store.table_writer`, which commits when its block ends; an output file is published as the block's last step, so
a failure anywhere leaves the previous table and file as they were."""

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import duckdb

from . import publish, store
from .embedding.cache import EmbeddingCache
from .embedding.engine import EmbeddingEngine
from .embedding.model import ClipEmbedder
from .file_hashes import FileHashes
from .filtering import FilterSettings, keep_row
from .images import ImageAccess
from .ingest.formats import shard_format
from .ingest.manifests import ShardListing
from .locations import AnyPath
from .progress import ProgressCallback
from .schema import FilteredRow, Sample, StatsRow, Status, column_names
from .scoring import PairScorer, ScoringReport, StageTimer, chunked

FILTER_READS = [*column_names(FilteredRow), "status"]
"""What filtering needs of a stats row: the keep decision and the filtered row."""
TABLE_CHUNK_SIZE = 10_000
"""Rows per chunk where no model runs (ingesting, filtering): large enough to amortise each insert."""


def ingest(
    conn: duckdb.DuckDBPyConnection,
    samples: Iterable[Sample],
    shards: Sequence[str] | None = None,
    chunk_size: int = TABLE_CHUNK_SIZE,
) -> Counter[Status]:
    """Replace `raw_samples` (only the rows of `shards`, if given) with the samples; returns the count per status."""
    counts: Counter[Status] = Counter()
    with store.table_writer(conn, Sample, shards) as table:
        for chunk in chunked(samples, chunk_size):
            table.write(chunk)
            counts.update(sample.status for sample in chunk)
    return counts


def score(
    conn: duckdb.DuckDBPyConnection,
    embedder: ClipEmbedder,
    engine: EmbeddingEngine,
    *,
    access: ImageAccess = ImageAccess(),
    on_progress: ProgressCallback | None = None,
    shards: Sequence[str] | None = None,
) -> ScoringReport:
    """Score every sample of `raw_samples` (of `shards` only, if given) into `image_pair_stats`, through the
    persistent embedding cache and the remembered hashes of unchanged files; only those shards' rows are
    replaced."""
    cache = EmbeddingCache(conn.cursor(), embedder.model_key)
    chunks = store.read_rows(conn.cursor(), Sample, shards, chunk_size=engine.chunk_samples)
    with PairScorer(engine, cache, access=access, file_hashes=FileHashes(conn.cursor()), on_progress=on_progress) \
            as scorer, store.table_writer(conn, StatsRow, shards) as table:
        timer = StageTimer(scorer.report.stage_seconds)
        for samples in chunks:
            timer.lap("read")
            rows = scorer.score_chunk(samples)
            timer.skip()
            table.write(rows)
            timer.lap("write")
    return scorer.report


@dataclass
class FilterCounts:
    total: int = 0
    scored: int = 0
    kept: int = 0

    @property
    def dropped(self) -> int:
        return self.scored - self.kept


def filter_and_publish(
    conn: duckdb.DuckDBPyConnection,
    settings: FilterSettings,
    jsonl_path: AnyPath,
    raw_dir: AnyPath,
    chunk_size: int = TABLE_CHUNK_SIZE,
) -> FilterCounts:
    """Keep the samples of `image_pair_stats` that pass `settings`: the `filtered_samples` table (every shard) and
    the whole-dataset JSONL (the samples of JSONL shards), both replaced whole; the lines' image paths, relative to
    their manifest in `raw_dir`, are rewritten relative to the file's folder. The file is renamed into place after
    the table commits; the commit records that rename, so that a kill between the two is completed by the next
    connection (`publish.complete_pending`)."""
    if settings.unresolved:
        raise ValueError(f"{settings.share}: resolve the share of the data to bounds first (share.resolve_share)")
    counts = FilterCounts()
    publish.complete_pending(conn)
    with publish.staged_file(jsonl_path) as jsonl:
        with store.table_writer(conn, FilteredRow) as table:
            for rows in store.read_rows(conn.cursor(), StatsRow, chunk_size=chunk_size, only=FILTER_READS):
                kept = [publish.filtered_row(row, raw_dir, jsonl_path.parent) for row in rows if keep_row(row, settings)]
                table.write(kept)
                jsonl.write_lines([row.sample_json for row in kept if shard_format(row.manifest) == "jsonl"])
                counts.total += len(rows)
                counts.scored += sum(row.status is Status.OK for row in rows)
                counts.kept += len(kept)
            publish.record_pending(conn, jsonl)
        publish.publish_recorded(conn, jsonl)
    return counts


def prune_removed_manifests(conn: duckdb.DuckDBPyConnection, listing: ShardListing) -> list[str]:
    """Delete from `raw_samples` and `image_pair_stats` the rows of shards whose manifest is really gone (not
    listed, and not under a folder that could not be read): the whole dataset is built from the manifests that
    exist. Creates both tables, empty, where no shard has been materialized yet. Returns the shards removed."""
    for row_type in (Sample, StatsRow):
        store.ensure_table(conn, row_type)
    stored = set(store.stored_shards(conn, Sample.TABLE)) | set(store.stored_shards(conn, StatsRow.TABLE))
    removed = sorted(shard for shard in stored if not listing.may_hold(shard))
    if removed:
        store.delete_shards(conn, [Sample, StatsRow], removed)
    return removed
