"""The local engine: in the step's own process, worker threads decode and preprocess up to two batches ahead
while the model embeds the current one."""

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from ..images import ImageAccess
from .engine import EmbeddedBatch, prepare_pixels
from .model import ClipEmbedder

DEFAULT_CHUNK_SAMPLES = 512
DEFAULT_DECODE_WORKERS = 2


class LocalEngine:
    def __init__(self, embedder: ClipEmbedder, *, batch_size: int, workers: int = DEFAULT_DECODE_WORKERS,
                 chunk_samples: int = DEFAULT_CHUNK_SAMPLES) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"decode_workers: must be at least 1, got {workers}")
        self.embedder = embedder
        self.batch_size = batch_size
        self.chunk_samples = chunk_samples
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pairfilter-decode")

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def embed(self, todo: list[tuple[str, str]], access: ImageAccess) -> Iterator[EmbeddedBatch]:
        batch = EmbeddedBatch()
        hashes: list[str] = []
        pixels: list[np.ndarray] = []
        for content_hash, prepared in self._prepared(todo, access):
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

    def _prepared(self, todo: list[tuple[str, str]], access: ImageAccess) -> Iterator[tuple[str, np.ndarray | str]]:
        """Decoded, preprocessed pixels (or a decode error) in input order, at most two batches ahead."""
        items = iter(todo)
        submit = lambda item: self._pool.submit(prepare_pixels, self.embedder.preparation, item[1], item[0], access)  # noqa: E731
        pending = deque((item[0], submit(item)) for item in itertools.islice(items, 2 * self.batch_size))
        while pending:
            content_hash, future = pending.popleft()
            following = next(items, None)
            if following is not None:
                pending.append((following[0], submit(following)))
            yield content_hash, future.result()
