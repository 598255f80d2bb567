"""Writes that are killed, fail, or meet a full disk leave the outputs whole, in step with their tables, and no
temp file behind; published files get the usual permissions; a damaged result file fails the run instead of giving
a wrong answer. Kills are real SIGKILLs of a subprocess at a chosen point."""

import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pairfilter_dagster.core import publish, stages
from pairfilter_dagster.core.filtering import FilterSettings
from pairfilter_dagster.core.results import ResultFiles, parquet_files
from pairfilter_dagster.core.schema import StatsRow
from pairfilter_dagster.defs.resources import PairfilterStorage

from .pipeline import PIPELINE as assets
from .test_assets import ASSETS, metadata, query, run, step_failure

KILL_AT = """
import os, signal, sys
from pathlib import Path
from pairfilter_dagster.core import publish, stages
from pairfilter_dagster.core.filtering import FilterSettings
from pairfilter_dagster.core.results import ResultFiles
calls, original = [], getattr({target}, "{name}")
def die_at_call(*args, **kwargs):
    calls.append(1)
    if len(calls) == {call}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr({target}, "{name}", die_at_call)
data = Path(sys.argv[1])
stages.filter_and_publish(ResultFiles.under(data / "output"), FilterSettings(min_score=0.95),
                          data / "output" / "filtered_samples.jsonl", data / "raw", data / "local_state" / "pending_publish")
"""


def killed_while_filtering(data_dir, target: str, name: str, call: int = 1) -> None:
    """A filter run (min_score 0.95) in a process of its own, SIGKILLed at the `call`-th call of `target.name`."""
    snippet = KILL_AT.format(target=target, name=name, call=call)
    done = subprocess.run([sys.executable, "-c", snippet, str(data_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def jsonl_and_table(data_dir) -> tuple[list[str], list[str]]:
    lines = (data_dir / "output" / "filtered_samples.jsonl").read_text().splitlines()
    rows = [json for (json,) in query(data_dir, "SELECT sample_json FROM filtered_samples ORDER BY manifest, line_number")]
    return lines, rows


def temp_files(data_dir) -> list[str]:
    return sorted(p.name for p in (data_dir / "output").rglob("*") if p.name.endswith(publish.TEMP_SUFFIX))


def records(data_dir) -> list[str]:
    folder = data_dir / "local_state" / "pending_publish"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def filter_again(data_dir, min_score):
    storage = PairfilterStorage(data_dir=str(data_dir))
    return stages.filter_and_publish(storage.results, FilterSettings(min_score=min_score), storage.filtered_jsonl,
                                     storage.raw_dir, storage.local_state / "pending_publish")


@pytest.fixture
def filtered_once(bundled_data_dir, tiny_clip_dir):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0}).success
    lines, rows = jsonl_and_table(bundled_data_dir)
    assert lines == rows and len(lines) == 9
    return bundled_data_dir, lines


@pytest.mark.parametrize("call", [2, 3], ids=["before-both-renames", "between-the-renames"])
def test_a_kill_after_the_commit_is_completed_by_the_next_run(filtered_once, call):
    data_dir, before = filtered_once
    # publish calls: 1 the record (the commit), 2 the table, 3 the JSONL
    killed_while_filtering(data_dir, "publish.StagedFile", "publish", call)
    lines, rows = jsonl_and_table(data_dir)
    assert lines == before and (rows == before) == (call == 2) and len(records(data_dir)) == 1
    assert len(temp_files(data_dir)) == 4 - call
    assert publish.complete_pending(data_dir / "local_state" / "pending_publish")  # what the next run does first
    lines, rows = jsonl_and_table(data_dir)
    assert lines == rows and len(lines) < 9 and temp_files(data_dir) == [] and records(data_dir) == []
    filter_again(data_dir, 0.95)  # and the next run's own publish agrees with it
    assert jsonl_and_table(data_dir) == (lines, rows)


def test_a_kill_before_the_commit_keeps_both_and_its_temp_files_are_removed_next_time(filtered_once):
    data_dir, before = filtered_once
    killed_while_filtering(data_dir, "publish.StagedFile", "write_lines")
    assert jsonl_and_table(data_dir) == (before, before) and records(data_dir) == []
    assert len(temp_files(data_dir)) == 2  # the table's and the JSONL's, left by the kill
    assert publish.complete_pending(data_dir / "local_state" / "pending_publish") == []  # nothing was committed
    filter_again(data_dir, 0.0)
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
    results = ResultFiles.under(bundled_data_dir / "output")
    published = [bundled_data_dir / "output" / "filtered_samples.jsonl", results.filtered_file,
                 results.shard_file(StatsRow, "pairs.jsonl"), *(results.cache_root / name
                                                                for name in parquet_files(results.cache_root))]
    assert {oct(path.stat().st_mode & 0o777) for path in published} == {oct(0o640)}


def damage(path, how):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_a_damaged_stats_file_fails_the_dataset_step_and_keeps_its_outputs(filtered_once, tiny_clip_dir, how):
    data_dir, before = filtered_once
    results = ResultFiles.under(data_dir / "output")
    filtered_before = results.filtered_file.read_bytes()
    damage(results.shard_file(StatsRow, "pairs.jsonl"), how)
    result = run([assets.filtered_samples], data_dir, tiny_clip_dir, {"min_score": 0.5}, raise_on_error=False)
    assert not result.success  # never a dataset without that shard's samples
    assert step_failure(result)[0] == "filtered_samples"
    assert (data_dir / "output" / "filtered_samples.jsonl").read_text().splitlines() == before
    assert results.filtered_file.read_bytes() == filtered_before and temp_files(data_dir) == []


@pytest.mark.parametrize("table", ["image_pair_stats", "raw_samples"])
def test_a_damaged_result_file_is_named_with_the_way_to_rebuild_it(filtered_once, tiny_clip_dir, table):
    data_dir, _ = filtered_once
    path = ResultFiles.under(data_dir / "output").root / table / "pairs.jsonl.parquet"
    damage(path, "truncated")
    downstream = {"raw_samples": assets.image_pair_stats, "image_pair_stats": assets.filtered_samples}[table]
    result = run([downstream], data_dir, tiny_clip_dir, raise_on_error=False, with_checks=False)
    assert not result.success
    error = step_failure(result)[1].splitlines()
    cause = next(line for line in error if "DamagedResultFile" in line)
    assert str(path) in cause and "delete it and materialize its shard (pairs.jsonl) again" in cause
    path.unlink()
    rebuilt = run([assets.raw_samples, assets.image_pair_stats, assets.filtered_samples], data_dir, tiny_clip_dir)
    assert rebuilt.success


def test_a_damaged_embedding_block_costs_only_its_embeddings(filtered_once, tiny_clip_dir):
    data_dir, _ = filtered_once
    results = ResultFiles.under(data_dir / "output")
    first = results.cache_root / parquet_files(results.cache_root)[0]
    lost = pq.read_metadata(first).num_rows
    damage(first, "truncated")  # the cache takes it for a missing block: its images are embedded again
    result = run(ASSETS, data_dir, tiny_clip_dir, raise_on_error=False)
    assert result.success, step_failure(result)
    assert metadata(result, "image_pair_stats")["images_embedded"] == lost
