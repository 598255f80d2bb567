"""Worker processes for the CPU work around the model: hashing image files (always, for large chunks), decoding
them (`decode_processes`).

Hashing holds the GIL between its system calls and PIL's header parsing: on 2 cores two hashing threads took 1.8x
as long per file as one, two processes 0.6x. The processes are forked from a server that has imported the decoding
code once (`multiprocessing`'s forkserver; spawned where there is none), and each exits when the step's process is
gone, so a killed step leaves none behind holding its stdout open.

Like any multiprocessing code, a worker imports the main module first; a script whose top level would then run the
pipeline again (no `if __name__ == "__main__":`) gets no worker processes (`processes_allowed`), and neither do images
on a filesystem held in the step's memory (`readable_in_workers`)."""

import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .locations import stored_in

PRELOAD = ("pairfilter_dagster.core.embedding.preprocess", "transformers.models.clip.image_processing_pil_clip")
"""What the forkserver imports before it forks the first worker: our decoding and hashing code and CLIP's image
processor (which imports transformers and torch, seconds that would otherwise be paid in every decode worker)."""


def processes_allowed() -> bool:
    """Whether worker processes can start without running the main script's top level again: true for the CLI,
    Dagster's processes, `python -m`, `-c` and notebooks (a main module multiprocessing does not import, or one
    that guards its top level with `__name__`); false for a script without that guard."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    path = getattr(main, "__file__", None)
    if path is None or name == "__main__" or name.endswith(".__main__"):
        return True
    try:
        return "__main__" in Path(path).read_text(errors="replace")
    except OSError:
        return False


PROCESS_LOCAL_SCHEMES = ("memory://",)
"""Filesystems whose files live in the step's own memory (fsspec's `memory://`): a worker process sees another,
empty one, so images on them are decoded in the step's process (remote images are hashed in threads anyway)."""


def readable_in_workers(paths: Iterable[str]) -> bool:
    """Whether worker processes read these images as the step does: none of them (nor the shard holding one, for
    `tar:` / `parquet:` references) is on a process-local filesystem."""
    return not any(stored_in(path).startswith(PROCESS_LOCAL_SCHEMES) for path in paths)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class WorkerProcesses:
    """A process pool whose workers run `initializer(*initargs)` first; `close` (or leaving the block) ends them."""

    def __init__(self, workers: int, *, initializer: Callable[..., None] | None = None, initargs: tuple = (),
                 preload: Sequence[str] = ()) -> None:
        context: Any = multiprocessing.get_context("spawn")
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(dict.fromkeys([*PRELOAD, *preload])))  # the server's first start only
        step_alive, self._keep_alive = context.Pipe(duplex=False)
        self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                        initargs=(step_alive, initializer, initargs))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._keep_alive.close()

    def __enter__(self) -> "WorkerProcesses":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _start_worker(step_alive: Connection, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    threading.Thread(target=_exit_with_the_step, args=(step_alive,), daemon=True, name="pairfilter-watch").start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_the_step(step_alive: Connection) -> None:
    """Exit once the step's process is gone (its end of the pipe closed, by a kill too): a worker would otherwise
    wait on its queue forever, holding the forkserver open (each worker keeps it alive)."""
    try:
        step_alive.recv_bytes()
    except EOFError:
        pass
    os._exit(1)
