"""The new-data sensor, evaluated in process against a real Dagster instance and real manifest folders, its
partition requests applied to the instance as the daemon applies them; the last test executes the runs it requests
(the daemon-driven test is in test_webserver.py)."""

import json
import os
import time

import dagster as dg
import pytest
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)

from pairfilter_dagster.core.ingest.changes import compare, fingerprint_manifests
from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.defs.partitions import registered_shards
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage

from .conftest import write_manifest
from .pipeline import DEFS as defs
from .pipeline import MANIFEST_SHARDS, PIPELINE

pairfilter_new_manifests = PIPELINE.sensor

NEW_SAMPLE = {"text": "a new pair", "images": ["../images/cat.jpg", "../images/img8.jpg"]}
BUNDLED_SHARDS = ["more/edge_cases.jsonl", "pairs.jsonl"]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def settle(raw_dir):
    """Date every manifest a minute back, as if copied in long ago (the sensor waits for fresh files)."""
    past = time.time() - 60
    for path in raw_dir.rglob("*.jsonl"):
        os.utime(path, (past, past))


@pytest.fixture
def instance():
    """A throwaway Dagster instance: where the partitions live and where the sensor looks for runs under way."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


class Daemon:
    """Ticks the sensor as the daemon does: evaluated with the cursor the last tick kept, its partition requests
    applied to the instance, its cursor kept unless it returned none (a skip). Run requests are recorded, not
    launched (test_the_requested_runs_run launches them)."""

    def __init__(self, instance, data_dir):
        self.instance, self.data_dir, self.cursor = instance, data_dir, None
        self.run_requests: list[dg.RunRequest] = []

    def evaluate(self):
        context = dg.build_sensor_context(  # with an instance ref, as the code server gets from the daemon
            instance=self.instance, instance_ref=self.instance.get_ref(), cursor=self.cursor, definitions=defs,
            resources={"storage": PairfilterStorage(data_dir=str(self.data_dir))},
        )
        result = pairfilter_new_manifests.evaluate_tick(context)
        for request in result.dynamic_partitions_requests or []:
            assert request.partitions_def_name == MANIFEST_SHARDS.name
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        if result.cursor is not None:
            self.cursor = result.cursor
        self.run_requests += result.run_requests
        return result

    def tick(self):
        settle(self.data_dir / "raw")
        return self.evaluate()

    def shards(self) -> list[str]:
        return registered_shards(self.instance, MANIFEST_SHARDS)


@pytest.fixture
def daemon(instance, bundled_data_dir):
    return Daemon(instance, bundled_data_dir)


def partitions_requested(result) -> dict[str, list[str]]:
    requests = result.dynamic_partitions_requests or []
    return {
        "add": [k for r in requests if isinstance(r, dg.AddDynamicPartitionsRequest) for k in r.partition_keys],
        "delete": [k for r in requests if isinstance(r, dg.DeleteDynamicPartitionsRequest) for k in r.partition_keys],
    }


def shards_of(request: dg.RunRequest, instance) -> list[str]:
    """The shards a requested run covers: its partition, or every partition of its range tags."""
    if request.partition_key is not None:
        assert RANGE_START not in request.tags
        return [request.partition_key]
    key_range = dg.PartitionKeyRange(request.tags[RANGE_START], request.tags[RANGE_END])
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return list(MANIFEST_SHARDS.get_partition_keys_in_range(key_range))


def assert_skipped(result, cursor_before, message: str):
    assert result.run_requests == [] and not result.dynamic_partitions_requests
    assert message in result.skip_message
    assert result.cursor in (None, cursor_before)  # nothing recorded: the next tick sees the same state


def assert_dataset_run_then_idle(daemon, generation: int):
    """Once the shard runs are done (none is under way here), one dataset_job run, then nothing."""
    dataset = daemon.tick()
    (request,) = dataset.run_requests
    assert (request.job_name, request.run_key, request.partition_key) == (
        "dataset_job", f"dataset@generation-{generation}", None)
    assert RANGE_START not in request.tags and not dataset.dynamic_partitions_requests
    assert json.loads(dataset.cursor)["dataset_pending"] is False
    for _ in range(3):  # an unchanged folder, however often the sensor ticks
        assert_skipped(daemon.tick(), daemon.cursor, f"no new or changed manifest among {len(daemon.shards())}")


def test_first_tick_adds_every_shard_and_requests_one_run_over_all_of_them(daemon, instance):
    first = daemon.tick()
    assert partitions_requested(first) == {"add": BUNDLED_SHARDS, "delete": []}
    assert daemon.shards() == BUNDLED_SHARDS
    (request,) = first.run_requests
    assert (request.job_name, request.run_key) == ("shard_job", "all-shards@generation-1")
    assert shards_of(request, instance) == BUNDLED_SHARDS
    assert request.tags["pairfilter/manifest_changes"] == "added: more/edge_cases.jsonl, pairs.jsonl"
    cursor = json.loads(first.cursor)
    assert (cursor["generation"], set(cursor["manifests"]), cursor["dataset_pending"]) == (
        1, set(BUNDLED_SHARDS), True)
    assert_dataset_run_then_idle(daemon, generation=1)


def test_a_new_manifest_gets_a_partition_and_a_run_of_its_shard_only(daemon, instance):
    daemon.tick(), daemon.tick()
    write_manifest(daemon.data_dir / "raw" / "dropped" / "new.jsonl", [NEW_SAMPLE])
    dropped = daemon.tick()
    assert partitions_requested(dropped) == {"add": ["dropped/new.jsonl"], "delete": []}
    assert daemon.shards() == [*BUNDLED_SHARDS, "dropped/new.jsonl"]
    (request,) = dropped.run_requests
    assert (request.job_name, request.partition_key, request.run_key) == (
        "shard_job", "dropped/new.jsonl", "dropped/new.jsonl@generation-2")
    assert request.tags["pairfilter/manifest_changes"] == "added: dropped/new.jsonl"
    assert_dataset_run_then_idle(daemon, generation=2)


def test_a_changed_manifest_gets_a_run_of_its_shard_only(daemon):
    daemon.tick(), daemon.tick()
    write_manifest(daemon.data_dir / "raw" / "pairs.jsonl", [NEW_SAMPLE])
    changed = daemon.tick()
    assert not changed.dynamic_partitions_requests and daemon.shards() == BUNDLED_SHARDS
    (request,) = changed.run_requests
    assert (request.job_name, request.partition_key, request.run_key) == (
        "shard_job", "pairs.jsonl", "pairs.jsonl@generation-2")
    assert request.tags["pairfilter/manifest_changes"] == "changed: pairs.jsonl"
    assert_dataset_run_then_idle(daemon, generation=2)


def test_a_removed_manifest_loses_its_partition_and_only_the_dataset_is_rebuilt(daemon):
    daemon.tick(), daemon.tick()
    (daemon.data_dir / "raw" / "more" / "edge_cases.jsonl").unlink()
    removed = daemon.tick()
    assert partitions_requested(removed) == {"add": [], "delete": ["more/edge_cases.jsonl"]}
    assert daemon.shards() == ["pairs.jsonl"]
    assert removed.run_requests == []  # no shard to run; the dataset run drops the shard's rows
    assert json.loads(removed.cursor)["dataset_pending"] is True
    assert_dataset_run_then_idle(daemon, generation=2)


def test_an_emptied_folder_deletes_every_partition_and_rebuilds_an_empty_dataset(daemon):
    daemon.tick(), daemon.tick()
    for path in (daemon.data_dir / "raw").rglob("*.jsonl"):
        path.unlink()
    emptied = daemon.tick()
    assert partitions_requested(emptied) == {"add": [], "delete": BUNDLED_SHARDS}
    assert daemon.shards() == [] and emptied.run_requests == []
    assert json.loads(emptied.cursor)["manifests"] == {}
    assert_dataset_run_then_idle(daemon, generation=2)


def test_an_empty_folder_requests_nothing(tmp_path, instance):
    (tmp_path / "raw").mkdir()
    daemon = Daemon(instance, tmp_path)
    assert_skipped(daemon.tick(), None, "no new or changed manifest among 0")
    assert daemon.shards() == []


@pytest.mark.parametrize("edit", [
    lambda raw: (raw / "pairs.jsonl").touch(),  # same bytes: not a change
    lambda raw: (raw / "notes.txt").write_text("not a manifest"),
], ids=["touched", "not-a-manifest"])
def test_edits_that_do_not_matter_request_nothing(daemon, edit):
    daemon.tick(), daemon.tick()
    edit(daemon.data_dir / "raw")
    assert_skipped(daemon.tick(), daemon.cursor, "no new or changed manifest among 2")


def test_a_partition_deleted_by_hand_is_added_back_and_run(daemon, instance):
    daemon.tick(), daemon.tick()
    instance.delete_dynamic_partition(MANIFEST_SHARDS.name, "pairs.jsonl")  # e.g. in the UI
    again = daemon.tick()
    assert partitions_requested(again) == {"add": ["pairs.jsonl"], "delete": []}
    assert sorted(daemon.shards()) == BUNDLED_SHARDS
    (request,) = again.run_requests
    assert (request.partition_key, request.run_key) == ("pairs.jsonl", "pairs.jsonl@generation-2")


def test_run_keys_are_unique_across_generations_even_for_content_seen_before(daemon):
    raw = daemon.data_dir / "raw"
    original = (raw / "pairs.jsonl").read_bytes()
    daemon.tick(), daemon.tick()
    write_manifest(raw / "pairs.jsonl", [NEW_SAMPLE])
    (changed,) = daemon.tick().run_requests
    daemon.tick()
    (raw / "pairs.jsonl").write_bytes(original)  # back to what the first run already scored
    (changed_back,) = daemon.tick().run_requests
    daemon.tick()
    assert changed.partition_key == changed_back.partition_key == "pairs.jsonl"
    assert (changed.run_key, changed_back.run_key) == ("pairs.jsonl@generation-2", "pairs.jsonl@generation-3")
    keys = [r.run_key for r in daemon.run_requests]
    assert keys == ["all-shards@generation-1", "dataset@generation-1", "pairs.jsonl@generation-2",
                    "dataset@generation-2", "pairs.jsonl@generation-3", "dataset@generation-3"]
    assert len(set(keys)) == len(keys)  # the daemon launches a run key once: none may repeat


def test_a_manifest_still_being_written_waits_for_the_next_tick(daemon):
    daemon.tick(), daemon.tick()
    write_manifest(daemon.data_dir / "raw" / "copying.jsonl", [NEW_SAMPLE])  # modified just now
    assert_skipped(daemon.evaluate(), daemon.cursor, "copying.jsonl")
    assert "copying.jsonl" not in daemon.shards()  # no partition either, until it settles
    (request,) = daemon.tick().run_requests
    assert (request.partition_key, request.tags["pairfilter/manifest_changes"]) == (
        "copying.jsonl", "added: copying.jsonl")


@pytest.mark.parametrize("job", ["shard_job", "dataset_job", "pairfilter_job"])
@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
                                    dg.DagsterRunStatus.STARTED], ids=lambda s: s.value)
def test_nothing_is_requested_while_a_pipeline_run_is_under_way(daemon, instance, job, status):
    daemon.tick()  # a shard run requested: the dataset run waits for it, as does any new shard
    write_manifest(daemon.data_dir / "raw" / "new.jsonl", [NEW_SAMPLE])
    instance.add_run(dg.DagsterRun(job_name=job, run_id="under-way", status=status, remote_job_origin=origin(job)))
    cursor = daemon.cursor
    for _ in range(2):
        assert_skipped(daemon.tick(), cursor, "waiting for run under-way")
    assert daemon.shards() == BUNDLED_SHARDS  # the new manifest has no partition yet

    instance.delete_run("under-way")
    instance.add_run(dg.DagsterRun(job_name=job, run_id="done", status=dg.DagsterRunStatus.SUCCESS))
    (request,) = daemon.tick().run_requests  # the change made meanwhile is picked up
    assert (request.partition_key, request.run_key) == ("new.jsonl", "new.jsonl@generation-2")
    assert_dataset_run_then_idle(daemon, generation=2)


def origin(job: str) -> RemoteJobOrigin:
    """Where a run launched from `dagster dev` comes from (a queued run must say)."""
    location = RegisteredCodeLocationOrigin("pairfilter_dagster")
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job)


def test_a_materialize_all_from_the_ui_under_way_holds_the_sensor_back(daemon, instance):
    daemon.tick()
    instance.add_run(dg.DagsterRun(
        job_name="__ASSET_JOB", run_id="ui", status=dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset(dg.AssetKey(name) for name in ("raw_samples", "image_pair_stats")),
    ))
    assert_skipped(daemon.tick(), daemon.cursor, "waiting for run ui")


def test_runs_of_other_jobs_do_not_hold_the_sensor_back(daemon, instance):
    daemon.tick()
    instance.add_run(dg.DagsterRun(job_name="some_other_job", run_id="other", status=dg.DagsterRunStatus.STARTED))
    assert [r.job_name for r in daemon.tick().run_requests] == ["dataset_job"]


def test_fingerprints_follow_content_not_timestamps(bundled_data_dir):
    raw = bundled_data_dir / "raw"
    before = fingerprint_manifests(list_shards(raw))
    os.utime(raw / "pairs.jsonl", (0, 0))
    assert not compare(before, fingerprint_manifests(list_shards(raw)))
    (raw / "pairs.jsonl").write_bytes((raw / "pairs.jsonl").read_bytes() + b"\n")
    assert compare(before, fingerprint_manifests(list_shards(raw))).changed == ["pairs.jsonl"]


def test_sensor_is_off_by_default_and_targets_the_shard_and_dataset_jobs():
    assert pairfilter_new_manifests.default_status == dg.DefaultSensorStatus.STOPPED
    assert sorted(target.job_name for target in pairfilter_new_manifests.targets) == ["dataset_job", "shard_job"]


def execute(request: dg.RunRequest, instance, data_dir, clip_dir) -> dg.ExecuteInProcessResult:
    """Run a request of the sensor as the daemon would launch it: its job from the definitions, its partition
    (or range tags), its tags, on the given instance; the test's data folder and tiny CLIP checkpoint as
    resources."""
    job = defs.resolve_job_def(request.job_name)
    result = job.execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config or None,
        tags={**request.tags, "dagster/run_key": request.run_key},
        resources={"clip": ClipModel(hf_clip=str(clip_dir), batch_size=4),
                   "storage": PairfilterStorage(data_dir=str(data_dir))},
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks), checks
    return result


def materialized(result) -> dict[str, list[str | None]]:
    found: dict[str, list[str | None]] = {}
    for event in result.get_asset_materialization_events():
        found.setdefault(event.asset_key.path[-1], []).append(event.partition)
    return {asset: sorted(partitions, key=str) for asset, partitions in found.items()}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_requested_runs_run(daemon, instance, tiny_clip_dir):
    """The sensor's requests, executed for real on the instance it reads: the first tick's run over all shards,
    the dataset run, then a new manifest's shard run and the dataset run again; no request in between."""
    data_dir = daemon.data_dir
    output = data_dir / "output" / "filtered_samples.jsonl"

    (all_shards,) = daemon.tick().run_requests
    result = execute(all_shards, instance, data_dir, tiny_clip_dir)
    assert materialized(result) == {"raw_samples": BUNDLED_SHARDS, "image_pair_stats": BUNDLED_SHARDS,
                                    "image_embeddings": BUNDLED_SHARDS}
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        "scores_finite_and_in_range", "one_row_per_sample", "embeddings_align_with_metadata"}
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS

    (dataset,) = daemon.tick().run_requests
    result = execute(dataset, instance, data_dir, tiny_clip_dir)
    assert materialized(result) == {"filtered_samples": [None], "similarity_report": [None]}
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        "kept_samples_satisfy_config", "every_sample_accounted_for", "every_manifest_readable"}
    filtered = result.asset_materializations_for_node("filtered_samples")[0].metadata
    assert filtered["total"].value == 13 and filtered["shards"].value == 2
    kept = read_jsonl(output)
    assert len(kept) == filtered["kept"].value
    assert all(0.0 <= row["__dj__stats__"]["image_pair_similarity"][0] <= 1.0 for row in kept)
    assert daemon.tick().run_requests == []

    write_manifest(data_dir / "raw" / "new.jsonl", [NEW_SAMPLE])
    (new_shard,) = daemon.tick().run_requests
    result = execute(new_shard, instance, data_dir, tiny_clip_dir)
    assert materialized(result) == {"raw_samples": ["new.jsonl"], "image_pair_stats": ["new.jsonl"],
                                    "image_embeddings": ["new.jsonl"]}
    stats = result.asset_materializations_for_node("image_pair_stats")[0].metadata
    assert (stats["dagster/row_count"].value, stats["status_ok"].value) == (1, 1)

    (dataset,) = daemon.tick().run_requests
    result = execute(dataset, instance, data_dir, tiny_clip_dir)
    filtered = result.asset_materializations_for_node("filtered_samples")[0].metadata
    assert filtered["total"].value == 14 and filtered["shards"].value == 3
    assert len(read_jsonl(output)) == filtered["kept"].value
    assert daemon.tick().run_requests == []
    assert [r.run_key for r in daemon.run_requests] == [
        "all-shards@generation-1", "dataset@generation-1", "new.jsonl@generation-2", "dataset@generation-2"]
