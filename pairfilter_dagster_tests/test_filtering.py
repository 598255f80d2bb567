import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairfilter_dagster.core.filtering import FilterSettings, keep_row, keep_sample
from pairfilter_dagster.core.ingest.pairing import PAIRINGS, image_pairs
from pairfilter_dagster.core.schema import StatsRow, Status


def test_bounds_are_inclusive():
    settings = FilterSettings(min_score=0.3, max_score=0.8)
    assert keep_sample(Status.OK, [0.3], settings) and keep_sample(Status.OK, [0.8], settings)
    assert not keep_sample(Status.OK, [0.2999999], settings) and not keep_sample(Status.OK, [0.8000001], settings)


def test_any_versus_all():
    scores = [0.2, 0.5]
    assert keep_sample(Status.OK, scores, FilterSettings(0.4, 1.0, "any"))
    assert not keep_sample(Status.OK, scores, FilterSettings(0.4, 1.0, "all"))
    assert keep_sample(Status.OK, scores, FilterSettings(0.1, 1.0, "all"))


def test_only_ok_samples_with_scores_are_kept():
    settings = FilterSettings()
    assert not keep_sample(Status.MISSING_IMAGE, [0.5], settings)
    assert not keep_sample(Status.OK, [], settings)
    assert not keep_sample(Status.OK, [float("nan")], settings)
    rows = [StatsRow(sample_id="m:1", manifest="m", line_number=1, image_pair_similarity=(0.5,), sample_json="{}"),
            StatsRow(sample_id="m:2", manifest="m", line_number=2, status=Status.NOT_A_PAIR, sample_json="{}"),
            StatsRow(sample_id="m:3", manifest="m", line_number=3, image_pair_similarity=(0.05,), sample_json="{}")]
    assert [keep_row(row, settings) for row in rows] == [True, False, False]


def test_defaults_are_data_juicers():
    assert FilterSettings() == FilterSettings(min_score=0.1, max_score=1.0, any_or_all="any")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"min_score": -0.1}, "min_score"),
        ({"max_score": 1.5}, "max_score"),
        ({"min_score": float("nan")}, "min_score"),
        ({"min_score": 0.9, "max_score": 0.5}, "min_score"),
        ({"any_or_all": "most"}, "any_or_all"),
    ],
)
def test_invalid_settings_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FilterSettings(**kwargs)


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
score = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


@given(low=unit, high=unit, scores=st.lists(score, min_size=1, max_size=6), mode=st.sampled_from(["any", "all"]))
def test_keep_decision_matches_its_definition(low, high, scores, mode):
    low, high = min(low, high), max(low, high)
    passes = [low <= s <= high for s in scores]
    expected = any(passes) if mode == "any" else all(passes)
    assert keep_sample(Status.OK, scores, FilterSettings(low, high, mode)) is expected
    assert not keep_sample("unreadable_image", scores, FilterSettings(low, high, mode))


@st.composite
def n_pair_samples(draw):
    """Scores of a sample with N images under a pairing mode, and bounds that often sit exactly on a score."""
    pairing = draw(st.sampled_from(PAIRINGS))
    image_count = 2 if pairing == "exactly_two" else draw(st.integers(min_value=2, max_value=7))
    pairs = image_pairs(image_count, pairing)
    scores = draw(st.lists(score, min_size=len(pairs), max_size=len(pairs)))
    candidates = st.one_of(unit, st.sampled_from([s for s in scores if 0.0 <= s <= 1.0] or [0.0]))
    low, high = sorted((draw(candidates), draw(candidates)))
    return scores, low, high


@given(sample=n_pair_samples(), mode=st.sampled_from(["any", "all"]))
def test_keep_decision_over_n_pairs_with_inclusive_bounds(sample, mode):
    scores, low, high = sample
    settings = FilterSettings(low, high, mode)
    kept = keep_sample(Status.OK, scores, settings)
    if mode == "any":
        assert kept is any(low <= s <= high for s in scores)
    else:
        assert kept is all(low <= s <= high for s in scores)
    assert all(keep_sample(Status.OK, [s], settings) for s in scores if s in (low, high))  # bounds are inclusive
    keep_all, keep_any = (keep_sample(Status.OK, scores, FilterSettings(low, high, m)) for m in ("all", "any"))
    assert keep_all <= keep_any
    assert keep_sample(Status.OK, sorted(scores, reverse=True), settings) is kept  # pair order does not matter
