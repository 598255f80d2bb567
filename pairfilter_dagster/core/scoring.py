"""Pair scores: embed every distinct image once, then score each sample's pair by cosine similarity."""

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .embedding import ClipEmbedder
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, ImageFile, decode_rgb, inspect_image_file
from .samples import Sample
from .status import Status

ProgressCallback = Callable[[int, int, float], None]
"""Called after each batch with (images done, images total, seconds elapsed)."""


@dataclass
class StatsRow:
    """One row of the stats table: a sample, its pair scores, its status."""

    sample_id: str
    manifest: str
    line_number: int
    images: list[str]
    image_pair_similarity: list[float]
    status: str
    error: str
    sample_json: str
    image_pairs: list[list[int]] = field(default_factory=list)
    """The index pairs scored, aligned with image_pair_similarity (empty when not ok)."""


@dataclass
class ScoringReport:
    rows: list[StatsRow]
    unique_images: int = 0
    images_embedded: int = 0
    forward_passes: int = 0
    seconds: float = 0.0
    status_counts: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.seconds if self.seconds > 0 else 0.0


def score_samples(
    samples: Iterable[Sample],
    embedder: ClipEmbedder,
    *,
    batch_size: int,
    on_progress: ProgressCallback | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ScoringReport:
    samples = list(samples)
    started = time.perf_counter()
    passes_before, embedded_before = embedder.forward_passes, embedder.images_embedded

    files = {
        path: inspect_image_file(path, max_image_pixels) for s in samples if s.status is Status.OK for path in s.images
    }
    embeddings, decode_errors = embed_distinct_images(files.values(), embedder, batch_size, on_progress)
    rows = [stats_row(sample, files, embeddings, decode_errors) for sample in samples]

    report = ScoringReport(
        rows=rows,
        unique_images=len({f.content_hash for f in files.values() if f.content_hash}),
        images_embedded=embedder.images_embedded - embedded_before,
        forward_passes=embedder.forward_passes - passes_before,
        seconds=time.perf_counter() - started,
    )
    for row in rows:
        report.status_counts[row.status] = report.status_counts.get(row.status, 0) + 1
    return report


def embed_distinct_images(
    files: Iterable[ImageFile],
    embedder: ClipEmbedder,
    batch_size: int,
    on_progress: ProgressCallback | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embed each distinct content hash once. Returns (hash -> unit vector, hash -> decode error)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    first_path_by_hash: dict[str, str] = {}
    for image_file in files:
        if image_file.content_hash:
            first_path_by_hash.setdefault(image_file.content_hash, image_file.path)

    embeddings: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    todo = list(first_path_by_hash.items())
    started = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        decoded_hashes, images = [], []
        for content_hash, path in todo[start : start + batch_size]:
            try:
                images.append(decode_rgb(path))
                decoded_hashes.append(content_hash)
            except ImageDecodeError as exc:
                errors[content_hash] = str(exc)
        if images:
            embeddings.update(zip(decoded_hashes, embedder.embed(images)))
        if on_progress:
            on_progress(min(start + batch_size, len(todo)), len(todo), time.perf_counter() - started)
    return embeddings, errors


def stats_row(
    sample: Sample,
    files: dict[str, ImageFile],
    embeddings: dict[str, np.ndarray],
    decode_errors: dict[str, str],
) -> StatsRow:
    status, error, scores = sample.status, sample.error, []
    if status is Status.OK:
        status, error, vectors = vectors_for(sample.images, files, embeddings, decode_errors)
        if status is Status.OK:
            scores = [cosine(vectors[i], vectors[j]) for i, j in sample.image_pairs]
    return StatsRow(
        sample_id=sample.sample_id,
        manifest=sample.manifest,
        line_number=sample.line_number,
        images=list(sample.images),
        image_pair_similarity=scores,
        status=str(status),
        error=error,
        sample_json=sample.sample_json,
        image_pairs=[list(pair) for pair in sample.image_pairs] if scores else [],
    )


def vectors_for(
    paths: Sequence[str],
    files: dict[str, ImageFile],
    embeddings: dict[str, np.ndarray],
    decode_errors: dict[str, str],
) -> tuple[Status, str, list[np.ndarray]]:
    """The embeddings of a sample's images, or the status and reason of its first unusable image."""
    vectors = []
    for path in paths:
        image_file = files[path]
        if image_file.status is not Status.OK:
            return image_file.status, image_file.error, []
        if image_file.content_hash in decode_errors:
            return Status.UNREADABLE_IMAGE, decode_errors[image_file.content_hash], []
        vectors.append(embeddings[image_file.content_hash])
    return Status.OK, "", vectors


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two unit vectors: their dot product, accumulated in float64 and clipped to [-1, 1]
    (float32 rounding can put identical images at 1.0000001, which max_score=1.0 would wrongly drop)."""
    return float(np.clip(np.dot(a.astype(np.float64), b.astype(np.float64)), -1.0, 1.0))
