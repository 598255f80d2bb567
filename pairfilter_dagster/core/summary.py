"""Summaries of the scores for people: statistics and a text histogram that reads well in Markdown."""

import math
from typing import Mapping, Sequence

import numpy as np

BIN_WIDTH = 0.1
BAR_WIDTH = 30


def score_statistics(scores: Sequence[float]) -> dict[str, float]:
    """min / mean / median / max of all pair scores (empty when there are none)."""
    if len(scores) == 0:
        return {}
    values = np.asarray(scores, dtype=np.float64)
    return {
        "min": float(values.min()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def histogram_markdown(
    scores: Sequence[float], *, thresholds: Mapping[str, float] | None = None, bin_width: float = BIN_WIDTH
) -> str:
    """A Markdown table with one row per score bin and a bar of block characters. Bins holding a threshold
    (e.g. {"min_score": 0.1}) are marked, so the keep range can be read off."""
    if len(scores) == 0:
        return "_no scores_"
    values = np.clip(np.asarray(scores, dtype=np.float64), -1.0, 1.0)
    bins = int(round(2.0 / bin_width))
    index = np.minimum(((values + 1.0) / bin_width).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    used = np.nonzero(counts)[0]
    marks: dict[int, list[str]] = {}
    for name, value in (thresholds or {}).items():
        marks.setdefault(min(int(math.floor((value + 1.0) / bin_width + 1e-9)), bins - 1), []).append(
            f"{name} {value:g}"
        )
    first, last = min([used[0], *marks]), max([used[-1], *marks])
    peak = counts.max()
    lines = ["| similarity | samples | |", "|---|---:|---|"]
    for b in range(first, last + 1):
        low = -1.0 + b * bin_width
        label = f"{low:.2f} – {low + bin_width:.2f}" + (f" ⟵ {', '.join(marks[b])}" if b in marks else "")
        bar = "█" * int(round(BAR_WIDTH * counts[b] / peak)) if counts[b] else ""
        lines.append(f"| {label} | {counts[b]} | {bar} |")
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_cell: int = 80) -> str:
    """A small Markdown table; long cells are shortened and pipes escaped so the table stays readable."""

    def cell(value: object) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
