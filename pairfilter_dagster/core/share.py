"""Thresholds by share of the data: `keep_top_fraction` / `keep_bottom_fraction` resolved, from the stats table,
to the bounds that keep that share of the ok samples; the keep decision then runs with those bounds unchanged.

A sample's deciding score is the one of its pair scores that the keep rule compares with the cut: keeping the top,
with `any` its highest (one pair at or above the cut keeps it), with `all` its lowest; keeping the bottom, with `any`
its lowest, with `all` its highest. Of the `ranked` ok samples, rank = ceil(fraction * ranked) are wanted (the
fraction taken as the decimal it is written as: 0.7 of 10 is 7, not the 8 that 0.7 * 10 = 7.000000000000001
would round up to); the cut is the deciding score of the rank-th sample from the kept end (the exact, not
interpolated, quantile), and every sample whose deciding score equals the cut is kept as well: ties are never split,
so rank + ties_at_cut samples are kept."""

import math
from dataclasses import replace
from fractions import Fraction

import duckdb

from .catalog import scalar
from .filtering import FilterSettings, ShareCut
from .queries import OK, STATS


def wanted(fraction: float, ranked: int) -> int:
    """ceil(fraction * ranked), in exact decimal arithmetic."""
    return math.ceil(Fraction(repr(float(fraction))) * ranked)


def deciding_score(settings: FilterSettings) -> str:
    """The SQL of a sample's deciding score (see the module docstring)."""
    highest = settings.from_top == (settings.any_or_all == "any")
    return "list_max(image_pair_similarity)" if highest else "list_min(image_pair_similarity)"


def resolve_share(conn: duckdb.DuckDBPyConnection, settings: FilterSettings) -> FilterSettings:
    """`settings` with a share replaced by the bounds that keep it (and the cut recorded); bounds as they are."""
    if not settings.unresolved:
        return settings
    share = settings.share
    assert share is not None
    decided = f"(SELECT {deciding_score(settings)} AS d FROM {STATS} WHERE status = {OK} AND len(image_pair_similarity) > 0)"
    ranked = scalar(conn, f"SELECT count(*) FROM {decided}")
    if ranked == 0:
        return replace(settings, cut=ShareCut(score=None, ranked=0, rank=0, ties_at_cut=0))
    rank = wanted(share[1], ranked)
    order, kept_side = ("DESC", ">=") if settings.from_top else ("ASC", "<=")
    cut = float(scalar(conn, f"SELECT d FROM {decided} ORDER BY d {order} LIMIT 1 OFFSET ?", [rank - 1]))
    kept = scalar(conn, f"SELECT count(*) FROM {decided} WHERE d {kept_side} ?", [cut])
    low, high = settings.bounds_at(cut)
    return replace(settings, min_score=low, max_score=high, cut=ShareCut(cut, ranked, rank, kept - rank))
