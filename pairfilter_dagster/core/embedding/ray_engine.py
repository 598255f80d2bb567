"""The Ray engine: the images to embed (cache misses only) go through Ray Data instead of this process.

Two stages: CPU tasks decode and preprocess (`preprocess.ImagePreparation` over the checkpoint's own image processor,
the same code as the local engine, so scores agree to float rounding), then a pool of actors, each loading the model once with
`ClipEmbedder.load` (the same `from_pretrained` path), embeds batches. The driver (the Dagster step) receives
embeddings and errors and is the only one that writes DuckDB; workers only read image files, which must be at the
same paths on every node (a shared filesystem or object-storage mount on a cluster).

Ray Data starts the actor pool anew for every dataset it executes, i.e. for every call of `RayEngine.embed`, which
the scorer makes once per chunk of samples. The pipeline therefore scores in much larger chunks with this engine
(`ray.chunk_samples`, default 20,000 samples) so each actor loads the model once per many thousand images; the
price is memory on the driver (one chunk's rows and embeddings) and coarser progress.

ray is imported only inside the functions and classes that run with this engine: the Dagster definitions import
nothing from Ray, and the default install has no Ray at all (`pip install 'pairfilter-dagster[ray]'`).
"""

import functools
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np

from ..images import ImageAccess
from .engine import EmbeddedBatch, prepare_pixels
from .model import ClipEmbedder, ModelSpec, load_image_processor
from .precision import run_dtype
from .preprocess import ImagePreparation

INSTALL_HINT = "the Ray engine (clip resource: ray) needs Ray: pip install 'pairfilter-dagster[ray]'"
PREPROCESS_BATCH = 16
"""Images per decode/preprocess task: small enough to spread over the CPUs, large enough to amortise a task."""
PREPROCESS_MEMORY = 512 * 2**20
"""Bytes a decode task may hold: one decoded photo at a time (a 12-megapixel RGB image is 36 MB, more while
resizing) and a batch of pixel values."""


def ray_installed() -> bool:
    """Whether `import ray` can work, found without importing it (which takes a second or two)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    if not ray_installed():
        raise RuntimeError(INSTALL_HINT)


@contextmanager
def ray_session(address: str | None = None, *, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Connect to Ray for the duration of a step. An already initialised Ray (a test's, a notebook's) is used as it
    is and left running. Otherwise: `address`, else `$RAY_ADDRESS`, else a new local Ray without the dashboard,
    shut down again at the end. (Ray itself resolves 127.0.0.1 to the machine's address and listens on all
    interfaces; ray.init has no loopback-only option. This Ray's token authentication, on by default, guards it.)"""
    require_ray()
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    if log:
        log(f"Ray: connected to {address or 'a new local Ray'} ({ray.cluster_resources()})")
    try:
        yield
    finally:
        ray.shutdown()


@functools.lru_cache(maxsize=4)
def _preparation(spec: ModelSpec) -> ImagePreparation:
    """Exactly `ClipEmbedder.preparation`, with the checkpoint's image processor loaded once per worker process."""
    return ImagePreparation(load_image_processor(spec), spec.precision)


@functools.lru_cache(maxsize=4)
def _pixel_shape(spec: ModelSpec) -> tuple[int, ...]:
    """The shape of one image's pixel values, for the zero rows that stand in for images that failed."""
    from PIL import Image

    return _preparation(spec).pixels(Image.new("RGB", (64, 64))).shape


def preprocess_batch(batch: dict[str, np.ndarray], spec: ModelSpec, access: ImageAccess) -> dict[str, np.ndarray]:
    """Ray Data stage 1 (tasks): decode and preprocess. A bad image becomes an error row, never an exception
    that would fail the dataset; its pixel values are zeros."""
    pixels, errors = [], []
    for path, content_hash in zip(batch["path"], batch["content_hash"]):
        prepared = prepare_pixels(_preparation(spec), str(path), str(content_hash), access)
        if isinstance(prepared, str):
            errors.append(prepared)
            prepared = np.zeros(_pixel_shape(spec), dtype=np.float32)
        else:
            errors.append("")
        pixels.append(prepared.astype(np.float32, copy=False))
    return {
        "content_hash": np.asarray(batch["content_hash"], dtype=object),
        "pixel_values": np.stack(pixels),
        "error": np.asarray(errors, dtype=object),
    }


class ClipEmbedActor:
    """Ray Data stage 2 (actors): the model, loaded once per actor, embeds the rows that preprocessed."""

    def __init__(self, spec: ModelSpec) -> None:
        self.embedder = ClipEmbedder.load(spec)
        self.dim = self.embedder.dimension

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([error == "" for error in batch["error"]], dtype=bool)
        embeddings = np.zeros((len(ok), self.dim), dtype=np.float32)
        if ok.any():
            embeddings[ok] = self.embedder.embed_pixels(np.ascontiguousarray(batch["pixel_values"][ok]))
        passes = np.zeros(len(ok), dtype=np.int64)
        passes[:1] = int(ok.any())  # one forward pass per batch, counted on its first row
        return {"content_hash": batch["content_hash"], "embedding": embeddings, "error": batch["error"],
                "forward_passes": passes}


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide the Ray engine runs (the `ray:` block of the clip resource)."""

    address: str | None = None
    """The cluster (e.g. ray://head:10001); None: $RAY_ADDRESS, else a local Ray started and stopped around the
    step."""
    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    chunk_samples: int = 20_000

    def __post_init__(self) -> None:
        for name in ("actors", "chunk_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"ray.{name}: must be at least 1, got {getattr(self, name)}")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError("ray.num_cpus, ray.num_gpus: must not be negative")

    def check(self, spec: ModelSpec) -> None:
        """Refuse a model these actors cannot run (raises ValueError naming the field); needs no torch."""
        if spec.device == "cuda" and self.num_gpus == 0:
            raise ValueError("device: 'cuda' with the Ray engine needs ray.num_gpus > 0 (GPUs per actor)")
        if spec.dtype == "float16" and self.num_gpus == 0:
            raise ValueError("dtype: float16 needs GPU actors (ray.num_gpus > 0); on cpu leave dtype unset")

    def actor_spec(self, spec: ModelSpec) -> ModelSpec:
        """The model as the actors load it: on cuda when they get a GPU, else on cpu, in the dtype the precision
        chooses there, resolved here in the step: actors on other CPUs run in it too, as the cache key says."""
        self.check(spec)
        device = "cuda" if self.num_gpus > 0 else "cpu"
        return replace(spec, device=device, dtype=run_dtype(spec.precision, spec.dtype, device)[0])

    def step_spec(self, spec: ModelSpec) -> ModelSpec:
        """The model as the step loads it, only to compute the cache key (a hash of the weights as loaded): the
        same bytes on cpu for float32 and bfloat16, so the step needs no GPU (float16 is hashed as cuda loads it)."""
        actor = self.actor_spec(spec)
        return actor if actor.dtype == "float16" else replace(actor, device="cpu")


class RayEngine:
    """Embeds through Ray Data: `settings.actors` model actors of `num_cpus` / `num_gpus` each, `batch_size` images
    per forward pass. Entering it connects to Ray (`ray_session`). A killed actor is restarted and its batches
    retried: Ray Data creates its actors with `max_restarts=-1, max_task_retries=-1` unless told otherwise
    (test_ray_engine kills one to hold it to that)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        batch_size: int,
        settings: RaySettings = RaySettings(),
        log: Callable[[str], None] | None = None,
        preprocess_batch_size: int = PREPROCESS_BATCH,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        self.actor_spec = settings.actor_spec(spec)
        self.settings = settings
        self.batch_size = batch_size
        self.chunk_samples = settings.chunk_samples
        self.preprocess_batch_size = preprocess_batch_size
        self._log = log
        self._session: ExitStack | None = None

    def __enter__(self) -> "RayEngine":
        self._session = ExitStack()
        self._session.enter_context(ray_session(self.settings.address, log=self._log))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def embed(self, todo: list[tuple[str, str]], access: ImageAccess) -> Iterator[EmbeddedBatch]:
        if not todo:
            return
        import ray.data

        dataset: Any = ray.data.from_items([{"content_hash": h, "path": path} for h, path in todo])
        dataset = dataset.map_batches(
            preprocess_batch, fn_kwargs={"spec": self.actor_spec, "access": access}, batch_size=self.preprocess_batch_size,
            batch_format="numpy", num_cpus=1,
            # A memory request of its own also keeps Ray Data from fusing this stage into the actors (it fuses maps
            # whose resource requests are equal): decoding then overlaps with embedding, on the CPUs the actors leave.
            memory=PREPROCESS_MEMORY,
        )
        dataset = dataset.map_batches(
            ClipEmbedActor, fn_constructor_kwargs={"spec": self.actor_spec}, batch_size=self.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=self.settings.actors),
            num_cpus=self.settings.num_cpus, num_gpus=self.settings.num_gpus,
        )
        for rows in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            batch = EmbeddedBatch(forward_passes=int(rows["forward_passes"].sum()))
            for content_hash, embedding, error in zip(rows["content_hash"], rows["embedding"], rows["error"]):
                if error:
                    batch.errors[str(content_hash)] = str(error)
                else:
                    batch.embeddings[str(content_hash)] = np.asarray(embedding, dtype=np.float32)
            yield batch
