"""Asset checks: the stats table is sane and complete; the filtered dataset obeys the thresholds it was built with.

The stats checks are blocking: a bad stats table never reaches the filtered dataset. They look at the shards of
the run they belong to (one, or every shard of a backfill); the filtered dataset's checks look at every shard."""

import json

import dagster as dg

from ..core import store
from ..core.filtering import keep_sample
from ..core.outputs import DJ_STATS_FIELD, SIMILARITY_STAT
from ..core.samples import count_lines, find_manifests, manifest_name
from ..core.status import Status
from .assets import filtered_samples, image_pair_stats, status_count_metadata
from .config import recorded_filter_settings
from .resources import PairfilterStorage


@dg.asset_check(
    asset=image_pair_stats,
    blocking=True,
    description="Every score is finite and within [-1, 1]; every ok sample has one score per image pair.",
)
def scores_finite_and_in_range(
    context: dg.AssetCheckExecutionContext, storage: PairfilterStorage
) -> dg.AssetCheckResult:
    where, params = store.shard_filter(context.partition_keys)
    stats = f"(FROM image_pair_stats {where})"
    with storage.connect(read_only=True) as conn:
        bad = conn.execute(
            f"SELECT sample_id, s FROM {stats}, unnest(image_pair_similarity) AS t(s) "
            "WHERE NOT isfinite(s) OR s < -1 OR s > 1 ORDER BY manifest, line_number", params
        ).fetchall()
        ok_without_scores = conn.execute(  # one score per pair, and at least one pair
            f"SELECT count(*) FROM {stats} WHERE status = 'ok' "
            "AND (len(image_pair_similarity) = 0 OR len(image_pair_similarity) != len(image_pairs))", params
        ).fetchone()[0]
    return dg.AssetCheckResult(
        passed=not bad and ok_without_scores == 0,
        metadata={
            "bad_scores": len(bad),
            "ok_samples_without_scores": ok_without_scores,
            "first_bad": dg.MetadataValue.json([[sample_id, str(score)] for sample_id, score in bad[:10]]),
        },
    )


@dg.asset_check(
    asset=image_pair_stats,
    blocking=True,
    additional_deps=["raw_samples"],
    description="One stats row per ingested sample of the run's shards: same sample ids as raw_samples, no "
    "duplicates, none missing.",
)
def one_row_per_sample(
    context: dg.AssetCheckExecutionContext, storage: PairfilterStorage
) -> dg.AssetCheckResult:
    where, params = store.shard_filter(context.partition_keys)
    with storage.connect(read_only=True) as conn:
        ingested = conn.execute(f"SELECT count(*) FROM raw_samples {where}", params).fetchone()[0]
        stats_rows, distinct_ids = conn.execute(
            f"SELECT count(*), count(DISTINCT sample_id) FROM image_pair_stats {where}", params
        ).fetchone()
        unmatched = conn.execute(
            f"SELECT count(*) FROM (FROM raw_samples {where}) r FULL OUTER JOIN (FROM image_pair_stats {where}) s "
            "USING (sample_id) WHERE r.sample_id IS NULL OR s.sample_id IS NULL", params * 2
        ).fetchone()[0]
    return dg.AssetCheckResult(
        passed=ingested == stats_rows == distinct_ids and unmatched == 0,
        metadata={
            "ingested_samples": ingested,
            "stats_rows": stats_rows,
            "distinct_sample_ids": distinct_ids,
            "unmatched_sample_ids": unmatched,
        },
    )


@dg.asset_check(
    asset=filtered_samples,
    blocking=True,
    additional_deps=["image_pair_stats"],
    description="Every kept sample was scored ok and its scores satisfy the thresholds of the latest "
    "materialization; the JSONL file and the table hold the same samples.",
)
def kept_samples_satisfy_config(
    context: dg.AssetCheckExecutionContext, storage: PairfilterStorage
) -> dg.AssetCheckResult:
    settings = recorded_filter_settings(context.instance)
    if settings is None:
        return dg.AssetCheckResult(passed=False, description="filtered_samples has not been materialized yet")

    with open(storage.filtered_jsonl, encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    with storage.connect(read_only=True) as conn:
        table_rows = conn.execute(
            "SELECT f.sample_id, s.status FROM filtered_samples f LEFT JOIN image_pair_stats s USING (sample_id) "
            "ORDER BY f.manifest, f.line_number"
        ).fetchall()
    violations = [
        sample_id
        for (sample_id, status), line in zip(table_rows, lines)
        if not keep_sample(status, line.get(DJ_STATS_FIELD, {}).get(SIMILARITY_STAT, []), settings)
    ]
    return dg.AssetCheckResult(
        passed=len(lines) == len(table_rows) and not violations,
        metadata={
            "jsonl_lines": len(lines),
            "table_rows": len(table_rows),
            "violations": len(violations),
            "first_violations": dg.MetadataValue.json(violations[:10]),
            "checked_against": dg.MetadataValue.json(
                {"min_score": settings.min_score, "max_score": settings.max_score, "any_or_all": settings.any_or_all}
            ),
        },
    )


@dg.asset_check(
    asset=filtered_samples,
    blocking=True,
    additional_deps=["raw_samples", "image_pair_stats"],
    description="Every sample accounted for: the lines of the manifests in raw/ = ingested samples (per shard) = "
    "ok + rejected; kept + dropped = ok (every kept sample is a distinct ok sample); every status is in the "
    "documented vocabulary.",
)
def every_sample_accounted_for(storage: PairfilterStorage) -> dg.AssetCheckResult:
    # Lines counted from the manifest bytes, independently of parsing.
    lines = {manifest_name(storage.raw_dir, path): count_lines(path) for path in find_manifests(storage.raw_dir)}
    with storage.connect(read_only=True) as conn:
        ingested_per_shard = dict(
            conn.execute("SELECT manifest, count(*) FROM raw_samples GROUP BY manifest").fetchall()
        )
        statuses = dict(conn.execute("SELECT status, count(*) FROM image_pair_stats GROUP BY status").fetchall())
        kept = conn.execute("SELECT count(*) FROM filtered_samples").fetchone()[0]
        dropped = conn.execute(
            "SELECT count(*) FROM image_pair_stats WHERE status = 'ok' "
            "AND sample_id NOT IN (SELECT sample_id FROM filtered_samples)"
        ).fetchone()[0]
    ingested = sum(ingested_per_shard.values())
    ok = statuses.get(Status.OK.value, 0)
    rejected = sum(statuses.values()) - ok
    unknown = sorted(set(statuses) - {status.value for status in Status})
    mismatched = {
        shard: {"manifest_lines": lines.get(shard, 0), "ingested": ingested_per_shard.get(shard, 0)}
        for shard in sorted(set(lines) | set(ingested_per_shard))
        if lines.get(shard, 0) != ingested_per_shard.get(shard, 0)
    }

    passed = not mismatched and ingested == ok + rejected and kept + dropped == ok and not unknown
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
            "kept": kept,
            "dropped": dropped,
            **status_count_metadata(statuses),
            "unknown_statuses": dg.MetadataValue.json(unknown),
            "mismatched_shards": dg.MetadataValue.json(mismatched),
        },
    )
