"""Shards: every manifest under <data>/raw/ is a partition of the ingest and scoring assets.

The partition key is the manifest's path relative to raw/ (the tables' `manifest` column), so a shard run replaces
exactly that shard's rows. Partitions are dynamic: the new-data sensor and `pairfilter-materialize` add one for each
new manifest and delete the partition of a manifest that is gone. Both partitioned assets use a single-run backfill
policy: a backfill over many shards is one run whose scoring step loads the model once."""

from typing import Sequence

import dagster as dg

from ..core.ingest.manifests import ShardListing

DATASET_POOL = "pairfilter_dataset"
"""The concurrency pool of the step that writes the whole dataset's files (the filtered table and JSONL, the kept
outputs, the catalog): dagster.yaml gives it one slot, so two such steps never interleave their files. Shard steps
write files of their own shard only and take no pool: any number run at once."""
SYNC_ATTEMPTS = 5
# The run tags of a partition range, as Dagster's own backfills set them (dagster._core.storage.tags).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def shard_asset_arguments(partitions: dg.DynamicPartitionsDefinition) -> dict:
    return dict(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())


def registered_shards(instance: dg.DagsterInstance, partitions: dg.DynamicPartitionsDefinition) -> list[str]:
    return list(instance.get_dynamic_partitions(str(partitions.name)))


def shard_partition_changes(
    instance: dg.DagsterInstance, partitions: dg.DynamicPartitionsDefinition, listing: ShardListing
) -> tuple[list[str], list[str]]:
    """(manifests without a partition, partitions whose manifest is gone). A manifest that cannot be read has a
    partition too (its runs fail, saying why); one under a folder that cannot be read keeps its partition."""
    registered = registered_shards(instance, partitions)
    return ([m for m in listing.names if m not in registered],
            [p for p in registered if not listing.may_hold(p)])


def sync_shard_partitions(
    instance: dg.DagsterInstance, partitions: dg.DynamicPartitionsDefinition, listing: ShardListing
) -> tuple[list[str], list[str]]:
    """Make the partitions match the manifests on disk; returns (added, deleted). Workers started at once on one
    instance may add the same partitions at the same moment: the one that loses looks again."""
    from sqlalchemy.exc import IntegrityError

    for attempt in range(SYNC_ATTEMPTS):
        added, deleted = shard_partition_changes(instance, partitions, listing)
        try:
            if added:
                instance.add_dynamic_partitions(str(partitions.name), added)
            break
        except IntegrityError:
            if attempt == SYNC_ATTEMPTS - 1:
                raise
    for key in deleted:
        instance.delete_dynamic_partition(str(partitions.name), key)
    return added, deleted


def all_shards_tags(shards: Sequence[str]) -> dict[str, str]:
    """Run tags that make one run cover every shard (how a single-run backfill is launched)."""
    return {PARTITION_RANGE_START_TAG: shards[0], PARTITION_RANGE_END_TAG: shards[-1]}


def every_shard_tags(
    instance: dg.DagsterInstance, partitions: dg.DynamicPartitionsDefinition, listing: ShardListing
) -> dict[str, str] | None:
    """Make the partitions match the manifests, then the tags of a run over every shard (None when there is no
    shard: then only the unpartitioned assets can run). How `pairfilter-materialize` and the tests run it all."""
    sync_shard_partitions(instance, partitions, listing)
    shards = registered_shards(instance, partitions)
    return all_shards_tags(shards) if shards else None
