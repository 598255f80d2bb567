"""Scoring benchmark: our pipeline against a Data-Juicer-style loop, on real photos, in one run.

    .venv/bin/python -m benchmarks.bench_scoring            # full ViT-B/32-sized random CLIP, CPU
    .venv/bin/python -m benchmarks.bench_scoring --device cuda --dtype float16
    .venv/bin/python -m benchmarks.bench_scoring --compile   # torch.compile'd image tower
    .venv/bin/python -m benchmarks.bench_scoring --ray       # adds the Ray engine (pip install '.[ray]')

It writes a randomly initialised checkpoint of the full ViT-B/32 architecture (the FLOPs of
openai/clip-vit-base-patch32; no model hub is needed), builds datasets of distinct JPEGs cut from the bundled photos,
and prints one table. Ratios compare numbers measured in this same run. Nothing here is a test: no assertion is
made on time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pairfilter_dagster.core import stages, store
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.images import decode_rgb
from pairfilter_dagster.core.ingest.formats import read_samples
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.schema import StatsRow, Status
from pairfilter_dagster.core.scoring import chunked
from pairfilter_dagster.testing import distinct_photos, write_clip_checkpoint

CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_features() -> str:
    """The CPU's model and the vector features the figures depend on, as /proc/cpuinfo lists them (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return f"{model}; " + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS)


def write_dataset(data_dir: Path, pairs: list[tuple[Path, Path]]) -> Path:
    raw = data_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / "pairs.jsonl", "w") as handle:
        for i, (a, b) in enumerate(pairs):
            handle.write(json.dumps({"id": i, "text": f"pair {i}", "images": [str(a), str(b)]}) + "\n")
    return data_dir


def data_juicer_loop(model, processor, pairs, device, threads: int | None = None) -> float:
    """Data-Juicer's compute_stats per sample: two PIL loads, the processor, two batch-of-1 forwards, cosine.
    Data-Juicer's op module calls torch.set_num_threads(1) at import: `threads=1` runs the loop that way, None
    with torch's default (all cores), which flatters the loop. Either runs under inference_mode, which flatters it
    too. Returns seconds."""
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        return _timed_data_juicer_loop(model, processor, pairs, device)
    finally:
        torch.set_num_threads(default_threads)


def _timed_data_juicer_loop(model, processor, pairs, device) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for a, b in pairs:
            images = [Image.open(a).convert("RGB"), Image.open(b).convert("RGB")]
            pixels = processor(images, return_tensors="pt")["pixel_values"].to(device, dtype=model.dtype)
            f1 = model.get_image_features(pixels[0].unsqueeze(0))
            f2 = model.get_image_features(pixels[1].unsqueeze(0))
            f1, f2 = (f if isinstance(f, torch.Tensor) else f.pooler_output for f in (f1, f2))
            torch.cosine_similarity(f1, f2, dim=1).item()
    return time.perf_counter() - started


def our_scoring(embedder, data_dir: Path, photos_dir: Path, batch_size: int, workers: int):
    """The stats asset's work (ingest excluded): cache lookups, overlapped decoding, batched forwards, DuckDB
    writes. Returns (seconds, report)."""
    rules = SampleRules.for_data_dir(data_dir, [str(photos_dir)])
    with store.connect(data_dir / "pairfilter.duckdb") as conn:
        stages.ingest(conn, read_samples(data_dir / "raw", rules))
        started = time.perf_counter()
        with LocalEngine(embedder, batch_size=batch_size, workers=workers) as engine:
            report = stages.score(conn, embedder, engine, workers=workers)
        if embedder.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    if set(report.status_counts) != {Status.OK}:
        raise RuntimeError(f"every benchmark sample must score, got {report.status_counts}")
    return seconds, report


def ray_scoring(spec: ModelSpec, embedder, data_dir: Path, photos_dir: Path, args) -> tuple[float, float]:
    """The stats asset's work with the Ray engine on a fresh data folder (empty cache), in one chunk as the pipeline
    does. Returns (seconds end to end, seconds until the first embedded batch reached the step). The latter is
    mostly the per-chunk start-up: actor processes, their torch/transformers imports, the model load."""
    from pairfilter_dagster.core.embedding.ray_engine import RayEngine, RaySettings

    settings = RaySettings(actors=args.ray_actors, num_cpus=args.ray_num_cpus,
                           num_gpus=1.0 if args.device == "cuda" else 0.0)
    engine = RayEngine(spec, batch_size=args.batch_size, settings=settings)
    first_batch_at: list[float] = []

    def on_progress(report, refs_done) -> None:
        if not first_batch_at and report.images_embedded:
            first_batch_at.append(time.perf_counter())

    rules = SampleRules.for_data_dir(data_dir, [str(photos_dir)])
    with store.connect(data_dir / "pairfilter.duckdb") as conn:
        stages.ingest(conn, read_samples(data_dir / "raw", rules))
        started = time.perf_counter()
        with engine:
            report = stages.score(conn, embedder, engine, workers=args.workers, on_progress=on_progress)
        ended = time.perf_counter()
    if set(report.status_counts) != {Status.OK}:
        raise RuntimeError(f"every benchmark sample must score, got {report.status_counts}")
    return ended - started, first_batch_at[0] - started


def actor_throughput(spec: ModelSpec, embedder, paths, args) -> tuple[float, int]:
    """Images/s of one model actor (`--ray-num-cpus` CPUs) fed ready pixel batches: what one actor adds to a
    cluster when decoding runs elsewhere. Returns (images/s, torch threads in the actor)."""
    import ray

    from pairfilter_dagster.core.embedding.ray_engine import ClipEmbedActor

    @ray.remote
    class TimedActor(ClipEmbedActor):
        def threads(self) -> int:
            return torch.get_num_threads()

        def run(self, pixels, batch_size: int) -> float:
            batch_size = min(batch_size, len(pixels))
            batch = {"content_hash": np.zeros(batch_size, dtype=object),
                     "error": np.full(batch_size, "", dtype=object)}
            self({**batch, "pixel_values": pixels[:batch_size]})  # warm-up
            started = time.perf_counter()
            for i in range(0, len(pixels) - batch_size + 1, batch_size):
                self({**batch, "pixel_values": pixels[i : i + batch_size]})
            return (len(pixels) // batch_size * batch_size) / (time.perf_counter() - started)

    pixels = np.stack([embedder.preprocess(decode_rgb(str(p))) for p in paths])
    options = {"num_cpus": args.ray_num_cpus, "num_gpus": 1.0 if args.device == "cuda" else 0.0}
    actor = TimedActor.options(**options).remote(replace(spec, device=args.device))
    try:
        return ray.get(actor.run.remote(ray.put(pixels), args.batch_size)), ray.get(actor.threads.remote())
    finally:
        ray.kill(actor)


def model_limit(embedder, paths, batch_size: int, repeats: int = 1) -> float:
    """Images/s of batched forward passes on ready tensors: what the model alone can do with these settings."""
    pixels = np.stack([embedder.preprocess(decode_rgb(str(p))) for p in paths])
    embedder.embed_pixels(pixels[:batch_size])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(pixels), batch_size):
            embedder.embed_pixels(pixels[i : i + batch_size])
    if embedder.device == "cuda":
        torch.cuda.synchronize()
    return repeats * len(pixels) / (time.perf_counter() - started)


def rethreshold_seconds(work: Path, rows: int) -> tuple[float, float]:
    """Seconds to re-materialize filtered_samples from a `rows`-row stats table: the core work, and the whole
    Dagster materialization (run start, step, checks excluded)."""
    import dagster as dg

    from pairfilter_dagster.core.filtering import FilterSettings
    from pairfilter_dagster.defs.pipeline import build_pipeline
    from pairfilter_dagster.defs.resources import PairfilterStorage

    data_dir = work / "rethreshold"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 1.0, rows)
    stats = (
        StatsRow(
            sample_id=f"m.jsonl:{i + 1}", manifest="m.jsonl", line_number=i + 1,
            images=(f"a{i}.jpg", f"b{i}.jpg"), image_pair_similarity=(float(s),), image_hashes=("", ""),
            sample_json=json.dumps({"text": f"sample {i}", "images": [f"a{i}.jpg", f"b{i}.jpg"]}),
            image_pairs=((0, 1),),
        )
        for i, s in enumerate(scores)
    )
    (data_dir / "raw").mkdir()
    with open(data_dir / "raw" / "m.jsonl", "w") as manifest:  # the shard exists: the dataset keeps its rows
        manifest.writelines(json.dumps({"text": f"sample {i}", "images": [f"a{i}.jpg", f"b{i}.jpg"]}) + "\n"
                            for i in range(rows))
    with store.connect(data_dir / "pairfilter.duckdb") as conn:
        with store.table_writer(conn, StatsRow) as table:
            for chunk in chunked(stats, 10_000):
                table.write(chunk)
        started = time.perf_counter()
        stages.filter_and_publish(conn, FilterSettings(0.3, 0.9), data_dir / "output" / "core.jsonl", data_dir / "raw")
        core = time.perf_counter() - started
    started = time.perf_counter()
    result = dg.materialize(
        [build_pipeline().filtered_samples],
        resources={"storage": PairfilterStorage(data_dir=str(data_dir))},
        run_config={"ops": {"filtered_samples": {"config": {"min_score": 0.5, "max_score": 0.95}}}},
    )
    assert result.success
    (event,) = result.asset_materializations_for_node("filtered_samples")
    assert event.metadata["total"].value == rows, "the Dagster run must filter every row"
    return core, time.perf_counter() - started


PEAK_RSS_SCRIPT = """
import resource, sys
from pairfilter_dagster.cli import main
assert main([]) == 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mib(work: Path, clip_dir: Path, samples: int, name: str) -> float:
    """Peak RSS of a whole pipeline run (raw -> stats -> filtered, in one process) over `samples` samples of
    distinct small images."""
    photos = distinct_photos(work / name / "images", 2 * samples, max_side=96, seed=samples)
    data_dir = write_dataset(work / name, list(zip(photos[::2], photos[1::2])))
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PAIRFILTER_DATA_DIR": str(data_dir),
             "PAIRFILTER_HF_CLIP": str(clip_dir)},
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48, help="pairs in the every-image-distinct dataset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decode/preprocess threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the image tower (ours and limit)")
    parser.add_argument("--rethreshold-rows", type=int, default=100_000)
    parser.add_argument("--memory-samples", type=int, default=1000, help="1x size of the peak-memory runs")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--ray", action="store_true", help="also score with the Ray engine on a local Ray (section 7)")
    parser.add_argument("--ray-actors", type=int, default=1, help="model actors for --ray")
    parser.add_argument("--ray-num-cpus", type=float, default=1.0, help="CPUs per model actor for --ray")
    args = parser.parse_args()

    from transformers import CLIPImageProcessor, CLIPModel

    results: list[tuple[str, str, str]] = []

    def row(name: str, value: str, target: str = "") -> None:
        results.append((name, value, target))
        print(f"  {name}: {value}" + (f"   (target {target})" if target else ""), flush=True)

    with tempfile.TemporaryDirectory(prefix="pairfilter-bench-") as tmp:
        work = Path(tmp)
        clip_dir = write_clip_checkpoint(work / "clip-vit-b-32", size="vit-b-32")
        print(f"CPU: {cpu_features()}", flush=True)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}, "
              f"batch {args.batch_size}, {args.workers} decode workers, compile {args.compile}", flush=True)

        spec = ModelSpec(str(clip_dir), device=args.device, dtype=args.dtype, compile=args.compile)
        started = time.perf_counter()
        embedder = ClipEmbedder.load(spec)
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        _ = embedder.model_key  # computed once per process, timed here
        row("model load / model key (s)", f"{load_seconds:.1f} / {time.perf_counter() - started:.1f}")
        if args.compile:  # a one-off per process, like loading: paid before the timed runs and shown here
            started = time.perf_counter()
            embedder.embed_pixels(np.zeros((args.batch_size, 3, 224, 224), dtype=np.float32))
            row("torch.compile warm-up (s)", f"{time.perf_counter() - started:.1f}")
        dj_model = CLIPModel.from_pretrained(clip_dir, dtype=getattr(torch, args.dtype)).to(args.device).eval()
        dj_processor = CLIPImageProcessor.from_pretrained(clip_dir)

        n = args.pairs
        photos_dir = work / "photos"
        photos = distinct_photos(photos_dir, 2 * n)
        distinct = list(zip(photos[::2], photos[1::2]))  # every image in one sample
        shared = [(photos[i], photos[(i + 1) % n]) for i in range(n)]  # n images, each in two samples

        # 1. every image distinct
        dj_one = n / data_juicer_loop(dj_model, dj_processor, distinct, args.device, threads=1)
        dj = n / data_juicer_loop(dj_model, dj_processor, distinct, args.device)
        seconds, first = our_scoring(embedder, write_dataset(work / "distinct", distinct), photos_dir, args.batch_size, args.workers)
        ours = n / seconds
        row("1. Data-Juicer loop as Data-Juicer runs it, 1 torch thread (pairs/s)", f"{dj_one:.2f}")
        row(f"1. Data-Juicer loop, {torch.get_num_threads()} torch threads (pairs/s)", f"{dj:.2f}")
        row("1. ours, distinct images (pairs/s)", f"{ours:.2f}")
        row("1. ours / Data-Juicer (1 thread; all threads)", f"{ours / dj_one:.2f}x; {ours / dj:.2f}x", ">= 2.0x")

        # 2. the model-only limit
        limit = model_limit(embedder, photos, args.batch_size) / 2
        row("2. model-only limit (pairs/s)", f"{limit:.2f}")
        row("2. ours / limit", f"{ours / limit:.2f}", ">= 0.9")

        # 3. each image in two samples
        dj_shared_one = n / data_juicer_loop(dj_model, dj_processor, shared, args.device, threads=1)
        dj_shared = n / data_juicer_loop(dj_model, dj_processor, shared, args.device)
        seconds_shared, _ = our_scoring(embedder, write_dataset(work / "shared", shared), photos_dir, args.batch_size, args.workers)
        ours_shared = n / seconds_shared
        row("3. images in two samples: Data-Juicer 1 thread / all threads / ours (pairs/s)",
            f"{dj_shared_one:.2f} / {dj_shared:.2f} / {ours_shared:.2f}")
        row("3. ours / Data-Juicer (1 thread; all threads)",
            f"{ours_shared / dj_shared_one:.2f}x; {ours_shared / dj_shared:.2f}x", ">= 3.5x")

        # 4. unchanged data again
        seconds_again, again = our_scoring(embedder, work / "distinct", photos_dir, args.batch_size, args.workers)
        row("4. second run: forward passes", str(again.forward_passes), "0")
        row("4. second run time / first", f"{seconds_again:.2f} s / {seconds:.2f} s = {seconds_again / seconds:.1%}",
            "<= 10%")

        # 5. re-thresholding
        core, whole = rethreshold_seconds(work, args.rethreshold_rows)
        row(f"5. re-threshold {args.rethreshold_rows:,} rows: core / Dagster materialize (s)",
            f"{core:.2f} / {whole:.2f}", "<= 3 s")

        # 6. peak memory, tiny model
        if not args.skip_memory:
            tiny = write_clip_checkpoint(work / "tiny-clip")
            one = peak_rss_mib(work, tiny, args.memory_samples, "memory-1x")
            ten = peak_rss_mib(work, tiny, 10 * args.memory_samples, "memory-10x")
            row(f"6. peak RSS {args.memory_samples:,} / {10 * args.memory_samples:,} samples (MiB)",
                f"{one:.0f} / {ten:.0f} = {ten / one:.2f}x", "<= 1.3x")

        # 7. the Ray engine, on the same distinct pairs as 1 (a fresh cache)
        if args.ray:
            import ray

            ray.init(include_dashboard=False, log_to_driver=False)
            try:
                total, first = ray_scoring(spec, embedder, write_dataset(work / "ray", distinct), photos_dir, args)
                per_actor, actor_threads = actor_throughput(spec, embedder, photos, args)
            finally:
                ray.shutdown()
            row(f"7. Ray engine, {args.ray_actors} actor(s) of {args.ray_num_cpus:g} CPU: local / Ray end to end "
                "(pairs/s)", f"{ours:.2f} / {n / total:.2f} = {n / total / ours:.2f}x")
            row("7. Ray engine: seconds until the first batch is back (actors start, import, load the model)",
                f"{first:.1f} s of {total:.1f} s")
            row(f"7. one actor, {args.ray_num_cpus:g} CPU ({actor_threads} torch threads), ready pixels (images/s)",
                f"{per_actor:.2f}")

    print("\n| measure | value | target |\n|---|---|---|")
    for name, value, target in results:
        print(f"| {name} | {value} | {target} |")


if __name__ == "__main__":
    main()
