"""The new-data sensor: keeps the shard partitions in step with the manifests under <data>/raw/, runs the shards
that are new or changed, then rebuilds the filtered dataset.

One tick at a time:
1. A new manifest gets a partition, a removed one loses its partition; each new or changed shard gets a run of
   `shard_job` for that partition (when every shard needs one, as on the first tick, a single run covers them all,
   loading the model once). A removed shard needs no run.
2. Once those runs have finished, the next tick requests one run of `dataset_job`, which drops the rows of removed
   shards and rebuilds the filtered dataset and the report from every shard.

The cursor holds every manifest's content hash, a generation number (part of each run key: a change is acted on
once, and an unchanged folder requests nothing however often the sensor ticks) and whether the dataset still has to
be rebuilt. While any run of the pipeline's jobs is queued or running, the sensor waits and keeps its cursor, so a
change made meanwhile is picked up by the first tick after it. A failed shard run does not stop the dataset run:
the dataset is built from the shards' last good rows, and the shard shows as failed in the UI.

Stopped by default, like the schedule: switch it on under Automation in the UI (or `dagster sensor start
pairfilter_new_manifests`). The daemon (`dagster-daemon`, or `dagster dev`) must be running for it to tick.
"""

import json
import os

import dagster as dg

from ..core.ingest.changes import compare, fingerprint_manifests, still_being_written
from .jobs import PipelineJobs
from .partitions import all_shards_tags, registered_shards, shard_partition_changes
from .spec import PipelineSpec

INTERVAL_ENV_VAR = "PAIRFILTER_SENSOR_INTERVAL_SECONDS"
DEFAULT_INTERVAL_SECONDS = 30
SETTLE_SECONDS = 2.0
"""A manifest modified more recently than this may still be being copied: wait for the next tick."""
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
]


def sensor_interval_seconds() -> int:
    return int(os.environ.get(INTERVAL_ENV_VAR) or DEFAULT_INTERVAL_SECONDS)


def unfinished_pipeline_runs(instance: dg.DagsterInstance, job_names: set[str], assets: set[dg.AssetKey]) -> list[str]:
    """Ids of queued or running runs that write the pipeline's tables: runs of its jobs, and runs the UI or a
    backfill launches for its assets (as `__ASSET_JOB`). The dataset must be built after the shard runs, and a
    tick must not request a shard run while an earlier one for it is still going."""
    return [
        run.run_id
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))
        if run.job_name in job_names or (run.asset_selection or set()) & assets
    ]


def read_cursor(cursor: str | None) -> dict:
    state = json.loads(cursor) if cursor else {}
    return {"generation": state.get("generation", 0), "manifests": state.get("manifests", {}),
            "dataset_pending": state.get("dataset_pending", False)}


def write_cursor(generation: int, manifests: dict[str, str], dataset_pending: bool) -> str:
    return json.dumps(
        {"generation": generation, "manifests": manifests, "dataset_pending": dataset_pending}, sort_keys=True
    )


def shard_run_requests(
    shard_job: str, shards: list[str], partitions_after: list[str], generation: int, reason: str,
    one_run_each: bool = False,
) -> list[dg.RunRequest]:
    """One run per shard; or, when every partition needs a run, one run over all of them, unless some manifest
    cannot be read: its own run fails saying why, where a run over all would mark it materialized."""
    tags = {"pairfilter/manifest_changes": reason[:200]}
    if len(shards) > 1 and set(shards) == set(partitions_after) and not one_run_each:
        return [dg.RunRequest(job_name=shard_job, run_key=f"all-shards@generation-{generation}",
                              tags={**tags, **all_shards_tags(partitions_after)})]
    return [
        dg.RunRequest(job_name=shard_job, partition_key=shard, run_key=f"{shard}@generation-{generation}", tags=tags)
        for shard in shards
    ]


def build_sensor(spec: PipelineSpec, jobs: PipelineJobs) -> dg.SensorDefinition:
    job_names = {job.name for job in jobs.all}
    assets = {spec.key(name) for name in ("raw_samples", "image_pair_stats", "filtered_samples")}
    partitions = spec.partitions

    @dg.sensor(
        name=spec.name("pairfilter_new_manifests"),
        jobs=[jobs.shard_job, jobs.dataset_job],
        minimum_interval_seconds=sensor_interval_seconds(),
        default_status=dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={spec.storage_key},
        description="Adds a shard partition for each new manifest under `<data>/raw/` (deletes it for a removed "
        "one), runs shard_job for new or changed shards (content hash, kept in the cursor), then dataset_job once "
        f"they are done. Ticks every {sensor_interval_seconds()} s (env `{INTERVAL_ENV_VAR}`); off until switched "
        "on.",
    )
    def pairfilter_new_manifests(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        storage = spec.storage_of(context)
        try:
            raw_dir = storage.raw_dir
            storage.check_data_dir()
            listing = storage.list_shards()
        except ValueError as exc:
            return dg.SkipReason(str(exc))
        state = read_cursor(context.cursor)
        generation = state["generation"]
        unfinished = unfinished_pipeline_runs(context.instance, job_names, assets)
        if unfinished:
            return dg.SkipReason(f"waiting for run {unfinished[0]} to finish")
        busy = still_being_written(listing, SETTLE_SECONDS)
        if busy:
            return dg.SkipReason(f"waiting for {', '.join(busy)} to stop changing")

        for name, problem in listing.problems.items():
            context.log.warning(f"{name}: {problem}")
        current = fingerprint_manifests(listing, state["manifests"])
        changes = compare(state["manifests"], current)
        to_add, to_delete = shard_partition_changes(context.instance, partitions, listing)
        partition_requests = [
            *([partitions.build_add_request(to_add)] if to_add else []),
            *([partitions.build_delete_request(to_delete)] if to_delete else []),
        ]
        shards = sorted(set(changes.added) | set(changes.changed) | set(to_add))
        if shards or changes.removed or to_delete:
            generation += 1
            reason = changes.summary() if changes else "; ".join(
                f"partitions {label}: {', '.join(keys)}"
                for label, keys in (("added", to_add), ("deleted", to_delete)) if keys
            )
            context.log.info(f"Manifests under {raw_dir}: {reason}")
            partitions_after = [p for p in registered_shards(context.instance, partitions) if p not in to_delete]
            return dg.SensorResult(
                run_requests=shard_run_requests(jobs.shard_job.name, shards, partitions_after + to_add, generation,
                                                reason, one_run_each=bool(listing.problems)),
                dynamic_partitions_requests=partition_requests,  # type: ignore[arg-type]
                cursor=write_cursor(generation, current, dataset_pending=True),
            )
        if state["dataset_pending"]:
            return dg.SensorResult(
                run_requests=[dg.RunRequest(job_name=jobs.dataset_job.name, run_key=f"dataset@generation-{generation}")],
                cursor=write_cursor(generation, current, dataset_pending=False),
            )
        return dg.SkipReason(f"no new or changed manifest among {len(current)} under {raw_dir}")

    return pairfilter_new_manifests
