from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairfilter_dagster.core.ingest.pairing import PAIRINGS, image_pairs, pairing_problem

from .conftest import write_manifest
from .pipeline import PIPELINE as assets
from .test_assets import ASSETS, metadata, query, read_jsonl, run


def test_exactly_two_is_data_juicers_rule():
    assert image_pairs(2, "exactly_two") == [(0, 1)]
    for count in (0, 1, 3, 4):
        assert image_pairs(count, "exactly_two") == []
        assert f"found {count}" in pairing_problem(count, "exactly_two")


def test_consecutive_and_all_pairs_in_score_order():
    assert image_pairs(4, "consecutive") == [(0, 1), (1, 2), (2, 3)]
    assert image_pairs(4, "all_pairs") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert image_pairs(2, "consecutive") == image_pairs(2, "all_pairs") == [(0, 1)]
    for pairing in ("consecutive", "all_pairs"):
        assert image_pairs(1, pairing) == [] and "at least two" in pairing_problem(1, pairing)


def test_an_unknown_pairing_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="pairing"):
        image_pairs(2, "triples")


@given(count=st.integers(min_value=0, max_value=12), pairing=st.sampled_from(PAIRINGS))
def test_pairs_are_ordered_distinct_index_pairs_of_the_expected_number(count, pairing):
    pairs = image_pairs(count, pairing)
    expected = {"exactly_two": 1 if count == 2 else 0, "consecutive": max(count - 1, 0),
                "all_pairs": count * (count - 1) // 2}[pairing]
    assert len(pairs) == expected
    assert (pairing_problem(count, pairing) is None) == (expected > 0)
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)
    assert all(0 <= i < j < count for i, j in pairs)
    assert set(pairs) <= set(combinations(range(count), 2))


MULTI = ["cat.jpg", "cat_crop.jpg", "img3.jpg", "img2.jpg"]


def test_n_image_samples_through_the_pipeline(bundled_data_dir, tiny_clip_dir):
    """A 4-image sample scored under all_pairs and consecutive: one score per pair, in pair order, each equal to
    the score of the same two images as a two-image sample; any/all decide over them; the JSONL lists them."""
    raw = bundled_data_dir / "raw"
    for path in raw.rglob("*.jsonl"):
        path.unlink()
    write_manifest(raw / "a_multi.jsonl", [{"id": "four", "images": [f"../images/{n}" for n in MULTI]}])
    write_manifest(raw / "b_pairs.jsonl", [{"images": [f"../images/{MULTI[i]}", f"../images/{MULTI[j]}"]}
                                           for i, j in combinations(range(4), 2)])
    two_image_scores = {}
    for pairing in ("all_pairs", "consecutive"):
        result = run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0},
                     storage_options={"pairing": pairing})
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        rows = {sid: (status, scores, pairs) for sid, status, scores, pairs in query(
            bundled_data_dir, "SELECT sample_id, status, image_pair_similarity, image_pairs FROM image_pair_stats")}
        two_image_scores = {tuple(pair): rows[f"b_pairs.jsonl:{k + 1}"][1][0]
                            for k, pair in enumerate(combinations(range(4), 2))}
        status, scores, pairs = rows["a_multi.jsonl:1"]
        assert status == "ok" and pairs == [list(pair) for pair in image_pairs(4, pairing)]
        assert scores == pytest.approx([two_image_scores[tuple(pair)] for pair in pairs], abs=1e-6)
        (four,) = [r for r in read_jsonl(bundled_data_dir / "output" / "filtered_samples.jsonl") if r.get("id")]
        assert four["__dj__stats__"]["image_pair_similarity"] == scores
        assert metadata(result, "raw_samples")["pairing"] == pairing

    threshold = sorted(scores)[1]  # consecutive: 3 scores; the lowest fails, the others pass
    assert 0.0 <= threshold <= 1.0 and sorted(scores)[0] < threshold
    for any_or_all, kept in (("any", True), ("all", False)):
        result = run([assets.filtered_samples], bundled_data_dir, tiny_clip_dir,
                     {"min_score": threshold, "any_or_all": any_or_all})
        ids = [r.get("id") for r in read_jsonl(bundled_data_dir / "output" / "filtered_samples.jsonl")]
        assert result.success and ("four" in ids) is kept
