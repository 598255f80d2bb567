"""No single writer: `pairfilter-materialize --shard KEY` workers started at once on one dataset, on the local disk
and on a real S3 API (moto's server), each a process of its own. Every worker holds at a barrier on its first chunk
until all of them are scoring, so a worker that waited on another (a lock, a pool) would never get there. Their
results equal a serial run's; one of them killed with SIGKILL mid-scoring leaves every other shard finished and its
own previous files whole, and its rerun resumes from the embeddings it had written."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pairfilter_dagster.core.catalog import query_engine
from pairfilter_dagster.core.results import ResultFiles, parquet_files
from pairfilter_dagster.core.schema import StatsRow
from pairfilter_dagster.defs.resources import PairfilterStorage

from .conftest import BUNDLED_DATA, REPO

BUCKET = "pairfilter-workers"
WORKER = """
import os, signal, sys, time
from pathlib import Path
from pairfilter_dagster import cli
from pairfilter_dagster.core.embedding.cache_files import EmbeddingFiles
from pairfilter_dagster.core.scoring import PairScorer

shard, barrier, workers, kill, config = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "kill", sys.argv[5]
score_chunk, flush = PairScorer.score_chunk, EmbeddingFiles.flush
arrived = []

def meet_the_others_first(self, samples):
    if not arrived:
        arrived.append(True)
        (barrier / shard.replace("/", "_")).touch()
        deadline = time.monotonic() + 240
        while len(list(barrier.iterdir())) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError("the other workers never reached scoring: a worker waited on another")
            time.sleep(0.05)
    return score_chunk(self, samples)

def flush_then_die(self):
    flush(self)
    if kill and self.blocks_written:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-scoring: one block of new embeddings written

PairScorer.score_chunk = meet_the_others_first
EmbeddingFiles.flush = flush_then_die
sys.exit(cli.main(["--shard", shard, "--config-json", config]))
"""
CONFIG = json.dumps({"resources": {"storage": {"config": {"embeddings_per_file": 2}},
                                   "clip": {"config": {"batch_size": 2}}}})


def new_pairs(data_dir: Path, shard: str, count: int, first: int) -> list[str]:
    """`count` samples of two new pictures each (crops of a real photo, all distinct), appended to `shard`;
    returns the files written (relative to the data folder)."""
    photo = Image.open(BUNDLED_DATA / "images" / "blip.jpg")
    manifest = data_dir / "raw" / shard
    manifest.parent.mkdir(parents=True, exist_ok=True)
    written, lines = [], []
    for i in range(first, first + count):
        names = []
        for j in (0, 1):
            name = f"images/w{i}_{j}.jpg"
            offset = 3 * (2 * i + j)  # distinct crops, all inside the photo (2048 x 1365)
            photo.crop((offset, offset, offset + 500, offset + 380)).save(data_dir / name)
            names.append(os.path.relpath(data_dir / name, manifest.parent))
            written.append(name)
        lines.append(json.dumps({"text": f"pair {i}", "images": names}) + "\n")
    with manifest.open("a") as handle:
        handle.write("".join(lines))
    return [*written, f"raw/{shard}"]


def dataset(folder: Path, shards: list[str]) -> Path:
    (folder / "images").mkdir(parents=True)
    for n, shard in enumerate(shards):
        new_pairs(folder, shard, 3, 3 * n)
    return folder


def cli_env(location: str, clip_dir: Path, home: Path) -> dict:
    env = {**os.environ, "PAIRFILTER_DATA_DIR": location, "PAIRFILTER_HF_CLIP": str(clip_dir),
           "PAIRFILTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_HOME", None)
    return env


def materialize(location: str, clip_dir: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pairfilter_dagster.cli", "--config-json", CONFIG, *args],
                          env=cli_env(location, clip_dir, home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_workers(location: str, shards: list[str], clip_dir: Path, home: Path, barrier: Path,
                  victim: str | None = None) -> dict[str, subprocess.Popen]:
    barrier.mkdir()
    env = cli_env(location, clip_dir, home)
    return {shard: subprocess.Popen([sys.executable, "-c", WORKER, shard, str(barrier), str(len(shards)),
                                     "kill" if shard == victim else "live", CONFIG],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for shard in shards}


def finish(workers: dict[str, subprocess.Popen]) -> dict[str, tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each worker, once every one has ended."""
    outputs = {shard: worker.communicate(timeout=400) for shard, worker in workers.items()}
    return {shard: (workers[shard].returncode, *outputs[shard]) for shard in workers}


def stats(results: ResultFiles) -> dict[str, tuple[str, list[float]]]:
    with query_engine(results) as conn:
        rows = conn.execute("SELECT sample_id, status, image_pair_similarity FROM image_pair_stats").fetchall()
    return {sample_id: (status, scores) for sample_id, status, scores in rows}


def assert_same_scores(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for sample_id, (status, scores) in expected.items():
        assert found[sample_id][0] == status == "ok"
        assert found[sample_id][1] == pytest.approx(scores, abs=1e-5)


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
    from pairfilter_dagster.testing import local_s3

    with local_s3(BUCKET) as fs:
        yield fs


def place(request, folder: Path, name: str) -> str:
    """The data folder where the test's location wants it: the local path, or a copy on the bucket."""
    if request.node.callspec.params["where"] == "local":
        return str(folder)
    fs = request.getfixturevalue("s3")
    fs.put(f"{folder}/", f"{BUCKET}/{name}", recursive=True)
    return f"s3://{BUCKET}/{name}"


def upload(request, folder: Path, location: str, files: list[str]) -> None:
    if location.startswith("s3://"):
        fs = request.getfixturevalue("s3")
        for name in files:
            fs.put_file(str(folder / name), f"{location.removeprefix('s3://')}/{name}")


@pytest.mark.parametrize(("where", "workers"), [("local", 2), ("local", 4), ("s3", 2), ("s3", 4)])
def test_shard_workers_score_at_once_and_a_killed_one_resumes(request, where, workers, tiny_clip_dir, tmp_path):
    shards = [f"part-{n}.jsonl" if n % 2 else f"sub/part-{n}.jsonl" for n in range(workers)]
    home = tmp_path / "home"
    serial = place(request, dataset(tmp_path / "serial", shards), f"{where}{workers}/serial")
    parallel_folder = dataset(tmp_path / "parallel", shards)
    parallel = place(request, parallel_folder, f"{where}{workers}/parallel")
    materialize(serial, tiny_clip_dir, home)  # the reference: every shard in one run
    reference = stats(PairfilterStorage(data_dir=serial).results)

    done = finish(start_workers(parallel, shards, tiny_clip_dir, home, tmp_path / "barrier-1"))
    assert {shard: rc for shard, (rc, _, _) in done.items()} == dict.fromkeys(shards, 0), done
    for _, stdout, _ in done.values():
        assert re.search(r"^  images: +6 embedded, 0 from cache$", stdout, flags=re.MULTILINE), stdout
    results = PairfilterStorage(data_dir=parallel).results
    assert_same_scores(stats(results), reference)
    dataset_run = materialize(parallel, tiny_clip_dir, home, "--dataset")
    assert re.search(rf"^  kept: +\d+ of {3 * workers} samples", dataset_run.stdout, flags=re.MULTILINE)
    serial_ids = PairfilterStorage(data_dir=serial).output_root / "kept_ids.txt"
    assert (results.root.parent / "kept_ids.txt").read_text() == serial_ids.read_text()
    if workers < 4:
        return

    victim = shards[-1]
    before = {shard: results.shard_file(StatsRow, shard).read_bytes() for shard in shards}
    upload(request, parallel_folder, parallel, new_pairs(parallel_folder, victim, 4, 100))
    done = finish(start_workers(parallel, shards, tiny_clip_dir, home, tmp_path / "barrier-2", victim=victim))
    assert done[victim][0] == -signal.SIGKILL
    assert all(done[shard][0] == 0 for shard in shards if shard != victim), done
    assert results.shard_file(StatsRow, victim).read_bytes() == before[victim]  # its previous results, whole
    blocks = [name for name in parquet_files(results.cache_root) if f"/{victim}/" in f"/{name}"]
    assert blocks  # the block it wrote before it died

    rerun = materialize(parallel, tiny_clip_dir, home, "--shard", victim)
    embedded, from_cache = map(int, re.search(r"^  images: +(\d+) embedded, (\d+) from cache$", rerun.stdout,
                                              flags=re.MULTILINE).groups())
    assert embedded < 8 and from_cache == 6 + (8 - embedded)  # resumed: the killed run's block was not redone
    grown = stats(results)
    assert len(grown) == 3 * workers + 4 and all(status == "ok" for status, _ in grown.values())
    assert_same_scores({sample_id: grown[sample_id] for sample_id in reference}, reference)
