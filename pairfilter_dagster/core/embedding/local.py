"""The local engine: in the step's own process the model embeds the current batch while decode worker processes
decode and preprocess up to two batches ahead.

Worker processes rather than threads: decoding holds the GIL between PIL's calls, and each time it does, the
model's thread waits for it between two of its hundreds of operations per batch; measured on 2 cores
(docs/performance.md#the-worker-split), processes give up to 1.5x the pairs/s of threads with the bfloat16 model.
They are forked from a server process that has imported the decoding code (`multiprocessing`'s forkserver), started
on the first images to embed, so a run that finds everything in the cache starts none."""

import itertools
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Iterator

import numpy as np

from ..images import ImageAccess
from .engine import EmbeddedBatch, prepare_pixels
from .model import ClipEmbedder
from .preprocess import ImagePreparation

DEFAULT_CHUNK_SAMPLES = 512


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


DEFAULT_DECODE_WORKERS = max(1, available_cores() // 2)
"""One decode worker per two cores: on 2 cores one worker process keeps the model fed at either precision, and a
second one costs the model more than it adds (docs/performance.md#the-worker-split)."""

_worker_preparation: ImagePreparation | None = None


def _start_worker(preparation: ImagePreparation, step_alive: Connection) -> None:
    global _worker_preparation
    _worker_preparation = preparation
    threading.Thread(target=_exit_with_the_step, args=(step_alive,), daemon=True, name="pairfilter-watch").start()


def _exit_with_the_step(step_alive: Connection) -> None:
    """Exit once the step's process is gone (its end of the pipe closed, by a kill too): a worker would otherwise
    wait on its queue forever, and hold the forkserver (and the step's stdout) open with it."""
    try:
        step_alive.recv_bytes()
    except EOFError:
        pass
    os._exit(1)


def _prepare_in_worker(path: str, content_hash: str, access: ImageAccess) -> np.ndarray | str:
    assert _worker_preparation is not None, "the decode worker was started without its image preparation"
    return prepare_pixels(_worker_preparation, path, content_hash, access)


def decode_processes(workers: int, preparation: ImagePreparation) -> tuple[ProcessPoolExecutor, Connection]:
    """`workers` processes holding `preparation`, forked from a server that imported its modules once (spawned
    where there is no forkserver), and the pipe end whose closing ends them."""
    context: Any = multiprocessing.get_context("spawn")
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__, type(preparation.image_processor).__module__])
    step_alive, keep_alive = context.Pipe(duplex=False)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(preparation, step_alive))
    return pool, keep_alive


class LocalEngine:
    def __init__(self, embedder: ClipEmbedder, *, batch_size: int, workers: int = DEFAULT_DECODE_WORKERS,
                 chunk_samples: int = DEFAULT_CHUNK_SAMPLES, processes: bool = True) -> None:
        """`processes=False` decodes in threads of this process instead (the benchmark compares the two)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"decode_workers: must be at least 1, got {workers}")
        self.embedder = embedder
        self.batch_size = batch_size
        self.chunk_samples = chunk_samples
        self.workers = workers
        self.processes = processes
        self._pool: Executor | None = None
        self._keep_alive: Connection | None = None

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._keep_alive is not None:
            self._keep_alive.close()
            self._keep_alive = None

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

    def _started_pool(self) -> Executor:
        if self._pool is None:
            preparation = self.embedder.preparation
            if self.processes:
                self._pool, self._keep_alive = decode_processes(self.workers, preparation)
            else:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pairfilter-decode")
        return self._pool

    def _prepared(self, todo: list[tuple[str, str]], access: ImageAccess) -> Iterator[tuple[str, np.ndarray | str]]:
        """Decoded, preprocessed pixels (or a decode error) in input order, at most two batches ahead."""
        if not todo:
            return
        pool, preparation = self._started_pool(), self.embedder.preparation
        if self.processes:
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
