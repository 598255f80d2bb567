"""Metadata the UI shows: column schemas from the row types, counts per status, shard lists, score summaries."""

from typing import Mapping, Optional

import dagster as dg
import duckdb

from ..core.filtering import FilterSettings
from ..core.report.summary import histogram_markdown, markdown_table, summarize_scores
from ..core.schema import STATUS_DESCRIPTIONS, Row, StatsRow, Status, columns

SHARDS_LISTED = 50


def column_schema(row_type: type[Row]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(c.name, c.sql_type, c.description) for c in columns(row_type)])


def table_metadata(row_type: type[Row], lineage: Optional[dg.TableColumnLineage] = None) -> dict:
    """Definition metadata: the column schema (and lineage), shown in the UI before the first run."""
    return {"dagster/column_schema": column_schema(row_type), **({"dagster/column_lineage": lineage} if lineage else {})}


def status_count_metadata(counts: Mapping[Status, int] | Mapping[str, int]) -> dict[str, int]:
    """One numeric entry per status (zeros included), so the UI plots each over time."""
    by_value = {str(status): n for status, n in counts.items()}
    return {f"status_{status.value}": by_value.get(status.value, 0) for status in Status}


def shards_metadata(shards: list[str]) -> dict:
    listed = shards[:SHARDS_LISTED] + ([f"... and {len(shards) - SHARDS_LISTED} more"]
                                       if len(shards) > SHARDS_LISTED else [])
    return {"shards": len(shards), "shard_list": dg.MetadataValue.md("\n".join(f"- `{s}`" for s in listed) or "_none_")}


def similarity_metadata(
    conn: duckdb.DuckDBPyConnection, settings: FilterSettings, shards: list[str] | None = None, marked: bool = False
) -> dict:
    """min / mean / median / max of the pair scores and a text histogram (with the thresholds marked, if asked)."""
    thresholds = {"min_score": settings.min_score, "max_score": settings.max_score}
    summary = summarize_scores(conn, StatsRow.TABLE, list(thresholds.values()), shards)
    histogram = histogram_markdown(summary, thresholds=thresholds if marked else None)
    return {
        **{f"similarity_{name}": value for name, value in summary.statistics.items()},
        "similarity_histogram": dg.MetadataValue.md(histogram),
    }


def statuses_metadata() -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(["status", "meaning"], [(s.value, d) for s, d in STATUS_DESCRIPTIONS.items()]))
