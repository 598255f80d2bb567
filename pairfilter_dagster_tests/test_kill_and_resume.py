"""A run killed with SIGKILL in the middle of scoring loses nothing: the previous outputs stay whole, the
embeddings already computed are kept, and the next run finishes the work without redoing it."""

import json
import signal
import subprocess
import sys

import pytest
from PIL import Image

from .conftest import REPO
from .test_assets import ASSETS, metadata, query, run

SCORE_THEN_DIE = """
import os, signal, sys
from pathlib import Path
from pairfilter_dagster.core import stages, store
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.ingest.formats import read_samples

clip, data, kill_after = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
embedder = ClipEmbedder.load(ModelSpec(clip, device="cpu"))

def die_after_some_batches(report, refs_done):
    if report.forward_passes >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

with store.connect(data / "pairfilter.duckdb") as conn:
    stages.ingest(conn, read_samples(data / "raw"))
    with LocalEngine(embedder, batch_size=2) as engine:
        stages.score(conn, embedder, engine, on_progress=die_after_some_batches)
"""


def add_new_pairs(data_dir, count):
    """`count` new samples over 2 * `count` new distinct pictures (crops of a real photo)."""
    photo = Image.open(data_dir / "images" / "blip.jpg")
    lines = []
    for i in range(count):
        names = []
        for j in (0, 1):
            name = f"new_{i}_{j}.jpg"
            offset = 40 * (2 * i + j)
            photo.crop((offset, offset, offset + 600, offset + 400)).save(data_dir / "images" / name)
            names.append(f"../images/{name}")
        lines.append(json.dumps({"text": f"new pair {i}", "images": names}))
    (data_dir / "raw" / "new.jsonl").write_text("\n".join(lines) + "\n")


def test_sigkill_mid_scoring_keeps_outputs_and_embeddings_and_the_rerun_completes(bundled_data_dir, tiny_clip_dir):
    data_dir = bundled_data_dir
    assert run(ASSETS, data_dir, tiny_clip_dir).success
    stats_before = query(data_dir, "SELECT * FROM image_pair_stats ORDER BY sample_id")
    jsonl = data_dir / "output" / "filtered_samples.jsonl"
    jsonl_before = jsonl.read_bytes()
    assert query(data_dir, "SELECT count(*) FROM embedding_cache") == [(14,)]

    add_new_pairs(data_dir, 10)
    killed = subprocess.run(
        [sys.executable, "-c", SCORE_THEN_DIE, str(tiny_clip_dir), str(data_dir), "3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    # Nothing half-written: the old stats table and output file are intact; three batches of two were kept.
    assert query(data_dir, "SELECT * FROM image_pair_stats ORDER BY sample_id") == stats_before
    assert jsonl.read_bytes() == jsonl_before
    assert query(data_dir, "SELECT count(*) FROM embedding_cache") == [(14 + 6,)]

    rerun = run(ASSETS, data_dir, tiny_clip_dir)
    assert rerun.success and all(e.passed for e in rerun.get_asset_check_evaluations())
    stats = metadata(rerun, "image_pair_stats")
    assert (stats["images_embedded"], stats["cache_hits"]) == (20 - 6, 14 + 6)
    assert stats["dagster/row_count"] == 23

    # Same scores as a run that was never interrupted.
    resumed = dict(query(data_dir, "SELECT sample_id, image_pair_similarity FROM image_pair_stats"))
    (data_dir / "pairfilter.duckdb").unlink()
    assert run(ASSETS, data_dir, tiny_clip_dir).success
    clean = dict(query(data_dir, "SELECT sample_id, image_pair_similarity FROM image_pair_stats"))
    assert resumed.keys() == clean.keys()
    for sample_id, scores in clean.items():
        assert resumed[sample_id] == pytest.approx(scores, abs=1e-6)
