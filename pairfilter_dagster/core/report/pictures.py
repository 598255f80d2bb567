"""Drawing the report's pictures with PIL: the score histogram and the contact sheets of boundary pairs.

Plain PIL (no plotting library): the pictures are simple, PIL is already a dependency, and its bundled font makes
them look the same on every machine."""

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..filtering import FilterSettings, score_passes
from ..images import ImageAccess, ImageDecodeError, ImageRefused, decode_rgb, read_image_bytes
from .boundary_pairs import THRESHOLDS, BoundaryRow, above_line
from .summary import histogram_edges, share_text

PASS_COLOR = (46, 160, 67)
DROP_COLOR = (160, 160, 160)
LINE_COLORS = {"min_score": (208, 56, 56), "max_score": (37, 99, 235)}
INK = (33, 33, 33)
PAPER = (255, 255, 255)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_histogram(
    scores: Sequence[float], settings: FilterSettings, size: tuple[int, int] = (900, 360)
) -> Image.Image:
    """Bars of pair counts per score bin, green where the score passes the thresholds, grey where it does not;
    a vertical line and label at each threshold."""
    width, height = size
    left, right, top, bottom = 56, 20, 80, 46
    image = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(image)
    values = np.asarray(scores, dtype=np.float64)
    passing = np.array([score_passes(s, settings) for s in values], dtype=bool)
    edges = histogram_edges(values.min() if len(values) else None, values.max() if len(values) else None,
                            [settings.min_score, settings.max_score])
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
    share = share_text(settings)
    if share:  # the bounds were resolved from a share of the data: say which
        draw.text((legend_x, 34), f"thresholds from a share: {share}", fill=INK, font=font(13))

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


def thumbnail(path: str, access: ImageAccess = ImageAccess()) -> Image.Image:
    """The picture upright and fitted in a THUMB square, read under `access`; a grey tile saying why when it
    cannot be read."""
    tile = Image.new("RGB", (THUMB, THUMB), (236, 236, 236))
    try:
        picture = decode_rgb(path, read_image_bytes(path, access))
    except (ImageRefused, ImageDecodeError):
        problem = "unreadable" if os.path.exists(path) else "missing"
        ImageDraw.Draw(tile).text((THUMB / 2, THUMB / 2), problem, fill=INK, font=font(13), anchor="mm")
        return tile
    picture.thumbnail((THUMB, THUMB))
    tile.paste(picture, ((THUMB - picture.width) // 2, (THUMB - picture.height) // 2))
    return tile


def draw_contact_sheet(
    rows: Sequence[BoundaryRow], settings: FilterSettings, threshold: str, access: ImageAccess = ImageAccess()
) -> Image.Image:
    """Rows of (thumbnail, thumbnail, score, sample id), highest score first, a line at the threshold."""
    value = getattr(settings, threshold)
    above = [r for r in rows if above_line(r.pair.score, threshold, value)]
    below = [r for r in rows if r not in above]
    image = Image.new("RGB", (SHEET_WIDTH, contact_sheet_height(len(above), len(below))), PAPER)
    draw = ImageDraw.Draw(image)
    draw.text((ROW_GAP, 10), f"Pairs just above and below {threshold} = {value:g}", fill=INK, font=font(18))
    share = share_text(settings)
    draw.text((ROW_GAP, 36), f"keep range [{settings.min_score:g}, {settings.max_score:g}], {settings.any_or_all}"
                             f"{f' ({share})' if share else ''}; green: passes, grey: dropped", fill=INK, font=font(13))
    y = SHEET_HEADER
    for side, side_rows in (("above", above), ("below", below)):
        if not side_rows:
            draw.text((ROW_GAP, y + 8), f"no scored pair {side} {threshold} {value:g}", fill=INK, font=font(14))
            y += EMPTY_ROW
        for row in side_rows:
            draw_pair_row(image, draw, row, y, access)
            y += ROW_HEIGHT
        if side == "above":
            middle = y + LINE_BAND // 2
            draw.line([0, middle, SHEET_WIDTH, middle], fill=LINE_COLORS[threshold], width=3)
            draw.text((SHEET_WIDTH - ROW_GAP, middle - 3), f"{threshold} {value:g}", fill=LINE_COLORS[threshold],
                      font=font(13), anchor="rb")
            y += LINE_BAND
    return image


def draw_pair_row(image: Image.Image, draw: ImageDraw.ImageDraw, row: BoundaryRow, y: int, access: ImageAccess) -> None:
    color = PASS_COLOR if row.passes else DROP_COLOR
    draw.rectangle([0, y, 4, y + THUMB], fill=color)
    image.paste(thumbnail(row.pair.image_a, access), (ROW_GAP, y))
    image.paste(thumbnail(row.pair.image_b, access), (2 * ROW_GAP + THUMB, y))
    text_x = 3 * ROW_GAP + 2 * THUMB
    draw.text((text_x, y + 6), f"{row.pair.score:.4f}", fill=color, font=font(26))
    draw.text((text_x, y + 44), row.pair.sample_id, fill=INK, font=font(15))
    draw.text((text_x, y + 66), "passes" if row.passes else "dropped", fill=color, font=font(13))
    for offset, path in enumerate((row.pair.image_a, row.pair.image_b)):
        draw.text((text_x, y + 88 + 16 * offset), shorten(os.path.basename(path), 52), fill=(110, 110, 110),
                  font=font(12))


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
