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

from benchmarks.bench_formats import format_rows
from benchmarks.bench_shards import shard_rows
from benchmarks.folders import ingest_folder, results_of, score_folder
from benchmarks.stage_costs import STAGES, stage_costs
from pairfilter_dagster.core import stages
from pairfilter_dagster.core.embedding.local import DEFAULT_DECODE_WORKERS, LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.embedding.preprocess import pixel_values
from pairfilter_dagster.core.images import ImageAccess, decode_rgb
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.processes import processes_allowed
from pairfilter_dagster.core.schema import StatsRow, Status
from pairfilter_dagster.core.scoring import chunked
from pairfilter_dagster.core.tables import table_file
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


def our_scoring(embedder, data_dir: Path, photos_dir: Path, batch_size: int, workers: int | None = None,
                processes: bool | None = None):
    """The stats asset's work (ingest excluded): hashing, cache lookups, decode workers overlapped with batched
    forwards, the stats file written; the engine's defaults unless told. Returns (seconds, report)."""
    rules = SampleRules.for_data_dir(data_dir, [str(photos_dir)])
    shards = ingest_folder(data_dir, rules)
    started = time.perf_counter()
    with LocalEngine(embedder, batch_size=batch_size, workers=workers or DEFAULT_DECODE_WORKERS,
                     processes=processes) as engine:
        report = score_folder(data_dir, shards, embedder, engine, state=data_dir, access=ImageAccess(rules.image_roots))
    if embedder.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if set(report.status_counts) != {Status.OK}:
        raise RuntimeError(f"every benchmark sample must score, got {report.status_counts}")
    return seconds, report


def model_limit(embedder, pixels: np.ndarray, batch_size: int) -> float:
    """Images/s of batched forward passes on ready tensors: what the model alone can do with these settings."""
    embedder.embed_pixels(pixels[:batch_size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        embedder.embed_pixels(pixels[i : i + batch_size])
    if embedder.device == "cuda":
        torch.cuda.synchronize()
    return len(pixels) / (time.perf_counter() - started)


def preprocessing_ms(prepare, paths) -> float:
    """Milliseconds of one core per image to decode and preprocess (`prepare(path, data)`), best of two passes."""
    datas = [(str(p), p.read_bytes()) for p in paths]
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for path, data in datas:
            prepare(path, data)
        best = min(best, time.perf_counter() - started)
    return 1e3 * best / len(datas)


def all_pixels(preparation, paths) -> np.ndarray:
    return np.stack([preparation.pixels(preparation.decode(str(p), p.read_bytes())) for p in paths])


def embeddings(embedder, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([embedder.embed_pixels(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def max_deviation(vectors: np.ndarray, reference: np.ndarray) -> float:
    """The largest change of a pair score (pairs: consecutive images) against the reference embeddings."""
    pair_scores = lambda v: (v[::2].astype(np.float64) * v[1::2]).sum(axis=1)  # noqa: E731
    return float(np.abs(pair_scores(vectors) - pair_scores(reference)).max())


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
    shards = ingest_folder(data_dir, rules)
    started = time.perf_counter()
    with engine:
        report = score_folder(data_dir, shards, embedder, engine, on_progress=on_progress)
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
    results = results_of(data_dir)
    with table_file(results.shard_file(StatsRow, "m.jsonl"), StatsRow, "m.jsonl") as table:
        for chunk in chunked(stats, 10_000):
            table.write(chunk)
    started = time.perf_counter()
    stages.filter_and_publish(results, FilterSettings(0.3, 0.9), data_dir / "output" / "core.jsonl", data_dir / "raw",
                              data_dir / "pending_publish")
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
import resource
from pathlib import Path
from pairfilter_dagster.cli import main
assert main([]) == 0
status = Path("/proc/self/status")
hwm = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")] if status.exists() else []
print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
"""Peak RSS in KiB: VmHWM of this process's own memory (Linux's ru_maxrss keeps, across exec, the RSS of the
benchmark process the subprocess was started from)."""


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


def worker_split(embedder, work: Path, pairs, photos_dir: Path, batch_size: int, name: str) -> list[tuple[str, float]]:
    """Pairs/s of our scoring (fresh cache) for each way of sharing the cores: decode workers as processes or
    threads, 1 or 2 of them, the model with every core's torch thread or one fewer."""
    rates: list[tuple[str, float]] = []
    cores = torch.get_num_threads()
    for torch_threads in dict.fromkeys([cores, max(1, cores - 1)]):
        torch.set_num_threads(torch_threads)
        try:
            for processes in (True, False):
                for workers in (1, 2):
                    kind = ("processes" if processes else "threads") if workers > 1 else ("process" if processes else "thread")
                    label = f"{workers} decode {kind}, {torch_threads} torch threads"
                    data_dir = write_dataset(work / f"split-{name}-{len(rates)}", pairs)
                    seconds, _ = our_scoring(embedder, data_dir, photos_dir, batch_size, workers, processes)
                    rates.append((label, len(pairs) / seconds))
        finally:
            torch.set_num_threads(cores)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48, help="pairs in the every-image-distinct dataset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: the engine's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the image tower (ours and limit)")
    parser.add_argument("--rethreshold-rows", type=int, default=100_000)
    parser.add_argument("--stage-samples", type=int, default=100_000, help="samples of the stage-cost dataset")
    parser.add_argument("--memory-samples", type=int, default=1000, help="1x size of the peak-memory runs")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-split", action="store_true", help="leave out the worker-split table")
    parser.add_argument("--skip-formats", action="store_true", help="leave out the rows per kind of shard")
    parser.add_argument("--skip-shards", action="store_true", help="leave out the rows of shard runs and the cache")
    parser.add_argument("--cache-entries", type=int, default=1_000_000, help="embeddings in the cache for row 12")
    parser.add_argument("--ray", action="store_true", help="also score with the Ray engine on a local Ray")
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
        cores = torch.get_num_threads()
        print(f"CPU: {cpu_features()}", flush=True)
        print(f"torch {torch.__version__}, {cores} threads, device {args.device}, batch {args.batch_size}, decode "
              f"workers {args.workers or DEFAULT_DECODE_WORKERS} (processes: {processes_allowed()}), compile "
              f"{args.compile}", flush=True)

        spec = ModelSpec(str(clip_dir), device=args.device, compile=args.compile)
        started = time.perf_counter()
        exact = ClipEmbedder.load(spec)
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        _ = exact.model_key  # computed once per process, timed here
        row("model load / model key (s)", f"{load_seconds:.1f} / {time.perf_counter() - started:.1f}")
        fast = ClipEmbedder.load(replace(spec, precision="fast"))
        row("precision fast runs in", f"{fast.dtype} ({fast.dtype_reason})")
        if args.compile:  # a one-off per process, like loading: paid before the timed runs and shown here
            started = time.perf_counter()
            for embedder in (exact, fast):
                embedder.embed_pixels(np.zeros((args.batch_size, 3, 224, 224), dtype=np.float32))
            row("torch.compile warm-up, both precisions (s)", f"{time.perf_counter() - started:.1f}")
        dj_model = CLIPModel.from_pretrained(clip_dir).to(args.device).eval()
        dj_processor = CLIPImageProcessor.from_pretrained(clip_dir)

        n = args.pairs
        photos_dir = work / "photos"
        photos = distinct_photos(photos_dir, 2 * n)
        distinct = list(zip(photos[::2], photos[1::2]))  # every image in one sample
        shared = [(photos[i], photos[(i + 1) % n]) for i in range(n)]  # n images, each in two samples
        for embedder in (exact, fast):  # starts the worker processes' server and warms both models up
            our_scoring(embedder, write_dataset(work / f"warm-up-{embedder.spec.precision}", distinct[:2]), photos_dir,
                        args.batch_size, args.workers)

        # 1. precision exact, every image distinct
        dj_one = n / data_juicer_loop(dj_model, dj_processor, distinct, args.device, threads=1)
        dj = n / data_juicer_loop(dj_model, dj_processor, distinct, args.device)
        seconds, _ = our_scoring(exact, write_dataset(work / "distinct", distinct), photos_dir, args.batch_size,
                                 args.workers)
        ours = n / seconds
        row("1. Data-Juicer loop as Data-Juicer runs it, 1 torch thread (pairs/s)", f"{dj_one:.2f}")
        row(f"1. Data-Juicer loop, {cores} torch threads (pairs/s)", f"{dj:.2f}")
        row("1. ours, exact (pairs/s)", f"{ours:.2f}")
        row("1. ours exact / Data-Juicer (1 thread; all threads)", f"{ours / dj_one:.2f}x; {ours / dj:.2f}x", ">= 2.0x")

        # 2. what bounds it: the model alone, and the preprocessing of one image on one core
        exact_pixels, fast_pixels = all_pixels(exact.preparation, photos), all_pixels(fast.preparation, photos)
        model_exact = model_limit(exact, exact_pixels, args.batch_size)
        processor_ms = preprocessing_ms(lambda path, data: pixel_values(dj_processor, decode_rgb(path, data)), photos)
        direct_ms = preprocessing_ms(lambda path, data: exact.preparation.pixels(exact.preparation.decode(path, data)),
                                     photos)
        fast_ms = preprocessing_ms(lambda path, data: fast.preparation.pixels(fast.preparation.decode(path, data)),
                                   photos)
        decode_ms = preprocessing_ms(decode_rgb, photos)
        reference = 1 / (1 / model_exact + processor_ms / 1e3 / cores) / 2
        row("2. model-only limit, float32 (pairs/s)", f"{model_exact / 2:.2f}")
        row("2. decode + preprocess, one core (ms/image): decode + CLIPImageProcessor / decode + direct / fast "
            "decode + direct", f"{processor_ms:.1f} / {direct_ms:.1f} / {fast_ms:.1f} (decoding alone {decode_ms:.1f})")
        row(f"2. reference limit: float32 model + decode and CLIPImageProcessor on {cores} cores, perfectly "
            "overlapped (pairs/s)", f"{reference:.2f}")
        row("2. ours exact / reference limit", f"{ours / reference:.2f}", ">= 1.1")
        row("2. ours exact / model-only limit", f"{ours / (model_exact / 2):.2f}")

        # 3. precision fast
        model_fast = model_limit(fast, fast_pixels, args.batch_size)
        seconds_fast, _ = our_scoring(fast, write_dataset(work / "distinct-fast", distinct), photos_dir,
                                      args.batch_size, args.workers)
        ours_fast = n / seconds_fast
        row(f"3. model-only limit, {fast.dtype} (pairs/s)", f"{model_fast / 2:.2f} ({model_fast / model_exact:.2f}x float32)")
        row("3. ours, fast (pairs/s)", f"{ours_fast:.2f} ({ours_fast / ours:.2f}x exact; {ours_fast / (model_fast / 2):.2f} "
            "of its model-only limit)")
        row("3. ours fast / Data-Juicer (1 thread; all threads)", f"{ours_fast / dj_one:.2f}x; {ours_fast / dj:.2f}x",
            ">= 5x on an AMX CPU")
        reference_vectors = embeddings(exact, exact_pixels, args.batch_size)
        row("3. max pair-score deviation from exact: fast / its model alone / its decoding alone",
            f"{max_deviation(embeddings(fast, fast_pixels, args.batch_size), reference_vectors):.1e} / "
            f"{max_deviation(embeddings(fast, exact_pixels, args.batch_size), reference_vectors):.1e} / "
            f"{max_deviation(embeddings(exact, fast_pixels, args.batch_size), reference_vectors):.1e}")

        # 4. each image in two samples
        dj_shared_one = n / data_juicer_loop(dj_model, dj_processor, shared, args.device, threads=1)
        seconds_shared, _ = our_scoring(exact, write_dataset(work / "shared", shared), photos_dir, args.batch_size,
                                        args.workers)
        row("4. images in two samples: Data-Juicer 1 thread / ours exact (pairs/s)",
            f"{dj_shared_one:.2f} / {n / seconds_shared:.2f} = {n / seconds_shared / dj_shared_one:.2f}x", ">= 3.5x")

        # 5. unchanged data again
        seconds_again, again = our_scoring(exact, work / "distinct", photos_dir, args.batch_size, args.workers)
        row("5. second run: forward passes", str(again.forward_passes), "0")
        row("5. second run time / first", f"{seconds_again:.2f} s / {seconds:.2f} s = {seconds_again / seconds:.1%}",
            "<= 10%")

        # 6. re-thresholding
        core, whole = rethreshold_seconds(work, args.rethreshold_rows)
        row(f"6. re-threshold {args.rethreshold_rows:,} rows: core / Dagster materialize (s)",
            f"{core:.2f} / {whole:.2f}", "<= 3 s")

        # 7. the work outside the model, per sample
        costs = stage_costs(work / "stage-costs", exact, args.stage_samples)
        row(f"7. outside the model at {args.stage_samples:,} samples, all cached (ms/sample): "
            + " / ".join(STAGES) + " = total", " / ".join(f"{costs[s]:.3f}" for s in STAGES) + f" = {costs['total']:.3f}",
            "<= 0.1")
        row("7. the same shard scored again, its files unchanged (ms/sample): hash / whole scoring stage",
            f"{costs['hash again']:.3f} / {costs['scoring again']:.3f}")

        # 8. peak memory, tiny model
        if not args.skip_memory:
            tiny = write_clip_checkpoint(work / "tiny-clip")
            one = peak_rss_mib(work, tiny, args.memory_samples, "memory-1x")
            ten = peak_rss_mib(work, tiny, 10 * args.memory_samples, "memory-10x")
            row(f"8. peak RSS of the step's process, {args.memory_samples:,} / {10 * args.memory_samples:,} samples "
                "(MiB)", f"{one:.0f} / {ten:.0f} = {ten / one:.2f}x", "<= 1.3x")

        # 9. how the cores are shared (fresh caches, same distinct pairs as 1)
        if not args.skip_split:
            for embedder, name in ((exact, "exact"), (fast, "fast")):
                for label, rate in worker_split(embedder, work, distinct, photos_dir, args.batch_size, name):
                    row(f"9. {name}: {label} (pairs/s)", f"{rate:.2f}")

        # 10. the Ray engine, on the same distinct pairs as 1 (a fresh cache)
        if args.ray:
            import ray

            ray.init(include_dashboard=False, log_to_driver=False)
            try:
                total, first = ray_scoring(spec, exact, write_dataset(work / "ray", distinct), photos_dir, args)
                per_actor, actor_threads = actor_throughput(spec, exact, photos, args)
            finally:
                ray.shutdown()
            row(f"10. Ray engine, {args.ray_actors} actor(s) of {args.ray_num_cpus:g} CPU: local / Ray end to end "
                "(pairs/s)", f"{ours:.2f} / {n / total:.2f} = {n / total / ours:.2f}x")
            row("10. Ray engine: seconds until the first batch is back (actors start, import, load the model)",
                f"{first:.1f} s of {total:.1f} s")
            row(f"10. one actor, {args.ray_num_cpus:g} CPU ({actor_threads} torch threads), ready pixels (images/s)",
                f"{per_actor:.2f}")

        # 11. the same distinct pairs from each kind of shard, and from a local S3 server (fresh caches)
        if not args.skip_formats:
            for label, value in format_rows(exact, distinct, work / "formats", args.batch_size):
                row(f"11. {label}", value)

        # 12. no single writer: shard runs at once, re-thresholding from the files, the cache's files at 1M
        if not args.skip_shards:
            for label, value in shard_rows(work / "shards", clip_dir, args.cache_entries):
                row(f"12. {label}", value)

    print(f"\nCPU: {cpu_features()}\n\n| measure | value | target |\n|---|---|---|")
    for name, value, target in results:
        print(f"| {name} | {value} | {target} |")


if __name__ == "__main__":
    main()
