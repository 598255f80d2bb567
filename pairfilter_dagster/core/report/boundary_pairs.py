"""The pairs a person should look at to place a threshold: those just inside and just outside it."""

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..filtering import FilterSettings, score_passes
from ..schema import StatsRow, Status

PAIRS_PER_SIDE = 6
THRESHOLDS = ("min_score", "max_score")


@dataclass(frozen=True)
class ScoredPair:
    """One image pair of an ok sample and its similarity."""

    sample_id: str
    image_a: str
    image_b: str
    score: float


@dataclass(frozen=True)
class BoundaryRow:
    pair: ScoredPair
    passes: bool
    """Whether the score lies within [min_score, max_score]."""


def scored_pairs(rows: Iterable[StatsRow]) -> list[ScoredPair]:
    """The pairs of the ok rows of the stats table."""
    return [
        ScoredPair(row.sample_id, row.images[a], row.images[b], float(score))
        for row in rows
        if row.status is Status.OK
        for (a, b), score in zip(row.image_pairs, row.image_pair_similarity)
    ]


def above_line(score: float, threshold: str, value: float) -> bool:
    """Where a score sits on a sheet: a score equal to the threshold passes it, so it sits above the min_score
    line and below the max_score line (both bounds are inclusive)."""
    return score > value if threshold == "max_score" else score >= value


def boundary_rows(pairs: Sequence[ScoredPair], settings: FilterSettings, threshold: str,
                  per_side: int = PAIRS_PER_SIDE) -> list[BoundaryRow]:
    """The `per_side` pairs closest to the threshold on each side of its line, highest score first."""
    value = getattr(settings, threshold)
    above = sorted((p for p in pairs if above_line(p.score, threshold, value)), key=lambda p: p.score)[:per_side]
    below = sorted((p for p in pairs if not above_line(p.score, threshold, value)), key=lambda p: -p.score)[:per_side]
    shown = sorted([*above, *below], key=lambda p: (-p.score, p.sample_id))
    return [BoundaryRow(p, score_passes(p.score, settings)) for p in shown]
