"""Summaries of the scores for people: statistics and a text histogram that reads well in Markdown.

Both are computed in DuckDB over the stored table, so they cost the same memory for ten rows or ten million."""

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import duckdb

from .store import shard_filter

BIN_WIDTH = 0.1
BINS = int(round(2.0 / BIN_WIDTH))  # scores lie in [-1, 1]
BAR_WIDTH = 30


@dataclass
class ScoreSummary:
    count: int = 0
    statistics: dict[str, float] = field(default_factory=dict)
    """min / mean / median / max of all pair scores (empty when there are none)."""
    bin_counts: list[int] = field(default_factory=lambda: [0] * BINS)
    """Scores per bin of width BIN_WIDTH, from -1 upwards; 1.0 falls in the last bin."""


def summarize_scores(
    conn: duckdb.DuckDBPyConnection, table: str, shards: Sequence[str] | None = None
) -> ScoreSummary:
    """The scores of `table` (of `shards` only, if given)."""
    where, params = shard_filter(shards)
    scores = f'"{table}", unnest(image_pair_similarity) AS t(s) {where}'
    count, low, mean, median, high = conn.execute(
        f"SELECT count(s), min(s), avg(s), median(s), max(s) FROM {scores}", params
    ).fetchone()
    summary = ScoreSummary(count=count)
    if count:
        summary.statistics = {"min": low, "mean": mean, "median": median, "max": high}
        for b, n in conn.execute(
            f"SELECT least(greatest(floor((s + 1) / {BIN_WIDTH})::INTEGER, 0), {BINS - 1}) AS b, count(*) "
            f"FROM {scores} GROUP BY b", params
        ).fetchall():
            summary.bin_counts[b] = n
    return summary


def bin_of(score: float) -> int:
    return min(max(int(math.floor((score + 1.0) / BIN_WIDTH + 1e-9)), 0), BINS - 1)


def histogram_markdown(bin_counts: Sequence[int], *, thresholds: Mapping[str, float] | None = None) -> str:
    """A Markdown table with one row per score bin and a bar of block characters. Bins holding a threshold
    (e.g. {"min_score": 0.1}) are marked, so the keep range can be read off."""
    if not any(bin_counts):
        return "_no scores_"
    marks: dict[int, list[str]] = {}
    for name, value in (thresholds or {}).items():
        marks.setdefault(bin_of(value), []).append(f"{name} {value:g}")
    used = [b for b, n in enumerate(bin_counts) if n]
    first, last = min([used[0], *marks]), max([used[-1], *marks])
    peak = max(bin_counts)
    lines = ["| similarity | samples | |", "|---|---:|---|"]
    for b in range(first, last + 1):
        low = round(-1.0 + b * BIN_WIDTH, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
        label = f"{low:.1f} – {low + BIN_WIDTH:.1f}" + (f" ⟵ {', '.join(marks[b])}" if b in marks else "")
        bar = "█" * max(1, round(BAR_WIDTH * bin_counts[b] / peak)) if bin_counts[b] else ""
        lines.append(f"| {label} | {bin_counts[b]} | {bar} |")
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_cell: int = 80) -> str:
    """A small Markdown table; long cells are shortened and pipes escaped so the table stays readable."""

    def cell(value: object) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
