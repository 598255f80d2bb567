"""The project as people use it: `dagster dev` (webserver + daemon) on 127.0.0.1 over the real definitions, a
temporary DAGSTER_HOME and data folder, driven through the webserver's GraphQL API, the daemon's sensor ticks and
headless Chromium (the test marked `browser`).

One server serves the whole module (starting it and running the pipeline cost most of the time); the restart test
comes last because it restarts that server."""

import shutil
import time

import pytest
from dagster_graphql import DagsterGraphQLClient

from .browser import chromium_page, require_chromium, skip_community_dialog
from .conftest import BUNDLED_DATA, PHOTOS, write_manifest
from .dagster_dev import DagsterDev, wait_for

ASSETS = {
    "raw_samples": [],
    "image_pair_stats": ["raw_samples"],
    "filtered_samples": ["image_pair_stats"],
    "similarity_report": ["filtered_samples", "image_pair_stats"],
}
THRESHOLDS = {"min_score": 0.2, "max_score": 0.95}
SENSOR = "pairfilter_new_manifests"
RUN_TIMEOUT = 240

RUN_QUERY = """query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run {
  runId status tags { key value }
  assetMaterializations { assetKey { path } metadataEntries { label __typename
    ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
    ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } ... on PathMetadataEntry { path }
    ... on TableColumnLineageMetadataEntry { lineage { columnName columnDeps { assetKey { path } columnName } } } } }
  eventConnection(afterCursor: null) { events { __typename
    ... on AssetCheckEvaluationEvent { evaluation { checkName success assetKey { path } } } } } } } }"""

TICKS_QUERY = """query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { ... on Sensor {
  sensorState { status ticks(limit: 50) { tickId status timestamp runIds skipReason } } } } }"""


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


@pytest.fixture(scope="module")
def launched_run(server) -> dict:
    """pairfilter_job launched through the webserver with thresholds as run config, dequeued by the daemon."""
    run_id = client(server).submit_job_execution(
        "pairfilter_job", run_config={"ops": {"filtered_samples": {"config": THRESHOLDS}}}
    )
    return wait_for_run(server, run_id)


def materialization(run: dict, asset: str) -> dict:
    (event,) = [m for m in run["assetMaterializations"] if m["assetKey"]["path"] == [asset]]
    return {entry["label"]: entry for entry in event["metadataEntries"]}


def value(entry: dict):
    for field in ("intValue", "floatValue", "text", "mdStr", "path"):
        if field in entry:
            return entry[field]
    raise KeyError(entry)


def test_asset_graph_lineage_and_automation_are_served(server):
    data = server.graphql("""{ assetNodes { assetKey { path } dependencyKeys { path } groupName kinds description
        opVersion owners { ... on TeamAssetOwner { team } } metadataEntries { label } jobNames
        assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }""")
    nodes = {node["assetKey"]["path"][0]: node for node in data["assetNodes"]}
    assert {name: sorted(d["path"][0] for d in node["dependencyKeys"]) for name, node in nodes.items()} == ASSETS
    for name, node in nodes.items():
        assert node["groupName"] == "pairfilter" and node["description"] and node["kinds"], name
        assert node["opVersion"] and node["owners"] == [{"team": "dataset-curation"}], name
        assert "pairfilter_job" in node["jobNames"], name
    definition_metadata = {e["label"] for e in nodes["filtered_samples"]["metadataEntries"]}
    assert {"dagster/column_schema", "dagster/column_lineage"} <= definition_metadata
    assert nodes["image_pair_stats"]["kinds"] == ["duckdb", "huggingface", "pytorch"]
    assert nodes["image_pair_stats"]["opVersion"].endswith(f"model={server.env['PAIRFILTER_HF_CLIP']}")
    checks = {check["name"] for node in nodes.values() for check in node["assetChecksOrError"].get("checks", [])}
    assert checks == {"scores_finite_and_in_range", "one_row_per_sample", "kept_samples_satisfy_config",
                      "every_sample_accounted_for"}

    repository = server.graphql("""{ repositoriesOrError { ... on RepositoryConnection { nodes {
        schedules { name cronSchedule scheduleState { status } } sensors { name sensorState { status } } } } } }""")
    (repo,) = repository["repositoriesOrError"]["nodes"]
    assert repo["schedules"] == [{"name": "pairfilter_daily", "cronSchedule": "0 3 * * *",
                                  "scheduleState": {"status": "STOPPED"}}]
    assert repo["sensors"] == [{"name": SENSOR, "sensorState": {"status": "STOPPED"}}]

    # The schedule, evaluated by the code server for 2026-11-25 03:00 UTC: one run of the whole job.
    dry_run = server.graphql("""mutation($selector: ScheduleSelector!, $at: Float) {
        scheduleDryRun(selectorData: $selector, timestamp: $at) { ... on DryRunInstigationTick {
            evaluationResult { skipReason error { message } runRequests { runConfigYaml } } } } }""",
        selector=server.selector("scheduleName", "pairfilter_daily"), at=1795575600.0)
    evaluation = dry_run["scheduleDryRun"]["evaluationResult"]
    assert evaluation["error"] is None and evaluation["skipReason"] is None
    assert len(evaluation["runRequests"]) == 1  # of the schedule's job, pairfilter_job, with default config


def test_launched_run_records_metadata_lineage_and_check_results(server, launched_run):
    stats = materialization(launched_run, "image_pair_stats")
    assert value(stats["dagster/row_count"]) == 13 and value(stats["status_ok"]) == 9
    assert value(stats["status_missing_image"]) == 1 and value(stats["images_per_second"]) > 0
    assert -1 <= value(stats["similarity_median"]) <= 1

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

    checks = {e["evaluation"]["checkName"]: e["evaluation"]["success"]
              for e in launched_run["eventConnection"]["events"] if e["__typename"] == "AssetCheckEvaluationEvent"}
    assert checks == {"scores_finite_and_in_range": True, "one_row_per_sample": True,
                      "kept_samples_satisfy_config": True, "every_sample_accounted_for": True}


def sensor_ticks(server) -> list[dict]:
    state = server.graphql(TICKS_QUERY, selector=server.selector("sensorName", SENSOR))["sensorOrError"]
    return sorted(state["sensorState"]["ticks"], key=lambda tick: tick["timestamp"])


def test_daemon_runs_the_sensor_once_per_new_manifest_and_never_for_an_unchanged_folder(server, launched_run):
    selector = server.selector("sensorName", SENSOR)
    started = server.graphql("""mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
        ... on Sensor { sensorState { status } } } }""", selector=selector)
    assert started["startSensor"]["sensorState"]["status"] == "RUNNING"
    try:
        # First tick: the manifests already there are new to the sensor: one run for them.
        (first,) = wait_for(lambda: [t for t in sensor_ticks(server) if t["runIds"]], timeout=90,
                            what="the first sensor tick")
        wait_for_run(server, first["runIds"][0])
        idle_ticks_after(server, time.time(), count=2)

        write_manifest(server.data_dir / "raw" / "dropped" / "new.jsonl", [
            {"text": "a newly dropped pair", "images": ["../../images/cat.jpg", "../../images/img8.jpg"]}])
        dropped_at = time.time()
        (second,) = wait_for(lambda: [t for t in sensor_ticks(server) if t["runIds"] and t["timestamp"] > dropped_at],
                             timeout=90, what="a tick for the dropped manifest")
        wait_for_run(server, second["runIds"][0])
        idle_ticks_after(server, time.time(), count=3)
    finally:
        stop_sensor(server, selector)

    with_runs = [t for t in sensor_ticks(server) if t["runIds"]]
    assert [t["runIds"] for t in with_runs] == [first["runIds"], second["runIds"]]  # one run per change, no more
    runs = [server.graphql(RUN_QUERY, runId=t["runIds"][0])["runOrError"] for t in with_runs]
    changes = [{tag["key"]: tag["value"] for tag in run["tags"]}["pairfilter/manifest_changes"] for run in runs]
    assert changes == ["added: more/edge_cases.jsonl, pairs.jsonl", "added: dropped/new.jsonl"]
    assert value(materialization(runs[1], "raw_samples")["manifests_read"]) == 3
    assert value(materialization(runs[1], "raw_samples")["dagster/row_count"]) == 14


def idle_ticks_after(server, since: float, count: int) -> None:
    """Wait for `count` finished ticks after `since` over the unchanged folder: each skipped, none with a run.
    (A tick still being evaluated shows as STARTED; it is judged once it has finished.)"""
    def finished_ticks():
        return [t for t in sensor_ticks(server) if t["timestamp"] > since and t["status"] != "STARTED"]

    def idle():
        ticks = finished_ticks()
        assert not any(t["runIds"] for t in ticks), ticks
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
def test_browser_shows_the_graph_the_stats_metadata_and_the_report_pictures(server, launched_run, tmp_path_factory):
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
    server, launched_run, tiny_clip_dir, tmp_path_factory
):
    # Restart with the same DAGSTER_HOME, pointing PAIRFILTER_HF_CLIP at another (copied) checkpoint.
    other_model = tmp_path_factory.mktemp("other-model") / "clip"
    shutil.copytree(tiny_clip_dir, other_model)
    server.env["PAIRFILTER_HF_CLIP"] = str(other_model)
    server.restart()

    run = server.graphql(RUN_QUERY, runId=launched_run["runId"])["runOrError"]
    assert run["__typename"] == "Run" and run["status"] == "SUCCESS"
    assert {m["assetKey"]["path"][0] for m in run["assetMaterializations"]} == set(ASSETS)

    nodes = server.graphql("""{ assetNodes { assetKey { path } opVersion staleStatus
        staleCauses { key { path } category } assetMaterializations(limit: 1) { runId } } }""")["assetNodes"]
    nodes = {node["assetKey"]["path"][0]: node for node in nodes}
    assert all(node["assetMaterializations"] for node in nodes.values())
    assert nodes["image_pair_stats"]["opVersion"] == f"1;model={other_model}"
    assert nodes["raw_samples"]["staleStatus"] == "FRESH"
    assert nodes["image_pair_stats"]["staleStatus"] == "STALE"
    assert {cause["category"] for cause in nodes["image_pair_stats"]["staleCauses"]} == {"CODE"}
