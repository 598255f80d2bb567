"""Lineage the UI shows: column lineage of the two tables (`dagster/column_lineage`), and data versions.

Column lineage: every column is carried over from the same-named upstream column; the exceptions are written out
below. Data versions: an asset with a code_version gets, by default, a data version computed from its code version
and its inputs' data versions, which is right for a pure function of its inputs (image_pair_stats, the report) but
not for raw_samples (it reads files) nor filtered_samples (its thresholds are run config). Those two report a data
version of their content, so downstream assets show "upstream data changed" exactly when it did."""

import hashlib

import dagster as dg

from ..core.catalog import table_fingerprint
from ..core.schema import FilteredRow, Row, Sample, StatsRow, column_names


def carried_over(row_type: type[Row], upstream: dg.AssetKey, upstream_type: type[Row]) -> dict[str, list]:
    upstream_columns = set(column_names(upstream_type))
    return {
        name: [dg.TableColumnDep(upstream, name)] for name in column_names(row_type) if name in upstream_columns
    }


def image_pair_stats_lineage(raw: dg.AssetKey) -> dg.TableColumnLineage:
    """The scores and statuses come from the images that raw_samples lists."""
    deps = carried_over(StatsRow, raw, Sample)
    images = dg.TableColumnDep(raw, "images")
    deps["image_pair_similarity"] = [images]
    deps["image_hashes"] = [images]
    deps["status"] = deps["status"] + [images]
    deps["error"] = deps["error"] + [images]
    return dg.TableColumnLineage(deps)


def filtered_samples_lineage(stats: dg.AssetKey) -> dg.TableColumnLineage:
    """Kept rows carry the stats columns over; the output line gains `__dj__stats__` from the score column."""
    deps = carried_over(FilteredRow, stats, StatsRow)
    deps["sample_json"] = deps["sample_json"] + [dg.TableColumnDep(stats, "image_pair_similarity")]
    return dg.TableColumnLineage(deps)


def table_data_version(
    conn, table: str, columns: list[str], extra: str = "", shards: list[str] | None = None
) -> dg.DataVersion:
    """A data version that changes exactly when a row of `table` (in `columns`; of `shards`, if given) or `extra`
    does; computed in DuckDB, so it costs no memory however large the table. A backfill run covering several
    shards gives each of them the version of all of them together."""
    count, fingerprint = table_fingerprint(conn, table, columns, shards)
    digest = hashlib.sha256(f"{count}:{fingerprint}:{extra}".encode())
    return dg.DataVersion(digest.hexdigest()[:24])
