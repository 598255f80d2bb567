"""The GPU path, measured: pairs/s of the image tower in float32, float16 and bfloat16 (the full ViT-B/32
architecture, random weights), on ready tensors and end to end, the share of the end-to-end time the model waits
for decoded images, and how far each path's pair scores lie from the float32 ones decoded on the CPU.

End to end, images are decoded on the GPU (`torchvision.io.decode_jpeg(device="cuda")`, then resize, crop and
normalise as torch ops) where torchvision imports, and always by the local engine's CPU decode worker processes.

    benchmarks/gpu_check.sh                                   # a machine with one CUDA GPU: makes its venv, runs this
    python -m benchmarks.gpu_check --device cpu --small       # this part alone, without a GPU (a smoke run)

Nothing here is a test: no assertion is made on time. Ratios compare numbers measured in this same run.
"""

import argparse
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_scoring import all_pixels, cpu_features, embeddings, max_deviation, model_limit
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.embedding.preprocess import size_field
from pairfilter_dagster.core.images import ImageAccess, read_verified
from pairfilter_dagster.core.processes import available_cores
from pairfilter_dagster.testing import distinct_photos, write_clip_checkpoint


def torchvision_decoder() -> Any:
    """torchvision.io, or None where it does not import (not installed, or built for another torch)."""
    try:
        import torchvision.io

        return torchvision.io
    except Exception:  # ImportError, or a RuntimeError from a torchvision built against another torch
        return None


class PilJpegDecoder:
    """Stands in for torchvision.io in a smoke run without torchvision (`--device cpu`): decode_jpeg's interface,
    decoded by PIL, so the rest of the GPU path (resize, crop, normalise as torch ops) runs and is checked."""

    class ImageReadMode:
        RGB = "RGB"

    @staticmethod
    def decode_jpeg(encoded: list[torch.Tensor], mode: str, device: str) -> list[torch.Tensor]:
        import io

        from PIL import Image

        images = [np.asarray(Image.open(io.BytesIO(data.numpy().tobytes())).convert(mode)) for data in encoded]
        return [torch.from_numpy(image.copy()).permute(2, 0, 1).to(device) for image in images]


class TimedModel:
    """An embedder whose forward passes are timed (the device synchronised), for the share of time spent waiting."""

    def __init__(self, embedder: ClipEmbedder) -> None:
        self.embedder = embedder
        self.model_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.embedder.embed_pixels(pixels)  # returns numpy: the device is synchronised
        self.model_seconds += time.perf_counter() - started
        return vectors


def cpu_decoded(embedder: ClipEmbedder, todo: list[tuple[str, str]], batch_size: int, workers: int,
                processes: bool) -> tuple[float, float, np.ndarray]:
    """(pairs/s, share of the time not in the model, embeddings in input order) with the local engine's CPU decode
    workers (threads or processes)."""
    timed = TimedModel(embedder)
    vectors: dict[str, np.ndarray] = {}
    with LocalEngine(timed, batch_size=batch_size, workers=workers, processes=processes) as engine:  # type: ignore[arg-type]
        list(engine.embed(todo[: 2 * workers], ImageAccess()))  # starts the workers, untimed (once per step)
        timed.model_seconds = 0.0
        started = time.perf_counter()
        for batch in engine.embed(todo, ImageAccess()):
            if batch.errors:
                raise RuntimeError(f"decode errors: {batch.errors}")
            vectors.update(batch.embeddings)
        seconds = time.perf_counter() - started
    return len(todo) / 2 / seconds, 1 - timed.model_seconds / seconds, np.stack([vectors[h] for h, _ in todo])


def gpu_pixels(decoder: Any, datas: list[bytes], processor: Any, device: str) -> torch.Tensor:
    """JPEG bytes decoded on `device`, then the processor's steps as torch ops: shortest edge resized (bicubic,
    antialiased, rounded to bytes as PIL does), center crop, rescale, normalise. Close to the processor's values, not
    equal (another resampler): the deviation row says how close."""
    edge = int(size_field(processor.size, "shortest_edge"))
    crop_h, crop_w = int(size_field(processor.crop_size, "height")), int(size_field(processor.crop_size, "width"))
    mean = torch.tensor(processor.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=device).view(1, 3, 1, 1)
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    images = decoder.decode_jpeg(encoded, mode=decoder.ImageReadMode.RGB, device=device)
    batch = []
    for image in images:
        _, height, width = image.shape
        short, long = min(width, height), max(width, height)
        new_long = int(edge * long / short)
        new_w, new_h = (edge, new_long) if width <= height else (new_long, edge)
        resized = torch.nn.functional.interpolate(image[None].float(), size=(new_h, new_w), mode="bicubic",
                                                  antialias=True, align_corners=False).round_().clamp_(0, 255)
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        batch.append(resized[..., top : top + crop_h, left : left + crop_w])
    return (torch.cat(batch) * processor.rescale_factor - mean) / std


def gpu_decoded(embedder: ClipEmbedder, decoder: Any, todo: list[tuple[str, str]], batch_size: int) -> tuple[float, float, np.ndarray]:
    """(pairs/s, share of the time not in the model, embeddings) decoding on the GPU; the files are read through
    the same checked, hash-verified read as the CPU path."""
    timed = TimedModel(embedder)
    vectors = []
    started = time.perf_counter()
    for i in range(0, len(todo), batch_size):
        datas = [read_verified(path, content_hash) for content_hash, path in todo[i : i + batch_size]]
        vectors.append(timed.embed_pixels(gpu_pixels(decoder, datas, embedder.image_processor, embedder.device)))
    seconds = time.perf_counter() - started
    return len(todo) / 2 / seconds, 1 - timed.model_seconds / seconds, np.concatenate(vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="the tiny test model and a few small photos (smoke run)")
    parser.add_argument("--pairs", type=int, default=None, help="default 600 (16 with --small)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (8 with --small)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="CPU decode workers")
    args = parser.parse_args()
    pairs = args.pairs or (16 if args.small else 600)
    batch_size = args.batch_size or (8 if args.small else 256)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --device cpu for a smoke run")
    decoder = torchvision_decoder()
    if decoder is None and args.device == "cpu":
        decoder = PilJpegDecoder  # the smoke run checks the GPU path's torch ops with PIL decoding the JPEGs

    results: list[tuple[str, str]] = []

    def row(name: str, value: str) -> None:
        results.append((name, value))
        print(f"  {name}: {value}", flush=True)

    with tempfile.TemporaryDirectory(prefix="pairfilter-gpu-") as tmp:
        work = Path(tmp)
        clip_dir = write_clip_checkpoint(work / "clip", size="tiny" if args.small else "vit-b-32")
        photos = distinct_photos(work / "photos", 2 * pairs, max_side=256 if args.small else 1024)
        todo = [(hashlib.sha256(p.read_bytes()).hexdigest(), str(p)) for p in photos]
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
        decode_jpeg = "none" if decoder is None else "PIL stand-in" if decoder is PilJpegDecoder else "torchvision"
        print(f"CPU: {cpu_features()}; GPU: {gpu}; torch {torch.__version__}; decode_jpeg: {decode_jpeg}; {pairs} "
              f"pairs, batch {batch_size}, {args.workers} decode workers", flush=True)

        exact = ClipEmbedder.load(ModelSpec(str(clip_dir), device=args.device))
        halves = [ClipEmbedder.load(ModelSpec(str(clip_dir), device=args.device, precision="fast", dtype=dtype))
                  for dtype in (["float16", "bfloat16"] if args.device == "cuda" else [None])]
        reference_pixels = all_pixels(exact.preparation, photos)
        reference = embeddings(exact, reference_pixels, batch_size)
        for embedder in (exact, *halves):
            name = embedder.dtype
            # the CPU-decoded pixels of this precision (fast: reduced decoding), the model alone on them, end to end
            pixels = reference_pixels if embedder is exact else all_pixels(embedder.preparation, photos)
            row(f"{name}: model on ready tensors (pairs/s)", f"{model_limit(embedder, pixels, batch_size) / 2:.1f}")
            for processes in (False, True):
                rate, waiting, vectors = cpu_decoded(embedder, todo, batch_size, args.workers, processes)
                row(f"{name}, {args.workers} CPU decode {'processes' if processes else 'threads'}: end to end (pairs/s) "
                    "/ share of time waiting for decoding / max score deviation",
                    f"{rate:.1f} / {waiting:.0%} / {max_deviation(vectors, reference):.1e}")
            if decoder is not None:
                rate, waiting, vectors = gpu_decoded(embedder, decoder, todo, batch_size)
                row(f"{name}, decode_jpeg ({decode_jpeg}) on {args.device}: end to end (pairs/s) / share of time "
                    "decoding / max score deviation", f"{rate:.1f} / {waiting:.0%} / {max_deviation(vectors, reference):.1e}")

    print(f"\nCPU: {cpu_features()}; GPU: {gpu}\n\n| measure | value |\n|---|---|")
    for name, value in results:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
