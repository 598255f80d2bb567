"""The three assets of one pipeline instance: raw_samples -> image_pair_stats -> filtered_samples. Each calls one
loop of `core.stages` and turns its counts into metadata; each shard's results are files of its own
(`core.results`), so shard runs never wait on one another.

raw_samples and image_pair_stats are partitioned by shard (one manifest each, see `partitions`); filtered_samples
is one whole dataset built from every shard, because that is what a training job reads, and re-thresholding it
costs seconds from the stats table."""

import dagster as dg

from ..core import queries, stages
from ..core.catalog import write_catalog
from ..core.filtering import FilterSettings
from ..core.ingest.formats import count_records, shard_format
from ..core.ingest.manifests import unreadable_message
from ..core.kept_outputs import KEPT_FOLDER, remove_kept_of, write_kept_outputs
from ..core.progress import progress_logger
from ..core.report.summary import markdown_table
from ..core.results import DamagedResultFile
from ..core.schema import FilteredRow, Sample, StatsRow
from ..core.share import resolve_share
from .config import filter_config_class, filter_settings_metadata, preflight
from .lineage import filtered_samples_lineage, image_pair_stats_lineage, table_data_version
from .metadata import (
    column_schema,
    shards_metadata,
    similarity_metadata,
    status_count_metadata,
    statuses_metadata,
    table_metadata,
)
from .partitions import DATASET_POOL, shard_asset_arguments
from .spec import PipelineSpec

PREVIEW_ROWS = 10
OWNERS = ["team:dataset-curation"]
TAGS = {"filter": "image_pair_similarity"}
SCORING_VERSION = "1"
"""Bump when the scoring logic changes; with the default model in image_pair_stats's code_version, the UI then
marks every shard of the stats table as stale ("code version changed")."""


def asset_arguments(spec: PipelineSpec, name: str) -> dict:
    """Decorator arguments every asset of an instance shares."""
    return dict(key=spec.key(name), group_name=spec.group, owners=OWNERS, tags=TAGS)


def run_shards(context: dg.AssetExecutionContext, spec: PipelineSpec) -> list[str]:
    """The shards a partitioned step works on: one, or a range of them in a backfill. A run launched without any
    (the Launchpad, GraphQL, `dagster asset materialize` without --partition) fails here, before any work, saying
    how to launch it."""
    if not (context.has_partition_key or context.has_partition_key_range):
        raise dg.Failure(
            f"{context.asset_key.to_user_string()} is partitioned by shard (one partition per manifest) and this run "
            f"names no partition. Launch it over every shard with `pairfilter-materialize`, or in the UI with "
            f"'Materialize all' (a backfill over all partitions of {spec.partitions.name}), or name the shards: "
            f"`dagster asset materialize --partition <manifest path relative to raw/>`."
        )
    return list(context.partition_keys)


def build_assets(spec: PipelineSpec) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition, dg.AssetsDefinition]:
    filter_config = filter_config_class(spec.thresholds)
    filter_op = spec.name("filtered_samples")

    def check_run_config(context: dg.AssetExecutionContext) -> None:
        spec.storage_of(context).check_data_dir()
        preflight(context.run.run_config, filter_op=filter_op, filter_config=filter_config, clip_key=spec.clip_key)

    @dg.asset(
        **asset_arguments(spec, "raw_samples"),
        **shard_asset_arguments(spec.partitions),
        required_resource_keys={spec.storage_key},
        kinds={"parquet", "json"},
        code_version="1",
        metadata=table_metadata(Sample),
        description="Data-Juicer samples of one shard: the file `<data>/raw/<partition key>` (any `*.jsonl`, "
        "`*.parquet` or WebDataset `*.tar` under raw/, subfolders included), one row per manifest line, Parquet row "
        "or tar key, written to `<output>/results/raw_samples/<partition key>.parquet`. Samples that cannot be used are "
        "kept with a status and a reason. A shard whose file is gone loses its result files.",
    )
    def raw_samples(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        storage = spec.storage_of(context)
        check_run_config(context)
        rules = storage.sample_rules()  # refuses image_roots that are not folders, before any work
        shards = run_shards(context, spec)
        split = storage.list_shards(rules).split(shards)
        if split.unreadable and not (split.readable or split.gone):
            raise dg.Failure(unreadable_message(split.unreadable))
        for shard, problem in split.unreadable.items():
            context.log.error(f"{unreadable_message({shard: problem})}: its previous rows are kept")
        for missing in split.gone:
            context.log.warning(f"Shard {missing!r}: no manifest {storage.raw_dir / missing}; its rows are removed")
        results = storage.results
        counts = stages.ingest(results, split.readable, rules)
        results.remove(split.gone)
        with storage.query(shards) as conn:
            preview = queries.preview(conn, shards, PREVIEW_ROWS)
            data_version = table_data_version(conn, Sample.TABLE, ["sample_id", "sample_json"], shards=shards)
        total = sum(counts.values())
        context.log.info(f"Read {total} samples from {len(split.readable)} manifests under {storage.raw_dir}")
        return dg.MaterializeResult(
            data_version=data_version,
            metadata={
                "dagster/row_count": total,
                "dagster/column_schema": column_schema(Sample),
                **shards_metadata(shards),
                "manifest_lines": sum(count_records(path, shard) for shard, path in split.readable.items()),
                "formats": dg.MetadataValue.json({shard: shard_format(shard) for shard in shards}),
                "unreadable_shards": dg.MetadataValue.json(split.unreadable),
                "pairing": rules.pairing,
                "image_roots": dg.MetadataValue.json(list(rules.image_roots)),
                **status_count_metadata(counts),
                "preview": dg.MetadataValue.md(
                    markdown_table(["sample_id", "status", "error", "images"], preview)
                ),
            },
        )

    @dg.asset(
        **asset_arguments(spec, "image_pair_stats"),
        **shard_asset_arguments(spec.partitions),
        deps=[raw_samples],
        required_resource_keys={spec.storage_key, spec.clip_key},
        kinds={"parquet", "pytorch", "huggingface"},
        code_version=f"{SCORING_VERSION};model={spec.clip.hf_clip}",
        metadata=table_metadata(StatsRow, image_pair_stats_lineage(spec.key("raw_samples"))),
        description="Data-Juicer's `image_pair_similarity` stat: the cosine similarity of the two images' "
        "embeddings (Hugging Face `get_image_features`: CLIP by default, SigLIP or another image encoder when "
        "hf_clip names one), one row per sample of the shard with its status and reason, written to "
        "`<output>/results/image_pair_stats/<partition key>.parquet`. Every distinct image is embedded once and "
        "cached in `<output>/results/embedding_cache/`, keyed by model and image content. The code "
        "version names the default model, so changing the model marks every shard of this table as stale; rebuild "
        "the filtered dataset after re-scoring (the staleness does not reach it through the partitions).",
    )
    def image_pair_stats(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        storage, clip = spec.storage_of(context), spec.clip_of(context)
        check_run_config(context)
        shards = run_shards(context, spec)
        results = storage.results
        with storage.query(shards) as conn:
            refs = queries.image_refs_to_score(conn, shards)
        with clip.open_engine() as engine:
            report = stages.score(results, shards, clip.embedder, engine, access=storage.image_access(),
                                  on_progress=progress_logger(context.log.info, refs),
                                  file_hashes=storage.local_state / "file_hashes", block=storage.embeddings_per_file)
        with storage.query(shards) as conn:
            distinct_images = queries.distinct_images(conn, shards)
            similarity = similarity_metadata(conn, spec.thresholds, shards)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": report.samples,
                "dagster/column_schema": column_schema(StatsRow),
                **shards_metadata(shards),
                **status_count_metadata(report.status_counts),
                **similarity,
                "distinct_images": distinct_images,
                "images_embedded": report.images_embedded,
                "cache_hits": report.cache_hits,
                "cache_hit_rate": round(report.cache_hit_rate, 4),
                "image_files_not_reread": report.hashes_remembered,
                "forward_passes": report.forward_passes,
                "images_per_second": round(report.images_per_second, 2),
                "scoring_seconds": round(report.seconds, 2),
                "model": clip.hf_clip,
                "model_key": clip.embedder.model_key[:16],
                "device": clip.embedder.device,
                **clip.run_metadata(),
                "engine": clip.engine_name,
                "statuses": statuses_metadata(),
            }
        )

    @dg.asset(
        **asset_arguments(spec, "filtered_samples"),
        deps=[image_pair_stats],
        pool=DATASET_POOL,
        required_resource_keys={spec.storage_key},
        kinds={"parquet", "json", "duckdb"},
        code_version="1",
        metadata=table_metadata(FilteredRow, filtered_samples_lineage(spec.key("image_pair_stats"))),
        description="Data-Juicer's image_pair_similarity_filter: keeps the samples with status ok and "
        "`min_score <= image_pair_similarity <= max_score` for any (or all) of their pairs; or, with "
        "keep_top_fraction / keep_bottom_fraction, that share of the ok samples by score (resolved to those bounds "
        "from the stats, ties at the cut kept, recorded in the metadata). Written in input order "
        "to `<data>/output/filtered_samples.jsonl` with every original field plus `__dj__stats__`, and to "
        "`<output>/results/filtered_samples.parquet`. One whole dataset from every shard's stats file; the result "
        "files of shards whose manifest is gone from raw/ are deleted first. Reads only the stats: re-thresholding "
        "never runs the model. Rewrites the DuckDB catalog (`<state>/catalog.duckdb`, views over the files).",
    )
    def filtered_samples(context: dg.AssetExecutionContext, config: filter_config) -> dg.MaterializeResult:  # type: ignore[valid-type]
        storage = spec.storage_of(context)
        settings: FilterSettings = config.to_settings()  # type: ignore[attr-defined]
        check_run_config(context)
        listing = storage.list_shards()
        for name, problem in listing.problems.items():
            context.log.error(f"{name}: {problem}: the dataset keeps its last good rows (check every_manifest_readable)")
        results = storage.results
        removed = stages.prune_removed_manifests(results, listing)
        if removed:
            context.log.info(f"Removed the result files of {len(removed)} shards whose manifest is gone: {removed}")
        with storage.query() as conn:
            settings = resolve_share(conn, settings)  # a share of the ok samples becomes the bounds that keep it
        counts = stages.filter_and_publish(results, settings, storage.filtered_jsonl, storage.raw_dir,
                                           storage.local_state / "pending_publish")
        shards = counts.shards
        with storage.query() as conn:
            kept_per_shard = write_kept_outputs(conn, results, {s: p for s, p in listing.readable.items() if s in shards},
                                                storage.output_root)
            remove_kept_of(storage.output_root, removed)
            similarity = similarity_metadata(conn, settings, marked=True)
            data_version = table_data_version(conn, FilteredRow.TABLE, ["sample_id", "sample_json"], str(settings))
        try:
            write_catalog(results, storage.catalog)
        except DamagedResultFile as exc:  # the catalog is for people: the dataset is published, say what to mend
            context.log.warning(f"The catalog {storage.catalog} was not rewritten: {exc}; then run pairfilter-catalog")
        context.log.info(f"Kept {counts.kept} of {counts.total} samples ({counts.scored} scored) with {settings}")
        return dg.MaterializeResult(
            data_version=data_version,
            metadata={
                "dagster/row_count": counts.kept,
                "dagster/column_schema": column_schema(FilteredRow),
                "dagster/column_lineage": filtered_samples_lineage(spec.key("image_pair_stats")),
                "kept": counts.kept,
                "total": counts.total,
                **shards_metadata(shards),
                "shards_removed": dg.MetadataValue.json(removed),
                "scored": counts.scored,
                "dropped": counts.dropped,
                "kept_ratio": round(counts.kept / counts.total, 4) if counts.total else 0.0,
                **filter_settings_metadata(settings),
                "output_path": dg.MetadataValue.path(str(storage.filtered_jsonl)),
                "kept_per_shard": dg.MetadataValue.json(kept_per_shard),
                "kept_dir": dg.MetadataValue.path(str(storage.output_root / KEPT_FOLDER)),
                "similarity_histogram": similarity["similarity_histogram"],
            },
        )

    return raw_samples, image_pair_stats, filtered_samples
