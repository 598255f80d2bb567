"""Writes that are killed, fail, or meet a full disk leave the outputs whole, in step with their tables, and no
temp file behind; published files get the usual permissions; a DuckDB error is never taken for another run's
lock, and a killed lock holder keeps nobody waiting. Kills are real SIGKILLs of a subprocess at a chosen point."""

import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from pairfilter_dagster.core import store
from pairfilter_dagster.defs.resources import PairfilterStorage

from .test_assets import ASSETS, query, run, step_failure
from .test_faults import HOLD_LOCK

KILL_AT = """
import os, signal, sys
from pathlib import Path
from pairfilter_dagster.core import publish, stages, store
from pairfilter_dagster.core.filtering import FilterSettings
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
setattr({target}, "{name}", die)
data = Path(sys.argv[1])
with store.connect(data / "pairfilter.duckdb") as conn:
    stages.filter_and_publish(conn, FilterSettings(min_score=0.95), data / "output" / "filtered_samples.jsonl",
                             data / "raw")
"""


def killed_while_filtering(data_dir, target: str, name: str) -> None:
    done = subprocess.run([sys.executable, "-c", KILL_AT.format(target=target, name=name), str(data_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def jsonl_and_table(data_dir) -> tuple[list[str], list[str]]:
    lines = (data_dir / "output" / "filtered_samples.jsonl").read_text().splitlines()
    rows = [json for (json,) in query(data_dir, "SELECT sample_json FROM filtered_samples ORDER BY manifest, line_number")]
    return lines, rows


def temp_files(data_dir) -> list[str]:
    return sorted(p.name for p in (data_dir / "output").iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def filtered_once(bundled_data_dir, tiny_clip_dir):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0}).success
    lines, rows = jsonl_and_table(bundled_data_dir)
    assert lines == rows and len(lines) == 9
    return bundled_data_dir, lines


def test_a_kill_between_the_commit_and_the_rename_is_completed_by_the_next_connection(filtered_once):
    data_dir, before = filtered_once
    killed_while_filtering(data_dir, "publish.StagedFile", "publish")  # the table committed, the file not renamed
    lines, rows = jsonl_and_table(data_dir)
    assert lines == before and rows != before and len(temp_files(data_dir)) == 1
    with PairfilterStorage(data_dir=str(data_dir)).connect():
        pass
    lines, rows = jsonl_and_table(data_dir)
    assert lines == rows != before and temp_files(data_dir) == []


def test_a_kill_before_the_commit_keeps_both_and_its_temp_file_is_removed_next_time(filtered_once):
    data_dir, before = filtered_once
    killed_while_filtering(data_dir, "publish.StagedFile", "write_lines")
    assert jsonl_and_table(data_dir) == (before, before) and len(temp_files(data_dir)) == 1
    with PairfilterStorage(data_dir=str(data_dir)).connect():
        pass
    assert jsonl_and_table(data_dir) == (before, before) and temp_files(data_dir) == []


@pytest.fixture
def tiny_output_disk(bundled_data_dir):
    output = bundled_data_dir / "output"
    output.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(output)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield output
    finally:
        subprocess.run(["umount", str(output)], check=True)


def test_a_full_disk_fails_the_write_keeps_the_previous_file_and_leaves_the_disk_as_it_was(tiny_output_disk,
                                                                                           bundled_data_dir,
                                                                                           tiny_clip_dir):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.99}).success
    before = (tiny_output_disk / "filtered_samples.jsonl").read_bytes()
    filler = tiny_output_disk / "filler"
    free = os.statvfs(tiny_output_disk)
    filler.write_bytes(b"x" * (free.f_bavail * free.f_frsize - 512))  # leaves less than the new file needs
    free_before = os.statvfs(tiny_output_disk).f_bavail
    files_before = sorted(str(p.relative_to(tiny_output_disk)) for p in tiny_output_disk.rglob("*"))
    result = run([ASSETS[2]], bundled_data_dir, tiny_clip_dir, {"min_score": 0.0}, raise_on_error=False)
    assert not result.success
    step, error = step_failure(result)
    assert step == "filtered_samples" and "No space left on device" in error
    assert (tiny_output_disk / "filtered_samples.jsonl").read_bytes() == before
    assert sorted(str(p.relative_to(tiny_output_disk)) for p in tiny_output_disk.rglob("*")) == files_before
    assert os.statvfs(tiny_output_disk).f_bavail == free_before
    assert query(bundled_data_dir, "SELECT count(*) FROM filtered_samples") == [(len(before.splitlines()),)]


def test_published_files_get_the_usual_permissions(bundled_data_dir, tiny_clip_dir):
    previous = os.umask(0o027)
    try:
        assert run(ASSETS, bundled_data_dir, tiny_clip_dir).success
    finally:
        os.umask(previous)
    assert (bundled_data_dir / "output" / "filtered_samples.jsonl").stat().st_mode & 0o777 == 0o640


def test_a_duckdb_error_that_mentions_lock_is_raised_at_once(tmp_path):
    database = tmp_path / "blocklists" / "missing" / "p.duckdb"  # "lock" in the path, and no such folder
    started = time.monotonic()
    with pytest.raises(duckdb.IOException, match="blocklists"):
        with store.connect(database, read_only=True, wait_seconds=60):
            pass
    assert time.monotonic() - started < 10


def test_a_killed_lock_holder_keeps_nobody_waiting(tmp_path):
    database = tmp_path / "p.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(database), "write"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(store.StoreLockedError):
        with store.connect(database, wait_seconds=0.5):
            pass
    holder.kill()
    holder.wait(timeout=30)
    with store.connect(database, wait_seconds=0) as conn:  # the lock died with its process
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_damaged_store_file_is_named_with_the_way_to_start_over(tmp_path):
    database = tmp_path / "pairfilter.duckdb"
    database.write_bytes(os.urandom(100_000))
    with pytest.raises(store.StoreCorruptError, match=r"move it aside \(mv .*pairfilter.duckdb .*\.damaged\)"):
        with store.connect(database):
            pass
