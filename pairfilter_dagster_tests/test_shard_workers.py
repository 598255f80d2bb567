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

name, barrier, workers, kill, config, *shards = sys.argv[1:]
barrier, workers, kill = Path(barrier), int(workers), kill == "kill"
score_chunk, flush = PairScorer.score_chunk, EmbeddingFiles.flush
arrived = []

def meet_the_others_first(self, samples):
    if not arrived:
        arrived.append(True)
        (barrier / name).touch()
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
sys.exit(cli.main([*(option for shard in shards for option in ("--shard", shard)), "--config-json", config]))
"""
SHARDS = ["sub/part-0.jsonl", "part-1.jsonl", "sub/part-2.jsonl", "part-3.jsonl"]
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


VICTIM = "part-3.jsonl"
"""The shard whose worker is killed: 3 pairs scored before, 4 pairs (8 new pictures) added since."""


def dataset(folder: Path, grown: bool = True) -> Path:
    (folder / "images").mkdir(parents=True)
    for n, shard in enumerate(SHARDS):
        new_pairs(folder, shard, 3, 3 * n)
    if grown:
        new_pairs(folder, VICTIM, 4, 100)
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


def start_workers(location: str, groups: list[list[str]], clip_dir: Path, home: Path, barrier: Path,
                  victim: str | None = None) -> list[subprocess.Popen]:
    """One `pairfilter-materialize --shard ...` process per group of shards, all at once."""
    barrier.mkdir()
    env = cli_env(location, clip_dir, home)
    return [subprocess.Popen([sys.executable, "-c", WORKER, f"worker-{n}", str(barrier), str(len(groups)),
                              "kill" if victim in group else "live", CONFIG, *group],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n, group in enumerate(groups)]


def finish(workers: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each worker, once every one has ended."""
    outputs = [worker.communicate(timeout=400) for worker in workers]
    return [(worker.returncode, *output) for worker, output in zip(workers, outputs)]


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


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory, tiny_clip_dir):
    """The reference per location, made once: every shard in one run, one process. (scores, kept_ids.txt)"""
    found: dict[str, tuple[dict, str]] = {}

    def reference(request, where: str) -> tuple[dict, str]:
        if where not in found:
            location = place(request, dataset(tmp_path_factory.mktemp(f"serial-{where}")), f"{where}/serial")
            materialize(location, tiny_clip_dir, tmp_path_factory.mktemp("home"))
            storage = PairfilterStorage(data_dir=location)
            found[where] = stats(storage.results), (storage.output_root / "kept_ids.txt").read_text()
        return found[where]

    return reference


def embedded_and_cached(stdout: str) -> list[tuple[int, int]]:
    """(images embedded, images from the cache) of each run a worker's summary tells of."""
    found = re.findall(r"^  images: +(\d+) embedded, (\d+) from cache$", stdout, flags=re.MULTILINE)
    return [(int(embedded), int(cached)) for embedded, cached in found]


@pytest.mark.parametrize(("where", "workers"), [("local", 2), ("local", 4), ("s3", 2), ("s3", 4)])
def test_shard_workers_score_at_once_and_a_killed_one_resumes(request, serial_runs, where, workers, tiny_clip_dir,
                                                              tmp_path):
    """Two workers take two shards each; of four, the one on VICTIM is killed, after that shard was scored once
    before it grew."""
    reference, serial_ids = serial_runs(request, where)
    groups = [SHARDS[n::workers] for n in range(workers)]
    killing = workers == 4
    home = tmp_path / "home"
    folder = dataset(tmp_path / "parallel", grown=not killing)
    parallel = place(request, folder, f"{where}{workers}/parallel")
    results = PairfilterStorage(data_dir=parallel).results
    if killing:
        materialize(parallel, tiny_clip_dir, home, "--shard", VICTIM)  # its previous results
        before = results.shard_file(StatsRow, VICTIM).read_bytes()
        upload(request, folder, parallel, new_pairs(folder, VICTIM, 4, 100))

    done = finish(start_workers(parallel, groups, tiny_clip_dir, home, tmp_path / "barrier",
                                victim=VICTIM if killing else None))
    for (rc, stdout, _), group in zip(done, groups):
        if VICTIM in group and killing:
            assert rc == -signal.SIGKILL
            continue
        assert rc == 0, done
        fresh = [(14, 0) if shard == VICTIM else (6, 0) for shard in group]  # one run per shard
        assert embedded_and_cached(stdout) == fresh, stdout
    if killing:
        assert results.shard_file(StatsRow, VICTIM).read_bytes() == before  # its previous results, whole
        assert [name for name in parquet_files(results.cache_root) if name.split("/", 1)[1].startswith(f"{VICTIM}/")]
        rerun = materialize(parallel, tiny_clip_dir, home, "--shard", VICTIM)
        ((embedded, cached),) = embedded_and_cached(rerun.stdout)
        assert embedded < 8 and cached == 6 + (8 - embedded)  # resumed: the killed run's block was not redone

    assert_same_scores(stats(results), reference)
    dataset_run = materialize(parallel, tiny_clip_dir, home, "--dataset")
    assert re.search(rf"^  kept: +\d+ of {3 * len(SHARDS) + 4} samples", dataset_run.stdout, flags=re.MULTILINE)
    assert (results.root.parent / "kept_ids.txt").read_text() == serial_ids
