"""How a `pairfilter-materialize` run went, in a few lines: the summary of a run that succeeded (from its
materialization metadata), or the one line that says why it failed."""

import re
from typing import Any

import dagster as dg

from .defs.resources import PairfilterStorage
from .run_console import PROG

FAILURES = (
    dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RESOURCE_INIT_FAILURE, dg.DagsterEventType.RUN_FAILURE,
)


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def metadata_of(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Each materialized asset's metadata values, by asset name (the first event: a run over several shards
    records the same metadata on each shard's)."""
    found: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        found.setdefault(materialization.asset_key.path[-1],
                         {key: value.value for key, value in materialization.metadata.items()})
    return found


def summary(result: dg.ExecuteInProcessResult, storage: PairfilterStorage, seconds: float) -> str:
    meta = metadata_of(result)
    raw, stats, filtered = (meta.get(name, {}) for name in ("raw_samples", "image_pair_stats", "filtered_samples"))
    counted = stats or raw  # the statuses after scoring; after ingestion only when scoring did not run
    statuses = ", ".join(f"{key[len('status_'):]} {n}" for key, n in counted.items() if key.startswith("status_") and n)
    lines = [f"Run {result.run_id} succeeded in {seconds:.1f} s"]
    if raw:
        lines.append(f"  shards:   {raw.get('shards', 0)}")
        lines.append(f"  samples:  {raw.get('dagster/row_count', 0)} ({statuses or 'none'})")
    elif filtered.get("shards"):
        lines.append(f"  shards:   {filtered['shards']} (their result files; no shard was ingested or scored)")
    else:
        lines.append("  shards:   0 (no manifest under raw/: only the filtered dataset and the report were rebuilt)")
    if stats:
        lines.append(f"  images:   {stats.get('images_embedded', 0)} embedded, {stats.get('cache_hits', 0)} from cache")
    if filtered:
        lines.append(f"  kept:     {filtered['kept']} of {filtered['total']} samples ({filtered['scored']} scored)")
        lines.append(f"  dropped:  {filtered['dropped']} (scored outside the thresholds)")
        lines.append(f"  filtered: {filtered['output_path']}")
        if filtered.get("shards_removed"):
            lines.append(f"  removed:  {', '.join(filtered['shards_removed'])} (manifest gone: its result files deleted)")
    if "image_embeddings" in meta:
        emb = meta["image_embeddings"]
        lines.append(f"  embeddings: {emb['dagster/row_count']} vectors of {emb['dimension']} floats, {emb['shards']} "
                     f"shards, in {emb['output_dir']}")
    if "similarity_report" in meta:
        lines.append(f"  report:   {meta['similarity_report']['report_dir']}")
    lines.append(f"  results:  {storage.results.root}")
    if storage.catalog.exists():
        lines.append(f"  catalog:  {storage.catalog} (DuckDB views over the result files)")
    return "\n".join(lines)


PYDANTIC_DETAIL = re.compile(r" \[type=[^,\]]+, input_value=(.*), input_type=[^\]]+\]$")


def validation_reason(message: str) -> str:
    """pydantic's ValidationError on one line: "1 validation error for FilterConfig: min_score: Input should be
    less than or equal to 1 (got 5)"."""
    header, *lines = message.splitlines()
    told, field = [], ""
    for line in lines:
        if line.startswith("    "):  # "For further information visit ..."
            continue
        if line.startswith("  "):
            detail = PYDANTIC_DETAIL.sub(r" (got \1)" if field else "", line.strip()).removeprefix("Value error, ")
            told.append(field + detail)
            field = ""
        else:
            field = line.strip() + ": "
    return f"{header}: {'; '.join(told)}"


def error_reason(error: Any) -> str:
    """The user code's own message from a Dagster error: Dagster's wrappers unwrapped, the module path dropped,
    and no class name for `dg.Failure` (its description is the message)."""
    while error.cls_name.startswith("Dagster") and error.cause is not None:
        error = error.cause
    message = error.message.strip()
    qualified = message.split(": ", 1)[0]
    if qualified.endswith(error.cls_name):
        message = message[len(qualified) + 2:]
    if error.cls_name == "ValidationError":
        return validation_reason(message)
    return one_line(message if error.cls_name == "Failure" else f"{error.cls_name}: {message}")


def failure_line(result: dg.ExecuteInProcessResult) -> str:
    """The last line of a failed run: which checks failed, else the first failure (a step, or the resources the
    run starts with) and why."""
    failed_checks = [check for check in result.get_asset_check_evaluations() if not check.passed]
    if failed_checks:
        told = [f"{check.check_name} on {check.asset_key.to_user_string()}"
                + (f" ({one_line(check.description)})" if check.description else "") for check in failed_checks]
        return f"{PROG}: checks failed: {'; '.join(told)}"
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if event.event_type in FAILURES and error is not None:
            where = event.step_key or ("the run" if event.event_type == dg.DagsterEventType.RUN_FAILURE
                                       else "resource setup")
            return f"{PROG}: failed in {where}: {error_reason(error)}"
    return f"{PROG}: run {result.run_id} failed; run again with --verbose to see why"
