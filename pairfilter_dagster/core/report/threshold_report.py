"""The threshold report: pictures that help a person pick `min_score` / `max_score`, written as files.

- a histogram of the pair scores, each bar split into pairs that pass and pairs that do not, with the thresholds
  drawn as vertical lines;
- one contact sheet per threshold: the pairs just inside and just outside it (`boundary_pairs`), sorted by score,
  with a line at the threshold, each row showing both thumbnails, the score and the sample id;
- report.json: which pairs each sheet shows.
"""

import base64
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..filtering import FilterSettings, keep_row, score_passes
from ..images import ImageAccess
from ..publish import write_atomically
from ..schema import StatsRow
from .boundary_pairs import PAIRS_PER_SIDE, THRESHOLDS, BoundaryRow, boundary_rows, scored_pairs
from .pictures import draw_contact_sheet, draw_histogram
from .summary import markdown_table

HISTOGRAM_FILE = "similarity_histogram.png"
REPORT_JSON = "report.json"
SWEEP_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@dataclass(frozen=True)
class ThresholdReport:
    """What was drawn, for metadata and tests: files written and the sample ids shown on each sheet."""

    directory: Path
    histogram: Path
    sheets: dict[str, Path]
    sheet_rows: dict[str, list[BoundaryRow]]
    scores: list[float]
    passing_pairs: int
    kept_samples: int

    @property
    def scored_pairs(self) -> int:
        return len(self.scores)

    def as_json(self) -> dict:
        return {
            "histogram": self.histogram.name,
            "scored_pairs": self.scored_pairs,
            "passing_pairs": self.passing_pairs,
            "kept_samples": self.kept_samples,
            "sheets": {
                name: {"file": self.sheets[name].name, "rows": [{**asdict(r.pair), "passes": r.passes} for r in rows]}
                for name, rows in self.sheet_rows.items()
            },
        }


def sheet_file(threshold: str) -> str:
    return f"{threshold}_boundary.png"


def write_threshold_report(rows: Sequence[StatsRow], settings: FilterSettings, directory: Path,
                           per_side: int = PAIRS_PER_SIDE, access: ImageAccess = ImageAccess()) -> ThresholdReport:
    """Draw the histogram and both contact sheets from stats-table rows (their pictures read under `access`);
    write them and report.json under `directory` (each file replaced atomically)."""
    directory = Path(directory)
    pairs = scored_pairs(rows)
    histogram = draw_histogram([p.score for p in pairs], settings)
    save_atomically(histogram, directory / HISTOGRAM_FILE)
    sheets, sheet_rows = {}, {}
    for threshold in THRESHOLDS:
        sheet_rows[threshold] = boundary_rows(pairs, settings, threshold, per_side)
        sheets[threshold] = directory / sheet_file(threshold)
        save_atomically(draw_contact_sheet(sheet_rows[threshold], settings, threshold, access), sheets[threshold])
    report = ThresholdReport(
        directory=directory,
        histogram=directory / HISTOGRAM_FILE,
        sheets=sheets,
        sheet_rows=sheet_rows,
        scores=[p.score for p in pairs],
        passing_pairs=sum(score_passes(p.score, settings) for p in pairs),
        kept_samples=sum(keep_row(row, settings) for row in rows),
    )
    save_atomically(json.dumps(report.as_json(), indent=2).encode(), directory / REPORT_JSON)
    return report


def min_score_sweep_markdown(scores: list[float], settings: FilterSettings) -> str:
    """How many pairs would pass with min_score set at quantiles of the scores (max_score as it is)."""
    if not scores:
        return "_no scores_"
    values = np.asarray(scores)
    rows = []
    for q in SWEEP_QUANTILES:
        candidate = float(np.quantile(values, q))
        passing = int(((values >= candidate) & (values <= settings.max_score)).sum())
        rows.append((f"{q:.0%}", f"{candidate:.4f}", passing, f"{passing / len(values):.0%}"))
    return markdown_table(["score quantile", "min_score", "pairs passing", "share"], rows)


def save_atomically(content: Image.Image | bytes, path: Path) -> None:
    """A PNG image (or raw bytes) written whole or not at all."""
    if isinstance(content, Image.Image):
        buffer = io.BytesIO()
        content.save(buffer, format="PNG", optimize=True)
        content = buffer.getvalue()
    write_atomically(path, content)


def image_data_uri(path: Path, max_width: int = 900, jpeg_quality: int = 75) -> str:
    """A data: URI of the picture for Markdown (`![alt](data:...)`), which the Dagster UI renders.
    Photos go as JPEG to keep the event log small; pictures without photos (the histogram) stay PNG."""
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    if picture.width > max_width:
        picture = picture.resize((max_width, round(picture.height * max_width / picture.width)))
    buffer = io.BytesIO()
    is_photo_sheet = path.name != HISTOGRAM_FILE
    picture.save(buffer, format="JPEG" if is_photo_sheet else "PNG", quality=jpeg_quality, optimize=True)
    mime = "image/jpeg" if is_photo_sheet else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
