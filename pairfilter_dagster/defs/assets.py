"""The three assets: raw_samples -> image_pair_stats -> filtered_samples. Each is a thin wrapper over core.

Every asset streams: rows go from DuckDB (or the manifests) to DuckDB in bounded chunks, so memory does not grow
with the dataset."""

from collections import Counter

import dagster as dg

from ..core import store
from ..core.cache import EmbeddingCache
from ..core.filtering import keep_flags
from ..core.outputs import atomic_writer, dj_record
from ..core.samples import Sample, find_manifests, read_samples
from ..core.scoring import DEFAULT_CHUNK_SIZE, PairScorer, chunked, progress_logger
from ..core.status import STATUS_DESCRIPTIONS, Status
from ..core.summary import histogram_markdown, markdown_table, summarize_scores
from .config import FilterConfig, check_filter_run_config
from .resources import ClipModel, PairfilterStorage

GROUP = "pairfilter"
PREVIEW_ROWS = 10


def column_schema(table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, sql_type, description) for name, sql_type, description in store.TABLES[table]]
    )


def status_count_metadata(counts: Counter) -> dict[str, int]:
    """One numeric entry per status (zeros included), so the UI plots each over time."""
    return {f"status_{status.value}": counts.get(status.value, 0) for status in Status}


def similarity_metadata(conn, thresholds: dict[str, float] | None = None) -> dict:
    summary = summarize_scores(conn, "image_pair_stats")
    return {
        **{f"similarity_{name}": value for name, value in summary.statistics.items()},
        "similarity_histogram": dg.MetadataValue.md(histogram_markdown(summary.bin_counts, thresholds=thresholds)),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "json"},
    description="Data-Juicer samples read from every *.jsonl under <data>/raw/ (sorted, subfolders included), "
    "one row per manifest line. Lines that cannot be used are kept with a status and a reason.",
)
def raw_samples(context: dg.AssetExecutionContext, storage: PairfilterStorage) -> dg.MaterializeResult:
    check_filter_run_config(context.run.run_config)
    manifests = find_manifests(storage.raw_dir)
    counts: Counter = Counter()
    preview: list[tuple] = []

    def rows_in_chunks():
        for chunk in chunked(read_samples(storage.raw_dir), DEFAULT_CHUNK_SIZE):
            counts.update(s.status.value for s in chunk)
            preview.extend((s.sample_id, s.status.value, s.error, " , ".join(s.images)) for s in chunk)
            del preview[PREVIEW_ROWS:]
            yield [s.as_row() for s in chunk]

    with storage.connect() as conn:
        total = store.replace_table_in_chunks(conn, "raw_samples", rows_in_chunks())
    context.log.info(f"Read {total} samples from {len(manifests)} manifests under {storage.raw_dir}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": total,
            "dagster/column_schema": column_schema("raw_samples"),
            "manifests_read": len(manifests),
            "manifests": dg.MetadataValue.md(
                "\n".join(f"- `{p.relative_to(storage.raw_dir).as_posix()}`" for p in manifests) or "_none_"
            ),
            **status_count_metadata(counts),
            "preview": dg.MetadataValue.md(markdown_table(["sample_id", "status", "error", "images"], preview)),
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[raw_samples],
    kinds={"duckdb", "pytorch"},
    description="Data-Juicer's image_pair_similarity stat: the cosine similarity of the two images' CLIP "
    "embeddings, one row per sample with its status and reason. Every distinct image is embedded once and "
    "cached in the embedding_cache table, keyed by model and image content.",
)
def image_pair_stats(
    context: dg.AssetExecutionContext, storage: PairfilterStorage, clip: ClipModel
) -> dg.MaterializeResult:
    check_filter_run_config(context.run.run_config)
    embedder = clip.embedder
    with storage.connect() as conn:
        refs_total = conn.execute(
            "SELECT coalesce(sum(len(images)), 0) FROM raw_samples WHERE status = 'ok'"
        ).fetchone()[0]
        cache = EmbeddingCache(conn.cursor(), embedder.model_key)
        with PairScorer(
            embedder,
            cache,
            batch_size=clip.batch_size,
            workers=clip.decode_workers,
            on_progress=progress_logger(context.log.info, refs_total),
        ) as scorer:
            sample_chunks = (
                [Sample.from_row(row) for row in rows]
                for rows in store.iter_chunks(conn.cursor(), "raw_samples", chunk_size=DEFAULT_CHUNK_SIZE)
            )
            total = store.replace_table_in_chunks(conn, "image_pair_stats", scorer.score_all(sample_chunks))
        report = scorer.report
        distinct_images = conn.execute(
            "SELECT count(DISTINCT h) FROM image_pair_stats, unnest(image_hashes) AS t(h) WHERE h <> ''"
        ).fetchone()[0]
        similarity = similarity_metadata(conn)

    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": total,
            "dagster/column_schema": column_schema("image_pair_stats"),
            **status_count_metadata(Counter(report.status_counts)),
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
            "statuses": dg.MetadataValue.md(
                markdown_table(["status", "meaning"], [(s.value, d) for s, d in STATUS_DESCRIPTIONS.items()])
            ),
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[image_pair_stats],
    kinds={"duckdb", "json"},
    description="The kept samples: status ok and min_score <= image_pair_similarity <= max_score for any (or "
    "all) pairs. Written in input order to <data>/output/filtered_samples.jsonl with every original field plus "
    "__dj__stats__. Reads only the stats table: re-thresholding never runs the model.",
)
def filtered_samples(
    context: dg.AssetExecutionContext, config: FilterConfig, storage: PairfilterStorage
) -> dg.MaterializeResult:
    settings = config.to_settings()
    counts = Counter()

    def kept_in_chunks(reader, jsonl):
        for rows in store.iter_chunks(reader, "image_pair_stats", chunk_size=DEFAULT_CHUNK_SIZE):
            flags = keep_flags(((row["status"], row["image_pair_similarity"]) for row in rows), settings)
            kept = [
                {**row, "sample_json": dj_record(row["sample_json"], row["image_pair_similarity"])}
                for row, keep in zip(rows, flags)
                if keep
            ]
            counts.update(total=len(rows), scored=sum(r["status"] == Status.OK.value for r in rows), kept=len(kept))
            jsonl.writelines(row["sample_json"] + "\n" for row in kept)
            yield kept

    with storage.connect() as conn:
        with atomic_writer(storage.filtered_jsonl) as jsonl:
            store.replace_table_in_chunks(conn, "filtered_samples", kept_in_chunks(conn.cursor(), jsonl))
        similarity = similarity_metadata(
            conn, thresholds={"min_score": settings.min_score, "max_score": settings.max_score}
        )

    kept, total, scored = counts["kept"], counts["total"], counts["scored"]
    context.log.info(f"Kept {kept} of {total} samples ({scored} scored) with {settings}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": kept,
            "dagster/column_schema": column_schema("filtered_samples"),
            "kept": kept,
            "total": total,
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
