"""One instance of the pipeline: its names (asset key prefix, job, partition and resource names), group,
resources and default thresholds. The project's own pipeline is the instance with no prefix; the Component makes
others, which live side by side in one code location because every name they define is prefixed."""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import dagster as dg

from ..core.embedding.model import default_hf_clip
from ..core.filtering import FilterSettings
from .resources import ClipModel, PairfilterStorage, default_data_dir

DEFAULT_GROUP = "pairfilter"


def default_storage() -> PairfilterStorage:
    return PairfilterStorage(data_dir=default_data_dir())


def default_clip() -> ClipModel:
    return ClipModel(hf_clip=default_hf_clip())


@dataclass(frozen=True)
class PipelineSpec:
    key_prefix: tuple[str, ...] = ()
    group: str = DEFAULT_GROUP
    storage: PairfilterStorage = field(default_factory=default_storage)
    clip: ClipModel = field(default_factory=default_clip)
    thresholds: FilterSettings = FilterSettings()

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, name])

    def name(self, name: str) -> str:
        """A job, schedule, sensor, partitions or op name: `other__pairfilter_job` for the prefix ["other"]."""
        return "__".join([*self.key_prefix, name])

    def resource_key(self, name: str) -> str:
        return "_".join([*self.key_prefix, name])

    @property
    def storage_key(self) -> str:
        return self.resource_key("storage")

    @property
    def clip_key(self) -> str:
        return self.resource_key("clip")

    @cached_property
    def partitions(self) -> dg.DynamicPartitionsDefinition:
        """Every manifest under <data>/raw/ is a shard: a partition keyed by its path relative to raw/."""
        return dg.DynamicPartitionsDefinition(name=self.name("manifest_shards"))

    def storage_of(self, context: Any) -> PairfilterStorage:
        return getattr(context.resources, self.storage_key)

    def clip_of(self, context: Any) -> ClipModel:
        return getattr(context.resources, self.clip_key)
