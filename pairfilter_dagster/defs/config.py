"""Run config for the keep decision, and the one preflight of a run's config, made before any work starts."""

from typing import Annotated, Any, Literal, Mapping, Optional

import dagster as dg
from pydantic import Field, model_validator

from ..core.filtering import FilterSettings
from .resources import ClipModel

MinScore = Annotated[float, Field(ge=0.0, le=1.0, description="Lowest similarity kept (inclusive).")]
MaxScore = Annotated[float, Field(ge=0.0, le=1.0, description="Highest similarity kept (inclusive).")]
AnyOrAll = Annotated[
    Literal["any", "all"],
    Field(description="'any': keep when one pair passes; 'all': only when every pair passes."),
]


class FilterConfig(dg.Config):
    """Data-Juicer's image_pair_similarity_filter thresholds: keep a sample when min_score <= similarity <=
    max_score for any (or all) of its image pairs."""

    min_score: MinScore = 0.1
    max_score: MaxScore = 1.0
    any_or_all: AnyOrAll = "any"

    @model_validator(mode="after")
    def _min_not_above_max(self) -> "FilterConfig":
        self.to_settings()  # raises ValueError naming the field
        return self

    def to_settings(self) -> FilterSettings:
        return FilterSettings(self.min_score, self.max_score, self.any_or_all)


def filter_config_class(defaults: FilterSettings) -> type[FilterConfig]:
    """`FilterConfig` with other defaults (a Component instance's thresholds); the launchpad shows them."""
    if defaults == FilterSettings():
        return FilterConfig

    class InstanceFilterConfig(FilterConfig):
        min_score: MinScore = defaults.min_score
        max_score: MaxScore = defaults.max_score
        any_or_all: AnyOrAll = defaults.any_or_all  # type: ignore[assignment]

    return InstanceFilterConfig


def recorded_filter_settings(instance: dg.DagsterInstance, filtered_key: dg.AssetKey) -> Optional[FilterSettings]:
    """The thresholds recorded on the latest filtered-dataset materialization (None before the first one): what
    the filtered dataset on disk was actually built with."""
    event = instance.get_latest_materialization_event(filtered_key)
    if event is None or event.asset_materialization is None:
        return None
    recorded = event.asset_materialization.metadata
    value: Any = lambda name: recorded[name].value  # noqa: E731
    return FilterSettings(float(value("min_score")), float(value("max_score")), str(value("any_or_all")))


def preflight(
    run_config: Mapping[str, Any], *, filter_op: str, filter_config: type[FilterConfig], clip_key: str
) -> None:
    """Validate the run config before any work, in the first step of a run: the filter step's thresholds (Dagster
    checks only value bounds, and only when that step starts, after the model spent minutes scoring) and
    launch-time overrides of the clip resource (rules such as batch_size >= 1 are checked only when a step builds
    the resource, with the multiprocess executor the scoring step, after ingestion). Builds the resource without
    loading the model (no torch), so the error naming the field comes first."""
    op_config = (run_config.get("ops") or {}).get(filter_op) or {}
    filter_config(**(op_config.get("config") or {}))
    overrides = ((run_config.get("resources") or {}).get(clip_key) or {}).get("config") or {}
    if overrides:
        ClipModel(**overrides)
