"""The keep decision, exactly Data-Juicer's: a score passes when min_score <= s <= max_score; a sample is kept
when any (or all) of its pair scores pass. Only samples with status `ok` can be kept."""

import math
from dataclasses import dataclass
from typing import Sequence

from .schema import StatsRow, Status

ANY_OR_ALL = ("any", "all")


@dataclass(frozen=True)
class FilterSettings:
    min_score: float = 0.1
    max_score: float = 1.0
    any_or_all: str = "any"

    def __post_init__(self) -> None:
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must lie in the closed interval [0, 1], got {value!r}")
        if self.min_score > self.max_score:
            raise ValueError(
                f"min_score: must not exceed max_score, got min_score={self.min_score} > max_score={self.max_score}"
            )
        if self.any_or_all not in ANY_OR_ALL:
            raise ValueError(f"any_or_all: must be 'any' or 'all', got {self.any_or_all!r}")


def score_passes(score: float, settings: FilterSettings) -> bool:
    return settings.min_score <= score <= settings.max_score


def keep_sample(status: Status, scores: Sequence[float], settings: FilterSettings) -> bool:
    if status is not Status.OK or len(scores) == 0:
        return False
    passes = (score_passes(score, settings) for score in scores)
    return any(passes) if settings.any_or_all == "any" else all(passes)


def keep_row(row: StatsRow, settings: FilterSettings) -> bool:
    return keep_sample(row.status, row.image_pair_similarity, settings)
