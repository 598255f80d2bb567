"""The embeddings handed on: real Dagster runs export each shard's embeddings in clip-retrieval's layout; they reload
with numpy.load and equal the cache's vectors exactly, row for row with the metadata parquet read back with pyarrow;
the files follow the model that scored the shard and are replaced whole or not at all."""

import hashlib
import json
import re

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from pairfilter_dagster.core.embedding.export import METADATA_COLUMNS, shard_file_name
from pairfilter_dagster.defs.resources import PairfilterStorage
from pairfilter_dagster.run_outcome import summary

from .pipeline import PIPELINE
from .test_assets import ASSETS, CHECKS, metadata, query, run, step_failure

EXPORT = [*ASSETS, PIPELINE.image_embeddings]
SHARDS = ("pairs.jsonl", "more/edge_cases.jsonl")


def first_seen_images(data_dir, shard):
    """(content hash, resolved path, sample id) of each distinct image of the shard's ok samples, first seen first,
    from the manifest and the image bytes."""
    manifest = data_dir / "raw" / shard
    seen: dict[str, tuple[str, str]] = {}
    for line_number, line in enumerate(manifest.read_text().splitlines(), start=1):
        for image in json.loads(line)["images"]:
            path = (manifest.parent / image).resolve()
            seen.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), (str(path), f"{shard}:{line_number}"))
    return [(content_hash, path, sample_id) for content_hash, (path, sample_id) in seen.items()]


def cached(data_dir, model_key):
    """{content hash: vector} of the model's embeddings, read from the cache files (the embedding_cache view)."""
    rows = query(data_dir, f"SELECT content_hash, embedding FROM embedding_cache WHERE model_key = '{model_key}'")
    return {content_hash: np.asarray(vector, dtype="<f4") for content_hash, vector in rows}


def files_of(data_dir, shard):
    name = shard_file_name(shard)
    root = data_dir / "output" / "embeddings"
    return root / "img_emb" / f"img_emb_{name}.npy", root / "metadata" / f"metadata_{name}.parquet"


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def exported(bundled_data_dir, tiny_clip_dir, instance):
    result = run(EXPORT, bundled_data_dir, tiny_clip_dir, instance=instance)
    assert result.success
    return result, bundled_data_dir


def test_embeddings_reload_and_equal_the_cache_row_for_row_with_their_metadata(exported, tiny_clip_dir):
    result, data_dir = exported
    meta = metadata(result, "image_embeddings")
    ((model_key,),) = query(data_dir, "SELECT DISTINCT model_key FROM embedding_cache")
    vectors_by_hash = cached(data_dir, model_key)

    img_emb, parquet = files_of(data_dir, "pairs.jsonl")
    vectors = np.load(img_emb)
    table = pq.read_table(parquet)
    expected = first_seen_images(data_dir, "pairs.jsonl")
    assert vectors.dtype == np.float32 and vectors.shape == (14, 24) == (len(expected), 24)  # 15 paths, 14 contents
    assert table.column_names == list(METADATA_COLUMNS) and table.num_rows == len(vectors)
    rows = table.to_pylist()
    assert [(r["content_hash"], r["image_path"], r["sample_id"]) for r in rows] == expected
    assert {(r["shard"], r["model"], r["model_key"]) for r in rows} == {("pairs.jsonl", str(tiny_clip_dir), model_key)}
    for row, vector in zip(rows, vectors):
        assert np.array_equal(vector, vectors_by_hash[row["content_hash"]])  # exactly the cached bytes
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    edge_npy, edge_parquet = files_of(data_dir, "more/edge_cases.jsonl")  # no ok sample: empty, same dimension
    assert np.load(edge_npy).shape == (0, 24) and pq.read_table(edge_parquet).num_rows == 0

    assert meta["dagster/row_count"] == 14 and meta["dimension"] == 24 and meta["shards"] == 2
    assert meta["model_key"] == model_key[:16] and meta["output_dir"] == str(data_dir / "output" / "embeddings")
    assert {shard: (info["img_emb"], info["metadata"], info["rows"]) for shard, info in meta["files"].items()} == {
        shard: (*map(str, files_of(data_dir, shard)), rows) for shard, rows in zip(SHARDS, (14, 0))}
    (check,) = [c for c in result.get_asset_check_evaluations() if c.asset_key.path == ["image_embeddings"]]
    assert check.check_name == "embeddings_align_with_metadata" and check.passed
    assert not list((data_dir / "output" / "embeddings").rglob("*.tmp"))


def test_shard_file_names_are_safe_distinct_and_recorded():
    names = {shard: shard_file_name(shard) for shard in ("more/b.jsonl", "more_b.jsonl", "a b/ü.jsonl", "../x.jsonl")}
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+-[0-9a-f]{8}", name) for name in names.values())
    assert names["more/b.jsonl"].startswith("more_b-") and names["more/b.jsonl"] != names["more_b.jsonl"]
    assert len(set(names.values())) == len(names)


def test_the_export_follows_the_model_that_scored_the_shard(exported, tiny_siglip_dir):
    _, data_dir = exported
    result = run(EXPORT, data_dir, tiny_siglip_dir)  # re-scored with SigLIP: the cache now holds both models
    assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
    img_emb, parquet = files_of(data_dir, "pairs.jsonl")
    rows = pq.read_table(parquet).to_pylist()
    (model_key,) = {row["model_key"] for row in rows}
    assert np.load(img_emb).shape == (14, 32) and {row["model"] for row in rows} == {str(tiny_siglip_dir)}
    vectors_by_hash = cached(data_dir, model_key)
    assert all(np.array_equal(v, vectors_by_hash[r["content_hash"]]) for r, v in zip(rows, np.load(img_emb)))


def test_missing_embeddings_fail_the_step_and_leave_the_previous_files(exported, tiny_clip_dir, instance):
    _, data_dir = exported
    img_emb, parquet = files_of(data_dir, "pairs.jsonl")
    before = img_emb.read_bytes(), parquet.read_bytes()
    # One embedding lost: the largest cache file rewritten without its first row (the files are never rewritten
    # by the pipeline, so this is damage from outside). Every cached image is one of pairs.jsonl's.
    cache_files = sorted((data_dir / "output" / "results" / "embedding_cache").rglob("*.parquet"),
                         key=lambda path: pq.read_metadata(path).num_rows)
    table = pq.read_table(cache_files[-1])
    pq.write_table(table.slice(1), cache_files[-1])
    result = run([PIPELINE.image_embeddings], data_dir, tiny_clip_dir, raise_on_error=False, instance=instance)
    step, error = step_failure(result)
    # Looked up chunk by chunk in the cache files: the message counts the images missing (not the shard's total).
    assert step == "image_embeddings" and "'pairs.jsonl': 1 of its images have no embedding in the cache" in error
    assert (img_emb.read_bytes(), parquet.read_bytes()) == before
    assert not list((data_dir / "output" / "embeddings").rglob("*.tmp"))


def test_without_a_recorded_scoring_run_the_step_says_what_to_do(exported, tiny_clip_dir, instance):
    _, data_dir = exported
    assert run([PIPELINE.image_embeddings], data_dir, tiny_clip_dir, instance=instance).success  # re-exported alone
    result = run([PIPELINE.image_embeddings], data_dir, tiny_clip_dir, raise_on_error=False,
                 instance=dg.DagsterInstance.ephemeral())  # knows of no image_pair_stats materialization
    step, error = step_failure(result)
    assert step == "image_embeddings" and "materialize it for the shard first" in error


def test_the_shard_job_exports_and_the_cli_summary_says_where(exported):
    result, data_dir = exported
    assert {key.to_user_string() for key in PIPELINE.jobs.shard_job.selection.resolve(PIPELINE.assets)} == {
        "raw_samples", "image_pair_stats", "image_embeddings"}
    told = summary(result, PairfilterStorage(data_dir=str(data_dir)), 1.0)
    assert f"  embeddings: 14 vectors of 24 floats, 2 shards, in {data_dir / 'output' / 'embeddings'}" in told
    assert CHECKS == PIPELINE.checks
