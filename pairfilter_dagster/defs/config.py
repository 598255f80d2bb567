"""Run config for the keep decision, and the checks of a run's config made before any work starts."""

from typing import Any, Literal, Mapping, Optional

import dagster as dg
from pydantic import Field, model_validator

from ..core.filtering import FilterSettings
from .resources import ClipModel

FILTERED_SAMPLES = "filtered_samples"


class FilterConfig(dg.Config):
    """Data-Juicer's image_pair_similarity_filter thresholds: keep a sample when min_score <= similarity <=
    max_score for any (or all) of its image pairs."""

    min_score: float = Field(default=0.1, ge=0.0, le=1.0, description="Lowest similarity kept (inclusive).")
    max_score: float = Field(default=1.0, ge=0.0, le=1.0, description="Highest similarity kept (inclusive).")
    any_or_all: Literal["any", "all"] = Field(
        default="any", description="'any': keep when one pair passes; 'all': only when every pair passes."
    )

    @model_validator(mode="after")
    def _min_not_above_max(self) -> "FilterConfig":
        self.to_settings()  # raises ValueError naming the field
        return self

    def to_settings(self) -> FilterSettings:
        return FilterSettings(self.min_score, self.max_score, self.any_or_all)


def recorded_filter_settings(instance: dg.DagsterInstance) -> Optional[FilterSettings]:
    """The thresholds recorded on the latest `filtered_samples` materialization (None before the first one):
    what the filtered dataset on disk was actually built with."""
    event = instance.get_latest_materialization_event(dg.AssetKey(FILTERED_SAMPLES))
    if event is None or event.asset_materialization is None:
        return None
    recorded = event.asset_materialization.metadata
    return FilterSettings(recorded["min_score"].value, recorded["max_score"].value, recorded["any_or_all"].value)


def check_filter_run_config(run_config: Mapping[str, Any]) -> None:
    """Validate the run's `filtered_samples` config up front, so a bad threshold fails the run before the model
    spends minutes scoring (Dagster itself only checks value bounds when the filter step starts)."""
    op_config = (run_config.get("ops") or {}).get(FILTERED_SAMPLES) or {}
    FilterConfig(**(op_config.get("config") or {}))


def check_clip_run_config(run_config: Mapping[str, Any]) -> None:
    """Validate launch-time overrides of the `clip` resource in the first step. Dagster refuses bad enum values
    (device, dtype) at launch, but checks rules such as batch_size >= 1 only when a step builds the resource;
    with the multiprocess executor that is the scoring step, after ingestion. This builds it without loading
    the model (no torch), so the pydantic error naming the field comes first."""
    overrides = ((run_config.get("resources") or {}).get("clip") or {}).get("config") or {}
    if overrides:
        ClipModel(**overrides)
