"""The keep decision, exactly Data-Juicer's: a score passes when min_score <= s <= max_score; a sample is kept
when any (or all) of its pair scores pass. Only samples with status `ok` can be kept.

Beyond Data-Juicer, the bounds can come from a share of the data: `keep_top_fraction` (DataComp's "keep the best
30%") or `keep_bottom_fraction` (the least similar pairs, e.g. to drop near-duplicates). `share.resolve_share`
turns a share into bounds from the stats table; the keep decision is then the same rule."""

import math
from dataclasses import dataclass
from typing import Sequence

from .schema import StatsRow, Status

ANY_OR_ALL = ("any", "all")
SHARES = ("keep_top_fraction", "keep_bottom_fraction")


@dataclass(frozen=True)
class ShareCut:
    """Where a share of the ok samples put its threshold: `score`, the deciding score of the `rank`-th sample from
    the kept end, rank = ceil(fraction * ranked); the samples whose deciding score equals it are kept too, so
    rank + ties_at_cut samples are kept. `score` is None when there was no ok sample to rank."""

    score: float | None
    ranked: int
    rank: int
    ties_at_cut: int

    @property
    def kept(self) -> int:
        return self.rank + self.ties_at_cut


@dataclass(frozen=True)
class FilterSettings:
    """The thresholds as a person gives them (bounds, or one share with the bounds left at their defaults), or, with
    `cut` set, a share resolved to the bounds that keep it."""

    min_score: float = 0.1
    max_score: float = 1.0
    any_or_all: str = "any"
    keep_top_fraction: float | None = None
    keep_bottom_fraction: float | None = None
    cut: ShareCut | None = None

    def __post_init__(self) -> None:
        if self.any_or_all not in ANY_OR_ALL:
            raise ValueError(f"any_or_all: must be 'any' or 'all', got {self.any_or_all!r}")
        for name in SHARES:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 < value <= 1.0):
                raise ValueError(f"{name}: must lie in the half-open interval (0, 1], got {value!r}")
        if self.keep_top_fraction is not None and self.keep_bottom_fraction is not None:
            raise ValueError("keep_top_fraction, keep_bottom_fraction: give one share of the data, not both")
        lowest = -1.0 if self.cut is not None else 0.0  # a resolved cut is a cosine: it can lie below 0
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or not lowest <= value <= 1.0:
                raise ValueError(f"{name}: must lie in the closed interval [{lowest:g}, 1], got {value!r}")
        if self.min_score > self.max_score:
            raise ValueError(
                f"min_score: must not exceed max_score, got min_score={self.min_score} > max_score={self.max_score}"
            )
        self._check_share()

    def _check_share(self) -> None:
        bounds, share = (self.min_score, self.max_score), self.share
        if share is None:
            if self.cut is not None:
                raise ValueError("cut: only a share of the data (keep_top_fraction, keep_bottom_fraction) has a cut")
            return
        name, fraction = share
        if self.cut is None and bounds != DEFAULT_BOUNDS:
            raise ValueError(
                f"{name}, min_score, max_score: keep a share of the data or give bounds, not both (got {name}="
                f"{fraction}, min_score={self.min_score}, max_score={self.max_score}); set {name} to null to filter "
                "by bounds"
            )
        if self.cut is not None and self.cut.score is not None and bounds != self.bounds_at(self.cut.score):
            raise ValueError(f"min_score, max_score: {name} cut at {self.cut.score} gives the bounds "
                             f"{self.bounds_at(self.cut.score)}, got {bounds}")

    @property
    def share(self) -> tuple[str, float] | None:
        """(field name, fraction) of the share of the data to keep, if one is given."""
        for name in SHARES:
            value = getattr(self, name)
            if value is not None:
                return name, float(value)
        return None

    @property
    def unresolved(self) -> bool:
        """A share not yet turned into bounds: no keep decision can be made from these settings."""
        return self.share is not None and self.cut is None

    @property
    def from_top(self) -> bool:
        return self.keep_top_fraction is not None

    def bounds_at(self, score: float) -> tuple[float, float]:
        """The bounds that keep the share: from the cut up to 1 (top), or from -1 (the lowest cosine) up to it."""
        return (score, 1.0) if self.from_top else (-1.0, score)


DEFAULT_BOUNDS = (FilterSettings.min_score, FilterSettings.max_score)


def score_passes(score: float, settings: FilterSettings) -> bool:
    return settings.min_score <= score <= settings.max_score


def keep_sample(status: Status, scores: Sequence[float], settings: FilterSettings) -> bool:
    if status is not Status.OK or len(scores) == 0:
        return False
    passes = (score_passes(score, settings) for score in scores)
    return any(passes) if settings.any_or_all == "any" else all(passes)


def keep_row(row: StatsRow, settings: FilterSettings) -> bool:
    return keep_sample(row.status, row.image_pair_similarity, settings)
