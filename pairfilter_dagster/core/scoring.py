"""Pair scores, one bounded chunk of samples at a time.

For each chunk: hash the image files, take the embeddings already in the cache, hand the rest (cache misses) to an
embedding engine, store each batch of new embeddings in the cache as it arrives, then score each sample's pairs by
cosine similarity. Memory is bounded by the chunk size, never by the dataset: cross-chunk duplicates are found
through the cache. Only the scorer, in the Dagster step, writes the cache."""

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
from .images import ImageAccess, ImageFile, inspect_image_file
from .schema import Sample, StatsRow, Status

if TYPE_CHECKING:
    from .progress import ProgressCallback

T = TypeVar("T")


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
    seconds: float = 0.0
    status_counts: dict[Status, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.images_looked_up if self.images_looked_up else 0.0


class PairScorer:
    """Scores chunks of samples with one embedding engine, one cache and one pool of threads that hash image
    files."""

    def __init__(
        self,
        engine: EmbeddingEngine,
        cache: Cache | None = None,
        *,
        workers: int = DEFAULT_DECODE_WORKERS,
        access: ImageAccess = ImageAccess(),
        on_progress: "ProgressCallback | None" = None,
    ) -> None:
        self.engine = engine
        self.cache = cache if cache is not None else MemoryCache()
        self.access = access
        self.on_progress = on_progress
        self.report = ScoringReport()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pairfilter-hash")
        self._started = time.perf_counter()

    def __enter__(self) -> "PairScorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def score_chunk(self, samples: Sequence[Sample]) -> list[StatsRow]:
        paths = list(dict.fromkeys(p for s in samples if s.status is Status.OK for p in s.images))
        files = dict(zip(paths, self._pool.map(self._inspect, paths)))
        first_path: dict[str, str] = {}
        for image_file in files.values():
            if image_file.content_hash:
                first_path.setdefault(image_file.content_hash, image_file.path)

        embeddings = self.cache.get_many(first_path)
        todo = [(h, path) for h, path in first_path.items() if h not in embeddings]
        chunk_refs = sum(len(s.images) for s in samples if s.status is Status.OK)
        new, errors = self._embed(todo, chunk_refs)
        embeddings.update(new)

        rows = [stats_row(sample, files, embeddings, errors) for sample in samples]
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
            self.cache.put_many(batch.embeddings)  # committed per batch: a killed run keeps what it embedded
            embeddings.update(batch.embeddings)
            errors.update(batch.errors)
            self.report.forward_passes += batch.forward_passes
            self.report.images_embedded += len(batch.embeddings)
            done = (len(embeddings) + len(errors)) / len(todo)
            self._tick(self.report.image_refs + done * chunk_refs)  # image_refs: chunks before this one
        return embeddings, errors

    def _inspect(self, path: str) -> ImageFile:
        return inspect_image_file(path, self.access)

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
        scorer = stack.enter_context(PairScorer(engine, cache, workers=workers, access=access))
        rows = [row for chunk in chunked(samples, chunk_size) for row in scorer.score_chunk(chunk)]
    return rows, scorer.report


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def stats_row(
    sample: Sample,
    files: dict[str, ImageFile],
    embeddings: dict[str, np.ndarray],
    decode_errors: dict[str, str],
) -> StatsRow:
    status, error, scores = sample.status, sample.error, tuple[float, ...]()
    if status is Status.OK:
        status, error, vectors = vectors_for(sample.images, files, embeddings, decode_errors)
        if status is Status.OK:
            scores = tuple(cosine(vectors[i], vectors[j]) for i, j in sample.image_pairs)
    hashes = tuple(files[path].content_hash or "" for path in sample.images) if sample.status is Status.OK else ()
    return StatsRow(
        sample_id=sample.sample_id,
        manifest=sample.manifest,
        line_number=sample.line_number,
        images=sample.images,
        image_pair_similarity=scores,
        status=status,
        error=error,
        image_hashes=hashes,
        sample_json=sample.sample_json,
        image_pairs=sample.image_pairs if scores else (),
    )


def vectors_for(
    paths: Sequence[str],
    files: dict[str, ImageFile],
    embeddings: dict[str, np.ndarray],
    decode_errors: dict[str, str],
) -> tuple[Status, str, list[np.ndarray]]:
    """The embeddings of a sample's images, or the status and reason of its first unusable image."""
    vectors = []
    for path in paths:
        image_file = files[path]
        if image_file.status is not Status.OK:
            return image_file.status, image_file.error, []
        if image_file.content_hash in decode_errors:
            return Status.UNREADABLE_IMAGE, decode_errors[image_file.content_hash], []
        vectors.append(embeddings[str(image_file.content_hash)])
    return Status.OK, "", vectors


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two unit vectors: their dot product, accumulated in float64 and clipped to [-1, 1]
    (float32 rounding can put identical images at 1.0000001, which max_score=1.0 would wrongly drop)."""
    return float(np.clip(np.dot(a.astype(np.float64), b.astype(np.float64)), -1.0, 1.0))
