"""The project as people use it: `dagster dev` (webserver + daemon) on 127.0.0.1 over the real definitions, a
temporary DAGSTER_HOME (with the shipped dagster.yaml) and data folder, driven through the webserver's GraphQL API,
the daemon's backfills and sensor ticks, and headless Chromium (the test marked `browser`).

One server serves the whole module (starting it and running the pipeline cost most of the time), and the tests build
on each other in file order: shard partitions are registered as a person would in the UI, a backfill over all of
them ("Materialize all") and a launched run with thresholds run the pipeline, the sensor then starts from no
partitions and takes over; the restart test comes last because it restarts that server."""

import shutil
import time

import pytest
from dagster_graphql import DagsterGraphQLClient

from pairfilter_dagster.testing import PHOTOS

from .browser import chromium_page, require_chromium, skip_community_dialog
from .conftest import BUNDLED_DATA, write_manifest
from .dagster_dev import DagsterDev, wait_for

ASSETS = {
    "raw_samples": [],
    "image_pair_stats": ["raw_samples"],
    "filtered_samples": ["image_pair_stats"],
    "similarity_report": ["filtered_samples", "image_pair_stats"],
    "image_embeddings": ["image_pair_stats"],
}
SHARD_ASSETS = ["raw_samples", "image_pair_stats", "image_embeddings"]
BUNDLED_SHARDS = ["more/edge_cases.jsonl", "pairs.jsonl"]
SHARDS = "manifest_shards"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
CHECKS = {"scores_finite_and_in_range": True, "one_row_per_sample": True, "kept_samples_satisfy_config": True,
          "every_sample_accounted_for": True, "every_manifest_readable": True,
          "embeddings_align_with_metadata": True}
THRESHOLDS = {"min_score": 0.2, "max_score": 0.95}
SENSOR = "pairfilter_new_manifests"
RUN_TIMEOUT = 240

RUN_QUERY = """query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run {
  runId jobName status tags { key value }
  assetMaterializations { assetKey { path } partition metadataEntries { label __typename
    ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
    ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } ... on PathMetadataEntry { path }
    ... on TableColumnLineageMetadataEntry { lineage { columnName columnDeps { assetKey { path } columnName } } } } }
  eventConnection(afterCursor: null) { events { __typename
    ... on AssetCheckEvaluationEvent { evaluation { checkName success assetKey { path } } } } } } } }"""

TICKS_QUERY = """query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { ... on Sensor {
  sensorState { status ticks(limit: 100) { tickId status timestamp runIds runKeys skipReason error { message }
    dynamicPartitionsRequestResults { partitionsDefName partitionKeys skippedPartitionKeys type } } } } } }"""

PARTITIONS_QUERY = """query($key: AssetKeyInput!) { assetNodes(assetKeys: [$key]) { partitionKeys } }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("dagster-dev")
    data = root / "data"
    shutil.copytree(BUNDLED_DATA / "raw", data / "raw")
    shutil.copytree(PHOTOS, data / "images")
    dev = DagsterDev(root / "dagster_home", log_path=root / "dagster_dev.log", env={
        "PAIRFILTER_DATA_DIR": str(data),
        "PAIRFILTER_HF_CLIP": str(tiny_clip_dir),
        "PAIRFILTER_SENSOR_INTERVAL_SECONDS": "2",
        "HF_HUB_OFFLINE": "1",
    })
    dev.data_dir = data
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


def client(server) -> DagsterGraphQLClient:
    return DagsterGraphQLClient("127.0.0.1", port_number=server.port, timeout=30)


def wait_for_run(server, run_id: str) -> dict:
    """Poll until the run ends; the run's record as the webserver reports it."""
    def finished():
        run = server.graphql(RUN_QUERY, runId=run_id)["runOrError"]
        return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None
    run = wait_for(finished, timeout=RUN_TIMEOUT, what=f"run {run_id} to finish", every=1)
    assert run["status"] == "SUCCESS", server.log_tail()
    return run


def shard_partitions(server) -> list[str]:
    (node,) = server.graphql(PARTITIONS_QUERY, key={"path": ["raw_samples"]})["assetNodes"]
    return node["partitionKeys"]


def schedule_dry_run(server) -> dict:
    """The schedule, evaluated by the code server for 2026-11-25 03:00 UTC."""
    dry_run = server.graphql("""mutation($selector: ScheduleSelector!, $at: Float) {
        scheduleDryRun(selectorData: $selector, timestamp: $at) { ... on DryRunInstigationTick {
            evaluationResult { skipReason error { message } runRequests { runConfigYaml tags { key value } } } } } }""",
        selector=server.selector("scheduleName", "pairfilter_daily"), at=1795575600.0)
    evaluation = dry_run["scheduleDryRun"]["evaluationResult"]
    assert evaluation["error"] is None, evaluation
    return evaluation


@pytest.fixture(scope="module")
def shards(server) -> list[str]:
    """The bundled manifests registered as shard partitions through GraphQL, as "Add partition" in the UI does
    (the sensor is off). Before that, the schedule has nothing to run."""
    assert shard_partitions(server) == []
    assert "no shard partitions yet" in schedule_dry_run(server)["skipReason"]
    repository = server.repository_selector()
    for shard in BUNDLED_SHARDS:
        added = server.graphql("""mutation($repository: RepositorySelector!, $name: String!, $key: String!) {
            addDynamicPartition(repositorySelector: $repository, partitionsDefName: $name, partitionKey: $key) {
            __typename ... on AddDynamicPartitionSuccess { partitionKey } } }""",
                               repository=repository, name=SHARDS, key=shard)["addDynamicPartition"]
        assert added == {"__typename": "AddDynamicPartitionSuccess", "partitionKey": shard}
    assert shard_partitions(server) == BUNDLED_SHARDS
    return BUNDLED_SHARDS


def tags_of(run_or_request: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run_or_request["tags"]}


def materializations(run: dict, asset: str) -> list[dict]:
    """The asset's materializations in the run, in partition order: one per shard of a partitioned asset (each
    with the run's metadata), one for an unpartitioned asset."""
    events = [m for m in run["assetMaterializations"] if m["assetKey"]["path"] == [asset]]
    return sorted(events, key=lambda m: m["partition"] or "")


def materialization(run: dict, asset: str) -> dict:
    """The metadata of the asset's materialization in the run (the same on every shard's event)."""
    found = [{entry["label"]: entry for entry in m["metadataEntries"]} for m in materializations(run, asset)]
    assert found and all(f == found[0] for f in found), found
    return found[0]


def value(entry: dict):
    for field in ("intValue", "floatValue", "text", "mdStr", "path"):
        if field in entry:
            return entry[field]
    raise KeyError(entry)


def check_results(run: dict) -> dict[str, bool]:
    return {e["evaluation"]["checkName"]: e["evaluation"]["success"]
            for e in run["eventConnection"]["events"] if e["__typename"] == "AssetCheckEvaluationEvent"}


def test_asset_graph_lineage_partitions_and_automation_are_served(server, shards):
    data = server.graphql("""{ assetNodes { assetKey { path } dependencyKeys { path } groupName kinds description
        opVersion owners { ... on TeamAssetOwner { team } } metadataEntries { label } jobNames pools partitionKeys
        partitionDefinition { type name } backfillPolicy { policyType }
        assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }""")
    nodes = {node["assetKey"]["path"][0]: node for node in data["assetNodes"]}
    assert {name: sorted(d["path"][0] for d in node["dependencyKeys"]) for name, node in nodes.items()} == ASSETS
    for name, node in nodes.items():
        assert node["groupName"] == "pairfilter" and node["description"] and node["kinds"], name
        assert node["opVersion"] and node["owners"] == [{"team": "dataset-curation"}], name
        assert "pairfilter_job" in node["jobNames"], name
        assert ("shard_job" in node["jobNames"]) == (name in SHARD_ASSETS), name
        assert ("dataset_job" in node["jobNames"]) == (name not in SHARD_ASSETS), name
        if name in SHARD_ASSETS:
            assert node["partitionDefinition"] == {"type": "DYNAMIC", "name": SHARDS}, name
            assert node["partitionKeys"] == shards and node["backfillPolicy"] == {"policyType": "SINGLE_RUN"}, name
            assert node["pools"] == [], name  # each shard step writes files of its own shard only: no pool
        else:
            assert node["partitionDefinition"] is None and node["partitionKeys"] == [], name
    assert nodes["filtered_samples"]["pools"] == ["pairfilter_dataset"]  # one dataset build at a time
    definition_metadata = {e["label"] for e in nodes["filtered_samples"]["metadataEntries"]}
    assert {"dagster/column_schema", "dagster/column_lineage"} <= definition_metadata
    assert nodes["image_pair_stats"]["kinds"] == ["huggingface", "parquet", "pytorch"]
    assert nodes["raw_samples"]["kinds"] == ["json", "parquet"]
    assert nodes["filtered_samples"]["kinds"] == ["duckdb", "json", "parquet"]
    assert nodes["image_pair_stats"]["opVersion"].endswith(f"model={server.env['PAIRFILTER_HF_CLIP']}")
    checks = {check["name"] for node in nodes.values() for check in node["assetChecksOrError"].get("checks", [])}
    assert checks == set(CHECKS)

    repository = server.graphql("""{ repositoriesOrError { ... on RepositoryConnection { nodes {
        jobs { name } schedules { name cronSchedule scheduleState { status } } sensors { name sensorState { status }
        } } } } }""")
    (repo,) = repository["repositoriesOrError"]["nodes"]
    assert {"shard_job", "dataset_job", "pairfilter_job"} <= {job["name"] for job in repo["jobs"]}
    assert repo["schedules"] == [{"name": "pairfilter_daily", "cronSchedule": "0 3 * * *",
                                  "scheduleState": {"status": "STOPPED"}}]
    assert repo["sensors"] == [{"name": SENSOR, "sensorState": {"status": "STOPPED"}}]

    # Now that shards are registered: one run of pairfilter_job over all of them, with default config.
    evaluation = schedule_dry_run(server)
    (request,) = evaluation["runRequests"]
    assert evaluation["skipReason"] is None and request["runConfigYaml"].strip() == "{}"
    assert (tags_of(request)[RANGE_START], tags_of(request)[RANGE_END]) == (shards[0], shards[-1])


def launch_backfill(server, params: dict) -> str:
    launched = server.graphql("""mutation($params: LaunchBackfillParams!) {
        launchPartitionBackfill(backfillParams: $params) { __typename
        ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                              params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def wait_for_backfill(server, backfill_id: str) -> list[dict]:
    """Poll until the backfill (driven by the daemon, every 30 s) ends; its runs, in launch order."""
    def finished():
        backfill = server.graphql("""query($id: String!) { partitionBackfillOrError(backfillId: $id) {
            ... on PartitionBackfill { status runs { runId } } } }""", id=backfill_id)["partitionBackfillOrError"]
        return backfill if backfill["status"] not in ("REQUESTED", "CANCELING") else None
    backfill = wait_for(finished, timeout=RUN_TIMEOUT, what=f"backfill {backfill_id} to finish", every=1)
    assert backfill["status"] == "COMPLETED_SUCCESS", server.log_tail()
    return [wait_for_run(server, run["runId"]) for run in reversed(backfill["runs"])]


@pytest.fixture(scope="module")
def backfill(server, shards) -> dict:
    """"Materialize all" as the UI launches it: a backfill of every asset over all shards. The shard assets'
    single-run policy makes one run over every shard; the dataset is built in a run after it."""
    runs = wait_for_backfill(server, launch_backfill(server, {
        "assetSelection": [{"path": [asset]} for asset in ASSETS], "allPartitions": True}))
    return {"runs": runs, "filtered": (server.data_dir / "output" / "filtered_samples.jsonl").read_bytes()}


def test_a_backfill_over_all_shards_is_one_run_of_them_then_the_dataset(server, shards, backfill):
    by_asset = {asset: [run for run in backfill["runs"] if materializations(run, asset)] for asset in ASSETS}
    (shard_run,) = by_asset["raw_samples"]
    assert by_asset["image_pair_stats"] == [shard_run]  # one run scored every shard: the model loaded once
    assert by_asset["image_embeddings"] == [shard_run]
    assert (tags_of(shard_run)[RANGE_START], tags_of(shard_run)[RANGE_END]) == (shards[0], shards[-1])
    for asset in SHARD_ASSETS:
        assert [m["partition"] for m in materializations(shard_run, asset)] == sorted(shards)
    (dataset_run,) = by_asset["filtered_samples"]
    assert by_asset["similarity_report"] == [dataset_run] and len(backfill["runs"]) == 2
    assert [m["partition"] for m in materializations(dataset_run, "filtered_samples")] == [None]

    stats = materialization(shard_run, "image_pair_stats")
    assert value(stats["dagster/row_count"]) == 13 and value(stats["status_ok"]) == 9
    assert value(stats["shards"]) == 2 and value(stats["images_embedded"]) > 0
    assert value(stats["images_per_second"]) > 0
    filtered = materialization(dataset_run, "filtered_samples")
    assert value(filtered["total"]) == 13 and value(filtered["shards"]) == 2
    assert len(backfill["filtered"].splitlines()) == value(filtered["kept"])
    assert {**check_results(shard_run), **check_results(dataset_run)} == CHECKS


@pytest.fixture(scope="module")
def launched_run(server, shards, backfill) -> dict:
    """pairfilter_job launched through the webserver over all shards (the range tags a single-run backfill and the
    schedule use) with thresholds as run config, dequeued by the daemon."""
    run_id = client(server).submit_job_execution(
        "pairfilter_job", run_config={"ops": {"filtered_samples": {"config": THRESHOLDS}}},
        tags={RANGE_START: shards[0], RANGE_END: shards[-1]},
    )
    return wait_for_run(server, run_id)


def test_launched_run_records_metadata_lineage_and_check_results(server, shards, backfill, launched_run):
    for asset in SHARD_ASSETS:
        assert [m["partition"] for m in materializations(launched_run, asset)] == sorted(shards)
    stats = materialization(launched_run, "image_pair_stats")
    assert value(stats["dagster/row_count"]) == 13 and value(stats["status_ok"]) == 9
    assert value(stats["status_missing_image"]) == 1
    assert -1 <= value(stats["similarity_median"]) <= 1
    assert value(stats["cache_hits"]) > 0 and value(stats["images_embedded"]) == 0  # the backfill embedded them
    backfill_stats = materialization(backfill["runs"][0], "image_pair_stats")
    assert value(stats["similarity_median"]) == value(backfill_stats["similarity_median"])  # same scores

    filtered = materialization(launched_run, "filtered_samples")
    assert (value(filtered["min_score"]), value(filtered["max_score"])) == (0.2, 0.95)
    kept = value(filtered["kept"])
    assert value(filtered["kept_ratio"]) == pytest.approx(kept / 13, abs=1e-4)
    lineage = {c["columnName"]: c["columnDeps"] for c in filtered["dagster/column_lineage"]["lineage"]}
    assert {"assetKey": {"path": ["image_pair_stats"]}, "columnName": "image_pair_similarity"} in lineage[
        "image_pair_similarity"]

    report = materialization(launched_run, "similarity_report")
    assert value(report["scored_pairs"]) == 9 and value(report["kept_samples"]) == kept
    assert value(report["histogram"]).startswith("![histogram of image_pair_similarity")
    assert value(report["report_dir"]) == str(server.data_dir / "output" / "report")
    assert check_results(launched_run) == CHECKS


def sensor_ticks(server, since: float = 0) -> list[dict]:
    state = server.graphql(TICKS_QUERY, selector=server.selector("sensorName", SENSOR))["sensorOrError"]
    ticks = sorted(state["sensorState"]["ticks"], key=lambda tick: tick["timestamp"])
    return [t for t in ticks if t["timestamp"] > since]


def wait_for_tick_with_runs(server, since: float, what: str) -> dict:
    """The first finished tick after `since` that requested runs (ticks before it must have requested none)."""
    def tick_with_runs():
        finished = [t for t in sensor_ticks(server, since) if t["status"] != "STARTED"]
        assert not any(t["error"] for t in finished), finished
        return next((t for t in finished if t["runIds"]), None)
    return wait_for(tick_with_runs, timeout=90, what=what)


def partition_requests(tick: dict) -> list[tuple[str, list[str]]]:
    return [(r["type"], r["partitionKeys"]) for r in tick["dynamicPartitionsRequestResults"]
            if r["partitionsDefName"] == SHARDS]


def test_daemon_runs_the_sensor_for_new_shards_only_then_the_dataset(server, shards, backfill, launched_run):
    # Start as a fresh deployment would: manifests on disk, no partitions (deleted as the UI deletes them).
    deleted = server.graphql("""mutation($repository: RepositorySelector!, $name: String!, $keys: [String!]!) {
        deleteDynamicPartitions(repositorySelector: $repository, partitionsDefName: $name, partitionKeys: $keys) {
        __typename } }""", repository=server.repository_selector(), name=SHARDS, keys=shards)["deleteDynamicPartitions"]
    assert deleted == {"__typename": "DeleteDynamicPartitionsSuccess"} and shard_partitions(server) == []

    selector = server.selector("sensorName", SENSOR)
    started_at = time.time()
    started = server.graphql("""mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
        ... on Sensor { sensorState { status } } } }""", selector=selector)
    assert started["startSensor"]["sensorState"]["status"] == "RUNNING"
    try:
        # First tick: every manifest gets its partition, and one run covers all shards.
        first = wait_for_tick_with_runs(server, started_at, "the first sensor tick with a run")
        assert partition_requests(first) == [("ADD_PARTITIONS", BUNDLED_SHARDS)]
        assert first["runKeys"] == ["all-shards@generation-1"]
        (all_shards,) = [wait_for_run(server, run_id) for run_id in first["runIds"]]
        assert shard_partitions(server) == BUNDLED_SHARDS
        assert all_shards["jobName"] == "shard_job"
        assert (tags_of(all_shards)[RANGE_START], tags_of(all_shards)[RANGE_END]) == tuple(BUNDLED_SHARDS)
        for asset in SHARD_ASSETS:
            assert [m["partition"] for m in materializations(all_shards, asset)] == BUNDLED_SHARDS
        # Once it has finished: the dataset run, with the same result as "Materialize all".
        dataset = wait_for_tick_with_runs(server, first["timestamp"], "the sensor's dataset run")
        assert dataset["runKeys"] == ["dataset@generation-1"] and partition_requests(dataset) == []
        (dataset_run,) = [wait_for_run(server, run_id) for run_id in dataset["runIds"]]
        assert dataset_run["jobName"] == "dataset_job" and check_results(dataset_run) == {
            "kept_samples_satisfy_config": True, "every_sample_accounted_for": True, "every_manifest_readable": True}
        assert (server.data_dir / "output" / "filtered_samples.jsonl").read_bytes() == backfill["filtered"]
        idle_ticks_after(server, time.time(), count=2)

        write_manifest(server.data_dir / "raw" / "dropped" / "new.jsonl", [
            {"text": "a newly dropped pair", "images": ["../../images/cat.jpg", "../../images/img8.jpg"]}])
        dropped_at = time.time()
        second = wait_for_tick_with_runs(server, dropped_at, "a tick for the dropped manifest")
        assert partition_requests(second) == [("ADD_PARTITIONS", ["dropped/new.jsonl"])]
        assert second["runKeys"] == ["dropped/new.jsonl@generation-2"]
        (new_shard,) = [wait_for_run(server, run_id) for run_id in second["runIds"]]
        assert new_shard["jobName"] == "shard_job" and tags_of(new_shard)["dagster/partition"] == "dropped/new.jsonl"
        for asset in SHARD_ASSETS:  # the new shard only: the others are unchanged
            assert [m["partition"] for m in materializations(new_shard, asset)] == ["dropped/new.jsonl"]
        assert value(materialization(new_shard, "raw_samples")["dagster/row_count"]) == 1
        dataset = wait_for_tick_with_runs(server, second["timestamp"], "the dataset run after the new shard")
        assert dataset["runKeys"] == ["dataset@generation-2"]
        (dataset_run,) = [wait_for_run(server, run_id) for run_id in dataset["runIds"]]
        filtered = materialization(dataset_run, "filtered_samples")
        assert (value(filtered["total"]), value(filtered["shards"])) == (14, 3)
        idle_ticks_after(server, time.time(), count=3)
    finally:
        stop_sensor(server, selector)

    with_runs = [t for t in sensor_ticks(server, started_at) if t["runIds"]]
    assert [t["runKeys"] for t in with_runs] == [
        ["all-shards@generation-1"], ["dataset@generation-1"], ["dropped/new.jsonl@generation-2"],
        ["dataset@generation-2"]]
    sensor_runs = server.graphql("""query($sensor: String!) { runsOrError(filter: {tags: [
        {key: "dagster/sensor_name", value: $sensor}]}) { ... on Runs { results { runId } } } }""",
                                 sensor=SENSOR)["runsOrError"]["results"]
    assert sorted(r["runId"] for r in sensor_runs) == sorted(t["runIds"][0] for t in with_runs)
    assert shard_partitions(server) == [*BUNDLED_SHARDS, "dropped/new.jsonl"]


def idle_ticks_after(server, since: float, count: int) -> None:
    """Wait for `count` finished ticks after `since` over the unchanged folder: each skipped, none with a run.
    (A tick still being evaluated shows as STARTED; it is judged once it has finished.)"""
    def finished_ticks():
        return [t for t in sensor_ticks(server, since) if t["status"] != "STARTED"]

    def idle():
        ticks = finished_ticks()
        assert not any(t["runIds"] or t["dynamicPartitionsRequestResults"] for t in ticks), ticks
        return len(ticks) >= count
    wait_for(idle, timeout=60, what=f"{count} sensor ticks")
    for tick in finished_ticks():
        assert tick["status"] == "SKIPPED" and "no new or changed manifest" in tick["skipReason"], tick


def stop_sensor(server, selector: dict) -> None:
    state = server.graphql("""query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
        ... on Sensor { sensorState { id } } } }""", selector=selector)["sensorOrError"]["sensorState"]
    stopped = server.graphql("""mutation($id: String!) { stopSensor(id: $id) {
        ... on StopSensorMutationResult { instigationState { status } } } }""", id=state["id"])
    assert stopped["stopSensor"]["instigationState"]["status"] == "STOPPED"


def latest_metadata(server, asset: str) -> dict:
    """Numeric metadata of the asset's latest materialization, as the webserver reports it."""
    data = server.graphql("""query($key: AssetKeyInput!) { assetNodes(assetKeys: [$key]) {
        assetMaterializations(limit: 1) { metadataEntries { label ... on IntMetadataEntry { intValue } } } } }""",
                          key={"path": [asset]})
    (node,) = data["assetNodes"]
    (event,) = node["assetMaterializations"]
    return {e["label"]: e["intValue"] for e in event["metadataEntries"] if "intValue" in e}


@pytest.mark.browser
def test_browser_shows_the_graph_the_shards_the_stats_metadata_and_the_report_pictures(
    server, shards, launched_run, tmp_path_factory
):
    require_chromium()
    from playwright.sync_api import expect

    shots = tmp_path_factory.mktemp("screenshots")
    with chromium_page(shots / "chromium-profile") as (page, blocked):
        page.goto(f"{server.url}/asset-groups")
        skip_community_dialog(page)
        for name in ASSETS:  # one node per asset in the graph, beside the list in the sidebar
            expect(page.get_by_text(name, exact=True)).not_to_have_count(0)
            expect(page.get_by_text(name, exact=True).last).to_be_visible()
        page.screenshot(path=shots / "asset_graph.png")

        # "Materialize all" offers a backfill over the shards ("All" of them; the backfill test launches one).
        page.get_by_role("button", name="Materialize all").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text(f"Launch runs to materialize {len(ASSETS)} assets")).to_be_visible()
        dialog.get_by_role("button", name="All", exact=True).click()
        expect(dialog.get_by_text(f"{len(shard_partitions(server))} partitions", exact=True)).to_be_visible()
        expect(dialog.get_by_role("button", name="Launch backfill")).to_be_enabled()
        page.screenshot(path=shots / "materialize_all.png")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_have_count(0)

        page.goto(f"{server.url}/assets/raw_samples?view=partitions")  # one partition per shard
        for shard in shard_partitions(server):
            expect(page.get_by_text(shard, exact=True).first).to_be_visible()
        page.screenshot(path=shots / "raw_samples_partitions.png")

        page.goto(f"{server.url}/assets/image_pair_stats")
        status_ok = page.locator("tr").filter(has=page.get_by_text("status_ok", exact=True))
        expect(status_ok.locator("td").last).to_have_text(str(latest_metadata(server, "image_pair_stats")["status_ok"]))
        for text in ("dataset-curation", "pairfilter_new_manifests", "image_pair_similarity"):
            expect(page.get_by_text(text, exact=True).first).to_be_visible()
        page.screenshot(path=shots / "image_pair_stats.png")
        status_ok.scroll_into_view_if_needed()
        page.screenshot(path=shots / "image_pair_stats_metadata.png")

        page.goto(f"{server.url}/assets/similarity_report")
        histogram = page.locator("tr").filter(has=page.get_by_text("histogram", exact=True))
        histogram.get_by_text("[Show Markdown]").click()
        picture = page.get_by_role("dialog").locator("img[src^='data:image/png']")
        expect(picture).to_be_visible()
        assert picture.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [900, 360]
        page.screenshot(path=shots / "similarity_report_histogram.png")
    print(f"screenshots in {shots}; requests blocked (not loopback): {blocked}")
    shutil.copy(shots / "image_pair_stats_metadata.png", "/tmp/pairfilter-ui-screenshot.png")
    shutil.copy(shots / "similarity_report_histogram.png", "/tmp/pairfilter-ui-report-screenshot.png")


def test_runs_survive_a_restart_and_a_new_model_marks_the_stats_table_stale(
    server, shards, backfill, launched_run, tiny_clip_dir, tmp_path_factory
):
    partitions = shard_partitions(server)
    # Restart with the same DAGSTER_HOME, pointing PAIRFILTER_HF_CLIP at another (copied) checkpoint.
    other_model = tmp_path_factory.mktemp("other-model") / "clip"
    shutil.copytree(tiny_clip_dir, other_model)
    server.env["PAIRFILTER_HF_CLIP"] = str(other_model)
    server.restart()

    assert shard_partitions(server) == partitions  # the shard partitions are kept in the instance
    run = server.graphql(RUN_QUERY, runId=launched_run["runId"])["runOrError"]
    assert run["__typename"] == "Run" and run["status"] == "SUCCESS"
    assert {(m["assetKey"]["path"][0], m["partition"]) for m in run["assetMaterializations"]} == {
        *((asset, shard) for asset in SHARD_ASSETS for shard in shards), ("filtered_samples", None),
        ("similarity_report", None)}
    for backfill_run in backfill["runs"]:
        assert server.graphql(RUN_QUERY, runId=backfill_run["runId"])["runOrError"]["status"] == "SUCCESS"

    nodes = server.graphql("""query($keys: [AssetKeyInput!]!, $partitions: [String!]!) {
        assetNodes(assetKeys: $keys) { assetKey { path } opVersion staleStatusByPartition(partitions: $partitions)
        staleCausesByPartition(partitions: $partitions) { key { path } category }
        assetMaterializations(limit: 1) { runId } } }""",
                           keys=[{"path": [asset]} for asset in SHARD_ASSETS], partitions=partitions)["assetNodes"]
    nodes = {node["assetKey"]["path"][0]: node for node in nodes}
    assert all(node["assetMaterializations"] for node in nodes.values())
    assert nodes["image_pair_stats"]["opVersion"] == f"1;model={other_model}"
    assert nodes["raw_samples"]["staleStatusByPartition"] == ["FRESH"] * len(partitions)
    assert nodes["image_pair_stats"]["staleStatusByPartition"] == ["STALE"] * len(partitions)
    for causes in nodes["image_pair_stats"]["staleCausesByPartition"]:
        assert {cause["category"] for cause in causes} == {"CODE"}
