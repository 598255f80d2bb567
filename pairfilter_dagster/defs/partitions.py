"""Shards: every manifest under <data>/raw/ is a partition of raw_samples and image_pair_stats.

The partition key is the manifest's path relative to raw/ (the tables' `manifest` column), so a shard run replaces
exactly that shard's rows. Partitions are dynamic: the new-data sensor and `pairfilter-materialize` add one for each
new manifest and delete the partition of a manifest that is gone. Both partitioned assets use a single-run backfill
policy: a backfill over many shards is one run whose scoring step loads the model once."""

from pathlib import Path
from typing import Sequence

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from ..core.samples import manifest_names

MANIFEST_SHARDS = dg.DynamicPartitionsDefinition(name="manifest_shards")
DUCKDB_POOL = "pairfilter_duckdb"
"""The concurrency pool of every step that writes the DuckDB file: DuckDB has one writer at a time, and dagster.yaml
gives this pool one slot, so writing steps of concurrent runs take turns instead of waiting on the file lock."""
SHARD_ASSET_DEFAULTS = dict(
    partitions_def=MANIFEST_SHARDS, backfill_policy=dg.BackfillPolicy.single_run(), pool=DUCKDB_POOL
)


def registered_shards(instance: dg.DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(MANIFEST_SHARDS.name))


def shard_partition_changes(instance: dg.DagsterInstance, raw_dir: Path) -> tuple[list[str], list[str]]:
    """(manifests without a partition, partitions without a manifest)."""
    on_disk, registered = manifest_names(raw_dir), registered_shards(instance)
    return [m for m in on_disk if m not in registered], [p for p in registered if p not in on_disk]


def sync_shard_partitions(instance: dg.DagsterInstance, raw_dir: Path) -> tuple[list[str], list[str]]:
    """Make the partitions match the manifests on disk; returns (added, deleted)."""
    added, deleted = shard_partition_changes(instance, raw_dir)
    if added:
        instance.add_dynamic_partitions(MANIFEST_SHARDS.name, added)
    for key in deleted:
        instance.delete_dynamic_partition(MANIFEST_SHARDS.name, key)
    return added, deleted


def all_shards_tags(shards: Sequence[str]) -> dict[str, str]:
    """Run tags that make one run cover every shard (how a single-run backfill is launched)."""
    return {ASSET_PARTITION_RANGE_START_TAG: shards[0], ASSET_PARTITION_RANGE_END_TAG: shards[-1]}


def run_shards(context: dg.AssetExecutionContext) -> list[str]:
    """The shards a partitioned step works on: one, or a range of them in a backfill."""
    return list(context.partition_keys)
