"""Lineage the UI shows: column lineage of the two tables (`dagster/column_lineage`), and data versions.

Column lineage: every column is carried over from the same-named upstream column; the exceptions are written out
below. Data versions: an asset with a code_version gets, by default, a data version computed from its code version
and its inputs' data versions, which is right for a pure function of its inputs (image_pair_stats, the report) but
not for raw_samples (it reads files) nor filtered_samples (its thresholds are run config). Those two report a data
version of their content, so downstream assets show "upstream data changed" exactly when it did."""

import hashlib
import dagster as dg

from ..core import store


def carried_over(table: str, upstream: str) -> dict[str, list[dg.TableColumnDep]]:
    upstream_columns = {name for name, _, _ in store.TABLES[upstream]}
    return {
        name: [dg.TableColumnDep(upstream, name)]
        for name, _, _ in store.TABLES[table]
        if name in upstream_columns
    }


def image_pair_stats_lineage() -> dg.TableColumnLineage:
    """The scores and statuses come from the images that raw_samples lists."""
    deps = carried_over("image_pair_stats", "raw_samples")
    deps["image_pair_similarity"] = [dg.TableColumnDep("raw_samples", "images")]
    deps["status"] = deps["status"] + [dg.TableColumnDep("raw_samples", "images")]
    deps["error"] = deps["error"] + [dg.TableColumnDep("raw_samples", "images")]
    return dg.TableColumnLineage(deps)


def filtered_samples_lineage() -> dg.TableColumnLineage:
    """Kept rows carry the stats columns over; the output line gains `__dj__stats__` from the score column."""
    deps = carried_over("filtered_samples", "image_pair_stats")
    deps["sample_json"] = deps["sample_json"] + [dg.TableColumnDep("image_pair_stats", "image_pair_similarity")]
    return dg.TableColumnLineage(deps)


def table_data_version(
    conn, table: str, columns: list[str], extra: str = "", shards: list[str] | None = None
) -> dg.DataVersion:
    """A data version that changes exactly when a row of `table` (in `columns`; of `shards`, if given) or `extra`
    does; computed in DuckDB, so it costs no memory however large the table. A backfill run covering several
    shards gives each of them the version of all of them together."""
    count, fingerprint = store.table_fingerprint(conn, table, columns, shards)
    digest = hashlib.sha256(f"{count}:{fingerprint}:{extra}".encode())
    return dg.DataVersion(digest.hexdigest()[:24])
