"""No single writer, measured: shard runs serially against runs at once, re-thresholding from the stats files, and
the embedding cache's lookup cost with a million embeddings in its files.

    .venv/bin/python -m benchmarks.bench_shards            # the rows on their own (bench_scoring prints them too)
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.folders import results_of
from pairfilter_dagster.core import stages
from pairfilter_dagster.core.embedding.cache_files import DEFAULT_BLOCK, EmbeddingFiles, block_table, write_block
from pairfilter_dagster.core.filtering import FilterSettings
from pairfilter_dagster.core.schema import StatsRow
from pairfilter_dagster.core.scoring import chunked
from pairfilter_dagster.core.tables import table_file
from pairfilter_dagster.testing import distinct_photos, write_clip_checkpoint

REPO = Path(__file__).resolve().parents[1]


def shard_folder(folder: Path, shards: int, pairs_per_shard: int) -> Path:
    """`shards` JSONL shards of distinct photos (no image in two shards)."""
    photos = distinct_photos(folder / "images", 2 * shards * pairs_per_shard, max_side=640, seed=3)
    (folder / "raw").mkdir(parents=True)
    for shard in range(shards):
        with open(folder / "raw" / f"shard-{shard}.jsonl", "w") as manifest:
            for i in range(pairs_per_shard):
                a, b = photos[2 * (shard * pairs_per_shard + i)], photos[2 * (shard * pairs_per_shard + i) + 1]
                manifest.write(json.dumps({"images": [f"../images/{a.name}", f"../images/{b.name}"]}) + "\n")
    return folder


def workers_wall_clock(data: Path, clip_dir: Path, groups: list[list[str]]) -> float:
    """Seconds from the start of one `pairfilter-materialize --shard ...` process per group, all at once, until
    the last has ended."""
    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(data), "PAIRFILTER_HF_CLIP": str(clip_dir),
           "PAIRFILTER_HOME": str(data / "home"), "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_HOME", None)
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "pairfilter_dagster.cli",
                                 *(option for shard in group for option in ("--shard", shard))],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for group in groups]
    for worker in workers:
        _, stderr = worker.communicate()
        if worker.returncode:
            raise RuntimeError(f"a worker failed: {stderr[-2000:]}")
    return time.perf_counter() - started


def serial_vs_parallel(work: Path, clip_dir: Path, shards: int = 4, pairs_per_shard: int = 12) -> tuple[float, float]:
    """(seconds for the shards in one run, seconds for them split over two runs at once), each on fresh data."""
    names = [f"shard-{n}.jsonl" for n in range(shards)]
    serial = workers_wall_clock(shard_folder(work / "serial", shards, pairs_per_shard), clip_dir, [names])
    halves = [names[: shards // 2], names[shards // 2:]]
    parallel = workers_wall_clock(shard_folder(work / "parallel", shards, pairs_per_shard), clip_dir, halves)
    return serial, parallel


def rethreshold_from_files(work: Path, rows: int, shards: int = 10) -> float:
    """Seconds of the filtered dataset's core work over `rows` stats rows in `shards` files."""
    data = work / f"rethreshold-{rows}"
    (data / "raw").mkdir(parents=True)
    results = results_of(data)
    scores = np.random.default_rng(0).uniform(0.0, 1.0, rows)
    per_shard = rows // shards
    for shard in range(shards):
        name = f"m{shard}.jsonl"
        stats = (StatsRow(sample_id=f"{name}:{i + 1}", manifest=name, line_number=i + 1,
                          images=(f"a{i}.jpg", f"b{i}.jpg"), image_pair_similarity=(float(scores[shard * per_shard + i]),),
                          image_hashes=("", ""), image_pairs=((0, 1),),
                          sample_json=json.dumps({"text": f"sample {i}", "images": [f"a{i}.jpg", f"b{i}.jpg"]}))
                 for i in range(per_shard))
        with table_file(results.shard_file(StatsRow, name), StatsRow, name) as table:
            for chunk in chunked(stats, 10_000):
                table.write(chunk)
    started = time.perf_counter()
    counts = stages.filter_and_publish(results, FilterSettings(0.3, 0.9), data / "output" / "f.jsonl", data / "raw",
                                       data / "pending")
    seconds = time.perf_counter() - started
    assert counts.total == per_shard * shards
    return seconds


def fill_cache_files(work: Path, entries: int, dimension: int, model_key: str) -> tuple[list[str], float]:
    """`entries` random unit embeddings as block files of `DEFAULT_BLOCK`, as scoring runs write them; returns the
    hashes (in the order written) and the seconds writing took."""
    results = results_of(work / "cache-1m")
    rng = np.random.default_rng(0)
    hashes = [hashlib.sha256(f"picture {i}".encode()).hexdigest() for i in range(entries)]
    started = time.perf_counter()
    for block, start in enumerate(range(0, entries, DEFAULT_BLOCK)):
        vectors = rng.normal(size=(min(DEFAULT_BLOCK, entries - start), dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        table = block_table(model_key, dict(zip(hashes[start:start + len(vectors)], vectors)))
        write_block(results.cache_folder(model_key) / f"shard-{block // 100}/{block:05d}.parquet", table)
    return hashes, time.perf_counter() - started


def lookup_costs(work: Path, entries: int = 1_000_000, dimension: int = 512, samples: int = 8192) -> dict[str, float]:
    """The cache's costs with `entries` embeddings in files: seconds to index them (a run's first lookup), and
    microseconds per sample (two images) of lookups that hit in the order they were written (a shard scored
    again), that hit at random across every file (pictures seen in other shards), and that miss."""
    model_key = hashlib.sha256(b"benchmark model").hexdigest()
    hashes, writing = fill_cache_files(work, entries, dimension, model_key)
    results = results_of(work / "cache-1m")
    costs = {"write (s)": writing}
    with EmbeddingFiles(results, model_key) as cache:
        started = time.perf_counter()
        cache.refresh()
        costs["index (s)"] = time.perf_counter() - started
        rng = np.random.default_rng(1)
        start = int(rng.integers(0, entries - 2 * samples))
        patterns = {"in order": hashes[start:start + 2 * samples],
                    "at random": [hashes[i] for i in rng.choice(entries, 2 * samples, replace=False)],
                    "misses": [hashlib.sha256(f"new {i}".encode()).hexdigest() for i in range(2 * samples)]}
        for name, wanted in patterns.items():
            started = time.perf_counter()
            found = sum(len(cache.get_many(chunk)) for chunk in chunked(wanted, 2 * 4096))
            costs[f"{name} (µs/sample)"] = 1e6 * (time.perf_counter() - started) / samples
            assert found == (0 if name == "misses" else len(wanted)), name
    return costs


def shard_rows(work: Path, clip_dir: Path, entries: int = 1_000_000) -> list[tuple[str, str]]:
    rows = []
    serial, parallel = serial_vs_parallel(work, clip_dir)
    rows.append(("4 shards (12 pairs each): one run / two runs at once, 2 shards each (s; wall clock, processes "
                 "started included)", f"{serial:.1f} / {parallel:.1f} = {serial / parallel:.2f}x"))
    for count in (100_000, 1_000_000):
        rows.append((f"re-threshold {count:,} rows from 10 stats files, core (s)",
                     f"{rethreshold_from_files(work, count):.2f}"))
    costs = lookup_costs(work, entries)
    rows.append((f"embedding cache with {entries:,} embeddings of 512 floats in {entries // DEFAULT_BLOCK + 1} files: "
                 "written / indexed by a run's first lookup (s)", f"{costs['write (s)']:.1f} / {costs['index (s)']:.2f}"))
    rows.append(("cache lookups, per sample of two images: hits in written order / hits at random / misses (µs)",
                 " / ".join(f"{costs[f'{name} (µs/sample)']:.1f}" for name in ("in order", "at random", "misses"))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="embeddings in the cache for the lookup rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pairfilter-bench-shards-") as tmp:
        work = Path(tmp)
        clip_dir = write_clip_checkpoint(work / "clip-vit-b-32", size="vit-b-32")
        for name, value in shard_rows(work, clip_dir, args.entries):
            print(f"| {name} | {value} |", flush=True)


if __name__ == "__main__":
    main()
