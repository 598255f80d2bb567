"""Summaries of the scores for people: statistics, the histogram's binning, a text histogram that reads well in
Markdown, small Markdown tables."""

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import duckdb
import numpy as np

from ..catalog import one, shard_filter
from ..filtering import FilterSettings

NICE_BIN_WIDTHS = (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2)
FAR_OFF = 0.5
"""A threshold further beyond the scores than this share of their range is drawn off scale."""
TEXT_BINS = 20
BAR_WIDTH = 30


def histogram_edges(low: float | None, high: float | None, thresholds: Sequence[float],
                    target_bins: int = 40) -> np.ndarray:
    """Bin edges on a round width over the scores in [low, high] (None: no scores). A threshold close to them is
    taken in; one far off is left out (and drawn off scale at the edge), so that the bars stay wide enough to
    read. The one binning of the report's picture and of the metadata's text histogram."""
    if low is None or high is None:
        low, high = min(thresholds), max(thresholds)
    else:
        reach = FAR_OFF * max(high - low, 0.05)
        low = min([low, *(t for t in thresholds if low - reach <= t)])
        high = max([high, *(t for t in thresholds if t <= high + reach)])
    low, high = max(-1.0, low), min(1.0, high)
    width = next((w for w in NICE_BIN_WIDTHS if (high - low) / w <= target_bins), NICE_BIN_WIDTHS[-1])
    start = math.floor(low / width + 1e-9) * width
    stop = max(math.ceil(high / width - 1e-9) * width, start + width)
    return np.round(np.arange(start, stop + width / 2, width), 6)


@dataclass
class ScoreSummary:
    count: int = 0
    statistics: dict[str, float] = field(default_factory=dict)
    """min / mean / median / max of all pair scores (empty when there are none)."""
    edges: np.ndarray = field(default_factory=lambda: np.array([]))
    bin_counts: list[int] = field(default_factory=list)
    """Scores per bin between consecutive edges; a score on the last edge falls in the last bin."""


def summarize_scores(
    conn: duckdb.DuckDBPyConnection, table: str, thresholds: Sequence[float], shards: Sequence[str] | None = None
) -> ScoreSummary:
    """The scores of `table` (of `shards` only, if given), binned in DuckDB: the same memory for ten rows or ten
    million."""
    where, params = shard_filter(shards)
    scores = f'"{table}", unnest(image_pair_similarity) AS t(s) {where}'
    count, low, mean, median, high = one(conn, f"SELECT count(s), min(s), avg(s), median(s), max(s) FROM {scores}", params)
    edges = histogram_edges(low, high, thresholds, TEXT_BINS)
    summary = ScoreSummary(count=count, edges=edges, bin_counts=[0] * (len(edges) - 1))
    if count:
        summary.statistics = {"min": low, "mean": mean, "median": median, "max": high}
        start, width, last = float(edges[0]), float(edges[1] - edges[0]), len(edges) - 2
        for b, n in conn.execute(
            f"SELECT least(greatest(floor((s - ?) / ? + 1e-9)::INTEGER, 0), ?) AS b, count(*) FROM {scores} "
            "GROUP BY b", [start, width, last, *params]
        ).fetchall():
            summary.bin_counts[b] = n
    return summary


def histogram_markdown(summary: ScoreSummary, *, thresholds: Mapping[str, float] | None = None) -> str:
    """A Markdown table with one row per score bin and a bar of block characters. Bins holding a threshold
    (e.g. {"min_score": 0.1}) are marked, so the keep range can be read off."""
    if not any(summary.bin_counts):
        return "_no scores_"
    edges, counts = summary.edges, summary.bin_counts
    marks: dict[int, list[str]] = {}
    for name, value in (thresholds or {}).items():
        b = int(np.searchsorted(edges, value, side="right")) - 1
        if 0 <= b < len(counts) or value == edges[-1]:
            marks.setdefault(min(b, len(counts) - 1), []).append(f"{name} {value:g}")
    peak = max(counts)
    lines = ["| similarity | samples | |", "|---|---:|---|"]
    for b, n in enumerate(counts):
        label = f"{edges[b] + 0.0:g} – {edges[b + 1] + 0.0:g}" + (f" ⟵ {', '.join(marks[b])}" if b in marks else "")
        bar = "█" * max(1, round(BAR_WIDTH * n / peak)) if n else ""
        lines.append(f"| {label} | {n} | {bar} |")
    return "\n".join(lines)


def share_text(settings: FilterSettings) -> str | None:
    """How a share of the data was cut, for people ("top 30% of 12 ok samples: 4 kept + 1 tied at the cut"); None
    for thresholds given as bounds."""
    if settings.share is None or settings.cut is None:
        return None
    cut, side = settings.cut, "top" if settings.from_top else "bottom"
    share = f"{side} {settings.share[1] * 100:.4g}%"
    if cut.score is None:
        return f"{share}: no ok sample to rank"
    ties = f" + {cut.ties_at_cut} tied at the cut" if cut.ties_at_cut else ""
    return f"{share} of {cut.ranked} ok samples: {cut.rank} kept{ties}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_cell: int = 80) -> str:
    """A small Markdown table; long cells are shortened and pipes escaped so the table stays readable."""

    def cell(value: object) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
