"""`ImagePairSimilarityFilter`: the whole pipeline as a Dagster Component, so another team adds it to its own
Dagster project from YAML (docs/component.md). Each instance is one dataset with its own model and thresholds;
its asset key prefix also prefixes its jobs, schedule, sensor, partitions and resources, so several instances live
side by side in one code location."""

import os
from pathlib import Path
from typing import Any, Literal, Optional

import dagster as dg
from pydantic import Field, model_validator

from .core.filtering import FilterSettings
from .core.ingest.pairing import DEFAULT_PAIRING, Pairing
from .core.locations import is_remote
from .defs.pipeline import build_pipeline
from .defs.resources import ClipModel, PairfilterStorage, default_data_dir
from .defs.spec import DEFAULT_GROUP, PipelineSpec, default_clip


class ImagePairSimilarityFilter(dg.Component, dg.Model, dg.Resolvable):
    """Data-Juicer's image_pair_similarity_filter over one dataset folder: raw_samples -> image_pair_stats ->
    filtered_samples -> similarity_report, and image_pair_stats -> image_embeddings, with checks, jobs, a schedule
    and a sensor."""

    data_dir: Optional[str] = Field(
        default=None, description="The dataset folder (shards under raw/): relative to this YAML file's folder, "
        "absolute, or a URL (s3://bucket/prefix, gs://, hf://). Default: $PAIRFILTER_DATA_DIR, else the repo's data/.",
    )
    output_dir: Optional[str] = Field(
        default=None, description="Where the kept outputs go (a path relative to this YAML file's folder, or a URL); "
        "default: <data_dir>/output.",
    )
    storage_options: dict[str, Any] = Field(
        default={}, description="fsspec options for a remote data_dir / output_dir (credentials are best left to "
        "the environment).",
    )
    hf_clip: Optional[str] = Field(
        default=None, description="Hugging Face model id or local folder of an image encoder with image features "
        "(CLIP, SigLIP, ...). Default: $PAIRFILTER_HF_CLIP, else openai/clip-vit-base-patch32.",
    )
    min_score: float = Field(default=0.1, ge=0.0, le=1.0, description="Lowest similarity kept (inclusive).")
    max_score: float = Field(default=1.0, ge=0.0, le=1.0, description="Highest similarity kept (inclusive).")
    any_or_all: Literal["any", "all"] = Field(default="any", description="Keep when any (or all) pairs pass.")
    keep_top_fraction: Optional[float] = Field(
        default=None, gt=0.0, le=1.0, description="Keep this share of the ok samples, the highest scores (ties at the "
        "cut kept), instead of min_score / max_score.",
    )
    keep_bottom_fraction: Optional[float] = Field(
        default=None, gt=0.0, le=1.0, description="Keep this share of the ok samples, the lowest scores (ties at the "
        "cut kept), instead of min_score / max_score.",
    )
    pairing: Pairing = Field(
        default=DEFAULT_PAIRING, description="Which image pairs of a sample are scored."
    )
    image_roots: list[str] = Field(
        default=[], description="Folders image paths must lie in (relative to data_dir); empty: data_dir."
    )
    asset_key_prefix: list[str] = Field(
        default=[], description="Prefix of every asset key; also prefixes job, schedule, sensor, partition and "
        "resource names (`other` gives other/raw_samples, other__pairfilter_job, other_storage).",
    )
    group: str = Field(default=DEFAULT_GROUP, description="Asset group of the five assets.")

    @model_validator(mode="after")
    def _one_way_of_thresholding(self) -> "ImagePairSimilarityFilter":
        self.thresholds()  # raises ValueError naming the fields
        return self

    def thresholds(self) -> FilterSettings:
        return FilterSettings(self.min_score, self.max_score, self.any_or_all, self.keep_top_fraction,
                              self.keep_bottom_fraction)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        # A YAML instance's context path is the folder of its defs.yaml; a Python instance's
        # (`@dg.component_instance` in a .py file under defs/) is that file: its folder is the base then.
        component_dir = context.path if context.path.is_dir() else context.path.parent
        return build_pipeline(self.pipeline_spec(component_dir)).definitions()

    def pipeline_spec(self, component_dir: Path) -> PipelineSpec:
        data_dir = beside(component_dir, self.data_dir) if self.data_dir else default_data_dir()
        output_dir = beside(component_dir, self.output_dir) if self.output_dir else None
        return PipelineSpec(
            key_prefix=tuple(self.asset_key_prefix),
            group=self.group,
            storage=PairfilterStorage(data_dir=data_dir, output_dir=output_dir, pairing=self.pairing,
                                      image_roots=self.image_roots, storage_options=self.storage_options),
            clip=ClipModel(hf_clip=self.hf_clip) if self.hf_clip else default_clip(),
            thresholds=self.thresholds(),
        )


def beside(component_dir: Path, location: str) -> str:
    """A path relative to the component's folder; a URL as it is."""
    return location if is_remote(location) else os.path.normpath(component_dir / Path(location).expanduser())
