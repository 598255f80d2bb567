"""The work behind each asset, Dagster-free, each one visible loop: read a chunk, decide, write the chunk, count.

Every stage holds one chunk of rows in memory at a time and writes its results as files (`results`): a shard's
file appears whole when its stage ends, so a failure anywhere leaves the previous file as it was, and stages of
different shards never write the same file, so they run at once without a lock."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from . import publish
from .embedding.cache_files import DEFAULT_BLOCK, EmbeddingFiles
from .embedding.engine import EmbeddingEngine
from .embedding.model import ClipEmbedder
from .file_hashes import FileHashes
from .filtering import FilterSettings, keep_row
from .images import ImageAccess
from .ingest.formats import read_shards, shard_format
from .ingest.manifests import ShardListing
from .ingest.samples import SampleRules
from .locations import AnyPath
from .progress import ProgressCallback
from .results import SHARD_TABLES, ResultFiles
from .schema import FilteredRow, Sample, StatsRow, Status, column_names
from .scoring import PairScorer, ScoringReport, StageTimer, chunked
from .tables import TableFileWriter, read_rows, table_file

FILTER_READS = [*column_names(FilteredRow), "status"]
"""What filtering needs of a stats row: the keep decision and the filtered row."""
TABLE_CHUNK_SIZE = 10_000
"""Rows per chunk where no model runs (ingesting, filtering): large enough to amortise each write."""


def ingest(
    results: ResultFiles,
    shards: Mapping[str, AnyPath],
    rules: SampleRules,
    chunk_size: int = TABLE_CHUNK_SIZE,
) -> Counter[Status]:
    """Replace each shard's samples file with the samples read from its file ({shard: path}); returns the count
    per status."""
    counts: Counter[Status] = Counter()
    for shard in sorted(shards):
        with table_file(results.shard_file(Sample, shard), Sample, shard) as table:
            for chunk in chunked(read_shards({shard: shards[shard]}, rules), chunk_size):
                table.write(chunk)
                counts.update(sample.status for sample in chunk)
    return counts


def score(
    results: ResultFiles,
    shards: Sequence[str],
    embedder: ClipEmbedder,
    engine: EmbeddingEngine,
    *,
    access: ImageAccess = ImageAccess(),
    on_progress: ProgressCallback | None = None,
    file_hashes: Path | None = None,
    block: int = DEFAULT_BLOCK,
) -> ScoringReport:
    """Score every sample of the shards' samples files into their stats files, through the embedding cache files
    (new embeddings written a block at a time, in the shard's cache folder) and the remembered hashes of unchanged
    files (one file per shard under `file_hashes`). A shard without a samples file (never ingested: its manifest
    could not be read) has no samples, so no stats: it is skipped, and a stats file left of it is removed."""
    missing = [shard for shard in shards if not results.shard_file(Sample, shard).exists()]
    for shard in missing:
        stale = results.shard_file(StatsRow, shard)
        if stale.exists():
            stale.unlink()
    shards = [shard for shard in shards if shard not in missing]
    with EmbeddingFiles(results, embedder.model_key, block=block) as cache, \
            PairScorer(engine, cache, access=access, on_progress=on_progress) as scorer:
        for shard in shards:
            cache.shard = shard
            scorer.file_hashes = FileHashes(file_hashes / f"{shard}.parquet" if file_hashes else None)
            with table_file(results.shard_file(StatsRow, shard), StatsRow, shard) as table:
                timer = StageTimer(scorer.report.stage_seconds)
                for samples in read_rows(results.shard_file(Sample, shard), Sample, engine.chunk_samples):
                    timer.lap("read")
                    rows = scorer.score_chunk(samples)
                    timer.skip()
                    table.write(rows)
                    timer.lap("write")
                cache.flush()  # every embedding the stats rely on is in a file before the stats appear
            scorer.file_hashes.save()
    return scorer.report


@dataclass
class FilterCounts:
    total: int = 0
    scored: int = 0
    kept: int = 0
    shards: list[str] = field(default_factory=list)
    """The shards whose stats were read."""

    @property
    def dropped(self) -> int:
        return self.scored - self.kept


def filter_and_publish(
    results: ResultFiles,
    settings: FilterSettings,
    jsonl_path: AnyPath,
    raw_dir: AnyPath,
    record_folder: Path,
    chunk_size: int = TABLE_CHUNK_SIZE,
) -> FilterCounts:
    """Keep the samples of every shard's stats file that pass `settings`: the filtered table file (every shard)
    and the whole-dataset JSONL (the samples of JSONL shards), both replaced whole and published together; the
    lines' image paths, relative to their manifest in `raw_dir`, are rewritten relative to the JSONL's folder."""
    if settings.unresolved:
        raise ValueError(f"{settings.share}: resolve the share of the data to bounds first (share.resolve_share)")
    counts = FilterCounts()
    publish.complete_pending(record_folder, results.storage_options)
    with publish.staged_file(results.filtered_file) as table_staged, publish.staged_file(jsonl_path) as jsonl:
        table = TableFileWriter(table_staged, FilteredRow, None)
        try:
            counts.shards = results.shards(StatsRow)
            for shard in counts.shards:
                for rows in read_rows(results.shard_file(StatsRow, shard), StatsRow, chunk_size, FILTER_READS):
                    kept = [publish.filtered_row(row, raw_dir, jsonl_path.parent) for row in rows
                            if keep_row(row, settings)]
                    table.write(kept)
                    jsonl.write_lines([row.sample_json for row in kept if shard_format(row.manifest) == "jsonl"])
                    counts.total += len(rows)
                    counts.scored += sum(row.status is Status.OK for row in rows)
                    counts.kept += len(kept)
        finally:
            table.close()
        publish.publish_together([table_staged, jsonl], record_folder)
    return counts


def prune_removed_manifests(results: ResultFiles, listing: ShardListing) -> list[str]:
    """Delete the samples and stats files of shards whose manifest is really gone (not listed, and not under a
    folder that could not be read): the whole dataset is built from the manifests that exist. Returns the shards
    removed."""
    stored = {shard for row_type in SHARD_TABLES for shard in results.shards(row_type)}
    removed = sorted(shard for shard in stored if not listing.may_hold(shard))
    results.remove(removed)
    return removed

