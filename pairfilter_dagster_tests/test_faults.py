"""Faults: a failed run leaves the previous outputs intact, and two runs at once on one data folder take turns
on the DuckDB file instead of corrupting it. Locks are held by real second processes; waits are driven by
what those processes report, never by sleeping."""

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pairfilter_dagster.core import store
from pairfilter_dagster.core.publish import staged_file
from pairfilter_dagster.core.schema import FilteredRow, StatsRow
from pairfilter_dagster.testing import write_clip_checkpoint

from .conftest import REPO
from .pipeline import MANIFEST_SHARDS
from .pipeline import PIPELINE as assets
from .test_assets import ASSETS, query, read_jsonl, run, step_failure
from .test_definitions import DAGSTER

HOLD_LOCK = (
    "import duckdb, sys; conn = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'read'); "
    "print('locked', flush=True); sys.stdin.read(); conn.close()"
)


@contextmanager
def lock_held_by_another_process(database: Path, mode: str):
    """Another process holds the DuckDB file open: 'read' (others may read, nobody may write) or 'write'."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(database), mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0


def snapshot(data_dir: Path) -> dict:
    """Everything a run writes: the three tables and the filtered JSONL, byte for byte."""
    tables = {table: query(data_dir, f"SELECT * FROM {table} ORDER BY sample_id")
              for table in ("raw_samples", "image_pair_stats", "filtered_samples")}
    return {**tables, "jsonl": (data_dir / "output" / "filtered_samples.jsonl").read_bytes()}


def test_waiting_for_the_lock_is_reported_once_and_times_out_with_a_clear_message(tmp_path):
    database = tmp_path / "p.duckdb"
    with store.connect(database) as conn:
        store.ensure_table(conn, StatsRow)
    heard = []
    with lock_held_by_another_process(database, "write"):
        with pytest.raises(store.StoreLockedError, match="lock_wait_seconds") as caught:
            with store.connect(database, read_only=True, wait_seconds=0.5, on_wait=heard.append):
                pass
    assert len(heard) == 1 and "Waiting for another process" in heard[0]
    assert str(database) in str(caught.value)
    with store.connect(database, wait_seconds=0) as conn:  # released: no wait at all
        assert store.row_count(conn, "image_pair_stats") == 0


def test_a_failure_before_commit_keeps_the_old_table_and_the_old_file(tmp_path):
    database, target = tmp_path / "p.duckdb", tmp_path / "out.jsonl"
    target.write_text("old\n")
    with store.connect(database) as conn:
        store.ensure_table(conn, FilteredRow)
        with pytest.raises(OSError):
            with store.table_writer(conn, FilteredRow) as table, staged_file(target) as staged:
                staged.write_line("new")
                staged.path = tmp_path / "no-such-folder" / "out.jsonl"  # publishing fails
                table.write([FilteredRow(sample_id="m:1", manifest="m", line_number=1, image_pair_similarity=(0.5,),
                                         sample_json="{}")])
                staged.publish()
        assert store.row_count(conn, "filtered_samples") == 0
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "p.duckdb"]


def test_a_failed_run_leaves_the_previous_outputs_intact(bundled_data_dir, tiny_clip_dir, tmp_path):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0}).success
    before = snapshot(bundled_data_dir)
    other_model = write_clip_checkpoint(tmp_path / "other-clip", seed=7)

    # Another process reads the store the whole time, so every write waits in vain: the scoring step does all
    # its work with another model, then fails to write; the filter step alone stages its JSONL, then fails.
    with lock_held_by_another_process(bundled_data_dir / "pairfilter.duckdb", "read"):
        rescored = run([assets.image_pair_stats, assets.filtered_samples], bundled_data_dir, other_model,
                       {"min_score": 0.5}, storage_options={"lock_wait_seconds": 0.2}, raise_on_error=False)
        refiltered = run([assets.filtered_samples], bundled_data_dir, tiny_clip_dir, {"min_score": 0.99},
                         storage_options={"lock_wait_seconds": 0.2}, raise_on_error=False)

    for result, step in ((rescored, "image_pair_stats"), (refiltered, "filtered_samples")):
        assert not result.success
        failed_step, error = step_failure(result)
        assert failed_step == step and "lock_wait_seconds" in error
    assert snapshot(bundled_data_dir) == before
    output = bundled_data_dir / "output"
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*")) == [  # and no temp file left
        "filtered_samples.jsonl", "kept", "kept/more", "kept/more/edge_cases.jsonl", "kept/pairs.jsonl", "kept_ids.txt"]


def start_shard_run(data_dir, clip_dir, home, log_path, shard):
    """`dagster asset materialize` of one shard's two assets, in a process of its own."""
    home.mkdir()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(MANIFEST_SHARDS.name, [shard])
    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(data_dir), "PAIRFILTER_HF_CLIP": str(clip_dir),
           "DAGSTER_HOME": str(home)}
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [DAGSTER, "asset", "materialize", "--select", "raw_samples,image_pair_stats", "--partition", shard,
             "-m", "pairfilter_dagster.definitions"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )


def wait_until_both_report_waiting(runs, logs, give_up_after=300):
    """Block until each run has logged that it waits for the lock (or has ended, which the caller checks)."""
    give_up = time.monotonic() + give_up_after  # a hang guard, not a timing assertion
    while not all("Waiting for another process" in log.read_text() or run.poll() is not None
                  for run, log in zip(runs, logs)):
        assert time.monotonic() < give_up, "the runs neither waited for the lock nor ended"
        time.sleep(0.2)


def test_two_shard_runs_at_once_take_turns_and_lose_no_write(bundled_data_dir, tiny_clip_dir, tmp_path):
    # One DAGSTER_HOME each: two CLI processes creating their first run in one SQLite instance at the same moment
    # race on Dagster's own snapshot table (an IntegrityError in Dagster's storage, not ours; `dagster dev`
    # creates runs from its one webserver process). What is shared here, and tested, is the data folder.
    shards = ["pairs.jsonl", "more/edge_cases.jsonl"]
    homes = [tmp_path / "home1", tmp_path / "home2"]
    logs = [tmp_path / "run1.log", tmp_path / "run2.log"]
    database = bundled_data_dir / "pairfilter.duckdb"
    duckdb.connect(str(database)).close()
    # Both runs start while a third process holds the write lock, so both must wait, then contend with each
    # other when it is released.
    with lock_held_by_another_process(database, "write"):
        runs = [start_shard_run(bundled_data_dir, tiny_clip_dir, home, log, shard)
                for home, log, shard in zip(homes, logs, shards)]
        wait_until_both_report_waiting(runs, logs)
        assert [run.poll() for run in runs] == [None, None], [log.read_text()[-4000:] for log in logs]
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [log.read_text()[-3000:] for log in logs]

    for log in logs:
        text = log.read_text()
        assert "RUN_SUCCESS" in text and "Waiting for another process" in text
        checks = re.findall(r"ASSET_CHECK_EVALUATION - Asset check '(\w+)' on '\w+' (passed|failed)", text)
        assert len(checks) == 2 and {outcome for _, outcome in checks} == {"passed"}
    with duckdb.connect(str(database), read_only=True) as conn:  # each shard's rows, once: no write was lost
        for table in ("raw_samples", "image_pair_stats"):
            assert conn.execute(f"SELECT manifest, count(*), count(DISTINCT sample_id) FROM {table} "
                                "GROUP BY manifest ORDER BY manifest").fetchall() == [
                ("more/edge_cases.jsonl", 4, 4), ("pairs.jsonl", 9, 9)]

    refiltered = run([assets.filtered_samples], bundled_data_dir, tiny_clip_dir, {"min_score": 0.0})
    assert refiltered.success and all(check.passed for check in refiltered.get_asset_check_evaluations())
    ok = query(bundled_data_dir, "SELECT count(*) FROM image_pair_stats WHERE status = 'ok'")[0][0]
    table = query(bundled_data_dir, "SELECT sample_json FROM filtered_samples ORDER BY manifest, line_number")
    output = read_jsonl(bundled_data_dir / "output" / "filtered_samples.jsonl")
    assert len(output) == len(table) == ok == 9 and [json.loads(line) for (line,) in table] == output
