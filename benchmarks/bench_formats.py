"""The same pairs read from each kind of shard: JSONL naming image files, Parquet holding the image bytes, a
WebDataset tar, and JSONL plus image files on a local S3 server (moto on 127.0.0.1, through s3fs). Each is ingested
and scored from a fresh store (empty cache, so every image is read, decoded and embedded), so the rows differ only
in how samples and images are read. bench_scoring prints these rows (11.); alone:

    .venv/bin/python -m benchmarks.bench_formats [--pairs 48] [--small]
"""

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.folders import ingest_folder, score_folder
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.locations import AnyPath, as_location
from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.testing import distinct_photos, local_s3, write_clip_checkpoint

BUCKET = "pairfilter-bench"


def write_jsonl(data: Path, pairs: list[tuple[Path, Path]]) -> None:
    lines = [json.dumps({"id": i, "images": [f"../images/{a.name}", f"../images/{b.name}"]}) for i, (a, b) in enumerate(pairs)]
    (data / "raw" / "pairs.jsonl").write_text("\n".join(lines) + "\n")


def write_parquet_bytes(data: Path, pairs: list[tuple[Path, Path]]) -> None:
    images = pa.array([[a.read_bytes(), b.read_bytes()] for a, b in pairs], type=pa.list_(pa.binary()))
    pq.write_table(pa.table({"id": list(range(len(pairs))), "images": images}), data / "raw" / "pairs.parquet")


def write_tar(data: Path, pairs: list[tuple[Path, Path]]) -> None:
    with tarfile.open(data / "raw" / "pairs.tar", "w") as archive:
        for i, (a, b) in enumerate(pairs):
            for name, payload in ((f"{i:06d}.0.jpg", a.read_bytes()), (f"{i:06d}.1.jpg", b.read_bytes()),
                                  (f"{i:06d}.json", json.dumps({"id": i}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))


def local_folder(work: Path, name: str, pairs: list[tuple[Path, Path]], writer: Callable) -> Path:
    data = work / name
    (data / "raw").mkdir(parents=True)
    (data / "images").mkdir()
    for photo in {photo for pair in pairs for photo in pair}:
        os.link(photo, data / "images" / photo.name)
    writer(data, pairs)
    return data


def scored_pairs_per_second(embedder: ClipEmbedder, data: AnyPath, state: Path, batch_size: int) -> float:
    """Ingest and score one data folder into fresh result files; pairs per second over both."""
    rules = SampleRules.for_data_dir(data)
    started = time.perf_counter()
    shards = ingest_folder(data, rules)
    with LocalEngine(embedder, batch_size=batch_size) as engine:
        report = score_folder(data, shards, embedder, engine, state=state)
    seconds = time.perf_counter() - started
    if set(report.status_counts) != {Status.OK}:
        raise RuntimeError(f"every benchmark sample must score, got {report.status_counts}")
    return report.samples / seconds


def format_rows(embedder: ClipEmbedder, pairs: list[tuple[Path, Path]], work: Path, batch_size: int) -> list[tuple[str, str]]:
    """(measure, value) rows: pairs/s for each kind of shard, and each against JSONL naming files."""
    rows, rates = [], {}
    warm_up = local_folder(work, "warm-up", pairs[:4], write_jsonl)  # the first forward passes set up kernels
    scored_pairs_per_second(embedder, warm_up, warm_up, batch_size)
    kinds = {"JSONL + image files": write_jsonl, "Parquet with image bytes": write_parquet_bytes,
             "WebDataset tar": write_tar}
    for label, writer in kinds.items():
        data = local_folder(work, writer.__name__, pairs, writer)
        rates[label] = scored_pairs_per_second(embedder, data, data, batch_size)
    try:
        import moto  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        rows.append(("formats: local S3 server", "skipped: pip install -e '.[dev,s3]'"))
    else:
        with local_s3(BUCKET) as s3:
            for label, folder in (("JSONL + image files on a local S3 server", "write_jsonl"),
                                  ("Parquet with image bytes on a local S3 server", "write_parquet_bytes")):
                state = work / f"state-{folder}"
                state.mkdir()
                for part in ("raw", "images"):  # not output/: its results (the cache) are the local run's
                    s3.put(f"{work / folder / part}/", f"{BUCKET}/{folder}/{part}", recursive=True)
                data = as_location(f"s3://{BUCKET}/{folder}")
                rates[label] = scored_pairs_per_second(embedder, data, state, batch_size)
    reference = rates["JSONL + image files"]
    for label, rate in rates.items():
        rows.append((f"formats: {label} (pairs/s; / JSONL + files)", f"{rate:.2f}; {rate / reference:.2f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--small", action="store_true", help="the tiny test model instead of ViT-B/32's sizes")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clip = write_clip_checkpoint(work / "clip", **({} if args.small else {"size": "vit-b-32"}))
        embedder = ClipEmbedder.load(ModelSpec(str(clip), device="cpu"))
        photos = distinct_photos(work / "photos", 2 * args.pairs)
        pairs = list(zip(photos[::2], photos[1::2]))
        for measure, value in format_rows(embedder, pairs, work, args.batch_size):
            print(f"| {measure} | {value} |")


if __name__ == "__main__":
    main()
