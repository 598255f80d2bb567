"""Asset checks: the stats table is sane and complete; the filtered dataset obeys the thresholds it was built with;
the exported embeddings line up with their metadata.

All are blocking: a bad stats table never reaches the filtered dataset. The stats checks look at the shards of the
run they belong to (one, or every shard of a backfill); the filtered dataset's checks look at every shard."""

import json
from typing import Any

import dagster as dg

from ..core import queries
from ..core.embedding.export import exported_rows
from ..core.filtering import keep_sample
from ..core.ingest.formats import count_records, shard_format
from ..core.schema import DJ_STATS_FIELD, SIMILARITY_STAT, Status
from .config import filter_settings_metadata, recorded_filter_settings
from .metadata import status_count_metadata
from .spec import PipelineSpec


def build_checks(spec: PipelineSpec, image_pair_stats: dg.AssetsDefinition, filtered_samples: dg.AssetsDefinition,
                 image_embeddings: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    raw_key, stats_key, filtered_key = (spec.key(n) for n in ("raw_samples", "image_pair_stats", "filtered_samples"))
    blocking_on_storage: dict[str, Any] = dict(blocking=True, required_resource_keys={spec.storage_key})

    @dg.asset_check(
        asset=image_pair_stats,
        **blocking_on_storage,
        description="Every score is finite and within [-1, 1]; every ok sample has one score per image pair.",
    )
    def scores_finite_and_in_range(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        shards = list(context.partition_keys)
        with spec.storage_of(context).query(shards) as conn:
            bad, without_scores = queries.bad_scores(conn, shards)
        return dg.AssetCheckResult(
            passed=not bad and without_scores == 0,
            metadata={
                "bad_scores": len(bad),
                "ok_samples_without_scores": without_scores,
                "first_bad": dg.MetadataValue.json([[sample_id, str(score)] for sample_id, score in bad[:10]]),
            },
        )

    @dg.asset_check(
        asset=image_pair_stats,
        **blocking_on_storage,
        additional_deps=[raw_key],
        description="One stats row per ingested sample of the run's shards: same sample ids as raw_samples, no "
        "duplicates, none missing.",
    )
    def one_row_per_sample(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        shards = list(context.partition_keys)
        with spec.storage_of(context).query(shards) as conn:
            match = queries.stats_match_samples(conn, shards)
        return dg.AssetCheckResult(
            passed=match.one_row_per_sample,
            metadata={
                "ingested_samples": match.ingested,
                "stats_rows": match.stats_rows,
                "distinct_sample_ids": match.distinct_ids,
                "unmatched_sample_ids": match.unmatched,
            },
        )

    @dg.asset_check(
        asset=filtered_samples,
        **blocking_on_storage,
        additional_deps=[stats_key],
        description="Every kept sample was scored ok and its scores satisfy the thresholds of the latest "
        "materialization; the JSONL file holds the kept samples of the JSONL shards, as the table does; with a share of the data "
        "(keep_top_fraction / keep_bottom_fraction), exactly the samples it wanted plus the ties at its cut.",
    )
    def kept_samples_satisfy_config(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        settings = recorded_filter_settings(context.instance, filtered_key)
        if settings is None:
            return dg.AssetCheckResult(passed=False, description="filtered_samples has not been materialized yet")
        storage = spec.storage_of(context)
        with storage.filtered_jsonl.open("r", encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle]
        with storage.query() as conn:
            table_rows = queries.kept_with_status(conn)
        violations = [sample_id for sample_id, _, status, scores in table_rows
                      if status is None or not keep_sample(status, scores, settings)]
        # The whole-dataset JSONL holds the kept samples of JSONL shards, in the same order, with the same scores.
        jsonl_scores = [scores for _, shard, _, scores in table_rows if shard_format(shard) == "jsonl"]
        jsonl_matches = [line.get(DJ_STATS_FIELD, {}).get(SIMILARITY_STAT) for line in lines] == jsonl_scores
        share_kept = settings.cut.kept if settings.cut else len(table_rows)
        return dg.AssetCheckResult(
            passed=jsonl_matches and len(table_rows) == share_kept and not violations,
            metadata={
                "jsonl_lines": len(lines),
                "jsonl_matches_table": jsonl_matches,
                "table_rows": len(table_rows),
                "violations": len(violations),
                "first_violations": dg.MetadataValue.json(violations[:10]),
                "checked_against": dg.MetadataValue.json(filter_settings_metadata(settings)),
                **({"kept_by_share": share_kept} if settings.cut else {}),
            },
        )

    @dg.asset_check(
        asset=filtered_samples,
        **blocking_on_storage,
        additional_deps=[raw_key, stats_key],
        description="Every sample accounted for: the lines of the manifests in raw/ = ingested samples (per "
        "shard) = ok + rejected; kept + dropped = ok (every kept sample is a distinct ok sample); every status is "
        "in the documented vocabulary.",
    )
    def every_sample_accounted_for(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        storage = spec.storage_of(context)
        listing = storage.list_shards()
        # Lines counted from the manifest bytes, independently of parsing.
        lines = {shard: count_records(path, shard) for shard, path in listing.readable.items()}
        with storage.query() as conn:
            counts = queries.accounting(conn)
        per_shard = counts.ingested_per_shard
        unreadable = listing.split(list(per_shard)).unreadable  # their last good rows: every_manifest_readable's part
        ingested = sum(per_shard.values())
        ok = counts.statuses.get(Status.OK.value, 0)
        rejected = sum(counts.statuses.values()) - ok
        unknown = sorted(set(counts.statuses) - {status.value for status in Status})
        mismatched = {
            shard: {"manifest_lines": lines.get(shard, 0), "ingested": per_shard.get(shard, 0)}
            for shard in sorted((set(lines) | set(per_shard)) - set(unreadable))
            if lines.get(shard, 0) != per_shard.get(shard, 0)
        }
        passed = not mismatched and ingested == ok + rejected and counts.kept + counts.dropped == ok and not unknown
        return dg.AssetCheckResult(
            passed=passed,
            description=(
                f"shards not ingested as they are on disk (materialize them): {', '.join(mismatched)}"
                if mismatched else None
            ),
            metadata={
                "manifest_lines": sum(lines.values()),
                "ingested": ingested,
                "ok": ok,
                "rejected": rejected,
                "kept": counts.kept,
                "dropped": counts.dropped,
                **status_count_metadata(counts.statuses),
                "unknown_statuses": dg.MetadataValue.json(unknown),
                "mismatched_shards": dg.MetadataValue.json(mismatched),
            },
        )

    @dg.asset_check(
        asset=filtered_samples,
        blocking=False,
        required_resource_keys={spec.storage_key},
        description="Every manifest and folder under raw/ can be read. One that cannot (no permission, not a "
        "regular file, a dangling or escaping symlink, a name that is not UTF-8) is named here; its shard keeps "
        "its last good rows in the dataset. Not blocking: the report still describes the dataset as built.",
    )
    def every_manifest_readable(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        problems = spec.storage_of(context).list_shards().problems
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(f"{name}: {why}" for name, why in problems.items())[:2000] or None,
            metadata={"unreadable": dg.MetadataValue.json(problems)},
        )

    @dg.asset_check(
        asset=image_embeddings,
        **blocking_on_storage,
        additional_deps=[stats_key],
        description="For each of the run's shards: the npy file holds as many rows as its metadata parquet, and as "
        "many as the shard's ok samples have distinct images in the stats table.",
    )
    def embeddings_align_with_metadata(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        storage = spec.storage_of(context)
        with storage.query(list(context.partition_keys)) as conn:
            expected = {shard: queries.distinct_ok_images(conn, shard) for shard in context.partition_keys}
        found = {shard: exported_rows(storage.embeddings_dir, shard) for shard in expected}
        rows = {shard: {"npy_rows": shape[0] if shape else None, "parquet_rows": parquet, "images": expected[shard]}
                for shard, (shape, parquet) in found.items()}
        misaligned = sorted(shard for shard, n in rows.items() if not (n["npy_rows"] == n["parquet_rows"] == n["images"]))
        return dg.AssetCheckResult(
            passed=not misaligned,
            description=f"files missing or not aligned: {', '.join(misaligned)}" if misaligned else None,
            metadata={"misaligned_shards": dg.MetadataValue.json(misaligned), "rows": dg.MetadataValue.json(rows)},
        )

    return [scores_finite_and_in_range, one_row_per_sample, kept_samples_satisfy_config, every_sample_accounted_for,
            every_manifest_readable, embeddings_align_with_metadata]
