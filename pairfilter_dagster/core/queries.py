"""The questions the Dagster layer asks of the tables (previews, counts, reconciliation), answered in DuckDB so
they cost the same memory for ten rows or ten million."""

from dataclasses import dataclass

import duckdb

from .catalog import INPUT_ORDER, one, scalar, shard_filter
from .schema import FilteredRow, Sample, StatsRow, Status

RAW, STATS, FILTERED = Sample.TABLE, StatsRow.TABLE, FilteredRow.TABLE
OK = f"'{Status.OK.value}'"
Shards = list[str] | None


def preview(conn: duckdb.DuckDBPyConnection, shards: Shards, limit: int) -> list[tuple]:
    """(sample_id, status, error, images) of the first samples of `shards`."""
    where, params = shard_filter(shards)
    return conn.execute(
        f"SELECT sample_id, status, error, array_to_string(images, ' , ') FROM {RAW} {where} "
        f"ORDER BY {INPUT_ORDER} LIMIT {int(limit)}", params
    ).fetchall()


def image_refs_to_score(conn: duckdb.DuckDBPyConnection, shards: Shards) -> int:
    """How many image references the ok samples of `raw_samples` (of `shards`) hold: the progress total."""
    where, params = shard_filter(shards)
    return scalar(conn, f"SELECT coalesce(sum(len(images)) FILTER (status = {OK}), 0) FROM {RAW} {where}", params)


def distinct_images(conn: duckdb.DuckDBPyConnection, shards: Shards) -> int:
    where, params = shard_filter(shards)
    return scalar(conn, f"SELECT count(DISTINCT h) FROM (FROM {STATS} {where}), unnest(image_hashes) AS t(h) WHERE h <> ''", params)


def distinct_ok_images(conn: duckdb.DuckDBPyConnection, shard: str) -> int:
    """Distinct images (by content) of a shard's ok samples: the rows its exported embeddings should hold."""
    return scalar(conn, f"SELECT count(DISTINCT h) FROM {STATS}, unnest(image_hashes) AS t(h) "
                        f"WHERE manifest = ? AND status = {OK}", [shard])


def bad_scores(conn: duckdb.DuckDBPyConnection, shards: Shards) -> tuple[list[tuple], int]:
    """(sample id, score) of every score that is not finite or lies outside [-1, 1]; and how many ok samples lack
    one score per image pair (or have no pair at all)."""
    where, params = shard_filter(shards)
    stats = f"(FROM {STATS} {where})"
    bad = conn.execute(
        f"SELECT sample_id, s FROM {stats}, unnest(image_pair_similarity) AS t(s) "
        f"WHERE NOT isfinite(s) OR s < -1 OR s > 1 ORDER BY {INPUT_ORDER}", params
    ).fetchall()
    without_scores = scalar(conn, f"SELECT count(*) FROM {stats} WHERE status = {OK} "
        "AND (len(image_pair_similarity) = 0 OR len(image_pair_similarity) != len(image_pairs))", params)
    return bad, without_scores


@dataclass(frozen=True)
class RowMatch:
    ingested: int
    stats_rows: int
    distinct_ids: int
    unmatched: int

    @property
    def one_row_per_sample(self) -> bool:
        return self.ingested == self.stats_rows == self.distinct_ids and self.unmatched == 0


def stats_match_samples(conn: duckdb.DuckDBPyConnection, shards: Shards) -> RowMatch:
    where, params = shard_filter(shards)
    ingested = scalar(conn, f"SELECT count(*) FROM {RAW} {where}", params)
    stats_rows, distinct_ids = one(conn, f"SELECT count(*), count(DISTINCT sample_id) FROM {STATS} {where}", params)
    unmatched = scalar(conn, f"SELECT count(*) FROM (FROM {RAW} {where}) r FULL OUTER JOIN (FROM {STATS} {where}) s "
        "USING (sample_id) WHERE r.sample_id IS NULL OR s.sample_id IS NULL", params * 2)
    return RowMatch(ingested, stats_rows, distinct_ids, unmatched)


def kept_with_status(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, Status | None, list[float]]]:
    """(sample id, shard, stats status, scores) of every kept sample, in input order."""
    rows = conn.execute(
        f"SELECT f.sample_id, f.manifest, s.status, f.image_pair_similarity FROM {FILTERED} f "
        f"LEFT JOIN {STATS} s USING (sample_id) ORDER BY f.manifest, f.line_number"
    ).fetchall()
    return [(sample_id, shard, Status(status) if status in Status._value2member_map_ else None, scores)
            for sample_id, shard, status, scores in rows]


@dataclass(frozen=True)
class Accounting:
    ingested_per_shard: dict[str, int]
    statuses: dict[str, int]
    kept: int
    dropped: int


def accounting(conn: duckdb.DuckDBPyConnection) -> Accounting:
    """Samples per shard, stats rows per status, kept samples, and ok samples not kept."""
    return Accounting(
        ingested_per_shard=dict(conn.execute(f"SELECT manifest, count(*) FROM {RAW} GROUP BY manifest").fetchall()),
        statuses=dict(conn.execute(f"SELECT status, count(*) FROM {STATS} GROUP BY status").fetchall()),
        kept=scalar(conn, f"SELECT count(*) FROM {FILTERED}"),
        dropped=scalar(conn, f"SELECT count(*) FROM {STATS} WHERE status = {OK} "
                             f"AND sample_id NOT IN (SELECT sample_id FROM {FILTERED})"),
    )
