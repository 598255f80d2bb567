"""Pair scores, streamed in bounded chunks of samples.

For each chunk: hash the image files, take the embeddings already in the cache, hand the rest (cache misses) to an
embedding engine, store each batch of new embeddings in the cache as it arrives, then score each sample's pairs by
cosine similarity. Memory is bounded by the chunk size, never by the dataset: cross-chunk duplicates are found
through the cache. The engine only turns image files into embeddings: `LocalEngine` decodes in worker threads while
the model embeds the previous batch, in this process; `core.ray_engine.RayEngine` does the same on a Ray cluster.
Only the scorer, in the Dagster step, writes the cache."""

import itertools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from .embedding import ClipEmbedder
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, ImageFile, decode_rgb, inspect_image_file
from .samples import Sample
from .status import Status

DEFAULT_CHUNK_SIZE = 512
DEFAULT_WORKERS = 2


class Cache(Protocol):
    def get_many(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]: ...
    def put_many(self, embeddings: dict[str, np.ndarray]) -> None: ...


class MemoryCache:
    """A cache that lives as long as the scorer: deduplication within one run, nothing kept after it."""

    def __init__(self) -> None:
        self.embeddings: dict[str, np.ndarray] = {}

    def get_many(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        return {h: self.embeddings[h] for h in content_hashes if h in self.embeddings}

    def put_many(self, embeddings: dict[str, np.ndarray]) -> None:
        self.embeddings.update(embeddings)


@dataclass
class StatsRow:
    """One row of the stats table: a sample, its pair scores, its status."""

    sample_id: str
    manifest: str
    line_number: int
    images: list[str]
    image_hashes: list[str]
    image_pair_similarity: list[float]
    status: str
    error: str
    sample_json: str
    image_pairs: list[list[int]] = field(default_factory=list)
    """The index pairs scored, aligned with image_pair_similarity (empty when not ok)."""


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
    status_counts: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.images_looked_up if self.images_looked_up else 0.0


@dataclass
class EmbeddedBatch:
    """What an engine hands back for some of the images it was given: their unit-length float32 embeddings, the
    reasons the others could not be decoded or preprocessed, and the forward passes that took."""

    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    forward_passes: int = 0


class EmbeddingEngine(Protocol):
    def embed(self, todo: list[tuple[str, str]]) -> Iterator[EmbeddedBatch]:
        """Embed (content hash, path) items, each exactly once (as an embedding or an error), in batches."""
        ...


def prepare_pixels(preprocess: Callable[[Any], np.ndarray], path: str) -> np.ndarray | str:
    """One image file's pixel values, or why it cannot be used: every engine gives the same reason."""
    try:
        return preprocess(decode_rgb(path))
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # the processor can refuse odd images (e.g. 1x1 pixels)
        return f"cannot preprocess {path}: {type(exc).__name__}: {exc}"


class LocalEngine:
    """In-process embedding: worker threads decode and preprocess up to two batches ahead while the model embeds
    the current one."""

    def __init__(self, embedder: ClipEmbedder, pool: ThreadPoolExecutor, *, batch_size: int) -> None:
        self.embedder = embedder
        self.pool = pool
        self.batch_size = batch_size

    def embed(self, todo: list[tuple[str, str]]) -> Iterator[EmbeddedBatch]:
        batch = EmbeddedBatch()
        hashes: list[str] = []
        pixels: list[np.ndarray] = []
        for content_hash, prepared in self._prepared(todo):
            if isinstance(prepared, str):
                batch.errors[content_hash] = prepared
                continue
            hashes.append(content_hash)
            pixels.append(prepared)
            if len(pixels) == self.batch_size:
                yield self._embedded(batch, hashes, pixels)
                batch, hashes, pixels = EmbeddedBatch(), [], []
        if pixels or batch.errors:
            yield self._embedded(batch, hashes, pixels)

    def _embedded(self, batch: EmbeddedBatch, hashes: list[str], pixels: list[np.ndarray]) -> EmbeddedBatch:
        if pixels:
            passes_before = self.embedder.forward_passes
            batch.embeddings = dict(zip(hashes, self.embedder.embed_pixels(np.stack(pixels))))
            batch.forward_passes = self.embedder.forward_passes - passes_before
        return batch

    def _prepared(self, todo: list[tuple[str, str]]) -> Iterator[tuple[str, np.ndarray | str]]:
        """Decoded, preprocessed pixels (or a decode error) in input order, at most two batches ahead."""
        items = iter(todo)
        pending = deque(
            (h, self.pool.submit(prepare_pixels, self.embedder.preprocess, path))
            for h, path in itertools.islice(items, 2 * self.batch_size)
        )
        while pending:
            content_hash, future = pending.popleft()
            following = next(items, None)
            if following is not None:
                pending.append((following[0], self.pool.submit(prepare_pixels, self.embedder.preprocess, following[1])))
            yield content_hash, future.result()


ProgressCallback = Callable[[ScoringReport, float], None]
"""Called after each batch with the running report and the estimated image references done so far."""


def progress_logger(log: Callable[[str], None], refs_total: int, every_seconds: float = 5.0) -> ProgressCallback:
    """A progress callback that writes one line at most every few seconds, and always at the end."""
    last = [-float("inf")]

    def report_progress(report: ScoringReport, refs_done: float) -> None:
        finished = refs_done >= refs_total
        if not finished and time.monotonic() - last[0] < every_seconds:
            return
        last[0] = time.monotonic()
        rate = refs_done / report.seconds if report.seconds > 0 else 0.0
        eta = f"{(refs_total - refs_done) / rate:.0f} s" if rate > 0 else "unknown"
        log(
            f"Images {refs_done:.0f}/{refs_total} ({rate:.1f}/s, ETA {eta}): {report.images_embedded} embedded, "
            f"{report.cache_hits} from cache, {report.images_per_second:.1f} embedded/s"
        )

    return report_progress


class PairScorer:
    """Scores chunks of samples with one embedding engine (by default a `LocalEngine` over `embedder`), one cache
    and one pool of worker threads (hashing; decoding for the local engine)."""

    def __init__(
        self,
        embedder: ClipEmbedder,
        cache: Cache | None = None,
        *,
        batch_size: int,
        workers: int = DEFAULT_WORKERS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        on_progress: ProgressCallback | None = None,
        engine: EmbeddingEngine | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"workers: must be at least 1, got {workers}")
        self.embedder = embedder
        self.cache = cache if cache is not None else MemoryCache()
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels
        self.on_progress = on_progress
        self.report = ScoringReport()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pairfilter-decode")
        self.engine = engine if engine is not None else LocalEngine(embedder, self._pool, batch_size=batch_size)
        self._started = time.perf_counter()

    def __enter__(self) -> "PairScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def score_chunk(self, samples: Sequence[Sample]) -> list[StatsRow]:
        paths = list(dict.fromkeys(p for s in samples if s.status is Status.OK for p in s.images))
        files = dict(zip(paths, self._pool.map(self._inspect, paths)))
        first_path = {}
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

    def score_all(self, chunks: Iterable[Sequence[Sample]]) -> Iterator[list[StatsRow]]:
        for chunk in chunks:
            yield self.score_chunk(chunk)

    def _embed(self, todo: list[tuple[str, str]], chunk_refs: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Embed (content hash, path) items through the engine, storing each batch in the cache as it arrives."""
        embeddings: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        for batch in self.engine.embed(todo):
            self.cache.put_many(batch.embeddings)  # committed per batch: a killed run keeps what it embedded
            embeddings.update(batch.embeddings)
            errors.update(batch.errors)
            self.report.forward_passes += batch.forward_passes
            self.report.images_embedded += len(batch.embeddings)
            done = (len(embeddings) + len(errors)) / len(todo)
            self._tick(self.report.image_refs + done * chunk_refs)  # image_refs: chunks before this one
        return embeddings, errors

    def _inspect(self, path: str) -> ImageFile:
        return inspect_image_file(path, self.max_image_pixels)

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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = DEFAULT_WORKERS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    engine: EmbeddingEngine | None = None,
) -> tuple[list[StatsRow], ScoringReport]:
    """Score samples held in memory (small datasets, tests); pipelines stream with `PairScorer.score_all`."""
    with PairScorer(
        embedder, cache, batch_size=batch_size, workers=workers, max_image_pixels=max_image_pixels, engine=engine
    ) as scorer:
        rows = [row for chunk in scorer.score_all(chunked(samples, chunk_size)) for row in chunk]
    return rows, scorer.report


def chunked(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def stats_row(
    sample: Sample,
    files: dict[str, ImageFile],
    embeddings: dict[str, np.ndarray],
    decode_errors: dict[str, str],
) -> StatsRow:
    status, error, scores = sample.status, sample.error, []
    if status is Status.OK:
        status, error, vectors = vectors_for(sample.images, files, embeddings, decode_errors)
        if status is Status.OK:
            scores = [cosine(vectors[i], vectors[j]) for i, j in sample.image_pairs]
    hashes = [files[path].content_hash or "" for path in sample.images] if sample.status is Status.OK else []
    return StatsRow(
        sample_id=sample.sample_id,
        manifest=sample.manifest,
        line_number=sample.line_number,
        images=list(sample.images),
        image_hashes=hashes,
        image_pair_similarity=scores,
        status=str(status),
        error=error,
        sample_json=sample.sample_json,
        image_pairs=[list(pair) for pair in sample.image_pairs] if scores else [],
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
        vectors.append(embeddings[image_file.content_hash])
    return Status.OK, "", vectors


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two unit vectors: their dot product, accumulated in float64 and clipped to [-1, 1]
    (float32 rounding can put identical images at 1.0000001, which max_score=1.0 would wrongly drop)."""
    return float(np.clip(np.dot(a.astype(np.float64), b.astype(np.float64)), -1.0, 1.0))
