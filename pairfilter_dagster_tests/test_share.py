"""Thresholds by share of the data: keep_top_fraction / keep_bottom_fraction resolved to bounds by DuckDB over a real
stats file (hand-made scores, ties included), validated before any work, and in real Dagster runs recorded in the
filtered dataset's metadata and drawn by the threshold report, without running the model."""

import json
import math
from decimal import Decimal

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairfilter_dagster.core import stages
from pairfilter_dagster.core.catalog import query_engine
from pairfilter_dagster.core.filtering import FilterSettings, ShareCut, keep_sample
from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.schema import StatsRow, Status
from pairfilter_dagster.core.share import resolve_share, wanted
from pairfilter_dagster.core.tables import table_file
from pairfilter_dagster.defs.partitions import every_shard_tags
from pairfilter_dagster.defs.pipeline import build_pipeline
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage
from pairfilter_dagster.defs.spec import PipelineSpec
from pairfilter_dagster.testing import PHOTOS

from .conftest import write_manifest
from .pipeline import MANIFEST_SHARDS
from .pipeline import PIPELINE as assets
from .runs import materialize_all_shards
from .test_assets import ASSETS, metadata, query, read_jsonl, run, step_failure

SCORES = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
"""Ten ok samples of one pair each, m.jsonl:1 .. m.jsonl:10; a rejected sample follows as line 11."""


def stats_rows(scores_per_sample):
    rows = [
        StatsRow(sample_id=f"m.jsonl:{line}", manifest="m.jsonl", line_number=line,
                 images=tuple(f"{line}_{i}.jpg" for i in range(len(scores) + 1)), image_pair_similarity=tuple(scores),
                 sample_json=json.dumps({"line": line}), image_pairs=tuple((i, i + 1) for i in range(len(scores))))
        for line, scores in enumerate(scores_per_sample, start=1)
    ]
    rejected = len(rows) + 1
    return [*rows, StatsRow(sample_id=f"m.jsonl:{rejected}", manifest="m.jsonl", line_number=rejected,
                            status=Status.MISSING_IMAGE, error="no such file", sample_json="{}")]


def stats_file(tmp_path, scores_per_sample) -> ResultFiles:
    """The result files of one shard, m.jsonl, whose stats file holds these scores."""
    results = ResultFiles.under(tmp_path / "output")
    with table_file(results.shard_file(StatsRow, "m.jsonl"), StatsRow, "m.jsonl") as table:
        table.write(stats_rows(scores_per_sample))
    return results


def kept_lines(tmp_path, scores_per_sample, settings):
    """Resolve `settings` over a stats file of these scores and filter: (line numbers kept, resolved settings)."""
    results = stats_file(tmp_path, scores_per_sample)
    with query_engine(results) as conn:
        resolved = resolve_share(conn, settings)
    counts = stages.filter_and_publish(results, resolved, tmp_path / "kept.jsonl", tmp_path / "raw",
                                       tmp_path / "pending_publish")
    kept = [record["line"] for record in read_jsonl(tmp_path / "kept.jsonl")]
    assert counts.kept == len(kept) and counts.scored == len(scores_per_sample)
    return kept, resolved


@pytest.mark.parametrize("fraction, lines, cut, ties", [
    (0.3, [1, 2, 3], 0.8, 0),     # ceil(0.3 * 10) = 3: 0.9, 0.8, 0.8
    (0.2, [1, 2, 3], 0.8, 1),     # 2 wanted; the 2nd and 3rd tie at 0.8, so both are kept and one is counted a tie
    (0.1, [1], 0.9, 0),
    (0.25, [1, 2, 3], 0.8, 0),    # ceil(2.5) = 3
    (0.7, [1, 2, 3, 4, 5, 6, 7], 0.4, 0),  # 7, not the 8 that float 0.7 * 10 = 7.000000000000001 would give
    (1.0, list(range(1, 11)), 0.1, 0),
])
def test_keep_top_fraction_keeps_exactly_the_best_share_and_the_ties_at_the_cut(tmp_path, fraction, lines, cut, ties):
    kept, resolved = kept_lines(tmp_path, [[s] for s in SCORES], FilterSettings(keep_top_fraction=fraction))
    assert kept == lines
    assert (resolved.min_score, resolved.max_score) == (cut, 1.0)
    assert resolved.cut == ShareCut(score=cut, ranked=10, rank=math.ceil(round(fraction * 10, 9)), ties_at_cut=ties)
    assert resolved.cut.kept == len(lines)


@pytest.mark.parametrize("fraction, lines, cut, ties", [
    (0.3, [8, 9, 10], 0.3, 0),
    (0.8, [2, 3, 4, 5, 6, 7, 8, 9, 10], 0.8, 1),  # 8 wanted, lines 2 and 3 tie at 0.8
])
def test_keep_bottom_fraction_keeps_the_lowest_share_and_the_ties(tmp_path, fraction, lines, cut, ties):
    kept, resolved = kept_lines(tmp_path, [[s] for s in SCORES], FilterSettings(keep_bottom_fraction=fraction))
    assert kept == lines
    assert (resolved.min_score, resolved.max_score) == (-1.0, cut)
    assert resolved.cut.ties_at_cut == ties


def test_a_cut_below_zero_is_a_valid_bound(tmp_path):
    """Cosines can be negative: the resolved bounds go below Data-Juicer's [0, 1], which a person's bounds cannot."""
    scores = [[0.5], [-0.2], [-0.6], [0.1]]
    kept, resolved = kept_lines(tmp_path, scores, FilterSettings(keep_top_fraction=0.75))
    assert kept == [1, 2, 4] and resolved.min_score == -0.2
    kept, resolved = kept_lines(tmp_path, scores, FilterSettings(keep_bottom_fraction=0.5))
    assert kept == [2, 3] and (resolved.min_score, resolved.max_score) == (-1.0, -0.2)


# Three samples of two pairs each: their highest and lowest scores order them differently.
TWO_PAIRS = [[0.9, 0.1], [0.6, 0.5], [0.3, 0.2]]


@pytest.mark.parametrize("share, any_or_all, lines, cut", [
    ("keep_top_fraction", "any", [1], 0.9),      # deciding score: the highest pair (0.9, 0.6, 0.3)
    ("keep_top_fraction", "all", [2], 0.5),      # the lowest pair (0.1, 0.5, 0.2)
    ("keep_bottom_fraction", "any", [1], 0.1),   # the lowest pair: one pair at or below the cut keeps it
    ("keep_bottom_fraction", "all", [3], 0.3),   # the highest pair: every pair at or below the cut
])
def test_the_deciding_score_is_the_pair_the_keep_rule_compares(tmp_path, share, any_or_all, lines, cut):
    kept, resolved = kept_lines(tmp_path, TWO_PAIRS, FilterSettings(any_or_all=any_or_all, **{share: 0.3}))
    assert kept == lines and cut in (resolved.min_score, resolved.max_score)


def test_no_ok_sample_keeps_nothing(tmp_path):
    kept, resolved = kept_lines(tmp_path, [], FilterSettings(keep_top_fraction=0.5))
    assert kept == [] and resolved.cut == ShareCut(score=None, ranked=0, rank=0, ties_at_cut=0)


def test_an_unresolved_share_is_never_used_as_bounds(tmp_path):
    results = stats_file(tmp_path, [[0.5]])
    with pytest.raises(ValueError, match="keep_top_fraction"):
        stages.filter_and_publish(results, FilterSettings(keep_top_fraction=0.5), tmp_path / "kept.jsonl",
                                  tmp_path / "raw", tmp_path / "pending_publish")
    assert not (tmp_path / "kept.jsonl").exists() and not results.filtered_file.exists()


def test_ceil_is_taken_on_the_decimal_fraction():
    assert [wanted(f, 10) for f in (0.1, 0.3, 0.7, 0.9, 0.35)] == [1, 3, 7, 9, 4]
    assert wanted(0.3, 1) == 1 and wanted(1e-9, 5) == 1 and wanted(1.0, 0) == 0


@settings(max_examples=40, deadline=None)
@given(scores=st.lists(st.lists(st.sampled_from([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=3),
                       min_size=1, max_size=12),
       fraction=st.floats(min_value=0.01, max_value=1.0), top=st.booleans(), mode=st.sampled_from(["any", "all"]))
def test_a_share_keeps_the_wanted_count_plus_ties_and_nothing_on_the_wrong_side(tmp_path_factory, scores, fraction,
                                                                               top, mode):
    folder = tmp_path_factory.mktemp("share")
    share = {"keep_top_fraction" if top else "keep_bottom_fraction": fraction}
    kept, resolved = kept_lines(folder, scores, FilterSettings(any_or_all=mode, **share))
    decide = (max if top == (mode == "any") else min)
    deciding = [decide(s) for s in scores]
    cut = resolved.cut
    assert len(kept) == cut.kept and cut.rank == math.ceil(Decimal(repr(fraction)) * len(scores))
    assert cut.ties_at_cut == sum(d == cut.score for d in deciding) - sum(
        d == cut.score for d in sorted(deciding, reverse=top)[:cut.rank])
    for line, d in enumerate(deciding, start=1):
        assert (line in kept) == ((d >= cut.score) if top else (d <= cut.score))
        assert keep_sample(Status.OK, scores[line - 1], resolved) == (line in kept)


@pytest.mark.parametrize("kwargs, fields", [
    ({"keep_top_fraction": 0}, ["keep_top_fraction"]),
    ({"keep_top_fraction": 1.5}, ["keep_top_fraction"]),
    ({"keep_bottom_fraction": -0.1}, ["keep_bottom_fraction"]),
    ({"keep_bottom_fraction": float("nan")}, ["keep_bottom_fraction"]),
    ({"keep_top_fraction": 0.3, "keep_bottom_fraction": 0.3}, ["keep_top_fraction", "keep_bottom_fraction"]),
    ({"keep_top_fraction": 0.3, "min_score": 0.5}, ["keep_top_fraction", "min_score", "max_score"]),
    ({"keep_bottom_fraction": 0.3, "max_score": 0.9}, ["keep_bottom_fraction", "min_score", "max_score"]),
])
def test_bad_shares_are_refused_naming_the_fields(kwargs, fields):
    with pytest.raises(ValueError) as caught:
        FilterSettings(**kwargs)
    assert all(field in str(caught.value) for field in fields)


# Real Dagster runs. Three samples repeat one pair of photos, so their scores tie exactly.
TIED = ("img8.jpg", "img9.jpg")
DISTINCT = [("cat.jpg", "img2.jpg"), ("img1.png", "img3.jpg"), ("cat.jpg", "cat_crop.jpg"),
            ("img2.jpg", "img2_small.png"), ("blip.jpg", "img10.jpg")]


@pytest.fixture
def tied_data(tmp_path, tiny_clip_dir):
    """Eight ok samples (three of them the same pair) and one rejected, scored by a real run."""
    data = tmp_path / "data"
    images = [TIED, *DISTINCT[:2], TIED, *DISTINCT[2:], TIED]
    write_manifest(data / "raw" / "tied.jsonl", [
        *({"images": [f"../images/{a}", f"../images/{b}"]} for a, b in images), {"images": ["../images/gone.jpg"]}])
    (data / "images").mkdir()
    for name in {name for pair in images for name in pair}:
        (data / "images" / name).write_bytes((PHOTOS / name).read_bytes())
    assert run(ASSETS, data, tiny_clip_dir).success
    scores = dict(query(data, "SELECT line_number, image_pair_similarity[1] FROM image_pair_stats WHERE status = 'ok'"))
    assert len(scores) == 8 and scores[1] == scores[4] == scores[8]
    return data, scores


@pytest.mark.parametrize("share", ["keep_top_fraction", "keep_bottom_fraction"])
def test_a_share_in_a_real_run_is_recorded_checked_and_drawn_without_the_model(tied_data, tmp_path, share):
    data, scores = tied_data
    top = share == "keep_top_fraction"
    order = sorted(scores, key=lambda line: -scores[line] if top else scores[line])
    rank = order.index(1) + 1  # the cut lands on the first of the three tied samples
    fraction = rank / 8
    expected = sorted(line for line in scores if (scores[line] >= scores[1] if top else scores[line] <= scores[1]))
    assert len(expected) == rank + 2
    # A model folder that does not exist: any attempt to load the model would fail the run.
    result = run([assets.filtered_samples, assets.similarity_report], data, tmp_path / "no-model-here", {share: fraction})
    assert result.success and all(check.passed for check in result.get_asset_check_evaluations())

    kept = [json.loads(line)["images"] for line in (data / "output" / "filtered_samples.jsonl").read_text().splitlines()]
    assert len(kept) == len(expected)
    assert [line for (line,) in query(data, "SELECT line_number FROM filtered_samples ORDER BY 1")] == expected
    meta = metadata(result, "filtered_samples")
    assert meta[share] == fraction and meta["keep_bottom_fraction" if top else "keep_top_fraction"] is None
    assert (meta["min_score"], meta["max_score"]) == ((scores[1], 1.0) if top else (-1.0, scores[1]))
    assert (meta["ranked_samples"], meta["cut_rank"], meta["ties_at_cut"], meta["kept"]) == (8, rank, 2, rank + 2)
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "kept_samples_satisfy_config"]
    assert check.metadata["kept_by_share"].value == rank + 2

    report = metadata(result, "similarity_report")
    assert (report["min_score"], report["max_score"]) == (meta["min_score"], meta["max_score"])
    assert report["share"] == f"{'top' if top else 'bottom'} {fraction * 100:.4g}% of 8 ok samples: {rank} kept + 2 tied at the cut"
    assert report["kept_samples"] == rank + 2
    written = json.loads((data / "output" / "report" / "report.json").read_text())
    boundary = "min_score" if top else "max_score"
    assert {row["score"] for row in written["sheets"][boundary]["rows"] if row["passes"]} >= {scores[1]}


@pytest.mark.parametrize("config, fields", [
    ({"keep_top_fraction": 0}, ["keep_top_fraction"]),
    ({"keep_top_fraction": 1.5}, ["keep_top_fraction"]),
    ({"keep_bottom_fraction": -0.5}, ["keep_bottom_fraction"]),
    ({"keep_top_fraction": 0.3, "keep_bottom_fraction": 0.3}, ["keep_top_fraction", "keep_bottom_fraction"]),
    ({"keep_top_fraction": 0.3, "min_score": 0.5}, ["keep_top_fraction", "min_score"]),
])
def test_bad_shares_fail_the_run_in_its_first_step_before_any_work(bundled_data_dir, tiny_clip_dir, config, fields):
    result = run(ASSETS, bundled_data_dir, tiny_clip_dir, config, raise_on_error=False)
    step, error = step_failure(result)
    assert step == "raw_samples" and all(field in error for field in fields)
    assert not (bundled_data_dir / "output").exists() and not (bundled_data_dir / "catalog.duckdb").exists()


def pairfilter_job():
    """The project's own pipeline job, rebuilt in each step's process (data folder and model from the environment)."""
    return build_pipeline().definitions().resolve_job_def("pairfilter_job")


def test_a_bad_share_fails_at_preflight_without_loading_the_model(bundled_data_dir, tmp_path, monkeypatch):
    """With the multiprocess executor (dagster dev, the launchpad), each step builds only its own resources: the first
    step refuses the share, so the model (here a folder that does not exist) is never loaded."""
    monkeypatch.setenv("PAIRFILTER_DATA_DIR", str(bundled_data_dir))
    monkeypatch.setenv("PAIRFILTER_HF_CLIP", str(tmp_path / "no-model-here"))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        tags = every_shard_tags(instance, MANIFEST_SHARDS, list_shards(bundled_data_dir / "raw"))
        result = dg.execute_job(dg.reconstructable(pairfilter_job), instance=instance, tags=tags, raise_on_error=False,
                                run_config={"ops": {"filtered_samples": {"config": {"keep_top_fraction": 1.5}}}})
        events = result.all_events
    assert not result.success
    (failure,) = [e for e in events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "raw_samples" and "keep_top_fraction" in str(failure.event_specific_data.error)
    assert {e.step_key for e in events if e.event_type_value == "STEP_START"} == {"raw_samples"}
    assert not any("ModelLoadError" in str(getattr(e.event_specific_data, "error", "")) for e in events)
    assert not (bundled_data_dir / "output").exists() and not (bundled_data_dir / "catalog.duckdb").exists()


def test_an_instance_whose_default_is_a_share(bundled_data_dir, tiny_clip_dir):
    """A Component instance's thresholds (spec.thresholds) can be a share; the launchpad default shows it."""
    spec = PipelineSpec(storage=PairfilterStorage(data_dir=str(bundled_data_dir)),
                        clip=ClipModel(hf_clip=str(tiny_clip_dir), batch_size=4),
                        thresholds=FilterSettings(keep_top_fraction=0.5))
    pipeline = build_pipeline(spec)
    result = materialize_all_shards([pipeline.raw_samples, pipeline.image_pair_stats, pipeline.filtered_samples,
                                     *pipeline.checks], bundled_data_dir, resources=pipeline.resources)
    assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
    meta = metadata(result, "filtered_samples")
    assert meta["keep_top_fraction"] == 0.5 and meta["cut_rank"] == 5 and meta["ranked_samples"] == 9
    assert meta["kept"] == 5 + meta["ties_at_cut"]
