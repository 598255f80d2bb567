"""Pair scores, one bounded chunk of samples at a time.

For each chunk: hash the image files, take the embeddings already in the cache, hand the rest (cache misses) to an
embedding engine, give each batch of new embeddings to the cache as it arrives (the file cache writes them a block
at a time), then score each sample's pairs by cosine similarity. Memory is bounded by the chunk size, never by the
dataset: cross-chunk duplicates are found through the cache. Only the scorer, in the Dagster step, writes the
cache."""

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .embedding.cache import Cache, MemoryCache
from .embedding.engine import EmbeddingEngine
from .embedding.local import DEFAULT_CHUNK_SAMPLES, DEFAULT_DECODE_WORKERS, LocalEngine
from .embedding.model import ClipEmbedder
from .file_hashes import FileHashes
from .held_reads import HELD_READS
from .images import ImageAccess, ImageFile, inspect_image_file, is_local_file
from .locations import read_remotely
from .processes import WorkerProcesses, available_cores, processes_allowed
from .schema import Sample, StatsRow, Status

if TYPE_CHECKING:
    from .progress import ProgressCallback

T = TypeVar("T")
HASH_BATCH = 64
"""Image files per hashing task: one task per file cost as much as a small file's hash."""
HASH_IN_PROCESSES_FROM = 1024
"""Image files in a chunk from which hashing processes are started (once per scorer; a start costs about 0.3 s, 3,000
files' worth of the time they save); fewer are hashed in the step's process."""
DEFAULT_HASH_WORKERS = available_cores()
"""Hashing processes: the step waits while they work, so every core hashes (2 cores: 0.6x the time per file of
hashing in the step's own process)."""


@dataclass
class ScoringReport:
    samples: int = 0
    image_refs: int = 0
    images_looked_up: int = 0
    """Distinct images per chunk, summed: each was a cache hit, embedded, or failed to decode."""
    cache_hits: int = 0
    images_embedded: int = 0
    forward_passes: int = 0
    decode_failures: int = 0
    hashes_remembered: int = 0
    """Local image files not read again: their remembered hash still holds (`file_hashes`)."""
    seconds: float = 0.0
    status_counts: dict[Status, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per stage of the work outside the model: hash (reading and hashing files), cache (lookups), embed
    (the engine, model included), rows (scores and rows); `stages.score` adds read and write (the tables)."""

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.images_looked_up if self.images_looked_up else 0.0


class PairScorer:
    """Scores chunks of samples with one embedding engine, one cache, worker processes that hash local image files
    (`processes.WorkerProcesses`, started on the first chunk that needs them), threads that read remote ones, and
    the remembered hashes of unchanged files (`file_hashes`)."""

    def __init__(
        self,
        engine: EmbeddingEngine,
        cache: Cache | None = None,
        *,
        hash_workers: int = DEFAULT_HASH_WORKERS,
        access: ImageAccess = ImageAccess(),
        file_hashes: FileHashes | None = None,
        on_progress: "ProgressCallback | None" = None,
    ) -> None:
        self.engine = engine
        self.cache = cache if cache is not None else MemoryCache()
        self.access = access
        self.on_progress = on_progress
        self.report = ScoringReport()
        self.hash_workers = hash_workers
        self.file_hashes = file_hashes
        self._hashing: WorkerProcesses | None = None
        self._reads: ThreadPoolExecutor | None = None
        self._started = time.perf_counter()

    def __enter__(self) -> "PairScorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._hashing is not None:
            self._hashing.close()
            self._hashing = None
        if self._reads is not None:
            self._reads.shutdown(wait=True, cancel_futures=True)
            self._reads = None

    def score_chunk(self, samples: Sequence[Sample]) -> list[StatsRow]:
        timer = StageTimer(self.report.stage_seconds)
        HELD_READS.clear()
        paths = list(dict.fromkeys(p for s in samples if s.status is Status.OK for p in s.images))
        files = {image_file.path: image_file for image_file in self._inspect(paths)}
        first_path: dict[str, str] = {}
        for image_file in files.values():
            if image_file.content_hash:
                first_path.setdefault(image_file.content_hash, image_file.path)
        timer.lap("hash")

        embeddings = self.cache.get_many(first_path)
        todo = [(h, path) for h, path in first_path.items() if h not in embeddings]
        chunk_refs = sum(len(s.images) for s in samples if s.status is Status.OK)
        timer.lap("cache")
        new, errors = self._embed(todo, chunk_refs)
        HELD_READS.clear()
        embeddings.update(new)
        timer.lap("embed")

        rows = stats_rows(samples, files, embeddings, errors)
        timer.lap("rows")
        r = self.report
        r.samples += len(samples)
        r.image_refs += chunk_refs
        r.images_looked_up += len(first_path)
        r.cache_hits += len(first_path) - len(todo)
        r.decode_failures += len(errors)
        for row in rows:
            r.status_counts[row.status] = r.status_counts.get(row.status, 0) + 1
        self._tick(float(r.image_refs))
        return rows

    def _embed(self, todo: list[tuple[str, str]], chunk_refs: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Embed (content hash, path) items through the engine, storing each batch in the cache as it arrives."""
        embeddings: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        for batch in self.engine.embed(todo, self.access):
            self.cache.put_many(batch.embeddings)  # kept a block at a time: a killed run keeps what it wrote
            embeddings.update(batch.embeddings)
            errors.update(batch.errors)
            self.report.forward_passes += batch.forward_passes
            self.report.images_embedded += len(batch.embeddings)
            done = (len(embeddings) + len(errors)) / len(todo)
            self._tick(self.report.image_refs + done * chunk_refs)  # image_refs: chunks before this one
        return embeddings, errors

    def _inspect(self, paths: list[str]) -> list[ImageFile]:
        remote = [path for path in paths if read_remotely(path)]
        if not remote:
            return self._inspect_local(paths)
        if self._reads is None:
            self._reads = ThreadPoolExecutor(self.access.concurrent_reads, thread_name_prefix="pairfilter-read")
        found = dict(zip(remote, self._reads.map(inspect_image_file, remote, itertools.repeat(self.access))))
        local = [path for path in paths if path not in found]
        found.update(zip(local, self._inspect_local(local)))
        return [found[path] for path in paths]

    def _inspect_local(self, paths: list[str]) -> list[ImageFile]:
        """Hashed files whose remembered hash holds are not read again (`file_hashes`); the others are read."""
        if self.file_hashes is None:
            return self._read_and_hash(paths)
        known = self.file_hashes.known([path for path in paths if is_local_file(path)], self.access)
        read = self._read_and_hash([path for path in paths if path not in known])
        self.file_hashes.remember(read)
        self.report.hashes_remembered += len(known)
        found = {**known, **{image_file.path: image_file for image_file in read}}
        return [found[path] for path in paths]

    def _read_and_hash(self, paths: list[str]) -> list[ImageFile]:
        if len(paths) < HASH_IN_PROCESSES_FROM or self.hash_workers < 2 or not processes_allowed():
            return inspect_image_files(paths, self.access)
        if self._hashing is None:
            self._hashing = WorkerProcesses(self.hash_workers)
        batches = self._hashing.pool.map(inspect_image_files, chunked(paths, HASH_BATCH), itertools.repeat(self.access))
        return [image_file for batch in batches for image_file in batch]

    def _tick(self, refs_done: float) -> None:
        self.report.seconds = time.perf_counter() - self._started
        if self.on_progress:
            self.on_progress(self.report, refs_done)


def score_samples(
    samples: Iterable[Sample],
    embedder: ClipEmbedder,
    *,
    batch_size: int,
    cache: Cache | None = None,
    chunk_size: int = DEFAULT_CHUNK_SAMPLES,
    workers: int = DEFAULT_DECODE_WORKERS,
    access: ImageAccess = ImageAccess(),
    engine: EmbeddingEngine | None = None,
) -> tuple[list[StatsRow], ScoringReport]:
    """Score samples held in memory (a notebook, a small dataset) with `engine`, by default a `LocalEngine` over
    `embedder`; the pipeline streams through `stages`."""
    with ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(LocalEngine(embedder, batch_size=batch_size, workers=workers))
        scorer = stack.enter_context(PairScorer(engine, cache, access=access))
        rows = [row for chunk in chunked(samples, chunk_size) for row in scorer.score_chunk(chunk)]
    return rows, scorer.report


def inspect_image_files(paths: list[str], access: ImageAccess) -> list[ImageFile]:
    return [inspect_image_file(path, access) for path in paths]


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class StageTimer:
    """Adds the seconds since the previous lap to a stage's total."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals
        self.started = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + now - self.started
        self.started = now

    def skip(self) -> None:
        """Start the next lap now: the time since the previous one is another stage's (counted elsewhere)."""
        self.started = time.perf_counter()


def stats_rows(
    samples: Sequence[Sample],
    files: dict[str, ImageFile],
    embeddings: dict[str, np.ndarray],
    decode_errors: dict[str, str],
) -> list[StatsRow]:
    """The rows of a chunk, every pair's score of the chunk computed in one vectorised product."""
    position = {content_hash: i for i, content_hash in enumerate(embeddings)}
    outcomes = [outcome(sample, files, decode_errors) for sample in samples]
    pairs = [(position[hashes[i]], position[hashes[j]])
             for sample, (status, _, hashes) in zip(samples, outcomes) if status is Status.OK
             for i, j in sample.image_pairs]
    scores = iter(pair_cosines(embeddings, pairs).tolist())
    rows = []
    for sample, (status, error, _) in zip(samples, outcomes):
        ok = status is Status.OK
        rows.append(StatsRow(
            sample_id=sample.sample_id,
            manifest=sample.manifest,
            line_number=sample.line_number,
            images=sample.images,
            image_pair_similarity=tuple(itertools.islice(scores, len(sample.image_pairs))) if ok else (),
            status=status,
            error=error,
            image_hashes=tuple(files[path].content_hash or "" for path in sample.images)
            if sample.status is Status.OK else (),
            sample_json=sample.sample_json,
            image_pairs=sample.image_pairs if ok and sample.image_pairs else (),
        ))
    return rows


def outcome(sample: Sample, files: dict[str, ImageFile], decode_errors: dict[str, str]) -> tuple[Status, str, list[str]]:
    """A sample's status and reason, and the content hashes of its images: the status and reason of its first
    unusable image, if any."""
    if sample.status is not Status.OK:
        return sample.status, sample.error, []
    hashes = []
    for path in sample.images:
        image_file = files[path]
        if image_file.status is not Status.OK:
            return image_file.status, image_file.error, []
        if image_file.content_hash in decode_errors:
            return Status.UNREADABLE_IMAGE, decode_errors[image_file.content_hash], []
        hashes.append(str(image_file.content_hash))
    return Status.OK, "", hashes


def pair_cosines(embeddings: dict[str, np.ndarray], pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Cosine similarity of unit vectors (rows of `embeddings` by position): their dot product, accumulated in
    float64 and clipped to [-1, 1] (float32 rounding can put identical images at 1.0000001, which max_score=1.0
    would wrongly drop)."""
    if not pairs:
        return np.zeros(0)
    vectors = np.stack(list(embeddings.values())).astype(np.float64)
    left, right = np.asarray(pairs).T
    return np.clip(np.einsum("ij,ij->i", vectors[left], vectors[right]), -1.0, 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """`pair_cosines` of one pair."""
    return float(pair_cosines({"a": a, "b": b}, [(0, 1)])[0])
