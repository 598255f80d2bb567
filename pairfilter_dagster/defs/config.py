"""Run config for the keep decision, and the one preflight of a run's config, made before any work starts."""

from typing import Annotated, Any, Literal, Mapping, Optional

import dagster as dg
from pydantic import Field, model_validator

from ..core.filtering import DEFAULT_BOUNDS, FilterSettings, ShareCut
from .resources import ClipModel

MinScore = Annotated[float, Field(ge=0.0, le=1.0, description="Lowest similarity kept (inclusive).")]
MaxScore = Annotated[float, Field(ge=0.0, le=1.0, description="Highest similarity kept (inclusive).")]
AnyOrAll = Annotated[
    Literal["any", "all"],
    Field(description="'any': keep when one pair passes; 'all': only when every pair passes."),
]
Share = Optional[Annotated[float, Field(gt=0.0, le=1.0)]]
TOP_SHARE = ("Keep this share of the ok samples, those with the highest scores (0.3: the best 30%; ties at the cut "
             "kept). Instead of min_score / max_score.")
BOTTOM_SHARE = ("Keep this share of the ok samples, those with the lowest scores (e.g. to drop near-duplicates; ties "
                "at the cut kept). Instead of min_score / max_score.")


class FilterConfig(dg.Config):
    """Data-Juicer's image_pair_similarity_filter thresholds: keep a sample when min_score <= similarity <=
    max_score for any (or all) of its image pairs; or keep a share of the ok samples by score (keep_top_fraction /
    keep_bottom_fraction), which the step resolves to those bounds from the stats table."""

    min_score: MinScore = 0.1
    max_score: MaxScore = 1.0
    any_or_all: AnyOrAll = "any"
    keep_top_fraction: Share = Field(default=None, description=TOP_SHARE)
    keep_bottom_fraction: Share = Field(default=None, description=BOTTOM_SHARE)

    @model_validator(mode="after")
    def _one_way_of_thresholding(self) -> "FilterConfig":
        self.to_settings()  # raises ValueError naming the fields
        return self

    def to_settings(self) -> FilterSettings:
        """The settings; with a share, bounds left at this config's defaults (an instance's, maybe) are not a
        choice of this run and give way to it."""
        bounds = (self.min_score, self.max_score)
        defaults = tuple(type(self).model_fields[name].default for name in ("min_score", "max_score"))
        if (self.keep_top_fraction is not None or self.keep_bottom_fraction is not None) and bounds == defaults:
            bounds = DEFAULT_BOUNDS
        return FilterSettings(*bounds, self.any_or_all, self.keep_top_fraction, self.keep_bottom_fraction)


def filter_config_class(defaults: FilterSettings) -> type[FilterConfig]:
    """`FilterConfig` with other defaults (a Component instance's thresholds); the launchpad shows them."""
    if defaults == FilterSettings():
        return FilterConfig

    class InstanceFilterConfig(FilterConfig):
        min_score: MinScore = defaults.min_score
        max_score: MaxScore = defaults.max_score
        any_or_all: AnyOrAll = defaults.any_or_all  # type: ignore[assignment]
        keep_top_fraction: Share = Field(default=defaults.keep_top_fraction, description=TOP_SHARE)
        keep_bottom_fraction: Share = Field(default=defaults.keep_bottom_fraction, description=BOTTOM_SHARE)

    return InstanceFilterConfig


def filter_settings_metadata(settings: FilterSettings) -> dict[str, Any]:
    """The thresholds a filtered dataset was built with, as its materialization records them (`min_score` and
    `max_score` as resolved from a share, and the cut); `recorded_filter_settings` reads them back."""
    cut = settings.cut
    return {
        "min_score": settings.min_score,
        "max_score": settings.max_score,
        "any_or_all": settings.any_or_all,
        "keep_top_fraction": settings.keep_top_fraction,
        "keep_bottom_fraction": settings.keep_bottom_fraction,
        **({"ranked_samples": cut.ranked, "cut_rank": cut.rank, "ties_at_cut": cut.ties_at_cut} if cut else {}),
    }


def recorded_filter_settings(instance: dg.DagsterInstance, filtered_key: dg.AssetKey) -> Optional[FilterSettings]:
    """The thresholds recorded on the latest filtered-dataset materialization (None before the first one): what
    the filtered dataset on disk was actually built with (a share with its cut)."""
    event = instance.get_latest_materialization_event(filtered_key)
    if event is None or event.asset_materialization is None:
        return None
    recorded: dict[str, Any] = {name: entry.value for name, entry in event.asset_materialization.metadata.items()}
    bounds = float(recorded["min_score"]), float(recorded["max_score"])
    any_or_all = str(recorded["any_or_all"])
    top, bottom = recorded.get("keep_top_fraction"), recorded.get("keep_bottom_fraction")
    if top is None and bottom is None:
        return FilterSettings(*bounds, any_or_all)
    ranked = int(recorded["ranked_samples"])
    score = (bounds[0] if top is not None else bounds[1]) if ranked else None
    cut = ShareCut(score, ranked, int(recorded["cut_rank"]), int(recorded["ties_at_cut"]))
    return FilterSettings(*bounds, any_or_all, top, bottom, cut)


def preflight(
    run_config: Mapping[str, Any], *, filter_op: str, filter_config: type[FilterConfig], clip_key: str
) -> None:
    """Validate the run config before any work, in the first step of a run: the filter step's thresholds (bounds,
    shares, and not both: Dagster checks these only when that step starts, after the model spent minutes scoring) and
    launch-time overrides of the clip resource (rules such as batch_size >= 1 are checked only when a step builds
    the resource, with the multiprocess executor the scoring step, after ingestion). Builds the resource without
    loading the model (no torch), so the error naming the field comes first."""
    op_config = (run_config.get("ops") or {}).get(filter_op) or {}
    filter_config(**(op_config.get("config") or {}))
    overrides = ((run_config.get("resources") or {}).get(clip_key) or {}).get("config") or {}
    if overrides:
        ClipModel(**overrides)
