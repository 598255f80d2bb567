"""Real Dagster runs of the shard-partitioned pipeline, as the tests launch them."""

from pathlib import Path

import dagster as dg

from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.core.locations import as_path
from pairfilter_dagster.defs.partitions import every_shard_tags

from .pipeline import MANIFEST_SHARDS


def materialize_all_shards(selection, data_dir: Path, *, instance: dg.DagsterInstance | None = None, **kwargs):
    """`dg.materialize` over every shard of `data_dir` in one run, as `pairfilter-materialize` does. With no shard
    at all, only the unpartitioned assets (and their checks) run."""
    instance = instance or dg.DagsterInstance.ephemeral()
    shard_tags = every_shard_tags(instance, MANIFEST_SHARDS, list_shards(as_path(str(data_dir)) / "raw"))
    if shard_tags is None:
        shard_keys = {key for a in selection if is_sharded(a) for key in a.keys}
        selection = [a for a in selection if not is_sharded(a) and not (set(check_targets(a)) & shard_keys)]
    tags = {**(kwargs.pop("tags", None) or {}), **(shard_tags or {})}
    return dg.materialize(selection, instance=instance, tags=tags, **kwargs)


def is_sharded(definition) -> bool:
    return getattr(definition, "partitions_def", None) == MANIFEST_SHARDS


def check_targets(definition) -> list[dg.AssetKey]:
    return [key.asset_key for key in getattr(definition, "check_keys", ())] if not definition.keys else []
