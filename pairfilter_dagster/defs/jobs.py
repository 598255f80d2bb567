"""The jobs of one pipeline instance:
- `shard_job`: ingest and score one shard and export its embeddings (what the new-data sensor runs per changed
  manifest), or a range of shards in one run;
- `dataset_job`: the filtered dataset from every shard, and the threshold report;
- `pairfilter_job`: all five, over every shard in one run (the schedule, and `pairfilter-materialize`)."""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from .spec import PipelineSpec


@dataclass(frozen=True)
class PipelineJobs:
    # What define_asset_job returns (its class is not public in Dagster's API).
    shard_job: Any
    dataset_job: Any
    pairfilter_job: Any

    @property
    def all(self) -> tuple[Any, ...]:
        return (self.shard_job, self.dataset_job, self.pairfilter_job)


def build_jobs(spec: PipelineSpec, raw_samples: dg.AssetsDefinition, image_pair_stats: dg.AssetsDefinition,
               filtered_samples: dg.AssetsDefinition, similarity_report: dg.AssetsDefinition,
               image_embeddings: dg.AssetsDefinition) -> PipelineJobs:
    return PipelineJobs(
        shard_job=dg.define_asset_job(
            name=spec.name("shard_job"),
            selection=dg.AssetSelection.assets(raw_samples, image_pair_stats, image_embeddings),
            description="Ingest and score the shards (manifests) the run is for, and export their embeddings; checks "
            "included.",
        ),
        dataset_job=dg.define_asset_job(
            name=spec.name("dataset_job"),
            selection=dg.AssetSelection.assets(filtered_samples, similarity_report),
            description="Build the filtered dataset from every shard's stats and the threshold report; checks "
            "included.",
        ),
        pairfilter_job=dg.define_asset_job(
            name=spec.name("pairfilter_job"),
            selection=dg.AssetSelection.assets(raw_samples, image_pair_stats, filtered_samples, similarity_report,
                                               image_embeddings),
            description="Ingest every shard, score every image pair with CLIP, write the filtered dataset, the "
            "threshold report and the embeddings (checks included). Launch it over all shards (a partition range): 'Materialize all' "
            "in the UI, the schedule, or `pairfilter-materialize`.",
        ),
    )
