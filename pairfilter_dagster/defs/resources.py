"""Configurable resources: the CLIP model (loaded once per process) and the data folder: its reading rules and
its DuckDB store."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr, model_validator

from ..core import store
from ..core.embedding.engine import EmbeddingEngine
from ..core.embedding.local import DEFAULT_DECODE_WORKERS, LocalEngine
from ..core.embedding.model import HF_CLIP_ENV_VAR, ClipEmbedder, ModelSpec, default_hf_clip
from ..core.embedding.ray_engine import INSTALL_HINT, RayEngine, RaySettings, ray_installed
from ..core.images import (
    DEFAULT_CONCURRENT_READS,
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    PIL_HARD_PIXEL_LIMIT,
    ImageAccess,
)
from ..core.ingest.manifests import ShardListing, list_shards
from ..core.ingest.pairing import DEFAULT_PAIRING, Pairing
from ..core.ingest.samples import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_PAIRS_PER_SAMPLE, SampleRules
from ..core.locations import AnyPath, LocationError, as_location, is_remote_path, scheme_of, state_name
from ..core.publish import complete_pending, remove_stale_temps, staging_folder

DATA_DIR_ENV_VAR = "PAIRFILTER_DATA_DIR"
HOME_ENV_VAR = "PAIRFILTER_HOME"
READ_ONLY_SCHEMES = ("hf", "http", "https")
"""Where the default output location (beside the data) cannot be written: outputs go to the state folder."""
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV_VAR) or str(REPO_DATA_DIR)


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


class PairfilterStorage(dg.ConfigurableResource):
    """The data folder (shards under raw/, the DuckDB store, output files people hand to training jobs) and
    the rules for reading it: how images pair up, where they may live, how large they may be. The data folder and
    the output location may be fsspec URLs (`core.locations`); the DuckDB store is always on the local disk."""

    data_dir: str = Field(
        default=default_data_dir(), description=f"Data folder: a local path or a URL (s3://bucket/prefix, gs://, "
        f"hf://datasets/org/name, memory://) holding raw/ (env: {DATA_DIR_ENV_VAR}; default: data/ in the repo)."
    )
    output_dir: Optional[str] = Field(
        default=None, description="Where kept samples, kept_ids.txt, the filtered JSONL and the embeddings are "
        "written: a local path or URL; None: <data_dir>/output (for hf:// and http(s) data, <state_dir>/output)."
    )
    state_dir: Optional[str] = Field(
        default=None, description="Local folder of the DuckDB store (tables, embedding cache) and the report; None: "
        f"the data folder when it is local, else ${HOME_ENV_VAR}/<name of the URL>, else "
        "~/.cache/pairfilter/<name of the URL>."
    )
    storage_options: dict[str, Any] = Field(
        default={}, description="Options for the remote filesystem (fsspec storage_options, e.g. {\"anon\": true} or "
        "{\"client_kwargs\": {\"region_name\": ...}}); credentials are best left where the library finds them "
        "(AWS_* variables, profiles, gcloud)."
    )
    pairing: Pairing = Field(
        default=DEFAULT_PAIRING,
        description="Which image pairs are scored: exactly_two (Data-Juicer's rule), consecutive ((1,2), (2,3), "
        "...) or all_pairs (every i < j) for samples of two or more images.",
    )
    image_roots: list[str] = Field(
        default=[],
        description="Folders image paths must lie in (absolute, or relative to the data folder); empty: the data "
        "folder. Paths outside them get status path_not_allowed.",
    )
    image_column: str = Field(
        default="images", description="The column of Parquet shards that holds each sample's images (a list of "
        "paths, image bytes, or Hugging Face Image structs)."
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        le=PIL_HARD_PIXEL_LIMIT,
        description="Images with more pixels get status image_too_large instead of being decoded "
        "(decompression-bomb guard; default: PIL's limit).",
    )
    max_image_bytes: int = Field(
        default=DEFAULT_MAX_IMAGE_BYTES, ge=1, description="Image files larger than this get status image_too_large "
        "without being read."
    )
    max_image_aspect_ratio: float = Field(
        default=DEFAULT_MAX_ASPECT_RATIO, ge=1, description="Images more elongated than this (long side / short "
        "side) get status image_too_large: the model's resize would blow them up to gigabytes."
    )
    max_pairs_per_sample: int = Field(
        default=DEFAULT_MAX_PAIRS_PER_SAMPLE, ge=1, description="Samples whose pairing makes more image pairs get "
        "status too_many_pairs."
    )
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES, ge=2, description="Manifest lines longer than this get status "
        "malformed_line without being read into memory."
    )
    concurrent_reads: int = Field(
        default=DEFAULT_CONCURRENT_READS, ge=1, description="Images on a remote filesystem read (and hashed) at once "
        "by the scoring step: each read waits on the network."
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
    def root(self) -> AnyPath:
        """Raises `LocationError` (a ValueError naming data_dir) for an unknown scheme or a missing library."""
        return as_location(self.data_dir, self.storage_options)

    @property
    def raw_dir(self) -> AnyPath:
        return self.root / "raw"

    @property
    def state_root(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser().resolve()
        root = self.root
        if not is_remote_path(root):
            return root
        home = os.environ.get(HOME_ENV_VAR)
        base = Path(home).expanduser() if home else Path.home() / ".cache" / "pairfilter"
        return (base / state_name(self.data_dir.rstrip("/"))).resolve()

    @property
    def database(self) -> Path:
        return self.state_root / "pairfilter.duckdb"

    @property
    def output_root(self) -> AnyPath:
        if self.output_dir:
            return as_location(self.output_dir, self.storage_options, setting="output_dir")
        if scheme_of(self.data_dir) in READ_ONLY_SCHEMES:
            return self.state_root / "output"
        return self.root / "output"

    @property
    def filtered_jsonl(self) -> AnyPath:
        return self.output_root / "filtered_samples.jsonl"

    @property
    def report_dir(self) -> Path:
        """The report is for people in the UI: on the local disk, beside the outputs when they are."""
        output = self.output_root
        return (self.state_root / "output" if is_remote_path(output) else output) / "report"

    @property
    def embeddings_dir(self) -> AnyPath:
        return self.output_root / "embeddings"

    def check_data_dir(self) -> None:
        """Refuse a data folder that does not exist or cannot be listed (a typo would otherwise make an empty
        dataset and succeed), and a location of an unknown scheme or without its library."""
        root = self.root
        if is_remote_path(root):
            check_remote_folder(root, self.data_dir)
            self.output_root  # noqa: B018  (its scheme and library are checked too)
        elif not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise ValueError(f"data_dir: {self.data_dir!r} {what} (resolved to {root}); set storage.data_dir or "
                             f"{DATA_DIR_ENV_VAR} to a folder holding raw/")

    def sample_rules(self) -> SampleRules:
        """Raises ValueError naming `image_roots` when a root is not an existing folder."""
        return SampleRules.for_data_dir(self.root, self.image_roots, self.pairing,
                                        max_pairs_per_sample=self.max_pairs_per_sample,
                                        max_line_bytes=self.max_line_bytes, image_column=self.image_column)

    def image_access(self) -> ImageAccess:
        roots = self.sample_rules().image_roots
        return ImageAccess(roots, self.max_image_bytes, self.max_image_pixels, self.max_image_aspect_ratio,
                           self.image_column, self.storage_options, self.concurrent_reads)

    def list_shards(self, rules: SampleRules | None = None) -> ShardListing:
        return list_shards(self.raw_dir, (rules or self.sample_rules()).manifest_roots)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the store; one that may write first completes what a killed run left half done."""
        on_wait = self._log.warning if self._log else None
        with store.connect(self.database, read_only=read_only, wait_seconds=self.lock_wait_seconds,
                           on_wait=on_wait) as conn:
            if not read_only:
                completed = complete_pending(conn, self.storage_options)
                output = self.output_root
                remove_stale_temps(staging_folder() if is_remote_path(output) else output)
                if completed and self._log:
                    self._log.info(f"Completed the publishing of {completed}, which a killed run had committed")
            yield conn


def check_remote_folder(root: Any, setting_value: str) -> None:
    """The remote data folder can be listed and holds something (its raw/ is listed again for each run)."""
    try:
        found = root.fs.ls(root.path, detail=False)
    except FileNotFoundError:
        found = []
    except Exception as exc:  # the stores' own errors: no such bucket, no credentials, denied
        raise LocationError(f"data_dir: cannot list {setting_value!r}: {type(exc).__name__}: {exc}; check the bucket "
                            "name, the credentials (AWS_* variables, profiles, gcloud auth) and storage.storage_options"
                            ) from None
    if not found:
        raise LocationError(f"data_dir: {setting_value!r} does not exist or is empty (no raw/ in it); set "
                            f"storage.data_dir or {DATA_DIR_ENV_VAR} to a location holding raw/")
