"""The job that materializes the whole pipeline, and its daily schedule (off until switched on in the UI)."""

import dagster as dg

from .assets import filtered_samples, image_pair_stats, raw_samples
from .report import similarity_report

pairfilter_job = dg.define_asset_job(
    name="pairfilter_job",
    selection=dg.AssetSelection.assets(raw_samples, image_pair_stats, filtered_samples, similarity_report),
    description="Ingest manifests, score every image pair with CLIP, write the filtered dataset and the threshold "
    "report (checks included).",
    tags={"pairfilter/writes": "tables"},  # lets dagster.yaml's run_queue keep runs from overlapping (README)
)

pairfilter_daily = dg.ScheduleDefinition(
    name="pairfilter_daily",
    job=pairfilter_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Re-runs the pipeline every day at 03:00 UTC; unchanged data costs no model work once cached.",
)
