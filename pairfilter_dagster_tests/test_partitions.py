"""Shard partitions: each manifest is a partition of raw_samples and image_pair_stats; the filtered dataset is
built from every shard. Real Dagster runs on the bundled photos, compared with the unpartitioned pipeline (the core
functions over the whole folder, as before partitions existed)."""

import json
import shutil

import dagster as dg
import pytest

from pairfilter_dagster.core import stages
from pairfilter_dagster.core.catalog import INPUT_ORDER, query_engine
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.filtering import FilterSettings
from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.schema import Sample
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage

from .conftest import write_manifest
from .pipeline import MANIFEST_SHARDS
from .pipeline import PIPELINE as assets
from .runs import materialize_all_shards
from .test_assets import CHECKS, metadata, query

SHARDS = ["pairs.jsonl", "more/edge_cases.jsonl"]
SHARD_ASSETS = [assets.raw_samples, assets.image_pair_stats]


def resources(data_dir, clip_dir):
    return {"clip": ClipModel(hf_clip=str(clip_dir), batch_size=4), "storage": PairfilterStorage(data_dir=str(data_dir))}


def run_shard(instance, shard, data_dir, clip_dir):
    result = dg.materialize([*SHARD_ASSETS, *CHECKS], selection=SHARD_ASSETS, instance=instance, partition_key=shard,
                            resources=resources(data_dir, clip_dir))
    assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
    return result


def run_dataset(instance, data_dir, clip_dir):
    result = dg.materialize([assets.filtered_samples, *CHECKS], selection=[assets.filtered_samples],
                            instance=instance, resources=resources(data_dir, clip_dir))
    assert result.success
    assert {check.check_name: check.passed for check in result.get_asset_check_evaluations()} == {
        "kept_samples_satisfy_config": True, "every_sample_accounted_for": True,
        "every_manifest_readable": True}
    return result


SCORE_TOLERANCE = 1e-6
"""Scores agree to float32 rounding: images batched differently (per shard or all together) go through differently
blocked matrix products."""


def same(got, expected) -> bool:
    """Equal, floats (the scores) within SCORE_TOLERANCE."""
    if isinstance(expected, float):
        return isinstance(got, float) and abs(got - expected) <= SCORE_TOLERANCE
    if isinstance(expected, (list, tuple)):
        return type(got) is type(expected) and len(got) == len(expected) and all(map(same, got, expected))
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in expected)
    return got == expected


def snapshot(results, jsonl) -> dict:
    """Every table (the views over the result files), all columns, in input order; and the output file's
    records."""
    with query_engine(results) as conn:
        tables = {table: conn.execute(f"FROM {table} ORDER BY {INPUT_ORDER}").fetchall()
                  for table in ("raw_samples", "image_pair_stats", "filtered_samples")}
    tables["filtered_samples"] = [(*row[:-1], json.loads(row[-1])) for row in tables["filtered_samples"]]
    return {**tables, "jsonl": [json.loads(line) for line in jsonl.read_text().splitlines()]}


def unpartitioned_pipeline(data_dir, embedder, out_dir) -> dict:
    """The core stages called once over every shard of the folder, no Dagster, into result files of their own."""
    # The JSONL beside output/: its lines name the images relative to their folder, as the pipeline's do.
    results, jsonl = ResultFiles.under(out_dir / "whole"), data_dir / "reference-output" / "whole.jsonl"
    rules = SampleRules.for_data_dir(data_dir)
    shards = list_shards(data_dir / "raw", rules.manifest_roots).readable
    stages.ingest(results, shards, rules)
    with LocalEngine(embedder, batch_size=4) as engine:
        stages.score(results, sorted(shards), embedder, engine)
    stages.filter_and_publish(results, FilterSettings(), jsonl, data_dir / "raw", out_dir / "pending_publish")
    return snapshot(results, jsonl)


@pytest.fixture
def expected(bundled_data_dir, embedder, tmp_path):
    return unpartitioned_pipeline(bundled_data_dir, embedder, tmp_path)


def outputs(data_dir) -> dict:
    return snapshot(PairfilterStorage(data_dir=str(data_dir)).results, data_dir / "output" / "filtered_samples.jsonl")


def test_one_run_per_shard_then_the_dataset_equals_the_unpartitioned_pipeline(
    bundled_data_dir, tiny_clip_dir, expected
):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(MANIFEST_SHARDS.name, SHARDS)
    for shard in SHARDS:
        result = run_shard(instance, shard, bundled_data_dir, tiny_clip_dir)
        (event,) = result.asset_materializations_for_node("image_pair_stats")
        assert event.partition == shard
    run_dataset(instance, bundled_data_dir, tiny_clip_dir)
    assert same(outputs(bundled_data_dir), expected)
    assert len(expected["image_pair_stats"]) == 13 and len(expected["filtered_samples"]) > 0
    assert instance.get_materialized_partitions(dg.AssetKey("image_pair_stats")) == set(SHARDS)


def test_a_single_run_backfill_over_all_shards_equals_the_unpartitioned_pipeline(
    bundled_data_dir, tiny_clip_dir, expected
):
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_all_shards([*SHARD_ASSETS, assets.filtered_samples, *CHECKS], bundled_data_dir,
                                    instance=instance, resources=resources(bundled_data_dir, tiny_clip_dir))
    assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
    assert same(outputs(bundled_data_dir), expected)
    events = result.asset_materializations_for_node("image_pair_stats")
    assert sorted(event.partition for event in events) == sorted(SHARDS)  # one materialization per shard
    # One step, one model load; shards are scored one after the other, in batches of their own (1 + 4 batches of 4).
    assert metadata(result, "image_pair_stats")["forward_passes"] == 1 + 4


def test_rerunning_one_changed_shard_replaces_only_its_rows(bundled_data_dir, tiny_clip_dir):
    instance = dg.DagsterInstance.ephemeral()
    materialize_all_shards([*SHARD_ASSETS, assets.filtered_samples], bundled_data_dir, instance=instance,
                           resources=resources(bundled_data_dir, tiny_clip_dir))
    before = outputs(bundled_data_dir)
    with open(bundled_data_dir / "raw" / "pairs.jsonl", "a") as manifest:
        manifest.write('{"text": "again", "images": ["../images/cat.jpg", "../images/img3.jpg"]}\n')

    result = run_shard(instance, "pairs.jsonl", bundled_data_dir, tiny_clip_dir)
    stats = metadata(result, "image_pair_stats")
    assert stats["dagster/row_count"] == 10 and stats["forward_passes"] == 0  # both pictures are cached
    after = outputs(bundled_data_dir)
    for table in ("raw_samples", "image_pair_stats"):
        untouched = [row for row in before[table] if row[1] == "more/edge_cases.jsonl"]
        assert [row for row in after[table] if row[1] == "more/edge_cases.jsonl"] == untouched
        assert [row for row in after[table] if row[1] == "pairs.jsonl"][:9] == [
            row for row in before[table] if row[1] == "pairs.jsonl"]
        assert len(after[table]) == 14
    run_dataset(instance, bundled_data_dir, tiny_clip_dir)  # the reconciliation check now counts 14 lines


def test_a_removed_manifest_leaves_the_dataset_at_its_next_build(bundled_data_dir, tiny_clip_dir, embedder, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    materialize_all_shards([*SHARD_ASSETS, assets.filtered_samples], bundled_data_dir, instance=instance,
                           resources=resources(bundled_data_dir, tiny_clip_dir))
    shutil.rmtree(bundled_data_dir / "raw" / "more")

    result = run_dataset(instance, bundled_data_dir, tiny_clip_dir)
    assert metadata(result, "filtered_samples")["shards_removed"] == ["more/edge_cases.jsonl"]
    without = outputs(bundled_data_dir)
    assert same(without, unpartitioned_pipeline(bundled_data_dir, embedder, tmp_path))


def test_a_shard_not_yet_ingested_fails_the_reconciliation_check_by_name(bundled_data_dir, tiny_clip_dir):
    instance = dg.DagsterInstance.ephemeral()
    materialize_all_shards([*SHARD_ASSETS, assets.filtered_samples], bundled_data_dir, instance=instance,
                           resources=resources(bundled_data_dir, tiny_clip_dir))
    write_manifest(bundled_data_dir / "raw" / "new.jsonl", [{"images": ["../images/cat.jpg", "../images/img3.jpg"]}])
    result = dg.materialize([assets.filtered_samples, *CHECKS], selection=[assets.filtered_samples],
                            instance=instance, resources=resources(bundled_data_dir, tiny_clip_dir),
                            raise_on_error=False)
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "every_sample_accounted_for"]
    assert not check.passed and "new.jsonl" in check.description
    assert check.metadata["mismatched_shards"].value == {"new.jsonl": {"manifest_lines": 1, "ingested": 0}}


def test_a_partition_key_is_never_used_as_a_path(bundled_data_dir, tiny_clip_dir):
    """A partition added by hand that names a file outside raw/ reads nothing: shards come from raw/ only. Nor does
    it name a result file outside the results: the file its key would point at there is left alone."""
    write_manifest(bundled_data_dir / "outside.jsonl", [{"images": ["images/cat.jpg", "images/img3.jpg"]}])
    results = PairfilterStorage(data_dir=str(bundled_data_dir)).results
    bystander = results.root / "outside.jsonl.parquet"  # raw_samples/../outside.jsonl.parquet
    results.table_folder(Sample).mkdir(parents=True)  # as after any run: ".." from it leads somewhere
    bystander.write_bytes(b"not a result file")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(MANIFEST_SHARDS.name, ["../outside.jsonl"])
    result = dg.materialize([assets.raw_samples], instance=instance, partition_key="../outside.jsonl",
                            resources=resources(bundled_data_dir, tiny_clip_dir))
    raw = metadata(result, "raw_samples")
    assert (raw["dagster/row_count"], raw["manifest_lines"]) == (0, 0)
    assert bystander.read_bytes() == b"not a result file"
    assert results.shards(Sample) == []
    assert query(bundled_data_dir, "SELECT count(*) FROM raw_samples") == [(0,)]
