"""The threshold report: real photos, known scores, pictures that decode and show the right pairs."""

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pairfilter_dagster.core.filtering import FilterSettings
from pairfilter_dagster.core.ingest.formats import read_samples
from pairfilter_dagster.core.report.pictures import (
    DROP_COLOR,
    LINE_BAND,
    LINE_COLORS,
    PASS_COLOR,
    ROW_GAP,
    ROW_HEIGHT,
    SHEET_HEADER,
    SHEET_WIDTH,
    THUMB,
    contact_sheet_height,
    thumbnail,
)
from pairfilter_dagster.core.report.summary import histogram_edges
from pairfilter_dagster.core.report.threshold_report import (
    image_data_uri,
    min_score_sweep_markdown,
    write_threshold_report,
)
from pairfilter_dagster.core.schema import StatsRow, Status

# Known scores for the nine good pairs of the bundled data: pairs.jsonl:<n> scores 0.50 + 0.05 * n.
KNOWN = {f"pairs.jsonl:{n}": round(0.5 + 0.05 * n, 2) for n in range(1, 10)}
SETTINGS = FilterSettings(min_score=0.7, max_score=0.9)


def stats_rows(data_dir: Path) -> list[StatsRow]:
    """Stats rows of the bundled samples, the good ones with the KNOWN scores."""
    rows = []
    for sample in read_samples(data_dir / "raw"):
        ok = sample.sample_id in KNOWN
        rows.append(StatsRow(
            sample_id=sample.sample_id, manifest=sample.manifest, line_number=sample.line_number,
            images=sample.images, image_pair_similarity=(KNOWN[sample.sample_id],) if ok else (),
            status=Status.OK if ok else Status.MISSING_IMAGE, sample_json=sample.sample_json,
            image_pairs=sample.image_pairs,
        ))
    return rows


def colour_present(image: Image.Image, colour) -> bool:
    return bool((np.asarray(image.convert("RGB")) == np.array(colour)).all(axis=-1).any())


@pytest.fixture
def report(bundled_data_dir, tmp_path):
    return write_threshold_report(stats_rows(bundled_data_dir), SETTINGS, tmp_path / "report", per_side=3)


def test_sheets_show_the_pairs_nearest_each_threshold_in_score_order(report):
    shown = {name: [(r.pair.sample_id, r.pair.score, r.passes) for r in rows]
             for name, rows in report.sheet_rows.items()}
    # min_score 0.7: three at or above (0.7 passes: bounds are inclusive), three below; highest score first.
    assert shown["min_score"] == [
        ("pairs.jsonl:6", 0.8, True), ("pairs.jsonl:5", 0.75, True), ("pairs.jsonl:4", 0.7, True),
        ("pairs.jsonl:3", 0.65, False), ("pairs.jsonl:2", 0.6, False), ("pairs.jsonl:1", 0.55, False),
    ]
    # max_score 0.9: 0.95 is above the line (dropped), 0.9 and below pass.
    assert shown["max_score"] == [
        ("pairs.jsonl:9", 0.95, False), ("pairs.jsonl:8", 0.9, True), ("pairs.jsonl:7", 0.85, True),
        ("pairs.jsonl:6", 0.8, True),
    ]
    assert (report.scored_pairs, report.passing_pairs, report.kept_samples) == (9, 5, 5)
    written = json.loads((report.directory / "report.json").read_text())
    assert [row["sample_id"] for row in written["sheets"]["max_score"]["rows"]] == [
        "pairs.jsonl:9", "pairs.jsonl:8", "pairs.jsonl:7", "pairs.jsonl:6"]


def test_sheet_images_decode_and_hold_one_thumbnail_pair_per_row(report):
    for name, above in (("min_score", 3), ("max_score", 1)):
        rows = report.sheet_rows[name]
        with Image.open(report.sheets[name]) as sheet:
            sheet.load()
        assert sheet.format == "PNG"
        assert sheet.height == contact_sheet_height(above, len(rows) - above)
        assert colour_present(sheet, LINE_COLORS[name])
        for index, row in enumerate(rows):
            y = SHEET_HEADER + index * ROW_HEIGHT + (LINE_BAND if index >= above else 0)
            left = sheet.crop((ROW_GAP, y, ROW_GAP + THUMB, y + THUMB))
            right = sheet.crop((2 * ROW_GAP + THUMB, y, 2 * ROW_GAP + 2 * THUMB, y + THUMB))
            # The real photos, exactly as thumbnailed, in score order.
            assert np.array_equal(np.asarray(left), np.asarray(thumbnail(row.pair.image_a))), (name, index)
            assert np.array_equal(np.asarray(right), np.asarray(thumbnail(row.pair.image_b))), (name, index)
            stripe = sheet.getpixel((1, y + THUMB // 2))
            assert stripe == (PASS_COLOR if row.passes else DROP_COLOR)


def test_histogram_decodes_with_pass_and_drop_bars_and_both_threshold_lines(report):
    with Image.open(report.histogram) as histogram:
        histogram.load()
    assert histogram.format == "PNG" and histogram.size == (900, 360)
    for colour in (PASS_COLOR, DROP_COLOR, *LINE_COLORS.values()):
        assert colour_present(histogram, colour)


def test_a_threshold_with_nothing_beyond_it_says_so(bundled_data_dir, tmp_path):
    report = write_threshold_report(stats_rows(bundled_data_dir), FilterSettings(0.1, 1.0), tmp_path, per_side=2)
    assert [r.pair.sample_id for r in report.sheet_rows["max_score"]] == ["pairs.jsonl:9", "pairs.jsonl:8"]
    assert [r.pair.sample_id for r in report.sheet_rows["min_score"]] == ["pairs.jsonl:2", "pairs.jsonl:1"]
    with Image.open(report.sheets["max_score"]) as sheet:
        assert sheet.height == contact_sheet_height(0, 2)


def test_no_scores_still_gives_decodable_pictures(tmp_path):
    report = write_threshold_report([], FilterSettings(), tmp_path)
    for path in (report.histogram, *report.sheets.values()):
        with Image.open(path) as picture:
            picture.verify()
    assert report.scored_pairs == 0 and min_score_sweep_markdown([], FilterSettings()) == "_no scores_"


def test_missing_and_broken_images_get_a_labelled_tile(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    for path in (broken, tmp_path / "gone.jpg"):
        tile = thumbnail(str(path))
        colours = np.unique(np.asarray(tile).reshape(-1, 3), axis=0)
        assert tile.size == (THUMB, THUMB) and len(colours) > 1  # a grey tile with its label


def test_data_uri_decodes_to_the_picture(report):
    uri = image_data_uri(report.sheets["min_score"])
    mime, payload = uri.removeprefix("data:").split(";base64,")
    assert mime == "image/jpeg"
    with Image.open(io.BytesIO(base64.b64decode(payload))) as picture:
        assert picture.width == SHEET_WIDTH
    assert image_data_uri(report.histogram).startswith("data:image/png;base64,")


def test_min_score_sweep_counts_passing_pairs():
    table = min_score_sweep_markdown([0.1, 0.2, 0.3, 0.4], FilterSettings(0.0, 0.35)).splitlines()
    assert table[0] == "| score quantile | min_score | pairs passing | share |"
    assert "| 50% | 0.2500 | 1 | 25% |" in table  # 0.3 only: 0.4 is above max_score


def test_files_are_replaced_whole(report):
    leftovers = [name for name in os.listdir(report.directory) if name.endswith(".tmp")]
    assert leftovers == [] and sorted(os.listdir(report.directory)) == [
        "max_score_boundary.png", "min_score_boundary.png", "report.json", "similarity_histogram.png"]


def test_report_asset_after_a_real_run(bundled_data_dir, tiny_clip_dir):
    """The whole pipeline with the tiny CLIP model, then the report: files decode, sheets hold the pairs nearest
    each threshold given the scores in the stats table, the UI metadata embeds the pictures."""

    from .pipeline import PIPELINE
    from .test_assets import ASSETS, metadata, query, run

    config = {"min_score": 0.5, "max_score": 0.9}
    result = run([*ASSETS, PIPELINE.similarity_report], bundled_data_dir, tiny_clip_dir, config)
    assert result.success
    scores = dict(query(bundled_data_dir, "SELECT sample_id, image_pair_similarity[1] FROM image_pair_stats "
                                          "WHERE status = 'ok'"))
    assert len(scores) == 9

    directory = bundled_data_dir / "output" / "report"
    written = json.loads((directory / "report.json").read_text())
    for name, value in config.items():
        inclusive_above = (lambda s, v=value: s >= v) if name == "min_score" else (lambda s, v=value: s > v)
        above = sorted(s for s in scores.values() if inclusive_above(s))[:6]
        below = sorted((s for s in scores.values() if not inclusive_above(s)), reverse=True)[:6]
        rows = written["sheets"][name]["rows"]
        assert [row["score"] for row in rows] == pytest.approx(sorted(above + below, reverse=True))
        assert all(scores[row["sample_id"]] == pytest.approx(row["score"]) for row in rows)
        with Image.open(directory / f"{name}_boundary.png") as sheet:
            assert sheet.height == contact_sheet_height(len(above), len(below))

    meta = metadata(result, "similarity_report")
    assert meta["scored_pairs"] == 9 and (meta["min_score"], meta["max_score"]) == (0.5, 0.9)
    assert meta["kept_samples"] == metadata(result, "filtered_samples")["kept"]
    for key in ("histogram", "min_score_boundary", "max_score_boundary"):
        payload = meta[key].split(";base64,")[1].split(")")[0]
        with Image.open(io.BytesIO(base64.b64decode(payload))) as picture:
            picture.verify()
    assert meta["report_dir"] == str(directory)


def test_histogram_axis_takes_in_near_thresholds_and_leaves_far_ones_off_scale():
    scores = [0.90, 0.93, 0.97, 0.99]
    near = histogram_edges(min(scores), max(scores), [0.87, 1.0])
    assert near[0] <= 0.87 and near[-1] == 1.0
    far = histogram_edges(min(scores), max(scores), [0.2, 1.0])  # 0.2 is far below: the bars keep the width
    assert far[0] > 0.2 and far[0] <= 0.90 and len(far) - 1 <= 40
    assert list(histogram_edges(None, None, [0.1, 0.3])[[0, -1]]) == [0.1, 0.3]
