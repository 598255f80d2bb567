"""The three assets: raw_samples -> image_pair_stats -> filtered_samples. Each is a thin wrapper over core.

The work is in `core.tables`: every asset streams rows to DuckDB in bounded chunks, so memory does not grow with the
dataset. raw_samples and image_pair_stats are partitioned by shard (one manifest each, see `partitions`);
filtered_samples is one whole dataset built from every shard, because that is what a training job reads, and
re-thresholding it costs seconds from the stats table."""

from typing import Mapping, Optional


import dagster as dg

from ..core import store
from ..core.embedding import default_hf_clip
from ..core.samples import count_lines, find_manifests, manifest_name, read_samples
from ..core.scoring import progress_logger
from ..core.status import STATUS_DESCRIPTIONS, Status
from ..core.summary import histogram_markdown, markdown_table, summarize_scores
from ..core.tables import (
    build_filtered_samples, build_image_pair_stats, build_raw_samples, image_refs_to_score, prune_removed_manifests,
)
from .config import FilterConfig, check_clip_run_config, check_filter_run_config
from .lineage import filtered_samples_lineage, image_pair_stats_lineage, table_data_version
from .partitions import DUCKDB_POOL, SHARD_ASSET_DEFAULTS, run_shards
from .resources import ClipModel, PairfilterStorage

GROUP = "pairfilter"
PREVIEW_ROWS = 10
ASSET_DEFAULTS = dict(
    group_name=GROUP, owners=["team:dataset-curation"], tags={"filter": "image_pair_similarity"}
)
"""Decorator arguments every asset of the pipeline shares."""
SCORING_VERSION = "1"
"""Bump when the scoring logic changes; with the default model in image_pair_stats's code_version, the UI then
marks every shard of the stats table as stale ("code version changed"). Dagster does not carry that staleness from
the partitioned stats to the unpartitioned filtered dataset: `pairfilter_job` (or a backfill) rebuilds both."""


def column_schema(table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, sql_type, description) for name, sql_type, description in store.TABLES[table]]
    )


def table_metadata(table: str, lineage: Optional[dg.TableColumnLineage] = None) -> dict:
    """Definition metadata: the column schema (and lineage), shown in the UI before the first run."""
    return {"dagster/column_schema": column_schema(table), **({"dagster/column_lineage": lineage} if lineage else {})}


def status_count_metadata(counts: Mapping[str, int]) -> dict[str, int]:
    """One numeric entry per status (zeros included), so the UI plots each over time."""
    return {f"status_{status.value}": counts.get(status.value, 0) for status in Status}


def shards_metadata(shards: list[str]) -> dict:
    listed = shards[:50] + ([f"... and {len(shards) - 50} more"] if len(shards) > 50 else [])
    return {"shards": len(shards), "shard_list": dg.MetadataValue.md("\n".join(f"- `{s}`" for s in listed) or "_none_")}


def similarity_metadata(
    conn, thresholds: dict[str, float] | None = None, shards: list[str] | None = None
) -> dict:
    summary = summarize_scores(conn, "image_pair_stats", shards)
    return {
        **{f"similarity_{name}": value for name, value in summary.statistics.items()},
        "similarity_histogram": dg.MetadataValue.md(histogram_markdown(summary.bin_counts, thresholds=thresholds)),
    }


@dg.asset(
    **ASSET_DEFAULTS,
    **SHARD_ASSET_DEFAULTS,
    kinds={"duckdb", "json"},
    code_version="1",
    metadata=table_metadata("raw_samples"),
    description="Data-Juicer samples of one shard: the manifest `<data>/raw/<partition key>` (any `*.jsonl` under "
    "raw/, subfolders included), one row per manifest line. Lines that cannot be used are kept with a status and "
    "a reason. A shard whose manifest is gone is emptied.",
)
def raw_samples(context: dg.AssetExecutionContext, storage: PairfilterStorage) -> dg.MaterializeResult:
    check_filter_run_config(context.run.run_config)
    check_clip_run_config(context.run.run_config)
    rules = storage.sample_rules()  # refuses image_roots that are not folders, before any work
    shards = run_shards(context)
    # Only manifests found under raw/: a partition key is never used as a path (a key like ../x.jsonl reads nothing).
    found = {manifest_name(storage.raw_dir, path): path for path in find_manifests(storage.raw_dir)}
    manifests = [found[shard] for shard in shards if shard in found]
    for missing in sorted(shard for shard in shards if shard not in found):
        context.log.warning(f"Shard {missing!r}: no manifest {storage.raw_dir / missing}; its rows are removed")
    with storage.connect() as conn:
        counts = build_raw_samples(conn, read_samples(storage.raw_dir, rules, shards=shards), shards=shards)
        total = sum(counts.values())
        where, params = store.shard_filter(shards)
        preview = conn.execute(
            f"SELECT sample_id, status, error, array_to_string(images, ' , ') FROM raw_samples {where} "
            f"ORDER BY {store.INPUT_ORDER} LIMIT {PREVIEW_ROWS}", params
        ).fetchall()
        data_version = table_data_version(conn, "raw_samples", ["sample_id", "sample_json"], shards=shards)
    context.log.info(f"Read {total} samples from {len(manifests)} manifests under {storage.raw_dir}")
    return dg.MaterializeResult(
        data_version=data_version,
        metadata={
            "dagster/row_count": total,
            "dagster/column_schema": column_schema("raw_samples"),
            **shards_metadata(shards),
            "manifest_lines": sum(count_lines(path) for path in manifests),
            "pairing": rules.pairing,
            "image_roots": dg.MetadataValue.json(list(rules.image_roots)),
            **status_count_metadata(counts),
            "preview": dg.MetadataValue.md(markdown_table(["sample_id", "status", "error", "images"], preview)),
        }
    )


@dg.asset(
    **ASSET_DEFAULTS,
    **SHARD_ASSET_DEFAULTS,
    deps=[raw_samples],
    kinds={"duckdb", "pytorch", "huggingface"},
    code_version=f"{SCORING_VERSION};model={default_hf_clip()}",
    metadata=table_metadata("image_pair_stats", image_pair_stats_lineage()),
    description="Data-Juicer's `image_pair_similarity` stat: the cosine similarity of the two images' CLIP "
    "embeddings (Hugging Face `CLIPModel.get_image_features`), one row per sample of the shard with its status "
    "and reason. "
    "Every distinct image is embedded once and cached in the `embedding_cache` table, keyed by model and image "
    "content. The code version names the default model, so changing the model (`PAIRFILTER_HF_CLIP`) marks every "
    "shard of this table as stale; rebuild the filtered dataset after re-scoring (the staleness does not reach "
    "it through the partitions).",
)
def image_pair_stats(
    context: dg.AssetExecutionContext, storage: PairfilterStorage, clip: ClipModel
) -> dg.MaterializeResult:
    check_filter_run_config(context.run.run_config)
    embedder = clip.embedder
    shards = run_shards(context)
    with storage.connect() as conn:
        report = build_image_pair_stats(
            conn,
            embedder,
            batch_size=clip.batch_size,
            workers=clip.decode_workers,
            max_image_pixels=storage.max_image_pixels,
            on_progress=progress_logger(context.log.info, image_refs_to_score(conn, shards)),
            shards=shards,
            engine=clip.scoring_engine,
            chunk_size=clip.chunk_samples,
        )
        where, params = store.shard_filter(shards)
        distinct_images = conn.execute(
            f"SELECT count(DISTINCT h) FROM (FROM image_pair_stats {where}), unnest(image_hashes) AS t(h) "
            "WHERE h <> ''", params
        ).fetchone()[0]
        similarity = similarity_metadata(conn, shards=shards)

    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": report.samples,
            "dagster/column_schema": column_schema("image_pair_stats"),
            **shards_metadata(shards),
            **status_count_metadata(report.status_counts),
            **similarity,
            "distinct_images": distinct_images,
            "images_embedded": report.images_embedded,
            "cache_hits": report.cache_hits,
            "cache_hit_rate": round(report.cache_hit_rate, 4),
            "forward_passes": report.forward_passes,
            "images_per_second": round(report.images_per_second, 2),
            "scoring_seconds": round(report.seconds, 2),
            "model": clip.hf_clip,
            "model_key": embedder.model_key[:16],
            "device": embedder.device,
            "engine": clip.engine,
            "statuses": dg.MetadataValue.md(
                markdown_table(["status", "meaning"], [(s.value, d) for s, d in STATUS_DESCRIPTIONS.items()])
            ),
        }
    )


@dg.asset(
    **ASSET_DEFAULTS,
    deps=[image_pair_stats],
    pool=DUCKDB_POOL,
    kinds={"duckdb", "json"},
    code_version="1",
    metadata=table_metadata("filtered_samples", filtered_samples_lineage()),
    description="Data-Juicer's image_pair_similarity_filter: keeps the samples with status ok and "
    "`min_score <= image_pair_similarity <= max_score` for any (or all) of their pairs. Written in input order to "
    "`<data>/output/filtered_samples.jsonl` with every original field plus `__dj__stats__`. One whole dataset "
    "from every shard; the rows of shards whose manifest is gone from raw/ are deleted first. Reads only the "
    "stats table: re-thresholding never runs the model.",
)
def filtered_samples(
    context: dg.AssetExecutionContext, config: FilterConfig, storage: PairfilterStorage
) -> dg.MaterializeResult:
    settings = config.to_settings()
    with storage.connect() as conn:
        removed = prune_removed_manifests(conn, storage.raw_dir)
        if removed:
            context.log.info(f"Removed the rows of {len(removed)} shards whose manifest is gone: {removed}")
        counts = build_filtered_samples(conn, settings, storage.filtered_jsonl)
        shards = store.stored_shards(conn, "image_pair_stats")
        similarity = similarity_metadata(
            conn, thresholds={"min_score": settings.min_score, "max_score": settings.max_score}
        )
        data_version = table_data_version(conn, "filtered_samples", ["sample_id", "sample_json"], str(settings))

    kept, total, scored = counts["kept"], counts["total"], counts["scored"]
    context.log.info(f"Kept {kept} of {total} samples ({scored} scored) with {settings}")
    return dg.MaterializeResult(
        data_version=data_version,
        metadata={
            "dagster/row_count": kept,
            "dagster/column_schema": column_schema("filtered_samples"),
            "dagster/column_lineage": filtered_samples_lineage(),
            "kept": kept,
            "total": total,
            **shards_metadata(shards),
            "shards_removed": dg.MetadataValue.json(removed),
            "scored": scored,
            "dropped": scored - kept,
            "kept_ratio": round(kept / total, 4) if total else 0.0,
            "min_score": settings.min_score,
            "max_score": settings.max_score,
            "any_or_all": settings.any_or_all,
            "output_path": dg.MetadataValue.path(str(storage.filtered_jsonl)),
            "similarity_histogram": similarity["similarity_histogram"],
        }
    )
