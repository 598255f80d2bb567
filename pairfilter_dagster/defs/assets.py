"""The three assets: raw_samples -> image_pair_stats -> filtered_samples. Each is a thin wrapper over core."""

import time
from typing import Optional

import dagster as dg

from ..core import store
from ..core.embedding import default_hf_clip
from ..core.filtering import keep_flags
from ..core.outputs import dj_record, write_lines_atomically
from ..core.samples import Sample, find_manifests, read_samples
from ..core.scoring import score_samples
from ..core.status import STATUS_DESCRIPTIONS, Status
from ..core.summary import histogram_markdown, markdown_table, score_statistics
from .config import FilterConfig, check_filter_run_config
from .lineage import content_version, filtered_samples_lineage, image_pair_stats_lineage
from .resources import ClipModel, PairfilterStorage

GROUP = "pairfilter"
PREVIEW_ROWS = 10
ASSET_DEFAULTS = dict(
    group_name=GROUP, owners=["team:dataset-curation"], tags={"filter": "image_pair_similarity"}
)
"""Decorator arguments every asset of the pipeline shares."""
SCORING_VERSION = "1"
"""Bump when the scoring logic changes; with the default model in image_pair_stats's code_version, the UI then
marks the stats table and everything downstream as stale ("code version changed")."""


def column_schema(table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, sql_type, description) for name, sql_type, description in store.TABLES[table]]
    )


def table_metadata(table: str, lineage: Optional[dg.TableColumnLineage] = None) -> dict:
    """Definition metadata: the column schema (and lineage), shown in the UI before the first run."""
    return {"dagster/column_schema": column_schema(table), **({"dagster/column_lineage": lineage} if lineage else {})}


def status_count_metadata(statuses: list[str]) -> dict[str, int]:
    """One numeric entry per status (zeros included), so the UI plots each over time."""
    return {f"status_{status.value}": statuses.count(status.value) for status in Status}


@dg.asset(
    **ASSET_DEFAULTS,
    kinds={"duckdb", "json"},
    code_version="1",
    metadata=table_metadata("raw_samples"),
    description="Data-Juicer samples read from every `*.jsonl` under `<data>/raw/` (sorted, subfolders "
    "included), one row per manifest line. Lines that cannot be used are kept with a status and a reason.",
)
def raw_samples(context: dg.AssetExecutionContext, storage: PairfilterStorage) -> dg.MaterializeResult:
    check_filter_run_config(context.run.run_config)
    manifests = find_manifests(storage.raw_dir)
    samples = list(read_samples(storage.raw_dir))
    with storage.connect() as conn:
        store.replace_table(conn, "raw_samples", [sample.as_row() for sample in samples])
    context.log.info(f"Read {len(samples)} samples from {len(manifests)} manifests under {storage.raw_dir}")
    preview = [(s.sample_id, s.status.value, s.error, " , ".join(s.images)) for s in samples[:PREVIEW_ROWS]]
    return dg.MaterializeResult(
        data_version=content_version(f"{s.sample_id}\t{s.sample_json}" for s in samples),
        metadata={
            "dagster/row_count": len(samples),
            "dagster/column_schema": column_schema("raw_samples"),
            "manifests_read": len(manifests),
            "manifests": dg.MetadataValue.md(
                "\n".join(f"- `{p.relative_to(storage.raw_dir).as_posix()}`" for p in manifests) or "_none_"
            ),
            **status_count_metadata([s.status.value for s in samples]),
            "preview": dg.MetadataValue.md(markdown_table(["sample_id", "status", "error", "images"], preview)),
        }
    )


@dg.asset(
    **ASSET_DEFAULTS,
    deps=[raw_samples],
    kinds={"duckdb", "pytorch", "huggingface"},
    code_version=f"{SCORING_VERSION};model={default_hf_clip()}",
    metadata=table_metadata("image_pair_stats", image_pair_stats_lineage()),
    description="Data-Juicer's `image_pair_similarity` stat: the cosine similarity of the two images' CLIP "
    "embeddings (Hugging Face `CLIPModel.get_image_features`), one row per sample with its status and reason. "
    "Every distinct image is embedded once. The code version names the default model, so changing the model "
    "(`PAIRFILTER_HF_CLIP`) marks this table and everything downstream as stale.",
)
def image_pair_stats(
    context: dg.AssetExecutionContext, storage: PairfilterStorage, clip: ClipModel
) -> dg.MaterializeResult:
    check_filter_run_config(context.run.run_config)
    with storage.connect(read_only=True) as conn:
        samples = [Sample.from_row(row) for row in store.read_rows(conn, "raw_samples")]

    last_log = [0.0]

    def log_progress(done: int, total: int, elapsed: float) -> None:
        if done == total or time.monotonic() - last_log[0] > 5:
            last_log[0] = time.monotonic()
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else float("nan")
            context.log.info(f"Embedded {done}/{total} images, {rate:.1f} images/s, ETA {eta:.0f} s")

    report = score_samples(samples, clip.embedder, batch_size=clip.batch_size, on_progress=log_progress)
    with storage.connect() as conn:
        store.replace_table(conn, "image_pair_stats", report.rows)

    scores = [score for row in report.rows for score in row.image_pair_similarity]
    statistics = score_statistics(scores)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(report.rows),
            "dagster/column_schema": column_schema("image_pair_stats"),
            **status_count_metadata([row.status for row in report.rows]),
            **{f"similarity_{name}": value for name, value in statistics.items()},
            "similarity_histogram": dg.MetadataValue.md(histogram_markdown(scores)),
            "unique_images": report.unique_images,
            "images_embedded": report.images_embedded,
            "forward_passes": report.forward_passes,
            "images_per_second": round(report.images_per_second, 2),
            "scoring_seconds": round(report.seconds, 2),
            "model": clip.hf_clip,
            "device": clip.embedder.device,
            "statuses": dg.MetadataValue.md(
                markdown_table(["status", "meaning"], [(s.value, d) for s, d in STATUS_DESCRIPTIONS.items()])
            ),
        }
    )


@dg.asset(
    **ASSET_DEFAULTS,
    deps=[image_pair_stats],
    kinds={"duckdb", "json"},
    code_version="1",
    metadata=table_metadata("filtered_samples", filtered_samples_lineage()),
    description="Data-Juicer's image_pair_similarity_filter: keeps the samples with status ok and "
    "`min_score <= image_pair_similarity <= max_score` for any (or all) of their pairs. Written in input order to "
    "`<data>/output/filtered_samples.jsonl` with every original field plus `__dj__stats__`. Reads only the stats "
    "table: re-thresholding never runs the model.",
)
def filtered_samples(
    context: dg.AssetExecutionContext, config: FilterConfig, storage: PairfilterStorage
) -> dg.MaterializeResult:
    settings = config.to_settings()
    with storage.connect(read_only=True) as conn:
        rows = store.read_rows(conn, "image_pair_stats")
    flags = keep_flags(((row["status"], row["image_pair_similarity"]) for row in rows), settings)
    kept = [
        {**row, "sample_json": dj_record(row["sample_json"], row["image_pair_similarity"])}
        for row, keep in zip(rows, flags)
        if keep
    ]
    write_lines_atomically(storage.filtered_jsonl, (row["sample_json"] for row in kept))
    with storage.connect() as conn:
        store.replace_table(conn, "filtered_samples", kept)

    scored = sum(row["status"] == Status.OK.value for row in rows)
    context.log.info(f"Kept {len(kept)} of {len(rows)} samples ({scored} scored) with {settings}")
    scores = [score for row in rows for score in row["image_pair_similarity"]]
    return dg.MaterializeResult(
        data_version=content_version([str(settings), *(row["sample_json"] for row in kept)]),
        metadata={
            "dagster/row_count": len(kept),
            "dagster/column_schema": column_schema("filtered_samples"),
            "dagster/column_lineage": filtered_samples_lineage(),
            "kept": len(kept),
            "total": len(rows),
            "scored": scored,
            "dropped": scored - len(kept),
            "kept_ratio": round(len(kept) / len(rows), 4) if rows else 0.0,
            "min_score": settings.min_score,
            "max_score": settings.max_score,
            "any_or_all": settings.any_or_all,
            "output_path": dg.MetadataValue.path(str(storage.filtered_jsonl)),
            "similarity_histogram": dg.MetadataValue.md(
                histogram_markdown(scores, thresholds={"min_score": settings.min_score, "max_score": settings.max_score})
            ),
        }
    )
