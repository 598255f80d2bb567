"""The Dagster wiring: what loads, what the schedule asks for, and a real headless CLI run."""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from pairfilter_dagster.defs.partitions import DATASET_POOL, all_shards_tags

from .conftest import REPO
from .pipeline import DEFS as defs
from .pipeline import MANIFEST_SHARDS
from .test_assets import query

DAGSTER = str(Path(sys.executable).parent / "dagster")
PAIRFILTER_MATERIALIZE = str(Path(sys.executable).parent / "pairfilter-materialize")


def test_definitions_load_without_torch_or_transformers():
    code = (
        "import sys, pairfilter_dagster.definitions as d; d.defs().resolve_asset_graph(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_assets_lineage_checks_and_resources_are_wired():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"raw_samples", "image_pair_stats", "filtered_samples", "similarity_report", "image_embeddings"}
    assert graph.get(dg.AssetKey("image_pair_stats")).parent_keys == {dg.AssetKey("raw_samples")}
    assert graph.get(dg.AssetKey("filtered_samples")).parent_keys == {dg.AssetKey("image_pair_stats")}
    assert graph.get(dg.AssetKey("similarity_report")).parent_keys == {
        dg.AssetKey("image_pair_stats"), dg.AssetKey("filtered_samples")}
    assert graph.get(dg.AssetKey("image_embeddings")).parent_keys == {dg.AssetKey("image_pair_stats")}
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {"scores_finite_and_in_range", "one_row_per_sample", "kept_samples_satisfy_config",
                      "every_sample_accounted_for", "every_manifest_readable",
                      "embeddings_align_with_metadata"}
    shard_job = defs.resolve_job_def("shard_job")
    assert {key.to_user_string() for key in shard_job.asset_layer.selected_asset_keys} == {
        "raw_samples", "image_pair_stats", "image_embeddings"}
    job = defs.resolve_job_def("pairfilter_job")
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == keys
    assert set(defs.resources) == {"clip", "storage"}


def test_daily_schedule_runs_every_registered_shard_in_one_run_and_skips_without_shards():
    schedule = defs.resolve_schedule_def("pairfilter_daily")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == "pairfilter_job"
    at = datetime(2026, 11, 25, 3, tzinfo=timezone.utc)
    with dg.instance_for_test() as instance:
        empty = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=at))
        assert not empty.run_requests and "no shard partitions" in empty.skip_message
        instance.add_dynamic_partitions(MANIFEST_SHARDS.name, ["b.jsonl", "a/x.jsonl", "c.jsonl"])
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=at)
        (request,) = schedule.evaluate_tick(context).run_requests
    assert all_shards_tags(["b.jsonl", "a/x.jsonl", "c.jsonl"]).items() <= request.tags.items()  # first to last
    job = defs.resolve_job_def("pairfilter_job")
    assert dg.validate_run_config(job, request.run_config) is not None


def test_pairfilter_materialize_runs_every_shard_and_the_dataset_in_one_run(bundled_data_dir, tiny_clip_dir, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(bundled_data_dir), "PAIRFILTER_HF_CLIP": str(tiny_clip_dir),
           "DAGSTER_HOME": str(home)}
    config = tmp_path / "thresholds.yaml"
    config.write_text("ops:\n  filtered_samples:\n    config: {min_score: 0.5, max_score: 1.0}\n")
    lower = json.dumps({"ops": {"filtered_samples": {"config": {"min_score": 0.0}}}})  # wins over the file
    done = subprocess.run([PAIRFILTER_MATERIALIZE, "-c", str(config), "--config-json", lower], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 shards" in done.stdout and "succeeded" in done.stdout
    assert query(bundled_data_dir, "SELECT count(*) FROM image_pair_stats") == [(13,)]
    ((ok,),) = query(bundled_data_dir, "SELECT count(*) FROM image_pair_stats WHERE status = 'ok'")
    lines = (bundled_data_dir / "output" / "filtered_samples.jsonl").read_text().splitlines()
    assert len(lines) == ok == 9  # min_score 0: every scored sample of the tiny model is kept

    # The run is recorded in DAGSTER_HOME, with one materialization per shard, as `dagster dev` then shows it.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert sorted(instance.get_dynamic_partitions(MANIFEST_SHARDS.name)) == ["more/edge_cases.jsonl", "pairs.jsonl"]
        (run,) = instance.get_runs()
        assert run.job_name == "pairfilter_job" and run.status == dg.DagsterRunStatus.SUCCESS
        materialized = instance.get_materialized_partitions(dg.AssetKey("image_pair_stats"))
    assert materialized == {"more/edge_cases.jsonl", "pairs.jsonl"}

    # A removed manifest: its partition and its rows go, and the dataset is rebuilt without it. (The data folder
    # given in the run config this time: the partitions follow that folder, not the default one.)
    (bundled_data_dir / "raw" / "more" / "edge_cases.jsonl").unlink()
    elsewhere = {**env, "PAIRFILTER_DATA_DIR": str(tmp_path / "no-such-folder")}
    in_config = json.dumps({"resources": {"storage": {"config": {"data_dir": str(bundled_data_dir)}}}})
    done = subprocess.run([PAIRFILTER_MATERIALIZE, "--config-json", in_config], cwd=tmp_path, env=elsewhere,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over 1 shards" in done.stdout and "removed:  more/edge_cases.jsonl" in done.stdout
    assert query(bundled_data_dir, "SELECT DISTINCT manifest FROM image_pair_stats") == [("pairs.jsonl",)]
    assert query(bundled_data_dir, "SELECT count(*) FROM raw_samples") == [(9,)]
    results = bundled_data_dir / "output" / "results"
    assert not (results / "raw_samples" / "more" / "edge_cases.jsonl.parquet").exists()
    assert not (results / "image_pair_stats" / "more" / "edge_cases.jsonl.parquet").exists()


def test_the_shipped_instance_config_gives_the_dataset_step_one_slot_and_shard_steps_no_pool(tmp_path):
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "op"
    # Shard steps write files of their own shard only: no pool, any number at once. The dataset step is alone.
    steps = {key: defs.resolve_assets_def(key).op.pool for key in ("raw_samples", "image_pair_stats",
                                                                    "image_embeddings", "filtered_samples")}
    assert steps == {"raw_samples": None, "image_pair_stats": None, "image_embeddings": None,
                     "filtered_samples": DATASET_POOL}


def test_pairfilter_job_launched_without_partitions_fails_at_once_saying_how_to_launch_it(
    bundled_data_dir, tiny_clip_dir
):
    """As the Launchpad or GraphQL launch it: no partition tags. The first step refuses, before any work."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(MANIFEST_SHARDS.name, ["pairs.jsonl", "more/edge_cases.jsonl"])
    run_config = {"resources": {"storage": {"config": {"data_dir": str(bundled_data_dir)}},
                                "clip": {"config": {"hf_clip": str(tiny_clip_dir)}}}}
    result = defs.resolve_job_def("pairfilter_job").execute_in_process(
        run_config=run_config, instance=instance, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert failure.step_key == "raw_samples"
    assert "names no partition" in message and "pairfilter-materialize" in message and "Materialize all" in message
    assert not (bundled_data_dir / "output").exists() and not (bundled_data_dir / "catalog.duckdb").exists()


def test_dagster_asset_materialize_without_a_partition_asks_for_one_as_the_docs_say(tmp_path):
    """Dagster's own CLI refuses `--select '*'` without `--partition` before any run; the docs name the way to
    run every shard (pairfilter-materialize) and the `--partition` form for one."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run([DAGSTER, "asset", "materialize", "-m", "pairfilter_dagster.definitions", "--select", "*"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no '--partition' option was provided" in done.stderr
    shards_doc = (REPO / "docs" / "shards.md").read_text()
    assert "`dagster asset materialize --select '*'` cannot do this: it needs a `--partition`" in shards_doc
    assert "pairfilter-materialize" in shards_doc and "--partition pairs.jsonl" in shards_doc
