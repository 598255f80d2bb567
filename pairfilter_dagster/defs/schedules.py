"""The jobs, and the daily schedule (off until switched on in the UI).

- `shard_job`: raw_samples and image_pair_stats of one shard (what the new-data sensor runs per changed manifest),
  or of a range of shards in one run;
- `dataset_job`: the filtered dataset from every shard, and the threshold report;
- `pairfilter_job`: all four, over every shard in one run (the schedule, and `pairfilter-materialize`)."""

import dagster as dg

from .assets import filtered_samples, image_pair_stats, raw_samples
from .partitions import all_shards_tags, registered_shards
from .report import similarity_report

shard_job = dg.define_asset_job(
    name="shard_job",
    selection=dg.AssetSelection.assets(raw_samples, image_pair_stats),
    description="Ingest and score the shards (manifests) the run is for; checks included.",
)

dataset_job = dg.define_asset_job(
    name="dataset_job",
    selection=dg.AssetSelection.assets(filtered_samples, similarity_report),
    description="Build the filtered dataset from every shard's stats and the threshold report; checks included.",
)

pairfilter_job = dg.define_asset_job(
    name="pairfilter_job",
    selection=dg.AssetSelection.assets(raw_samples, image_pair_stats, filtered_samples, similarity_report),
    description="Ingest every shard, score every image pair with CLIP, write the filtered dataset and the "
    "threshold report (checks included). Launch it over all shards (a partition range), as the schedule and "
    "`pairfilter-materialize` do.",
)

PIPELINE_JOBS = (shard_job, dataset_job, pairfilter_job)


@dg.schedule(
    name="pairfilter_daily",
    job=pairfilter_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Re-runs the pipeline over every registered shard every day at 03:00 UTC, in one run; unchanged "
    "data costs no model work once cached. New manifests get their partition from the sensor or "
    "`pairfilter-materialize`.",
)
def pairfilter_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    shards = registered_shards(context.instance)
    if not shards:
        return dg.SkipReason("no shard partitions yet: switch on the sensor or run pairfilter-materialize")
    return dg.RunRequest(tags=all_shards_tags(shards))
