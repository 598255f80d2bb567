"""Real Dagster runs of the shard-partitioned pipeline, as the tests launch them."""

from pathlib import Path

import dagster as dg

from pairfilter_dagster.defs.partitions import MANIFEST_SHARDS, all_shards_tags, registered_shards, sync_shard_partitions


def materialize_all_shards(selection, data_dir: Path, *, instance: dg.DagsterInstance | None = None, **kwargs):
    """`dg.materialize` over every shard of `data_dir` in one run (as a single-run backfill, the schedule and
    `pairfilter-materialize` do), after making the shard partitions match the manifests. With no shard at all,
    only the unpartitioned assets (and their checks) run, as in `pairfilter-materialize`."""
    instance = instance or dg.DagsterInstance.ephemeral()
    sync_shard_partitions(instance, Path(data_dir) / "raw")
    shards = registered_shards(instance)
    if not shards:
        shard_keys = {key for a in selection if is_sharded(a) for key in a.keys}
        selection = [a for a in selection if not is_sharded(a) and not (set(check_targets(a)) & shard_keys)]
    tags = {**(kwargs.pop("tags", None) or {}), **(all_shards_tags(shards) if shards else {})}
    return dg.materialize(selection, instance=instance, tags=tags, **kwargs)


def is_sharded(definition) -> bool:
    return getattr(definition, "partitions_def", None) == MANIFEST_SHARDS


def check_targets(definition) -> list[dg.AssetKey]:
    return [key.asset_key for key in getattr(definition, "check_keys", ())] if not definition.keys else []
