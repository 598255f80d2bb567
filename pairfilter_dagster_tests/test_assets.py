"""Real Dagster runs (`materialize`) of the three assets and their checks, into a temporary data folder."""

import json

import dagster as dg
import pytest

from pairfilter_dagster.core.catalog import query_engine
from pairfilter_dagster.core.embedding.model import ModelLoadError
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage

from .pipeline import PIPELINE as assets
from .runs import materialize_all_shards

ASSETS = [assets.raw_samples, assets.image_pair_stats, assets.filtered_samples]
CHECKS = assets.checks
EDGE_CASES = {
    "more/edge_cases.jsonl:1": "missing_image",
    "more/edge_cases.jsonl:2": "not_a_pair",
    "more/edge_cases.jsonl:3": "not_a_pair",
    "more/edge_cases.jsonl:4": "malformed_line",
}


def run(selection, data_dir, clip_dir, filter_config=None, *, storage_options=None, **kwargs):
    return materialize_all_shards(
        [*selection, *CHECKS] if kwargs.pop("with_checks", True) else selection,
        data_dir,
        resources={"clip": ClipModel(hf_clip=str(clip_dir), batch_size=4),
                   "storage": PairfilterStorage(data_dir=str(data_dir), **(storage_options or {}))},
        run_config={"ops": {"filtered_samples": {"config": filter_config}}} if filter_config else None,
        **kwargs,
    )


def query(data_dir, sql):
    """The rows of `sql` over the result files of a local data folder (views named after the tables)."""
    with query_engine(PairfilterStorage(data_dir=str(data_dir)).results, with_cache=True) as conn:
        return conn.execute(sql).fetchall()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_failure(result):
    """The run's one failed step, as (step key, error message)."""
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.step_key, str(failure.event_specific_data.error)


def metadata(result, asset_name):
    """The metadata of the asset's materialization: one event, or one per shard of a run over several shards
    (each with the run's metadata)."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path == [asset_name]]
    found = [{key: value.value for key, value in e.materialization.metadata.items()} for e in events]
    assert found and all(m == found[0] for m in found)
    return found[0]


@pytest.fixture
def scored(bundled_data_dir, tiny_clip_dir):
    """The bundled data run through the whole pipeline once, with the default thresholds."""
    result = run(ASSETS, bundled_data_dir, tiny_clip_dir)
    assert result.success
    return result, bundled_data_dir


def test_whole_pipeline_on_the_bundled_data(scored):
    result, data_dir = scored
    manifest_lines = {
        f"{name}:{number}": line
        for name in ("pairs.jsonl", "more/edge_cases.jsonl")
        for number, line in enumerate((data_dir / "raw" / name).read_text().splitlines(), start=1)
    }

    stats = query(data_dir, "SELECT sample_id, status, error, image_pair_similarity FROM image_pair_stats "
                            "ORDER BY manifest, line_number")
    assert [row[0] for row in stats] == [*EDGE_CASES, *[f"pairs.jsonl:{i}" for i in range(1, 10)]]
    assert {sid: status for sid, status, _, _ in stats if sid in EDGE_CASES} == EDGE_CASES
    for _sample_id, status, error, scores in stats:
        assert (status == "ok") == (error == "") == (len(scores) == 1)
        assert all(-1.0 <= s <= 1.0 for s in scores)
    scores_by_id = {sid: scores for sid, status, _, scores in stats if status == "ok"}
    assert scores_by_id["pairs.jsonl:9"][0] == pytest.approx(1.0, abs=1e-6)  # same bytes, two names

    output = read_jsonl(data_dir / "output" / "filtered_samples.jsonl")
    kept_ids = [sid for sid, status, _, scores in stats if status == "ok" and 0.1 <= scores[0] <= 1.0]
    assert len(output) == len(kept_ids) > 0
    for sample_id, record in zip(kept_ids, output):
        original = json.loads(manifest_lines[sample_id])
        assert {k: v for k, v in record.items() if k != "__dj__stats__"} == original
        assert list(record)[:-1] == list(original)
        assert record["__dj__stats__"] == {"image_pair_similarity": scores_by_id[sample_id]}
    table = query(data_dir, "SELECT sample_id, sample_json FROM filtered_samples ORDER BY manifest, line_number")
    assert [sid for sid, _ in table] == kept_ids
    assert [json.loads(line) for _, line in table] == output

    checks_run = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks_run == {
        "scores_finite_and_in_range": True, "one_row_per_sample": True, "kept_samples_satisfy_config": True,
        "every_sample_accounted_for": True,
        "every_manifest_readable": True,
    }

    raw_meta, stats_meta, filtered_meta = (metadata(result, a) for a in
                                           ("raw_samples", "image_pair_stats", "filtered_samples"))
    assert raw_meta["dagster/row_count"] == 13 and raw_meta["shards"] == 2
    assert stats_meta["dagster/row_count"] == 13
    assert [c.name for c in stats_meta["dagster/column_schema"].columns][:5] == [
        "sample_id", "manifest", "line_number", "images", "image_pair_similarity"]
    assert stats_meta["status_ok"] == 9 and stats_meta["status_missing_image"] == 1
    assert stats_meta["status_not_a_pair"] == 2 and stats_meta["status_malformed_line"] == 1
    assert stats_meta["distinct_images"] == 14 == stats_meta["images_embedded"]  # 15 paths, one duplicate content
    # Shards are scored one after the other: the picture both share is found in the cache by the second.
    assert stats_meta["cache_hits"] == 1 and stats_meta["forward_passes"] == 1 + 4  # batches of 4, per shard
    assert stats_meta["images_per_second"] > 0
    assert stats_meta["similarity_min"] <= stats_meta["similarity_median"] <= stats_meta["similarity_max"]
    assert "| similarity | samples |" in stats_meta["similarity_histogram"]
    assert filtered_meta["kept"] == len(kept_ids) and filtered_meta["total"] == 13
    assert filtered_meta["kept_ratio"] == pytest.approx(len(kept_ids) / 13, abs=1e-4)
    assert filtered_meta["output_path"] == str(data_dir / "output" / "filtered_samples.jsonl")


def test_rethresholding_reads_the_stats_table_and_never_loads_the_model(scored, tmp_path):
    _, data_dir = scored
    stats_before = query(data_dir, "SELECT * FROM image_pair_stats ORDER BY sample_id")
    scores = sorted(s[0] for (s,) in query(data_dir, "SELECT image_pair_similarity FROM image_pair_stats "
                                                     "WHERE status = 'ok'"))
    low, high = scores[2], scores[-3]  # keeps scores[2:-2], ties included: bounds are inclusive
    # A model folder that does not exist: any attempt to load the model would fail the run.
    result = run([assets.filtered_samples], data_dir, tmp_path / "no-model-here",
                 {"min_score": low, "max_score": high})
    assert result.success
    output = read_jsonl(data_dir / "output" / "filtered_samples.jsonl")
    assert sorted(r["__dj__stats__"]["image_pair_similarity"][0] for r in output) == scores[2:-2]
    assert query(data_dir, "SELECT * FROM image_pair_stats ORDER BY sample_id") == stats_before
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert metadata(result, "filtered_samples")["min_score"] == low


@pytest.mark.parametrize(
    "config, field",
    [({"min_score": 1.5}, "min_score"), ({"max_score": -0.2}, "max_score"),
     ({"min_score": 0.9, "max_score": 0.5}, "min_score")],
)
def test_bad_thresholds_fail_the_run_before_any_work(bundled_data_dir, tiny_clip_dir, config, field):
    result = run(ASSETS, bundled_data_dir, tiny_clip_dir, config, raise_on_error=False)
    assert not result.success
    step, error = step_failure(result)
    assert step == "raw_samples"  # the first step refuses, before ingestion and scoring
    assert field in error
    assert not (bundled_data_dir / "pairfilter.duckdb").exists()


def test_an_unknown_any_or_all_is_refused_at_launch(bundled_data_dir, tiny_clip_dir):
    with pytest.raises(dg.DagsterInvalidConfigError, match="any_or_all"):
        run(ASSETS, bundled_data_dir, tiny_clip_dir, {"any_or_all": "most"})


def test_a_model_that_cannot_load_fails_at_once_with_one_clear_message(bundled_data_dir, tmp_path):
    with pytest.raises(dg.DagsterResourceFunctionError) as caught:
        run(ASSETS, bundled_data_dir, tmp_path / "missing-model")
    cause = caught.value.__cause__
    assert isinstance(cause, ModelLoadError)
    for part in ("missing-model", "local folder", "HF_HUB_OFFLINE", "PAIRFILTER_HF_CLIP"):
        assert part in str(cause)
    assert not (bundled_data_dir / "pairfilter.duckdb").exists()  # nothing was ingested or scored


def test_an_empty_raw_folder_gives_empty_outputs(tmp_path, tiny_clip_dir):
    (tmp_path / "raw").mkdir()
    result = run(ASSETS, tmp_path, tiny_clip_dir)
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert (tmp_path / "output" / "filtered_samples.jsonl").read_text() == ""
    assert query(tmp_path, "SELECT count(*) FROM image_pair_stats") == [(0,)]


def test_rescoring_unchanged_data_runs_no_forward_pass_and_new_data_embeds_only_new_images(scored, tiny_clip_dir):
    _, data_dir = scored
    before = query(data_dir, "SELECT sample_id, image_pair_similarity, status FROM image_pair_stats ORDER BY 1")
    again = metadata(run(ASSETS, data_dir, tiny_clip_dir), "image_pair_stats")
    # 14 distinct images, one of them in both shards: looked up once per shard.
    assert (again["forward_passes"], again["images_embedded"], again["cache_hits"]) == (0, 0, 15)
    assert again["cache_hit_rate"] == 1.0
    assert query(data_dir, "SELECT sample_id, image_pair_similarity, status FROM image_pair_stats ORDER BY 1") == before

    from PIL import Image

    Image.open(data_dir / "images" / "img8.jpg").crop((0, 0, 400, 400)).save(data_dir / "images" / "img8_crop.jpg")
    (data_dir / "raw" / "new.jsonl").write_text(json.dumps({"images": ["../images/img8.jpg", "../images/img8_crop.jpg"]}) + "\n")
    grown = metadata(run(ASSETS, data_dir, tiny_clip_dir), "image_pair_stats")
    assert (grown["images_embedded"], grown["forward_passes"], grown["cache_hits"]) == (1, 1, 16)
    assert grown["dagster/row_count"] == 14
