"""The two precisions: exact stays float32 with Data-Juicer's scores; fast runs bfloat16 exactly where the CPU
computes it in hardware, decodes at reduced size, keeps its embeddings apart in the cache, and is recorded on the
stats asset. Contradictory settings are refused before any work, naming the fields."""

from pathlib import Path

import dagster as dg
import pytest

from pairfilter_dagster.core.embedding.cache_files import EmbeddingFiles
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.embedding.precision import cpu_bf16_feature, run_dtype
from pairfilter_dagster.core.embedding.ray_engine import RaySettings
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.scoring import score_samples
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage
from pairfilter_dagster.testing import PHOTOS

from .conftest import read_samples_with_photos, write_manifest
from .runs import materialize_all_shards
from .test_assets import ASSETS, CHECKS, metadata
from .test_bad_config import assert_refused_before_any_work, launch

PAIRS = [("cat.jpg", "img2.jpg"), ("img1.png", "img3.jpg"), ("cat.jpg", "cat_crop.jpg"), ("img9.jpg", "img10.jpg"),
         ("blip.jpg", "blip_flip.jpg"), ("img_pair_1.jpg", "img_pair_2.jpg")]


@pytest.fixture(scope="module")
def fast_embedder(tiny_clip_dir):
    return ClipEmbedder.load(ModelSpec(str(tiny_clip_dir), device="cpu", precision="fast"))


def cpu_flags() -> set[str]:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


def test_fast_runs_bfloat16_exactly_where_the_cpu_computes_it(fast_embedder):
    flags = cpu_flags()
    feature = cpu_bf16_feature()
    if flags:
        assert (feature is not None) == bool(flags & {"amx_bf16", "amx_tile", "avx512_bf16"})
    dtype, reason = run_dtype("fast", None, "cpu")
    if feature:
        assert dtype == fast_embedder.dtype == "bfloat16" and feature in reason
    else:
        assert dtype == fast_embedder.dtype == "float32" and "neither AMX nor AVX-512 BF16" in reason


def test_the_dtype_each_setting_runs_in():
    assert run_dtype("exact", None, "cpu")[0] == run_dtype("exact", None, "cuda")[0] == "float32"
    assert run_dtype("fast", None, "cuda")[0] == "float16"
    assert run_dtype("fast", "bfloat16", "cuda")[0] == "bfloat16"
    assert run_dtype("fast", "float32", "cpu")[0] == "float32"
    with pytest.raises(ValueError, match="dtype: float16 needs device cuda"):
        run_dtype("fast", "float16", "cpu")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_exact_with_a_half_dtype_is_refused_naming_both_fields(tiny_clip_dir, dtype):
    for make in (lambda: ModelSpec(str(tiny_clip_dir), dtype=dtype),
                 lambda: ClipModel(hf_clip=str(tiny_clip_dir), dtype=dtype)):
        with pytest.raises(ValueError, match=f"precision: exact runs the model in float32, but dtype is {dtype}"):
            make()
    with pytest.raises(ValueError, match="precision"):
        ModelSpec(str(tiny_clip_dir), precision="medium")


def test_a_contradiction_at_launch_is_refused_before_any_work(bundled_data_dir, tiny_clip_dir):
    with pytest.raises(dg.DagsterResourceFunctionError) as caught:
        launch(ASSETS, bundled_data_dir, tiny_clip_dir, clip={"precision": "exact", "dtype": "bfloat16"})
    assert_refused_before_any_work(caught, "precision: exact", bundled_data_dir)
    with pytest.raises(dg.DagsterInvalidConfigError, match="precision"):
        launch(ASSETS, bundled_data_dir, tiny_clip_dir, clip={"precision": "medium"})


def scores(embedder, tmp_path, name, cache=None):
    write_manifest(tmp_path / name / "raw" / "m.jsonl", [{"images": [str(PHOTOS / a), str(PHOTOS / b)]} for a, b in PAIRS])
    rows, report = score_samples(read_samples_with_photos(tmp_path / name / "raw"), embedder, batch_size=4, cache=cache)
    assert [row.status for row in rows] == ["ok"] * len(PAIRS)
    return [row.image_pair_similarity[0] for row in rows], report


def test_fast_scores_are_near_the_exact_ones_and_never_share_their_cache(embedder, fast_embedder, tmp_path):
    assert fast_embedder.model_key != embedder.model_key
    results = ResultFiles.under(tmp_path / "output")  # one cache folder for both: the model key keeps them apart
    with EmbeddingFiles(results, embedder.model_key) as cache:
        exact, _ = scores(embedder, tmp_path, "exact", cache)
    with EmbeddingFiles(results, fast_embedder.model_key) as cache:
        fast, report = scores(fast_embedder, tmp_path, "fast", cache)
    with EmbeddingFiles(results, embedder.model_key) as exact_cache:
        assert exact_cache.count() == 11  # written, and not found by the fast model
    assert report.cache_hits == 0 and report.images_embedded == 11  # cat.jpg is in two pairs
    # the tiny model sees 32-pixel crops, where reduced decoding moves pixels most; ViT-B/32 figures: performance.md
    assert max(abs(a - b) for a, b in zip(exact, fast)) < 0.05
    assert exact != fast


def test_a_fast_embedder_loaded_twice_has_the_same_key(tiny_clip_dir, fast_embedder):
    again = ClipEmbedder.load(ModelSpec(str(tiny_clip_dir), device="cpu", precision="fast"))
    assert again.model_key == fast_embedder.model_key


def test_the_stats_asset_records_the_precision_and_dtype(bundled_data_dir, tiny_clip_dir, fast_embedder):
    def run(precision):
        return materialize_all_shards(
            [*ASSETS, *CHECKS], bundled_data_dir,
            resources={"clip": ClipModel(hf_clip=str(tiny_clip_dir), batch_size=4, precision=precision),
                       "storage": PairfilterStorage(data_dir=str(bundled_data_dir))})

    exact = run("exact")
    fast = run("fast")
    assert exact.success and fast.success
    assert all(check.passed for check in fast.get_asset_check_evaluations())
    exact_stats, fast_stats = metadata(exact, "image_pair_stats"), metadata(fast, "image_pair_stats")
    assert (exact_stats["precision"], exact_stats["dtype"]) == ("exact", "float32")
    assert (fast_stats["precision"], fast_stats["dtype"]) == ("fast", fast_embedder.dtype)
    assert fast_stats["model_key"] != exact_stats["model_key"]
    assert fast_stats["images_embedded"] == exact_stats["images_embedded"] == 14  # fast reuses none of exact's


def test_ray_actors_get_the_dtype_the_step_resolved(tiny_clip_dir):
    fast = ModelSpec(str(tiny_clip_dir), precision="fast")
    cpu_actors, gpu_actors = RaySettings(), RaySettings(num_gpus=1)
    assert cpu_actors.actor_spec(fast).dtype == run_dtype("fast", None, "cpu")[0]
    assert cpu_actors.step_spec(fast) == cpu_actors.actor_spec(fast)
    assert (gpu_actors.actor_spec(fast).device, gpu_actors.actor_spec(fast).dtype) == ("cuda", "float16")
    assert gpu_actors.step_spec(fast).device == "cuda"  # float16 weights are hashed as cuda loads them
    bf16 = ModelSpec(str(tiny_clip_dir), precision="fast", dtype="bfloat16")
    assert (gpu_actors.step_spec(bf16).device, gpu_actors.step_spec(bf16).dtype) == ("cpu", "bfloat16")
    assert cpu_actors.actor_spec(ModelSpec(str(tiny_clip_dir))).dtype == "float32"
    with pytest.raises(ValueError, match="dtype: float16 needs GPU actors"):
        cpu_actors.actor_spec(ModelSpec(str(tiny_clip_dir), precision="fast", dtype="float16"))
