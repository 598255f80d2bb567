"""The new-data sensor: a new, changed or removed manifest under <data>/raw/ requests one run of pairfilter_job.

Its cursor holds every manifest's content hash plus a generation number, which is also the run key: a change is
acted on once (Dagster never launches two runs with the same run key from one sensor), and an unchanged folder
requests nothing, however often the sensor ticks. The first tick after the sensor is switched on sees every
existing manifest as new and requests one run for them.

While a run of pairfilter_job is queued or running, the sensor waits (see `unfinished_pipeline_runs`).

Stopped by default, like the schedule: switch it on under Automation in the UI (or `dagster sensor start
pairfilter_new_manifests`). The daemon (`dagster-daemon`, or `dagster dev`) must be running for it to tick.
"""

import json
import os

import dagster as dg

from ..core.manifest_changes import compare, fingerprint_manifests, still_being_written
from .resources import PairfilterStorage
from .schedules import pairfilter_job

INTERVAL_ENV_VAR = "PAIRFILTER_SENSOR_INTERVAL_SECONDS"
DEFAULT_INTERVAL_SECONDS = 30
SETTLE_SECONDS = 2.0
"""A manifest modified more recently than this may still be being copied: wait for the next tick."""


def sensor_interval_seconds() -> int:
    return int(os.environ.get(INTERVAL_ENV_VAR) or DEFAULT_INTERVAL_SECONDS)


def unfinished_pipeline_runs(instance: dg.DagsterInstance) -> list[str]:
    """Ids of queued or running runs of the job. Two overlapping runs would interleave their writes (one run's
    stats checked against the other's samples), so the sensor requests a run only when none is under way; the
    cursor is not advanced meanwhile, so a change made during a run is picked up on the first tick after it."""
    unfinished = [
        dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
    ]
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=pairfilter_job.name, statuses=unfinished), limit=1)
    return [run.run_id for run in runs]


def read_cursor(cursor: str | None) -> tuple[int, dict[str, str]]:
    state = json.loads(cursor) if cursor else {}
    return state.get("generation", 0), state.get("manifests", {})


@dg.sensor(
    job=pairfilter_job,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests one run of pairfilter_job when a manifest under `<data>/raw/` is added, changed or "
    f"removed (content hash, kept in the cursor). Ticks every {sensor_interval_seconds()} s "
    f"(env `{INTERVAL_ENV_VAR}`); off until switched on.",
)
def pairfilter_new_manifests(
    context: dg.SensorEvaluationContext, storage: PairfilterStorage
) -> dg.SensorResult | dg.SkipReason:
    generation, previous = read_cursor(context.cursor)
    unfinished = unfinished_pipeline_runs(context.instance)
    if unfinished:
        return dg.SkipReason(f"waiting for run {unfinished[0]} of {pairfilter_job.name} to finish")
    busy = still_being_written(storage.raw_dir, SETTLE_SECONDS)
    if busy:
        return dg.SkipReason(f"waiting for {', '.join(busy)} to stop changing")
    current = fingerprint_manifests(storage.raw_dir)
    changes = compare(previous, current)
    if not changes:
        return dg.SkipReason(f"no new or changed manifest among {len(current)} under {storage.raw_dir}")
    generation += 1
    cursor = json.dumps({"generation": generation, "manifests": current}, sort_keys=True)
    context.log.info(f"Manifests under {storage.raw_dir}: {changes.summary()}")
    if not current:
        return dg.SensorResult(skip_reason=f"every manifest was removed ({changes.summary()})", cursor=cursor)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"manifests-generation-{generation}",
                tags={"pairfilter/manifest_changes": changes.summary()[:200]},
            )
        ],
        cursor=cursor,
    )
