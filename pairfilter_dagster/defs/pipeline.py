"""Everything one pipeline instance defines, built from its `PipelineSpec`: the five assets, their checks, the
jobs, the schedule, the sensor and the two resources."""

from dataclasses import dataclass

import dagster as dg

from .assets import build_assets
from .checks import build_checks
from .embeddings import build_embeddings_asset
from .jobs import PipelineJobs, build_jobs
from .report import build_report_asset
from .schedules import build_schedule
from .sensors import build_sensor
from .spec import PipelineSpec


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    raw_samples: dg.AssetsDefinition
    image_pair_stats: dg.AssetsDefinition
    filtered_samples: dg.AssetsDefinition
    similarity_report: dg.AssetsDefinition
    image_embeddings: dg.AssetsDefinition
    checks: list[dg.AssetChecksDefinition]
    jobs: PipelineJobs
    schedule: dg.ScheduleDefinition
    sensor: dg.SensorDefinition

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [self.raw_samples, self.image_pair_stats, self.filtered_samples, self.similarity_report,
                self.image_embeddings]

    @property
    def resources(self) -> dict[str, dg.ConfigurableResource]:
        return {self.spec.clip_key: self.spec.clip, self.spec.storage_key: self.spec.storage}

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(
            assets=self.assets, asset_checks=self.checks, jobs=list(self.jobs.all), schedules=[self.schedule],
            sensors=[self.sensor], resources=self.resources,
        )


def build_pipeline(spec: PipelineSpec | None = None) -> Pipeline:
    spec = spec or PipelineSpec()
    raw_samples, image_pair_stats, filtered_samples = build_assets(spec)
    similarity_report = build_report_asset(spec, image_pair_stats, filtered_samples)
    image_embeddings = build_embeddings_asset(spec, image_pair_stats)
    jobs = build_jobs(spec, raw_samples, image_pair_stats, filtered_samples, similarity_report, image_embeddings)
    return Pipeline(
        spec=spec,
        raw_samples=raw_samples,
        image_pair_stats=image_pair_stats,
        filtered_samples=filtered_samples,
        similarity_report=similarity_report,
        image_embeddings=image_embeddings,
        checks=build_checks(spec, image_pair_stats, filtered_samples, image_embeddings),
        jobs=jobs,
        schedule=build_schedule(spec, jobs),
        sensor=build_sensor(spec, jobs),
    )
