"""Configurable resources: the data folder (its reading rules and where its results live) here, and the CLIP model
(`model_resource`, loaded once per process)."""

import os
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import dagster as dg
import duckdb
from pydantic import Field

from ..core.catalog import CATALOG_FILE, query_engine
from ..core.embedding.cache_files import DEFAULT_BLOCK
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
from ..core.results import ResultFiles
from .model_resource import ClipModel, RayConfig

__all__ = ["ClipModel", "PairfilterStorage", "RayConfig", "default_data_dir"]

DATA_DIR_ENV_VAR = "PAIRFILTER_DATA_DIR"
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
OLD_STORE_FILE = "pairfilter.duckdb"


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV_VAR) or str(REPO_DATA_DIR)


class PairfilterStorage(dg.ConfigurableResource):
    """The data folder (shards under raw/), the output location (each shard's result files, the files people hand
    to training jobs) and the rules for reading the data: how images pair up, where they may live, how large they
    may be. Both locations may be fsspec URLs (`core.locations`); the state folder (the DuckDB catalog, the
    remembered file hashes) is on the local disk."""

    data_dir: str = Field(
        default=default_data_dir(), description=f"Data folder: a local path or a URL (s3://bucket/prefix, gs://, "
        f"hf://datasets/org/name, memory://) holding raw/ (env: {DATA_DIR_ENV_VAR}; default: data/ in the repo)."
    )
    output_dir: Optional[str] = Field(
        default=None, description="Where each shard's result files (results/), the kept samples, kept_ids.txt, the "
        "filtered JSONL and the embeddings are written: a local path or URL; None: <data_dir>/output (for hf:// and "
        "http(s) data, <state_dir>/output)."
    )
    state_dir: Optional[str] = Field(
        default=None, description="Local folder of the DuckDB catalog (views over the result files), the remembered "
        "file hashes and the report; None: "
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
    embeddings_per_file: int = Field(
        default=DEFAULT_BLOCK, ge=1, description="New embeddings per embedding cache file: each is written once "
        "this many wait, so a killed run loses at most this many."
    )

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
    def catalog(self) -> Path:
        return self.state_root / CATALOG_FILE

    @property
    def old_store(self) -> Path:
        """Where the single DuckDB store of versions before the result files lay."""
        return self.state_root / OLD_STORE_FILE

    @property
    def local_state(self) -> Path:
        """What only this machine can use: remembered hashes of its files (by inode), its pending publishes."""
        return self.state_root / "local_state"

    @property
    def results(self) -> ResultFiles:
        return ResultFiles.under(self.output_root, self.storage_options)

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
        if self.old_store.exists():
            raise ValueError(f"{self.old_store} is the single DuckDB store of an earlier pairfilter version; results "
                             f"are now Parquet files under {self.results.root}. Migrate it once (every embedding is "
                             f"kept): {self.migrate_command()}")

    def migrate_command(self) -> str:
        options = [f"--data-dir {shlex.quote(self.data_dir)}"]
        options += [f"--output-dir {shlex.quote(self.output_dir)}"] if self.output_dir else []
        options += [f"--state-dir {shlex.quote(self.state_dir)}"] if self.state_dir else []
        return f"pairfilter-catalog migrate {' '.join(options)}"

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
    def query(self, shards: Sequence[str] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDB over the result files (of `shards` only, if given): views named after the tables."""
        with query_engine(self.results, shards) as conn:
            yield conn
