"""The daily schedule (off until switched on in the UI)."""

import dagster as dg

from .jobs import PipelineJobs
from .partitions import all_shards_tags, registered_shards
from .spec import PipelineSpec


def build_schedule(spec: PipelineSpec, jobs: PipelineJobs) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=spec.name("pairfilter_daily"),
        job=jobs.pairfilter_job,
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-runs the pipeline over every registered shard every day at 03:00 UTC, in one run; "
        "unchanged data costs no model work once cached. New manifests get their partition from the sensor or "
        "`pairfilter-materialize`.",
    )
    def pairfilter_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        shards = registered_shards(context.instance, spec.partitions)
        if not shards:
            return dg.SkipReason("no shard partitions yet: switch on the sensor or run pairfilter-materialize")
        return dg.RunRequest(tags=all_shards_tags(shards))

    return pairfilter_daily
