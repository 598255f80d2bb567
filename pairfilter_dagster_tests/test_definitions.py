"""The Dagster wiring: what loads, what the schedule asks for, and a real headless CLI run."""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb

from pairfilter_dagster.definitions import defs

from .conftest import REPO

DAGSTER = str(Path(sys.executable).parent / "dagster")


def test_definitions_load_without_torch_or_transformers():
    code = (
        "import sys, pairfilter_dagster.definitions as d; d.defs.resolve_asset_graph(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_assets_lineage_checks_and_resources_are_wired():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"raw_samples", "image_pair_stats", "filtered_samples", "similarity_report"}
    assert graph.get(dg.AssetKey("image_pair_stats")).parent_keys == {dg.AssetKey("raw_samples")}
    assert graph.get(dg.AssetKey("filtered_samples")).parent_keys == {dg.AssetKey("image_pair_stats")}
    assert graph.get(dg.AssetKey("similarity_report")).parent_keys == {
        dg.AssetKey("image_pair_stats"), dg.AssetKey("filtered_samples")}
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {"scores_finite_and_in_range", "one_row_per_sample", "kept_samples_satisfy_config",
                      "every_sample_accounted_for"}
    job = defs.resolve_job_def("pairfilter_job")
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == keys
    assert set(defs.resources) == {"clip", "storage"}


def test_daily_schedule_requests_a_valid_run_of_the_job():
    schedule = defs.resolve_schedule_def("pairfilter_daily")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == "pairfilter_job"
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 25, 3, tzinfo=timezone.utc))
    (request,) = schedule.evaluate_tick(context).run_requests
    job = defs.resolve_job_def("pairfilter_job")
    assert dg.validate_run_config(job, request.run_config) is not None


def test_headless_cli_materializes_everything(bundled_data_dir, tiny_clip_dir, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(bundled_data_dir), "PAIRFILTER_HF_CLIP": str(tiny_clip_dir),
           "DAGSTER_HOME": str(home)}
    config = json.dumps({"ops": {"filtered_samples": {"config": {"min_score": 0.0, "max_score": 1.0}}}})
    done = subprocess.run(
        [DAGSTER, "asset", "materialize", "--select", "*", "-m", "pairfilter_dagster.definitions",
         "--config-json", config],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stderr
    with duckdb.connect(str(bundled_data_dir / "pairfilter.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM image_pair_stats").fetchone()[0] == 13
        ok = conn.execute("SELECT count(*) FROM image_pair_stats WHERE status = 'ok'").fetchone()[0]
    lines = (bundled_data_dir / "output" / "filtered_samples.jsonl").read_text().splitlines()
    assert len(lines) == ok == 9  # min_score 0: every scored sample of the tiny model is kept


def test_the_shipped_instance_config_queues_pipeline_runs_one_at_a_time(tmp_path):
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
    assert limits == [{"key": "pairfilter/writes", "limit": 1}]
    assert defs.resolve_job_def("pairfilter_job").tags["pairfilter/writes"] == "tables"
