"""The Ray engine on a real local Ray: the same scores as the local engine, through core and through a Dagster
run, and a model actor killed mid-run is restarted by Ray without failing the run."""

import os
import signal
import subprocess
import threading

import pytest

from pairfilter_dagster.testing import PHOTOS, distinct_photos

from .conftest import read_samples_with_photos, write_manifest
from .runs import materialize_all_shards
from .test_assets import query

ray = pytest.importorskip("ray")  # a safety net only: CI installs the ray extra

from pairfilter_dagster.core.embedding.model import ModelSpec  # noqa: E402
from pairfilter_dagster.core.embedding.ray_engine import RayEngine, RaySettings, ray_session  # noqa: E402
from pairfilter_dagster.core.scoring import PairScorer, chunked, score_samples  # noqa: E402
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage, RayConfig  # noqa: E402

from .pipeline import PIPELINE as assets  # noqa: E402

ASSETS = [assets.raw_samples, assets.image_pair_stats, assets.filtered_samples]
ACTOR_TITLE = "ClipEmbedActor"
"""Part of the model actor's process title, `ray::MapWorker(MapBatches(ClipEmbedActor))`."""


def test_a_local_ray_started_for_a_step_is_shut_down_after_it():
    """Runs before the module's shared Ray starts: with no address, a Ray is started and stopped again."""
    assert not ray.is_initialized()
    with ray_session(None):
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] >= 1
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs: one for the model actor, one for Ray Data's decode tasks)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def engine(clip_dir, batch_size=4):
    return RayEngine(ModelSpec(str(clip_dir), device="cpu"), batch_size=batch_size,
                     settings=RaySettings(actors=1, num_cpus=1))


@pytest.fixture
def odd_data_dir(bundled_data_dir):
    """The bundled photos plus a truncated JPEG (its header reads, so only decoding fails) and a 1x1 pixel PNG."""
    from PIL import Image

    images = bundled_data_dir / "images"
    (images / "truncated.jpg").write_bytes((PHOTOS / "img9.jpg").read_bytes()[:20_000])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(images / "one_pixel.png")
    write_manifest(bundled_data_dir / "raw" / "odd.jsonl", [
        {"text": "truncated", "images": ["../images/cat.jpg", "../images/truncated.jpg"]},
        {"text": "one pixel", "images": ["../images/one_pixel.png", "../images/img3.jpg"]},
        {"text": "duplicate of pair-09", "images": ["../images/img9_copy.jpg", "../images/img9.jpg"]},
    ])
    return bundled_data_dir


def assert_same_rows(rows, expected):
    assert [(r.sample_id, r.status, r.error, r.image_hashes) for r in rows] == [
        (r.sample_id, r.status, r.error, r.image_hashes) for r in expected
    ]
    for row, want in zip(rows, expected):
        assert row.image_pair_similarity == pytest.approx(want.image_pair_similarity, abs=1e-5)


def test_ray_engine_scores_equal_the_local_engine(local_ray, odd_data_dir, tiny_clip_dir, embedder):
    samples = read_samples_with_photos(odd_data_dir / "raw")
    local_rows, local_report = score_samples(samples, embedder, batch_size=4)
    with engine(tiny_clip_dir) as ray_engine:
        rows, report = score_samples(samples, embedder, batch_size=4, engine=ray_engine)

    assert_same_rows(rows, local_rows)
    by_id = {row.sample_id: row for row in rows}
    assert by_id["odd.jsonl:1"].status == "unreadable_image" and "truncated" in by_id["odd.jsonl:1"].error
    assert by_id["odd.jsonl:2"].status == "ok"
    assert sum(row.status == "ok" for row in rows) == 11
    # Every distinct picture embedded once (cat.jpg is in three samples, img9 under two names), failures apart.
    distinct = {h for row in rows if row.status == "ok" for h in row.image_hashes}
    assert report.images_embedded == local_report.images_embedded == len(distinct)
    assert report.decode_failures == local_report.decode_failures == 1
    assert report.forward_passes >= 1


def stats_table(data_dir):
    """The stats rows, with the data folder's own path taken out of the error messages."""
    rows = query(data_dir, "SELECT sample_id, status, error, image_hashes, image_pair_similarity FROM image_pair_stats "
                           "ORDER BY manifest, line_number")
    return [(sid, status, error.replace(str(data_dir), "<data>"), *rest) for sid, status, error, *rest in rows]


def materialize(data_dir, clip_dir, **clip_options):
    return materialize_all_shards(
        ASSETS,
        data_dir,
        resources={"clip": ClipModel(hf_clip=str(clip_dir), device="cpu", batch_size=4, **clip_options),
                   "storage": PairfilterStorage(data_dir=str(data_dir))},
    )


def test_dagster_run_on_ray_writes_the_local_engines_stats_table(local_ray, odd_data_dir, tiny_clip_dir, tmp_path):
    import shutil

    local_dir = shutil.copytree(odd_data_dir, tmp_path / "local-run")
    assert materialize(local_dir, tiny_clip_dir).success
    result = materialize(odd_data_dir, tiny_clip_dir, ray=RayConfig(actors=1, num_cpus=1))
    assert result.success
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["image_pair_stats"]]
    assert events and {e.materialization.metadata["engine"].value for e in events} == {"ray"}
    assert ray.is_initialized()  # the step used the Ray it found, and left it running

    ray_rows, local_rows = stats_table(odd_data_dir), stats_table(local_dir)
    assert [row[:4] for row in ray_rows] == [row[:4] for row in local_rows]
    for ray_row, local_row in zip(ray_rows, local_rows):
        assert ray_row[4] == pytest.approx(local_row[4], abs=1e-5)
    assert sum(row[1] == "ok" for row in ray_rows) == 11


def test_actors_run_on_cuda_exactly_when_they_get_a_gpu(tiny_clip_dir):
    spec = ModelSpec(str(tiny_clip_dir))  # device auto
    assert RayEngine(spec, batch_size=4).actor_spec.device == "cpu"
    assert RayEngine(spec, batch_size=4, settings=RaySettings(num_gpus=1)).actor_spec.device == "cuda"
    assert RayEngine(ModelSpec(str(tiny_clip_dir), device="cuda", dtype="float16", precision="fast"), batch_size=4,
                     settings=RaySettings(num_gpus=0.5)).actor_spec.device == "cuda"


def test_bad_ray_settings_fail_before_any_work(tiny_clip_dir):
    with pytest.raises(ValueError, match="actors"):
        ClipModel(hf_clip=str(tiny_clip_dir), ray={"actors": 0})
    with pytest.raises(ValueError, match="ray.num_gpus"):
        ClipModel(hf_clip=str(tiny_clip_dir), ray={}, device="cuda")
    with pytest.raises(ValueError, match="dtype"):
        ClipModel(hf_clip=str(tiny_clip_dir), ray={}, dtype="float16")


MISSING_RAY_RUN = r"""
import sys
sys.modules["ray"] = None  # as if Ray were not installed: `import ray` fails
import dagster as dg
from pairfilter_dagster.defs.pipeline import build_pipeline
from pairfilter_dagster.defs.resources import ClipModel, PairfilterStorage

assets = build_pipeline()
instance = dg.DagsterInstance.ephemeral()
instance.add_dynamic_partitions("manifest_shards", ["pairs.jsonl"])
result = dg.materialize(
    [assets.raw_samples, assets.image_pair_stats],
    instance=instance,
    partition_key="pairs.jsonl",
    resources={"clip": ClipModel(hf_clip=sys.argv[1], device="cpu"),
               "storage": PairfilterStorage(data_dir=sys.argv[2])},
    run_config={"resources": {"clip": {"config": {"ray": {}}}}},
    raise_on_error=False,
)
failures = [e for e in result.all_events if e.is_failure]
steps = [e.step_key for e in failures if e.step_key]
print(result.success, steps, "\n".join(str(e.event_specific_data) for e in failures))
"""


def test_engine_ray_without_ray_installed_fails_before_any_work(bundled_data_dir, tiny_clip_dir):
    """In process, resources are built when the run starts, so the run fails there (with the multiprocess executor,
    `raw_samples` checks the clip overrides first)."""
    import sys

    out = subprocess.run([sys.executable, "-c", MISSING_RAY_RUN, str(tiny_clip_dir), str(bundled_data_dir)],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("False [] ")  # the run failed, no step did
    assert "pip install 'pairfilter-dagster[ray]'" in out
    assert not (bundled_data_dir / "output").exists() and not (bundled_data_dir / "catalog.duckdb").exists()


def actor_pids():
    """Process ids of the model actors, found by their Ray process title."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {int(line.split(None, 1)[0]) for line in out.splitlines() if ACTOR_TITLE in line and "ray::" in line}


def test_a_killed_actor_is_restarted_and_the_run_succeeds(local_ray, tmp_path, tiny_clip_dir, embedder):
    data_dir = tmp_path / "data"
    photos = distinct_photos(data_dir / "images", 64, max_side=1200)
    pairs = zip(photos[::2], photos[1::2])
    write_manifest(data_dir / "raw" / "pairs.jsonl", [{"text": "pair", "images": [str(a), str(b)]} for a, b in pairs])
    samples = read_samples_with_photos(data_dir / "raw")
    local_rows, _ = score_samples(samples, embedder, batch_size=4)

    killed, embedded_at_kill, seen_after_kill = [], [], set()
    done = threading.Event()

    def kill_first_actor_after_its_first_batch(report, refs_done):
        """Called by the scorer after each batch it receives from Ray: the first time, SIGKILL the actor."""
        if not killed:
            (pid,) = actor_pids()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            embedded_at_kill.append(report.images_embedded)

    def watch_actors():
        """The actors alive after the kill, looked for every 50 ms: the new one may finish the remaining batches
        and be shut down with the run before the scorer's next callback."""
        while not done.wait(0.05):
            if killed:
                seen_after_kill.update(actor_pids())

    watcher = threading.Thread(target=watch_actors, daemon=True)
    watcher.start()
    try:
        with engine(tiny_clip_dir) as ray_engine, \
                PairScorer(ray_engine, on_progress=kill_first_actor_after_its_first_batch) as scorer:
            rows = [row for chunk in chunked(samples, 1000) for row in scorer.score_chunk(chunk)]
    finally:
        done.set()
        watcher.join()

    assert killed, "the actor was never seen"
    assert embedded_at_kill[0] < 64, "the kill came after the last batch: not mid-run"
    assert seen_after_kill - set(killed), "Ray did not start a new actor"
    assert_same_rows(rows, local_rows)
    assert [row.status for row in rows] == ["ok"] * 32
    assert scorer.report.images_embedded == 64
