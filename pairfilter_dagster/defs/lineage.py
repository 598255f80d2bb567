"""Column lineage of the two tables, for the `dagster/column_lineage` metadata shown in the UI.

Every column is carried over from the same-named upstream column; the exceptions are written out below."""

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
