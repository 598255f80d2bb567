"""Configurable resources: the CLIP model (loaded once per process) and the data folder with its DuckDB store."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Optional

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr

from ..core import store
from ..core.embedding import DEFAULT_HF_CLIP, HF_CLIP_ENV_VAR, ClipEmbedder, ModelSpec

DATA_DIR_ENV_VAR = "PAIRFILTER_DATA_DIR"
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV_VAR) or str(REPO_DATA_DIR)


class ClipModel(dg.ConfigurableResource):
    """A Hugging Face CLIP image encoder. The model is loaded once per process, in `setup_for_execution`, and
    only for steps that use it; loading these definitions never imports torch."""

    hf_clip: str = Field(
        default=DEFAULT_HF_CLIP,
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
        description="torch.compile the image tower: about 15% faster on CPU after a ~30 s compile per run; "
        "worth it for large runs.",
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
    """The data folder: manifests under raw/, the DuckDB store, and output files people hand to training jobs."""

    data_dir: str = Field(description=f"Data folder (env: {DATA_DIR_ENV_VAR}; default: data/ in the repo).")

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

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with store.connect(self.database, read_only=read_only) as conn:
            yield conn
