"""The threshold report: pictures that help a person pick `min_score` / `max_score`.

- a histogram of the pair scores, each bar split into pairs that pass and pairs that do not, with the thresholds
  drawn as vertical lines;
- one contact sheet per threshold: the pairs just inside and just outside it, sorted by score, with a line at the
  threshold, each row showing both thumbnails, the score and the sample id.

Plain PIL drawing (no plotting library): the pictures are simple and PIL is already a dependency.
"""

import base64
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .filtering import FilterSettings, keep_sample, score_passes
from .images import ImageDecodeError, decode_rgb
from .scoring import image_pairs
from .summary import markdown_table

PAIRS_PER_SIDE = 6
HISTOGRAM_FILE = "similarity_histogram.png"
REPORT_JSON = "report.json"
THRESHOLDS = ("min_score", "max_score")
SWEEP_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)

PASS_COLOR = (46, 160, 67)
DROP_COLOR = (160, 160, 160)
LINE_COLORS = {"min_score": (208, 56, 56), "max_score": (37, 99, 235)}
INK = (33, 33, 33)
PAPER = (255, 255, 255)


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


def scored_pairs(rows: Iterable[dict]) -> list[ScoredPair]:
    """The pairs of the ok rows of the stats table (dicts with sample_id, images, image_pair_similarity, status)."""
    pairs = []
    for row in rows:
        if row["status"] != "ok":
            continue
        images = list(row["images"])
        for (a, b), score in zip(image_pairs(len(images)), row["image_pair_similarity"]):
            pairs.append(ScoredPair(row["sample_id"], images[a], images[b], float(score)))
    return pairs


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


def write_threshold_report(rows: Sequence[dict], settings: FilterSettings, directory: Path,
                           per_side: int = PAIRS_PER_SIDE) -> ThresholdReport:
    """Draw the histogram and both contact sheets from stats-table rows; write them and report.json under
    `directory` (each file replaced atomically)."""
    directory = Path(directory)
    pairs = scored_pairs(rows)
    histogram = draw_histogram([p.score for p in pairs], settings)
    save_atomically(histogram, directory / HISTOGRAM_FILE)
    sheets, sheet_rows = {}, {}
    for threshold in THRESHOLDS:
        sheet_rows[threshold] = boundary_rows(pairs, settings, threshold, per_side)
        sheets[threshold] = directory / sheet_file(threshold)
        save_atomically(draw_contact_sheet(sheet_rows[threshold], settings, threshold), sheets[threshold])
    report = ThresholdReport(
        directory=directory,
        histogram=directory / HISTOGRAM_FILE,
        sheets=sheets,
        sheet_rows=sheet_rows,
        scores=[p.score for p in pairs],
        passing_pairs=sum(score_passes(p.score, settings) for p in pairs),
        kept_samples=sum(keep_sample(r["status"], r["image_pair_similarity"], settings) for r in rows),
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


# ---- drawing ------------------------------------------------------------------------------------------------

def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


NICE_BIN_WIDTHS = (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2)
FAR_OFF = 0.5
"""A threshold further beyond the scores than this share of their range is drawn off scale."""


def histogram_bins(scores: Sequence[float], settings: FilterSettings, target_bins: int = 40) -> np.ndarray:
    """Bin edges on a round width over the scores. A threshold close to them is taken in; one far off is left out
    (and drawn off scale at the edge), so that the bars stay wide enough to read."""
    thresholds = [settings.min_score, settings.max_score]
    if len(scores) == 0:
        low, high = min(thresholds), max(thresholds)
    else:
        low, high = min(scores), max(scores)
        reach = FAR_OFF * max(high - low, 0.05)
        low = min([low, *(t for t in thresholds if low - reach <= t)])
        high = max([high, *(t for t in thresholds if t <= high + reach)])
    low, high = max(-1.0, low), min(1.0, high)
    width = next((w for w in NICE_BIN_WIDTHS if (high - low) / w <= target_bins), NICE_BIN_WIDTHS[-1])
    start = math.floor(low / width + 1e-9) * width
    stop = max(math.ceil(high / width - 1e-9) * width, start + width)
    return np.round(np.arange(start, stop + width / 2, width), 6)


def draw_histogram(scores: Sequence[float], settings: FilterSettings, size: tuple[int, int] = (900, 360)) -> Image.Image:
    """Bars of pair counts per score bin, green where the score passes the thresholds, grey where it does not;
    a vertical line and label at each threshold."""
    width, height = size
    left, right, top, bottom = 56, 20, 80, 46
    image = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(image)
    values = np.asarray(scores, dtype=np.float64)
    passing = np.array([score_passes(s, settings) for s in values], dtype=bool)
    edges = histogram_bins(values.tolist(), settings)
    kept_counts, _ = np.histogram(values[passing], bins=edges)
    dropped_counts, _ = np.histogram(values[~passing], bins=edges)
    peak = max(1, int((kept_counts + dropped_counts).max(initial=0)))

    title = (f"image_pair_similarity of {len(values)} pairs: {int(passing.sum())} within "
             f"[{settings.min_score:g}, {settings.max_score:g}]")
    draw.text((left, 10), title, fill=INK, font=font(18))
    legend_x = left
    for color, label in ((PASS_COLOR, "passes (kept)"), (DROP_COLOR, "outside (dropped)")):
        draw.rectangle([legend_x, 36, legend_x + 12, 48], fill=color)
        draw.text((legend_x + 18, 34), label, fill=INK, font=font(13))
        legend_x += 160

    plot_w, plot_h = width - left - right, height - top - bottom
    x_of = lambda v: left + (v - edges[0]) / (edges[-1] - edges[0]) * plot_w  # noqa: E731
    y_of = lambda c: top + plot_h - c / peak * plot_h  # noqa: E731
    for i in range(len(edges) - 1):
        x0, x1 = x_of(edges[i]) + 1, x_of(edges[i + 1]) - 1
        kept, dropped = int(kept_counts[i]), int(dropped_counts[i])
        if kept:
            draw.rectangle([x0, y_of(kept), x1, y_of(0)], fill=PASS_COLOR)
        if dropped:
            draw.rectangle([x0, y_of(kept + dropped), x1, y_of(kept)], fill=DROP_COLOR)
    draw.line([left, top + plot_h, left + plot_w, top + plot_h], fill=INK)
    draw.line([left, top, left, top + plot_h], fill=INK)
    for count in sorted({0, peak // 2, peak}):
        draw.text((left - 8, y_of(count)), str(count), fill=INK, font=font(12), anchor="rm")
    draw.text((14, top + plot_h / 2), "pairs", fill=INK, font=font(12), anchor="lm")
    step = max(1, math.ceil((len(edges) - 1) / 10))
    for edge in edges[::step]:
        draw.line([x_of(edge), top + plot_h, x_of(edge), top + plot_h + 4], fill=INK)
        draw.text((x_of(edge), top + plot_h + 6), f"{edge:g}", fill=INK, font=font(12), anchor="mt")
    draw.text((left + plot_w / 2, height - 6), "cosine similarity of the two CLIP embeddings", fill=INK,
              font=font(12), anchor="mb")
    for name in THRESHOLDS:
        value = getattr(settings, name)
        x = min(max(x_of(value), left), left + plot_w)
        off_scale = " (off scale)" if not edges[0] <= value <= edges[-1] else ""
        for y in range(top, top + plot_h, 8):
            draw.line([x, y, x, min(y + 4, top + plot_h)], fill=LINE_COLORS[name], width=2)
        # min_score's label to the left of its line, max_score's to the right, unless that leaves the picture.
        to_left = (name == "min_score" and x - left > 200) or (name == "max_score" and left + plot_w - x < 200)
        draw.text((x + (-4 if to_left else 4), top - 18), f"{name} {value:g}{off_scale}", fill=LINE_COLORS[name],
                  font=font(13), anchor="ra" if to_left else "la")
    return image


THUMB = 128
ROW_GAP = 8
SHEET_WIDTH = 2 * THUMB + 3 * ROW_GAP + 420
SHEET_HEADER = 64
ROW_HEIGHT = THUMB + ROW_GAP
LINE_BAND = 28
EMPTY_ROW = 36


def contact_sheet_height(rows_above: int, rows_below: int) -> int:
    """Header, the rows above the threshold line (or an 'empty' note), the line, the rows below (or a note)."""
    side = lambda n: n * ROW_HEIGHT if n else EMPTY_ROW  # noqa: E731
    return SHEET_HEADER + side(rows_above) + LINE_BAND + side(rows_below) + ROW_GAP


def thumbnail(path: str) -> Image.Image:
    """The picture upright and fitted in a THUMB square; a grey tile saying why when it cannot be read."""
    tile = Image.new("RGB", (THUMB, THUMB), (236, 236, 236))
    try:
        picture = decode_rgb(path)
    except ImageDecodeError:
        problem = "unreadable" if os.path.exists(path) else "missing"
        ImageDraw.Draw(tile).text((THUMB / 2, THUMB / 2), problem, fill=INK, font=font(13), anchor="mm")
        return tile
    picture.thumbnail((THUMB, THUMB))
    tile.paste(picture, ((THUMB - picture.width) // 2, (THUMB - picture.height) // 2))
    return tile


def draw_contact_sheet(rows: Sequence[BoundaryRow], settings: FilterSettings, threshold: str) -> Image.Image:
    """Rows of (thumbnail, thumbnail, score, sample id), highest score first, a line at the threshold."""
    value = getattr(settings, threshold)
    above = [r for r in rows if above_line(r.pair.score, threshold, value)]
    below = [r for r in rows if r not in above]
    image = Image.new("RGB", (SHEET_WIDTH, contact_sheet_height(len(above), len(below))), PAPER)
    draw = ImageDraw.Draw(image)
    draw.text((ROW_GAP, 10), f"Pairs just above and below {threshold} = {value:g}", fill=INK, font=font(18))
    draw.text((ROW_GAP, 36), f"keep range [{settings.min_score:g}, {settings.max_score:g}], "
                             f"{settings.any_or_all}; green: passes, grey: dropped", fill=INK, font=font(13))
    y = SHEET_HEADER
    for side, side_rows in (("above", above), ("below", below)):
        if not side_rows:
            draw.text((ROW_GAP, y + 8), f"no scored pair {side} {threshold} {value:g}", fill=INK, font=font(14))
            y += EMPTY_ROW
        for row in side_rows:
            draw_pair_row(image, draw, row, y)
            y += ROW_HEIGHT
        if side == "above":
            middle = y + LINE_BAND // 2
            draw.line([0, middle, SHEET_WIDTH, middle], fill=LINE_COLORS[threshold], width=3)
            draw.text((SHEET_WIDTH - ROW_GAP, middle - 3), f"{threshold} {value:g}", fill=LINE_COLORS[threshold],
                      font=font(13), anchor="rb")
            y += LINE_BAND
    return image


def draw_pair_row(image: Image.Image, draw: ImageDraw.ImageDraw, row: BoundaryRow, y: int) -> None:
    color = PASS_COLOR if row.passes else DROP_COLOR
    draw.rectangle([0, y, 4, y + THUMB], fill=color)
    image.paste(thumbnail(row.pair.image_a), (ROW_GAP, y))
    image.paste(thumbnail(row.pair.image_b), (2 * ROW_GAP + THUMB, y))
    text_x = 3 * ROW_GAP + 2 * THUMB
    draw.text((text_x, y + 6), f"{row.pair.score:.4f}", fill=color, font=font(26))
    draw.text((text_x, y + 44), row.pair.sample_id, fill=INK, font=font(15))
    draw.text((text_x, y + 66), "passes" if row.passes else "dropped", fill=color, font=font(13))
    for offset, path in enumerate((row.pair.image_a, row.pair.image_b)):
        draw.text((text_x, y + 88 + 16 * offset), shorten(os.path.basename(path), 52), fill=(110, 110, 110),
                  font=font(12))


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- files and embedding ------------------------------------------------------------------------------------

def save_atomically(content: Image.Image | bytes, path: Path) -> None:
    """Write a PNG image (or raw bytes) to a temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, Image.Image):
                content.save(handle, format="PNG", optimize=True)
            else:
                handle.write(content)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def image_data_uri(path: Path, max_width: int = 900, jpeg_quality: int = 75) -> str:
    """A data: URI of the picture for Markdown (`![alt](data:...)`), which the Dagster UI renders inline.
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
