"""A run killed with SIGKILL in the middle of scoring loses nothing: the previous outputs stay whole, the
embeddings already computed are kept as block files, and the next run finishes the work without redoing it."""

import json
import shutil
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pairfilter_dagster.core.results import ResultFiles, parquet_files
from pairfilter_dagster.core.schema import FilteredRow, StatsRow

from .conftest import REPO
from .test_assets import ASSETS, metadata, query, run

BLOCK = 3
"""Embeddings per cache file in the killed run: batches of two, so a block is written every second batch."""
SCORE_THEN_DIE = """
import os, signal, sys
from pathlib import Path
from pairfilter_dagster.core import stages
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.results import ResultFiles

clip, data, kill_after, block = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
embedder = ClipEmbedder.load(ModelSpec(clip, device="cpu"))

def die_after_some_batches(report, refs_done):
    if report.forward_passes >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

results = ResultFiles.under(data / "output")
shards = list_shards(data / "raw").readable
stages.ingest(results, shards, SampleRules.for_data_dir(data))
with LocalEngine(embedder, batch_size=2) as engine:
    stages.score(results, sorted(shards), embedder, engine, on_progress=die_after_some_batches, block=block,
                 file_hashes=data / "local_state" / "file_hashes")
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


def temp_files(folder):
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


def test_sigkill_mid_scoring_keeps_outputs_and_embeddings_and_the_rerun_completes(bundled_data_dir, tiny_clip_dir):
    data_dir = bundled_data_dir
    assert run(ASSETS, data_dir, tiny_clip_dir).success
    results = ResultFiles.under(data_dir / "output")
    stats_before = query(data_dir, "SELECT * FROM image_pair_stats ORDER BY sample_id")
    untouched = [results.shard_file(StatsRow, "pairs.jsonl"), results.filtered_file]  # after the kill point
    bytes_before = [path.read_bytes() for path in untouched]
    jsonl = data_dir / "output" / "filtered_samples.jsonl"
    jsonl_before = jsonl.read_bytes()
    assert query(data_dir, "SELECT count(*) FROM embedding_cache") == [(14,)]
    blocks_before = parquet_files(results.cache_root)

    add_new_pairs(data_dir, 10)
    killed = subprocess.run(
        [sys.executable, "-c", SCORE_THEN_DIE, str(tiny_clip_dir), str(data_dir), "3", str(BLOCK)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    # Nothing half-written: the old stats and output files are intact, the killed shard has no stats file (its
    # temp file is no table), and of three batches of two, the block written at the second batch was kept: what
    # waited for the next block is all the kill lost.
    assert query(data_dir, "SELECT * FROM image_pair_stats ORDER BY sample_id") == stats_before
    assert [path.read_bytes() for path in untouched] == bytes_before and jsonl.read_bytes() == jsonl_before
    assert not results.shard_file(StatsRow, "new.jsonl").exists()
    assert [name.split(".")[:3] for name in temp_files(results.root)] == [["", "new", "jsonl"]]
    new_blocks = sorted(set(parquet_files(results.cache_root)) - set(blocks_before))
    assert [name.split("/")[1] for name in new_blocks] == ["new.jsonl"]  # in the shard's own cache folder
    assert [pq.read_metadata(results.cache_root / name).num_rows for name in new_blocks] == [4]
    assert query(data_dir, "SELECT count(*) FROM embedding_cache") == [(14 + 4,)]

    rerun = run(ASSETS, data_dir, tiny_clip_dir)
    assert rerun.success and all(e.passed for e in rerun.get_asset_check_evaluations())
    stats = metadata(rerun, "image_pair_stats")
    # The picture both bundled shards hold is looked up once per shard: 15 hits of the 14 embedded before.
    assert (stats["images_embedded"], stats["cache_hits"]) == (20 - 4, 15 + 4)
    assert stats["dagster/row_count"] == 23
    assert temp_files(results.root) == []  # the killed run's temp file went with the next write of its file
    assert query(data_dir, "SELECT count(*), count(DISTINCT content_hash) FROM embedding_cache") == [(34, 34)]
    assert query(data_dir, f"SELECT count(*) FROM {FilteredRow.TABLE}") == [(len(jsonl.read_text().splitlines()),)]

    # Same scores as a run that was never interrupted.
    resumed = dict(query(data_dir, "SELECT sample_id, image_pair_similarity FROM image_pair_stats"))
    shutil.rmtree(results.root)
    assert run(ASSETS, data_dir, tiny_clip_dir).success
    clean = dict(query(data_dir, "SELECT sample_id, image_pair_similarity FROM image_pair_stats"))
    assert resumed.keys() == clean.keys()
    for sample_id, scores in clean.items():
        assert resumed[sample_id] == pytest.approx(scores, abs=1e-6)
