"""Configurable resources: the CLIP model (loaded once per process) and the data folder: its reading rules and
its DuckDB store."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr

from ..core import store
from ..core.embedding import HF_CLIP_ENV_VAR, ClipEmbedder, ModelSpec, default_hf_clip
from ..core.images import DEFAULT_MAX_IMAGE_PIXELS, PIL_HARD_PIXEL_LIMIT
from ..core.pairing import DEFAULT_PAIRING
from ..core.samples import SampleRules

DATA_DIR_ENV_VAR = "PAIRFILTER_DATA_DIR"
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV_VAR) or str(REPO_DATA_DIR)


class ClipModel(dg.ConfigurableResource):
    """A Hugging Face CLIP image encoder. The model is loaded once per process, in `setup_for_execution`, and
    only for steps that use it; loading these definitions never imports torch."""

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
    batch_size: int = Field(default=32, ge=1, description="Images per forward pass.")
    compile: bool = Field(
        default=False,
        description="torch.compile the image tower: about 7% more pairs/s on CPU in the benchmark, after a "
        "compile of up to ~30 s per run; worth it for large runs.",
    )
    decode_workers: int = Field(
        default=2, ge=1, description="Threads that decode and preprocess images while the model runs."
    )

    _embedder: Optional[ClipEmbedder] = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        spec = ModelSpec(self.hf_clip, self.revision, self.trust_remote_code, self.device, self.dtype, self.compile)
        self._embedder = ClipEmbedder.load(spec)
        if context.log:
            context.log.info(f"Loaded CLIP model {self.hf_clip!r} on {self._embedder.device} ({self.dtype})")

    @property
    def embedder(self) -> ClipEmbedder:
        if self._embedder is None:
            raise RuntimeError("ClipModel is used outside a Dagster step: call setup_for_execution first")
        return self._embedder


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
