"""The new-data sensor, evaluated in process on real manifest folders (the daemon-driven test is in
test_webserver.py)."""

import json
import os
import time

import dagster as dg
import pytest

from pairfilter_dagster.core.manifest_changes import compare, fingerprint_manifests
from pairfilter_dagster.defs.resources import PairfilterStorage
from pairfilter_dagster.defs.sensors import pairfilter_new_manifests

from .conftest import write_manifest

NEW_SAMPLE = {"text": "a new pair", "images": ["../images/cat.jpg", "../images/img8.jpg"]}


def settle(raw_dir):
    """Date every manifest a minute back, as if copied in long ago (the sensor waits for fresh files)."""
    past = time.time() - 60
    for path in raw_dir.rglob("*.jsonl"):
        os.utime(path, (past, past))


@pytest.fixture(autouse=True)
def instance():
    """A throwaway Dagster instance: the sensor looks there for runs still under way."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


def evaluate(data_dir, cursor):
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.get(), cursor=cursor,
        resources={"storage": PairfilterStorage(data_dir=str(data_dir))},
    )
    return pairfilter_new_manifests.evaluate_tick(context)


def tick(data_dir, cursor):
    settle(data_dir / "raw")
    return evaluate(data_dir, cursor)


def test_existing_manifests_request_one_run_then_nothing_until_a_change(bundled_data_dir):
    first = tick(bundled_data_dir, None)
    (request,) = first.run_requests
    assert request.run_key == "manifests-generation-1"
    assert request.tags["pairfilter/manifest_changes"] == "added: more/edge_cases.jsonl, pairs.jsonl"
    assert set(json.loads(first.cursor)["manifests"]) == {"more/edge_cases.jsonl", "pairs.jsonl"}

    for _ in range(3):  # an unchanged folder, however often the sensor ticks
        again = tick(bundled_data_dir, first.cursor)
        assert again.run_requests == [] and "no new or changed manifest among 2" in again.skip_message
        assert again.cursor in (None, first.cursor)

    write_manifest(bundled_data_dir / "raw" / "new.jsonl", [NEW_SAMPLE])
    dropped = tick(bundled_data_dir, first.cursor)
    (request,) = dropped.run_requests
    assert request.run_key == "manifests-generation-2"
    assert request.tags["pairfilter/manifest_changes"] == "added: new.jsonl"
    assert tick(bundled_data_dir, dropped.cursor).run_requests == []


@pytest.mark.parametrize(
    "edit, summary",
    [
        (lambda raw: write_manifest(raw / "pairs.jsonl", [NEW_SAMPLE]), "changed: pairs.jsonl"),
        (lambda raw: (raw / "more" / "edge_cases.jsonl").unlink(), "removed: more/edge_cases.jsonl"),
        (lambda raw: (raw / "pairs.jsonl").touch(), None),  # same bytes: not a change
        (lambda raw: (raw / "notes.txt").write_text("not a manifest"), None),
    ],
)
def test_changes_that_matter_and_ones_that_do_not(bundled_data_dir, edit, summary):
    first = tick(bundled_data_dir, None)
    edit(bundled_data_dir / "raw")
    after = tick(bundled_data_dir, first.cursor)
    if summary is None:
        assert after.run_requests == []
    else:
        (request,) = after.run_requests
        assert request.tags["pairfilter/manifest_changes"] == summary


def test_a_manifest_still_being_written_waits_for_the_next_tick(bundled_data_dir):
    first = tick(bundled_data_dir, None)
    write_manifest(bundled_data_dir / "raw" / "copying.jsonl", [NEW_SAMPLE])  # modified just now
    waiting = evaluate(bundled_data_dir, first.cursor)
    assert waiting.run_requests == [] and "copying.jsonl" in waiting.skip_message
    assert waiting.cursor in (None, first.cursor)  # nothing recorded: the next tick still sees it as new
    assert [r.tags["pairfilter/manifest_changes"] for r in tick(bundled_data_dir, first.cursor).run_requests] == [
        "added: copying.jsonl"]


def test_no_run_is_requested_while_one_is_under_way(bundled_data_dir, instance):
    first = tick(bundled_data_dir, None)
    write_manifest(bundled_data_dir / "raw" / "new.jsonl", [NEW_SAMPLE])
    for status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
        instance.add_run(dg.DagsterRun(job_name="pairfilter_job", run_id="under-way", status=status))
        waiting = tick(bundled_data_dir, first.cursor)
        assert waiting.run_requests == [] and "waiting for run under-way" in waiting.skip_message
        assert waiting.cursor in (None, first.cursor)
        instance.delete_run("under-way")
    instance.add_run(dg.DagsterRun(job_name="pairfilter_job", run_id="done", status=dg.DagsterRunStatus.SUCCESS))
    (request,) = tick(bundled_data_dir, first.cursor).run_requests
    assert request.tags["pairfilter/manifest_changes"] == "added: new.jsonl"


def test_an_empty_or_emptied_folder_requests_no_run(tmp_path, bundled_data_dir):
    (tmp_path / "raw").mkdir()
    assert tick(tmp_path, None).run_requests == []
    first = tick(bundled_data_dir, None)
    for path in (bundled_data_dir / "raw").rglob("*.jsonl"):
        path.unlink()
    emptied = tick(bundled_data_dir, first.cursor)
    assert emptied.run_requests == [] and "every manifest was removed" in emptied.skip_message
    assert json.loads(emptied.cursor)["manifests"] == {}


def test_fingerprints_follow_content_not_timestamps(bundled_data_dir):
    raw = bundled_data_dir / "raw"
    before = fingerprint_manifests(raw)
    os.utime(raw / "pairs.jsonl", (0, 0))
    assert not compare(before, fingerprint_manifests(raw))
    (raw / "pairs.jsonl").write_bytes((raw / "pairs.jsonl").read_bytes() + b"\n")
    assert compare(before, fingerprint_manifests(raw)).changed == ["pairs.jsonl"]


def test_sensor_is_off_by_default_and_targets_the_job():
    assert pairfilter_new_manifests.default_status == dg.DefaultSensorStatus.STOPPED
    assert pairfilter_new_manifests.job_name == "pairfilter_job"
