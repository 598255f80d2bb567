"""The `clip` resource: the image encoder, and its `ray:` block."""

from typing import Any, Literal, Optional

import dagster as dg
from pydantic import Field, PrivateAttr, model_validator

from ..core.embedding.engine import EmbeddingEngine
from ..core.embedding.local import DEFAULT_DECODE_WORKERS, LocalEngine
from ..core.embedding.model import HF_CLIP_ENV_VAR, ClipEmbedder, ModelSpec, default_hf_clip
from ..core.embedding.ray_engine import INSTALL_HINT, RayEngine, RaySettings, ray_installed


class RayConfig(dg.Config):
    """The Ray engine: images are embedded by Ray Data actors instead of the step's process
    (`core.embedding.ray_engine`; docs/ray.md says why it is not dagster-ray)."""

    address: Optional[str] = Field(
        default=None, description="Ray cluster address (e.g. ray://head:10001); None: $RAY_ADDRESS, else a local "
        "Ray started for the step (dashboard off) and shut down after it."
    )
    actors: int = Field(default=1, ge=1, description="Model actors (each loads the model once).")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per model actor.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per model actor; > 0 runs the actors on cuda.")
    chunk_samples: int = Field(
        default=20_000, ge=1, description="Samples per scoring chunk: each chunk is one Ray Data run, which starts "
        "the actors (and loads the model) anew; larger chunks amortise that, at the cost of memory in the step."
    )

    def settings(self) -> RaySettings:
        return RaySettings(self.address, self.actors, self.num_cpus, self.num_gpus, self.chunk_samples)


class ClipModel(dg.ConfigurableResource):
    """A Hugging Face image encoder (CLIP by default). The model is loaded once per process, in `setup_for_execution`, and
    only for steps that use it; loading these definitions never imports torch (nor ray). With `ray` set, the
    images are embedded on Ray and the step loads the model only to compute the cache key."""

    hf_clip: str = Field(
        default=default_hf_clip(),  # the env var, also when a launchpad override names other fields only
        description="Hugging Face model id or local folder of an image encoder with image features: CLIP, SigLIP, "
        f"SigLIP 2, or any model whose class has get_image_features (env: {HF_CLIP_ENV_VAR}).",
    )
    revision: Optional[str] = Field(
        default=None, description="Model revision (branch, tag or commit) to pin; None takes the default branch."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow custom model code from the hub. Off unless you trust the repository."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto picks cuda when available.")
    precision: Literal["exact", "fast"] = Field(
        default="exact", description="exact: float32 and full-size decoding, Data-Juicer's scores. fast: bfloat16 on "
        "CPUs with AMX or AVX-512 BF16 (float32 on others, which the log says), float16 on cuda, and reduced-size "
        "decoding; faster, approximate scores (docs/performance.md)."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto: chosen by precision. An explicit dtype overrides that choice: float16 / "
        "bfloat16 need precision fast, float16 needs cuda."
    )
    batch_size: int = Field(default=32, ge=1, description="Images per forward pass (per actor call with ray).")
    compile: bool = Field(
        default=False, description="torch.compile the image tower: faster per image after a compile of tens of "
        "seconds per run; worth it for large runs.",
    )
    decode_workers: int = Field(
        default=DEFAULT_DECODE_WORKERS, ge=1, description="Threads that decode and preprocess images while the "
        "model runs (local engine; default: one per core)."
    )
    decode_processes: bool = Field(
        default=False, description="Decode in worker processes instead of threads: slower on 2 cores "
        "(docs/performance.md#the-worker-split), perhaps faster where many cores feed a GPU."
    )
    ray: Optional[RayConfig] = Field(
        default=None, description="Embed on Ray (pip install 'pairfilter-dagster[ray]'); None: in the step's process."
    )

    _embedder: Optional[ClipEmbedder] = PrivateAttr(default=None)
    _log: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _model_and_ray_settings(self) -> "ClipModel":
        spec = self.model_spec()  # raises ValueError naming the fields (precision and dtype that contradict)
        if self.ray is not None:
            if not ray_installed():
                raise ValueError(INSTALL_HINT)
            self.ray.settings().check(spec)
        return self

    def model_spec(self) -> ModelSpec:
        dtype = None if self.dtype == "auto" else self.dtype
        return ModelSpec(self.hf_clip, self.revision, self.trust_remote_code, self.device, dtype, self.compile,
                         self.precision)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        spec = self.model_spec()
        if self.ray is not None:
            spec = self.ray.settings().step_spec(spec)
        self._embedder = embedder = ClipEmbedder.load(spec)  # first: a model that cannot load fails before any work
        self._log = context.log
        if context.log:
            where = f", embedding on Ray ({self.ray.actors} actor(s))" if self.ray else ""
            context.log.info(f"Loaded CLIP model {self.hf_clip!r} on {embedder.device} in {embedder.dtype} "
                             f"({embedder.dtype_reason}){where}")
            if self.precision == "fast" and self.dtype == "auto" and embedder.dtype == "float32":
                context.log.warning(embedder.dtype_reason)

    def run_metadata(self) -> dict[str, str]:
        """What the stats asset records of how the model ran: the precision and the dtype it resolved to."""
        return {"precision": self.precision, "dtype": self.embedder.dtype}

    @property
    def embedder(self) -> ClipEmbedder:
        if self._embedder is None:
            raise RuntimeError("ClipModel is used outside a Dagster step: call setup_for_execution first")
        return self._embedder

    @property
    def engine_name(self) -> str:
        return "ray" if self.ray else "local"

    def open_engine(self) -> EmbeddingEngine:
        """The embedding engine, chosen here once; enter it around the scoring loop (Ray connects on entry)."""
        if self.ray is None:
            return LocalEngine(self.embedder, batch_size=self.batch_size, workers=self.decode_workers,
                               processes=self.decode_processes)
        log = self._log.info if self._log else None
        return RayEngine(self.model_spec(), batch_size=self.batch_size, settings=self.ray.settings(), log=log)
