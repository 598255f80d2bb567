"""The work outside the model, per sample, on a large dataset whose embeddings are all in the cache: ingesting the
manifest, then each stage of scoring (reading the samples file, hashing image files, cache lookups, scores and rows,
writing the stats file), then filtering; and the whole scoring stage again on the unchanged shard, whose files'
remembered hashes hold (`core/file_hashes.py`), as when a shard is re-scored.

The dataset: `samples` samples of two images each, every image its own path (hard links onto a few thousand
distinct small JPEGs cut from the bundled photos, so hashing reads and checks one file per path as it would with
distinct pictures), and a cache holding one embedding per path (the real ones for the distinct contents, random
others to give the cache the size a dataset of distinct pictures would)."""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.folders import ingest_folder, results_of, score_folder
from pairfilter_dagster.core import stages
from pairfilter_dagster.core.embedding.cache_files import EmbeddingFiles
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.file_hashes import RACY_NS
from pairfilter_dagster.core.filtering import FilterSettings
from pairfilter_dagster.core.images import ImageAccess
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.testing import distinct_photos

STAGES = ("ingest", "read", "hash", "cache", "rows", "write", "filter")


def write_linked_dataset(folder: Path, samples: int, distinct: int) -> list[Path]:
    photos = distinct_photos(folder / "photos", distinct, max_side=64, seed=1)
    (folder / "images").mkdir(parents=True)
    (folder / "raw").mkdir()
    with open(folder / "raw" / "m.jsonl", "w") as manifest:
        for i in range(samples):
            names = [f"{2 * i + j:07d}.jpg" for j in (0, 1)]
            for j, name in enumerate(names):
                os.link(photos[(2 * i + j) % distinct], folder / "images" / name)
            manifest.write(json.dumps({"id": i, "text": f"pair {i}", "images": [f"../images/{n}" for n in names]}) + "\n")
    return photos


def fill_cache(cache: EmbeddingFiles, photos: list[Path], entries: int, dimension: int) -> None:
    rng = np.random.default_rng(0)

    def unit_vectors(count: int) -> np.ndarray:
        vectors = rng.normal(size=(count, dimension)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    cache.put_many(dict(zip((hashlib.sha256(p.read_bytes()).hexdigest() for p in photos), unit_vectors(len(photos)))))
    for start in range(0, entries - len(photos), 20_000):
        count = min(20_000, entries - len(photos) - start)
        names = (hashlib.sha256(f"another picture {start + i}".encode()).hexdigest() for i in range(count))
        cache.put_many(dict(zip(names, unit_vectors(count))))


def stage_costs(folder: Path, embedder, samples: int = 100_000, distinct: int = 2_000) -> dict[str, float]:
    """Milliseconds per sample of each stage (STAGES), and `total`."""
    photos = write_linked_dataset(folder, samples, distinct)
    time.sleep(RACY_NS / 1e9)  # as a dataset copied in earlier: its files' hashes are remembered from the first run
    rules = SampleRules.for_data_dir(folder)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    shards = ingest_folder(folder, rules)
    seconds["ingest"] = time.perf_counter() - started
    with EmbeddingFiles(results_of(folder), embedder.model_key, "_filled", block=20_000) as cache:
        fill_cache(cache, photos, 2 * samples, embedder.dimension)
    access = ImageAccess(rules.image_roots)
    with LocalEngine(embedder, batch_size=32) as engine:
        report = score_folder(folder, shards, embedder, engine, state=folder, access=access)
    if report.images_embedded or set(report.status_counts) != {Status.OK}:
        raise RuntimeError(f"every sample must score from the cache, got {report}")
    seconds.update({stage: report.stage_seconds.get(stage, 0.0) for stage in ("read", "hash", "cache", "rows", "write")})
    with LocalEngine(embedder, batch_size=32) as engine:
        again = score_folder(folder, shards, embedder, engine, state=folder, access=access)
    if again.hashes_remembered != 2 * samples:
        raise RuntimeError(f"the unchanged files' hashes must be remembered, got {again.hashes_remembered}")
    seconds["hash again"] = again.stage_seconds["hash"]
    seconds["scoring again"] = sum(again.stage_seconds.get(stage, 0.0) for stage in ("read", "hash", "cache", "rows", "write"))
    started = time.perf_counter()
    stages.filter_and_publish(results_of(folder), FilterSettings(0.0, 1.0), folder / "output" / "filtered.jsonl",
                              folder / "raw", folder / "pending_publish")
    seconds["filter"] = time.perf_counter() - started
    costs = {stage: 1e3 * seconds[stage] / samples for stage in STAGES}
    costs["total"] = sum(costs.values())
    costs.update({name: 1e3 * seconds[name] / samples for name in ("hash again", "scoring again")})
    return costs
