"""The embeddings asset: per shard, the embeddings of its scored images in clip-retrieval's layout under
<data>/output/embeddings/, read from the embedding cache (no model), for the jobs that come after filtering."""

from typing import Any

import dagster as dg

from ..core.embedding.cache_files import full_model_key
from ..core.embedding.export import IMG_EMB, METADATA, METADATA_COLUMNS, export_shard, shard_file_name
from .assets import asset_arguments, run_shards
from .metadata import shards_metadata
from .partitions import shard_asset_arguments
from .spec import PipelineSpec


def scoring_model(instance: dg.DagsterInstance, stats_key: dg.AssetKey, shard: str) -> tuple[str, str]:
    """(model, model key as recorded) of the latest image_pair_stats materialization of the shard: the model its
    scores, and so the embeddings to export, came from."""
    found = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=stats_key, asset_partitions=[shard]), limit=1)
    materialization = found.records[0].asset_materialization if found.records else None
    if materialization is None or "model_key" not in materialization.metadata:
        raise dg.Failure(f"Shard {shard!r}: this Dagster instance has no materialization of "
                         f"{stats_key.to_user_string()} saying which model scored it: materialize it for the shard first")
    return str(materialization.metadata["model"].value), str(materialization.metadata["model_key"].value)


def build_embeddings_asset(spec: PipelineSpec, image_pair_stats: dg.AssetsDefinition) -> dg.AssetsDefinition:
    stats_key = spec.key("image_pair_stats")

    @dg.asset(
        **asset_arguments(spec, "image_embeddings"),
        **shard_asset_arguments(spec.partitions),
        deps=[image_pair_stats],
        required_resource_keys={spec.storage_key},
        kinds={"numpy", "parquet"},
        code_version="1",
        description="The embeddings of the shard's scored images, for the next job (dedup, retrieval, clustering), "
        f"in clip-retrieval's layout under `<data>/output/embeddings/`: `{IMG_EMB}/img_emb_<name>.npy` (float32 unit "
        "vectors, one row per distinct image of the shard's ok samples, in the order they first appear) and "
        f"`{METADATA}/metadata_<name>.parquet`, aligned row for row ({', '.join(METADATA_COLUMNS)}; image_path and "
        "sample_id where the image was first seen). `<name>` is the shard's path relative to raw/ made a safe file "
        "name (`more/b.jsonl` -> `more_b-<first 8 hex of its sha256>`). Read from the embedding cache with the model "
        "that scored the shard: no model runs.",
    )
    def image_embeddings(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        storage = spec.storage_of(context)
        shards = run_shards(context, spec)
        models = {shard: scoring_model(context.instance, stats_key, shard) for shard in shards}
        results = storage.results
        with storage.query(shards) as conn:
            exported = [export_shard(conn, results, shard, model=models[shard][0],
                                     model_key=full_model_key(results, models[shard][1]),
                                     directory=storage.embeddings_dir) for shard in shards]
        dimensions = sorted({e.dimension for e in exported})
        files: dict[str, Any] = {e.shard: {"img_emb": str(e.img_emb), "metadata": str(e.metadata), "rows": e.rows,
                                           "dimension": e.dimension, "name": shard_file_name(e.shard)} for e in exported}
        context.log.info(f"Exported {sum(e.rows for e in exported)} embeddings of {len(exported)} shards to "
                         f"{storage.embeddings_dir}")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(e.rows for e in exported),
            "dimension": dimensions[0] if len(dimensions) == 1 else ", ".join(map(str, dimensions)),
            **shards_metadata(shards),
            "files": dg.MetadataValue.json(files),
            "model": ", ".join(sorted({model for model, _ in models.values()})),
            "model_key": ", ".join(sorted({key for _, key in models.values()})),
            "output_dir": dg.MetadataValue.path(str(storage.embeddings_dir)),
        })

    return image_embeddings
