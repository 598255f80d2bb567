"""Configurable resources: the data folder (its reading rules and its DuckDB store) here, and the CLIP model
(`model_resource`, loaded once per process)."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr

from ..core import store
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
from ..core.locations import (
    HOME_ENV_VAR,
    READ_ONLY_SCHEMES,
    AnyPath,
    as_location,
    check_listable,
    default_state_folder,
    is_remote_path,
    scheme_of,
)
from ..core.publish import complete_pending, remove_stale_temps, staging_folder
from .model_resource import ClipModel, RayConfig

__all__ = ["ClipModel", "PairfilterStorage", "RayConfig", "default_data_dir"]

DATA_DIR_ENV_VAR = "PAIRFILTER_DATA_DIR"
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV_VAR) or str(REPO_DATA_DIR)


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
        return default_state_folder(self.data_dir.rstrip("/")) if is_remote_path(root) else root

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
            check_listable(root, self.data_dir, f"set storage.data_dir or {DATA_DIR_ENV_VAR}")
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
