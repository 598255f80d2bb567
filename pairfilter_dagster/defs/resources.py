"""Configurable resources: the CLIP model (loaded once per process) and the data folder: its reading rules and
its DuckDB store."""

import os
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr, model_validator

from ..core import store
from ..core.embedding import HF_CLIP_ENV_VAR, ClipEmbedder, ModelSpec, default_hf_clip
from ..core.images import DEFAULT_MAX_IMAGE_PIXELS, PIL_HARD_PIXEL_LIMIT
from ..core.pairing import DEFAULT_PAIRING
from ..core.ray_engine import INSTALL_HINT, RayEngine, ray_installed, ray_session
from ..core.scoring import DEFAULT_CHUNK_SIZE, EmbeddingEngine
from ..core.samples import SampleRules

DATA_DIR_ENV_VAR = "PAIRFILTER_DATA_DIR"
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV_VAR) or str(REPO_DATA_DIR)


class ClipModel(dg.ConfigurableResource):
    """A Hugging Face CLIP image encoder. The model is loaded once per process, in `setup_for_execution`, and
    only for steps that use it; loading these definitions never imports torch (nor ray).

    `engine` picks where images are embedded: `local` (in the step's process) or `ray` (Ray Data, see
    `core.ray_engine`). With `ray`, the step connects to Ray in `setup_for_execution` and, if it started a local
    Ray, shuts it down in `teardown_after_execution`; the step still loads the model itself (on CPU for float32)
    only to compute the embedding cache key, a hash of the weights as loaded.

    Why our own settings rather than dagster-ray 0.4.8's `RayResource` / `LocalRay`: it is a second resource the
    scoring asset would require, and by default it runs `ray.init` in every step that requires it (`lifecycle`),
    including runs with `engine: local`; `LocalRay` ignores any address (always `ray.init(address=None)`) and
    does not reuse a Ray that is already initialised; and the definitions would import `dagster_ray`, which would
    put it (and its dependencies) into the lean default install instead of the `ray` extra. What we need from it
    (connect, or start and stop a local Ray, around a step) is the few lines of `core.ray_engine.ray_session`."""

    hf_clip: str = Field(
        default=default_hf_clip(),  # the env var, also when a launchpad override names other fields only
        description=f"Hugging Face model id or local folder of a CLIP checkpoint (env: {HF_CLIP_ENV_VAR}).",
    )
    revision: Optional[str] = Field(
        default=None, description="Model revision (branch, tag or commit) to pin; None takes the default branch."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow custom model code from the hub. Off unless you trust the repository."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto picks cuda when available.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="Half precision (cuda only) is faster and approximate."
    )
    batch_size: int = Field(default=32, ge=1, description="Images per forward pass (per actor call with ray).")
    compile: bool = Field(
        default=False,
        description="torch.compile the image tower: about 7% more pairs/s on CPU in the benchmark, after a "
        "compile of up to ~30 s per run; worth it for large runs.",
    )
    decode_workers: int = Field(
        default=2, ge=1, description="Threads that decode and preprocess images while the model runs (and hash "
        "image files, with either engine)."
    )
    engine: Literal["local", "ray"] = Field(
        default="local", description="local: embed in the step's process; ray: embed through Ray Data actors "
        "(pip install 'pairfilter-dagster[ray]')."
    )
    ray_address: Optional[str] = Field(
        default=None, description="Ray cluster address (e.g. ray://head:10001); None: $RAY_ADDRESS, else a local "
        "Ray started for the step (dashboard off) and shut down after it."
    )
    ray_actors: int = Field(default=1, ge=1, description="Model actors (each loads the model once).")
    ray_num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per model actor.")
    ray_num_gpus: float = Field(default=0.0, ge=0, description="GPUs per model actor; > 0 runs the actors on cuda.")
    ray_chunk_samples: int = Field(
        default=20_000, ge=1, description="Samples per scoring chunk with ray: each chunk is one Ray Data run, "
        "which starts the actors (and loads the model) anew; larger chunks amortise that, at the cost of memory "
        "in the step."
    )

    _embedder: Optional[ClipEmbedder] = PrivateAttr(default=None)
    _ray: Optional[ExitStack] = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _ray_settings(self) -> "ClipModel":
        if self.engine == "ray":
            if not ray_installed():
                raise ValueError(INSTALL_HINT)
            self.ray_engine()  # raises ValueError naming the field for settings the actors cannot run
        return self

    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.hf_clip, self.revision, self.trust_remote_code, self.device, self.dtype, self.compile)

    def ray_engine(self) -> RayEngine:
        return RayEngine(self.model_spec(), batch_size=self.batch_size, actors=self.ray_actors,
                         num_cpus=self.ray_num_cpus, num_gpus=self.ray_num_gpus)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        spec = self.model_spec()
        if self.engine == "ray" and spec.dtype == "float32":
            spec = replace(spec, device="cpu")  # the step only hashes the weights: the same bytes, no GPU needed
        self._embedder = ClipEmbedder.load(spec)  # first: a model that cannot load fails before Ray starts
        if self.engine == "ray":
            self._ray = ExitStack()
            self._ray.enter_context(ray_session(self.ray_address, log=context.log.info if context.log else None))
        if context.log:
            where = f", embedding on Ray ({self.ray_actors} actor(s))" if self.engine == "ray" else ""
            context.log.info(f"Loaded CLIP model {self.hf_clip!r} on {self._embedder.device} ({self.dtype}){where}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._ray is not None:
            self._ray.close()
            self._ray = None

    @property
    def embedder(self) -> ClipEmbedder:
        if self._embedder is None:
            raise RuntimeError("ClipModel is used outside a Dagster step: call setup_for_execution first")
        return self._embedder

    @property
    def scoring_engine(self) -> Optional[EmbeddingEngine]:
        """The engine for `build_image_pair_stats`: None is the in-process default."""
        return self.ray_engine() if self.engine == "ray" else None

    @property
    def chunk_samples(self) -> int:
        return self.ray_chunk_samples if self.engine == "ray" else DEFAULT_CHUNK_SIZE


class PairfilterStorage(dg.ConfigurableResource):
    """The data folder (manifests under raw/, the DuckDB store, output files people hand to training jobs) and
    the rules for reading it: how images pair up, where they may live, how large they may be."""

    data_dir: str = Field(
        default=default_data_dir(), description=f"Data folder (env: {DATA_DIR_ENV_VAR}; default: data/ in the repo)."
    )
    pairing: Literal["exactly_two", "consecutive", "all_pairs"] = Field(
        default=DEFAULT_PAIRING,
        description="Which image pairs are scored: exactly_two (Data-Juicer's rule), consecutive ((1,2), (2,3), "
        "...) or all_pairs (every i < j) for samples of two or more images.",
    )
    image_roots: list[str] = Field(
        default=[],
        description="Folders image paths must lie in (absolute, or relative to the data folder); empty: the data "
        "folder. Paths outside them get status path_not_allowed.",
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        le=PIL_HARD_PIXEL_LIMIT,
        description="Images with more pixels get status image_too_large instead of being decoded "
        "(decompression-bomb guard; default: PIL's limit).",
    )
    lock_wait_seconds: float = Field(
        default=store.LOCK_WAIT_SECONDS,
        ge=0,
        description="How long a step waits for another process (another run) to release the DuckDB file.",
    )

    _log: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._log = context.log

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def database(self) -> Path:
        return self.root / "pairfilter.duckdb"

    @property
    def filtered_jsonl(self) -> Path:
        return self.root / "output" / "filtered_samples.jsonl"

    def sample_rules(self) -> SampleRules:
        """Raises ValueError naming `image_roots` when a root is not an existing folder."""
        return SampleRules.for_data_dir(self.root, self.image_roots, self.pairing)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        on_wait = self._log.warning if self._log else None
        with store.connect(self.database, read_only=read_only, wait_seconds=self.lock_wait_seconds,
                           on_wait=on_wait) as conn:
            yield conn
