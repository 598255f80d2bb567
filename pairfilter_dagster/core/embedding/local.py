"""The local engine: in the step's own process the model embeds the current batch while decode workers decode and
preprocess up to two batches ahead: threads, or worker processes (`processes.WorkerProcesses`). Either starts on
the first images to embed, so a run that finds everything in the cache starts none.

Threads by default, one per core: on 2 cores they gave the most pairs/s with precision exact, processes 5-25% fewer
across runs (with fast, the runs were too noisy to rank them; docs/performance.md#the-worker-split); processes may
pay where many cores decode for a GPU (benchmarks/gpu_check measures both)."""

import itertools
import sys
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from ..images import ImageAccess
from ..processes import WorkerProcesses, available_cores, processes_allowed, readable_in_workers
from .engine import EmbeddedBatch, prepare_pixels
from .model import ClipEmbedder
from .preprocess import ImagePreparation

DEFAULT_CHUNK_SAMPLES = 4096
"""Samples per scoring chunk: the cache is looked up once per chunk, and a lookup scans the cache's hashes, so
larger chunks cost less per sample (512 took 6x as long per sample against a 200,000-image cache)."""
DEFAULT_DECODE_WORKERS = available_cores()

_worker_preparation: ImagePreparation | None = None


def _hold_preparation(preparation: ImagePreparation) -> None:
    global _worker_preparation
    _worker_preparation = preparation
    torch = sys.modules.get("torch")  # imported by transformers in the forkserver
    if torch is not None:
        torch.set_num_threads(1)  # a processor on the torchvision backend runs torch ops; the workers are the parallelism


def _prepare_in_worker(path: str, content_hash: str, access: ImageAccess) -> np.ndarray | str:
    assert _worker_preparation is not None, "the decode worker was started without its image preparation"
    return prepare_pixels(_worker_preparation, path, content_hash, access)


class LocalEngine:
    def __init__(self, embedder: ClipEmbedder, *, batch_size: int, workers: int = DEFAULT_DECODE_WORKERS,
                 chunk_samples: int = DEFAULT_CHUNK_SAMPLES, processes: bool = False) -> None:
        """`processes`: decode in worker processes (where `processes_allowed`; else threads)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"decode_workers: must be at least 1, got {workers}")
        self.embedder = embedder
        self.batch_size = batch_size
        self.chunk_samples = chunk_samples
        self.workers = workers
        self.processes = processes and processes_allowed()
        self._pool: Executor | None = None
        self._processes: WorkerProcesses | None = None

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._processes is not None:
            self._processes.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._processes = None

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

    def _started_pool(self, processes: bool) -> Executor:
        preparation = self.embedder.preparation
        if processes:
            if self._processes is None:
                self._processes = WorkerProcesses(self.workers, initializer=_hold_preparation, initargs=(preparation,),
                                                  preload=[type(preparation.image_processor).__module__])
            return self._processes.pool
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pairfilter-decode")
        return self._pool

    def _prepared(self, todo: list[tuple[str, str]], access: ImageAccess) -> Iterator[tuple[str, np.ndarray | str]]:
        """Decoded, preprocessed pixels (or a decode error) in input order, at most two batches ahead."""
        if not todo:
            return
        processes = self.processes and readable_in_workers(path for _, path in todo)
        pool, preparation = self._started_pool(processes), self.embedder.preparation
        if processes:
            submit = lambda item: pool.submit(_prepare_in_worker, item[1], item[0], access)
        else:
            submit = lambda item: pool.submit(prepare_pixels, preparation, item[1], item[0], access)
        items = iter(todo)
        pending = deque((item[0], submit(item)) for item in itertools.islice(items, 2 * self.batch_size))
        while pending:
            content_hash, future = pending.popleft()
            following = next(items, None)
            if following is not None:
                pending.append((following[0], submit(following)))
            yield content_hash, future.result()
