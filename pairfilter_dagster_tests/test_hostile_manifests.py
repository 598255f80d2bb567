"""Manifests and folders under raw/ that cannot be read: each is named, never taken for a removed shard, and never
keeps the other shards from being processed. Real files: folders and manifests made unreadable with chmod (the
subprocess drops root's permission override), named pipes, dangling and escaping symlinks, a name that is not
UTF-8, a folder named like a manifest."""

import json
import os
import shutil
import stat
from pathlib import Path

import dagster as dg
import pytest

from pairfilter_dagster.core.ingest.changes import compare, fingerprint_manifests
from pairfilter_dagster.core.ingest.manifests import list_shards

from .conftest import write_manifest
from .hostile import make_unreadable, materialize, python
from .test_assets import query

SECRET = "TOP-SECRET-CONTENT"
BAD_NAME = os.fsdecode(b"bad\xff.jsonl")


def stored_rows(data_dir: Path) -> dict[str, int]:
    """Stats rows per shard, over the shards' result files."""
    return dict(query(data_dir, "SELECT manifest, count(*) FROM image_pair_stats GROUP BY 1"))


def kept_lines(data_dir: Path) -> list[str]:
    return (data_dir / "output" / "filtered_samples.jsonl").read_text().splitlines()


@pytest.fixture
def scored_once(bundled_data_dir, tiny_clip_dir):
    """The bundled data, materialized once with every shard readable."""
    done = materialize(bundled_data_dir, tiny_clip_dir, "--config-json", json.dumps(
        {"ops": {"filtered_samples": {"config": {"min_score": 0.0}}}}))
    assert done.returncode == 0, done.stderr[-2000:]
    return bundled_data_dir, stored_rows(bundled_data_dir), kept_lines(bundled_data_dir)


@pytest.mark.parametrize("unreadable, named", [("raw/more", "raw/more/"), ("raw", "raw/")])
def test_a_folder_that_cannot_be_read_is_named_and_its_shards_keep_their_rows(scored_once, tiny_clip_dir,
                                                                               unreadable, named):
    data_dir, rows_before, kept_before = scored_once
    make_unreadable(data_dir / unreadable)
    try:
        done = materialize(data_dir, tiny_clip_dir, "--config-json", json.dumps(
            {"ops": {"filtered_samples": {"config": {"min_score": 0.0}}}}))
    finally:
        (data_dir / unreadable).chmod(0o755)
    assert done.returncode == 1, done.stdout
    assert f"pairfilter-materialize: {named}: cannot list the folder: Permission denied" in done.stderr
    assert "checks failed" not in done.stderr and " succeeded in " in done.stdout  # all but every_manifest_readable
    assert "rows are removed" not in done.stderr + done.stdout and "removed:" not in done.stdout
    assert stored_rows(data_dir) == rows_before  # nothing of the unreadable shards lost
    assert kept_lines(data_dir) == kept_before


def test_one_bad_manifest_of_each_kind_fails_its_own_partition_and_no_other(bundled_data_dir, tiny_clip_dir, tmp_path,
                                                                             monkeypatch):
    raw = bundled_data_dir / "raw"
    (raw / "x.jsonl").mkdir()
    (raw / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    os.mkfifo(raw / "pipe.jsonl")
    write_manifest(raw / BAD_NAME, [{"images": ["../images/cat.jpg", "../images/img2.jpg"]}])
    outside = write_manifest(tmp_path / "elsewhere" / "secret.jsonl", [SECRET])
    (raw / "secret.jsonl").symlink_to(outside)
    shutil.copy(raw / "pairs.jsonl", raw / "locked.jsonl")
    make_unreadable(raw / "locked.jsonl")
    home = tmp_path / "dagster-home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    done = materialize(bundled_data_dir, tiny_clip_dir, "--config-json", json.dumps(
        {"ops": {"filtered_samples": {"config": {"min_score": 0.0}}}}), keep_dagster_home=True)

    expected = {
        "x.jsonl": "a folder, not a manifest file",
        "dangling.jsonl": "a symlink to",
        "pipe.jsonl": "not a regular file (a named pipe)",
        "bad\\xff.jsonl": "the file name is not valid UTF-8",
        "secret.jsonl": "resolves to ",
        "locked.jsonl": "cannot open it: Permission denied",
    }
    assert done.returncode == 1 and "checks failed" not in done.stderr and " succeeded in " in done.stdout
    for shard, why in expected.items():
        assert f"pairfilter-materialize: raw/{shard}: {why}" in done.stderr, (shard, done.stderr[-3000:])
    assert SECRET not in done.stdout + done.stderr
    assert stored_rows(bundled_data_dir).keys() == {"pairs.jsonl", "more/edge_cases.jsonl"}  # the good ones, scored
    assert len(kept_lines(bundled_data_dir)) == 9
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for shard, why in expected.items():
            run = latest_run_of_partition(instance, shard)
            assert run.status == dg.DagsterRunStatus.FAILURE, shard
            assert why in failure_message(instance, run.run_id), shard


def latest_run_of_partition(instance: dg.DagsterInstance, shard: str) -> dg.DagsterRun:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": shard}), limit=1)
    assert runs, f"no run of partition {shard}"
    return runs[0]


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    return " ".join(str(record.event_log_entry.dagster_event.event_specific_data.error.message) for record in records)


@pytest.mark.parametrize("make, problem", [
    (lambda raw, outside: (raw / "x.jsonl").mkdir(), "a folder, not a manifest file"),
    (lambda raw, outside: (raw / "x.jsonl").symlink_to(outside / "missing.jsonl"), "which does not exist"),
    (lambda raw, outside: os.mkfifo(raw / "x.jsonl"), "not a regular file (a named pipe)"),
    (lambda raw, outside: (raw / "x.jsonl").symlink_to(write_manifest(outside / "m.jsonl", [SECRET])),
     "outside the data folder and image_roots: not read"),
    (lambda raw, outside: (raw / "x.jsonl").symlink_to("/dev/null"), "outside the data folder"),
])
def test_a_manifest_that_cannot_be_read_is_listed_with_its_problem(tmp_path, make, problem):
    raw, outside = tmp_path / "data" / "raw", tmp_path / "outside"
    write_manifest(raw / "good.jsonl", [{"images": []}])
    outside.mkdir()
    make(raw, outside)
    listing = list_shards(raw)
    assert list(listing.readable) == ["good.jsonl"]
    assert problem in listing.problems["raw/x.jsonl"]
    assert listing.may_hold("x.jsonl")
    assert SECRET not in json.dumps(listing.problems)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_named_like_a_manifest_is_refused_without_reading_it(tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    os.mknod(raw / "zero.jsonl", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero: one endless line
    assert list_shards(raw).problems == {"raw/zero.jsonl": "not a regular file (a character device)"}


def test_symlinks_within_the_roots_are_followed_and_a_loop_is_named_once(tmp_path):
    data = tmp_path / "data"
    write_manifest(data / "batches" / "b1.jsonl", [{"images": []}])
    write_manifest(data / "raw" / "a.jsonl", [{"images": []}])
    (data / "raw" / "linked").symlink_to(data / "batches")
    (data / "raw" / "linked-file.jsonl").symlink_to(data / "batches" / "b1.jsonl")
    (data / "batches" / "again").symlink_to(data / "raw")  # raw/linked/again -> raw: a loop
    listing = list_shards(data / "raw")
    assert list(listing.readable) == ["a.jsonl", "linked-file.jsonl", "linked/b1.jsonl"]
    assert listing.problems == {"raw/linked/again/": "a symlink loop (the folder contains itself): not read again"}


def test_the_sensors_fingerprints_never_take_an_unreadable_shard_for_a_removed_one(tmp_path):
    raw = tmp_path / "data" / "raw"
    write_manifest(raw / "a.jsonl", [{"images": []}])
    write_manifest(raw / "sub" / "b.jsonl", [{"images": []}])
    write_manifest(raw / "sub" / "c.jsonl", [{"images": []}])
    before = fingerprint_manifests(list_shards(raw))
    make_unreadable(raw / "sub" / "c.jsonl")
    make_unreadable(raw / "sub")
    probe = python(f"""
import json
from pairfilter_dagster.core.ingest.changes import compare, fingerprint_manifests
from pairfilter_dagster.core.ingest.manifests import list_shards
listing = list_shards({str(raw)!r})
current = fingerprint_manifests(listing, {before!r})
print(json.dumps({{"problems": listing.problems, "changes": compare({before!r}, current).__dict__}}))
""")
    (raw / "sub").chmod(0o755)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["problems"] == {"raw/sub/": "cannot list the folder: Permission denied"}
    assert seen["changes"] == {"added": [], "changed": [], "removed": []}
    # Readable again, the unreadable manifest inside is a changed shard (fingerprinted by its problem).
    assert compare(before, fingerprint_manifests(list_shards(raw))).changed == []
    assert "problem: " in python(f"""
from pairfilter_dagster.core.ingest.changes import fingerprint_manifests
from pairfilter_dagster.core.ingest.manifests import list_shards
print(fingerprint_manifests(list_shards({str(raw)!r}))["sub/c.jsonl"])""").stdout
