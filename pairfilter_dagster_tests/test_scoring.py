import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pairfilter_dagster.core.embedding.cache import MemoryCache
from pairfilter_dagster.core.embedding.cache_files import EmbeddingFiles
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.images import ImageAccess
from pairfilter_dagster.core.progress import progress_logger
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.core.scoring import PairScorer, chunked, cosine, score_samples
from pairfilter_dagster.testing import PHOTOS, write_clip_checkpoint

from .conftest import REPO, read_samples_with_photos, write_manifest


def manifest_of(tmp_path, pairs):
    write_manifest(tmp_path / "raw" / "m.jsonl", [{"images": [str(a), str(b)]} for a, b in pairs])
    return read_samples_with_photos(tmp_path / "raw")


def test_each_distinct_image_is_embedded_once_and_rows_keep_input_order(embedder, tmp_path):
    cat, img2, img3 = (PHOTOS / n for n in ("cat.jpg", "img2.jpg", "img3.jpg"))
    samples = manifest_of(tmp_path, [(cat, img2), (img2, img3), (img3, cat), (cat, img2)])
    passes_before = embedder.forward_passes
    rows, report = score_samples(samples, embedder, batch_size=2)
    assert [row.sample_id for row in rows] == [f"m.jsonl:{i}" for i in range(1, 5)]
    assert report.images_looked_up == 3 and report.images_embedded == 3 and report.cache_hits == 0
    assert report.forward_passes == embedder.forward_passes - passes_before == 2  # batches of 2 over 3 images
    assert rows[0].image_pair_similarity == rows[3].image_pair_similarity
    assert report.status_counts == {Status.OK: 4} and report.image_refs == 8


def test_duplicates_across_chunks_are_found_through_the_cache(embedder, tmp_path):
    cat, img2, img3 = (PHOTOS / n for n in ("cat.jpg", "img2.jpg", "img3.jpg"))
    samples = manifest_of(tmp_path, [(cat, img2), (img2, img3), (img3, cat)])
    rows, report = score_samples(samples, embedder, batch_size=8, chunk_size=1)
    one_chunk, _ = score_samples(samples, embedder, batch_size=8)
    assert report.images_embedded == 3 and report.cache_hits == 3
    for chunked_row, whole_row in zip(rows, one_chunk):  # other batch compositions: float noise only
        assert chunked_row.image_pair_similarity == pytest.approx(whole_row.image_pair_similarity, abs=1e-6)


def test_the_persistent_cache_is_keyed_by_model_and_content(embedder, tiny_clip_dir, tmp_path):
    samples = manifest_of(tmp_path, [(PHOTOS / "cat.jpg", PHOTOS / "img2.jpg")])
    results = ResultFiles.under(tmp_path / "output")

    def files(model_key):  # a fresh cache over the files each time: what a later run finds
        return EmbeddingFiles(results, model_key)

    with files(embedder.model_key) as cache:
        first_rows, first = score_samples(samples, embedder, batch_size=8, cache=cache)
    with files(embedder.model_key) as cache:
        again_rows, again = score_samples(samples, embedder, batch_size=8, cache=cache)
    other = ClipEmbedder.load(ModelSpec(str(write_clip_checkpoint(tmp_path / "other", seed=7)), device="cpu"))
    assert other.model_key != embedder.model_key
    with files(other.model_key) as cache:
        _, other_report = score_samples(samples, other, batch_size=8, cache=cache)
    with files(embedder.model_key) as mine, files(other.model_key) as theirs:
        assert mine.count() == 2 == theirs.count()
    assert (first.images_embedded, first.forward_passes) == (2, 1)
    assert (again.images_embedded, again.forward_passes, again.cache_hits) == (0, 0, 2)
    assert again_rows[0].image_pair_similarity == first_rows[0].image_pair_similarity
    assert other_report.images_embedded == 2  # another model never reuses these embeddings


def test_same_checkpoint_loaded_twice_has_the_same_model_key(embedder, tiny_clip_dir):
    assert ClipEmbedder.load(ModelSpec(str(tiny_clip_dir), device="cpu")).model_key == embedder.model_key


def test_missing_and_unreadable_images_are_reported_per_sample(embedder, tmp_path):
    (tmp_path / "fake.jpg").write_text("<html>nope</html>")
    (tmp_path / "truncated.jpg").write_bytes((PHOTOS / "cat.jpg").read_bytes()[:2000])
    cat = str(PHOTOS / "cat.jpg")
    write_manifest(tmp_path / "raw" / "m.jsonl", [
        {"images": [cat, str(tmp_path / "gone.jpg")]},
        {"images": [str(tmp_path / "fake.jpg"), cat]},
        {"images": [cat, str(tmp_path / "truncated.jpg")]},
        {"images": [cat, str(PHOTOS / "img2.jpg")]},
        {"images": [cat]},
    ])
    rows, report = score_samples(read_samples_with_photos(tmp_path / "raw"), embedder, batch_size=4)
    assert [row.status for row in rows] == [
        Status.MISSING_IMAGE, Status.UNREADABLE_IMAGE, Status.UNREADABLE_IMAGE, Status.OK, Status.NOT_A_PAIR,
    ]
    assert "gone.jpg" in rows[0].error and "fake.jpg" in rows[1].error
    assert "truncated.jpg" in rows[2].error
    assert all(row.image_pair_similarity == () for row in rows if row.status is not Status.OK)
    assert report.status_counts == {Status.MISSING_IMAGE: 1, Status.UNREADABLE_IMAGE: 2, Status.OK: 1,
                                    Status.NOT_A_PAIR: 1}
    assert report.decode_failures == 1  # the HTML file is refused from its header, before decoding


def test_progress_reports_images_done_rate_and_eta(embedder, tmp_path):
    samples = manifest_of(tmp_path, [(PHOTOS / "cat.jpg", PHOTOS / "img2.jpg"), (PHOTOS / "img3.jpg", PHOTOS / "img8.jpg")])
    lines = []
    with LocalEngine(embedder, batch_size=1) as engine, \
            PairScorer(engine, on_progress=progress_logger(lines.append, 4, every_seconds=0)) as scorer:
        for chunk in chunked(samples, 1):
            scorer.score_chunk(chunk)
    assert lines[-1].startswith("Images 4/4") and "ETA 0 s" in lines[-1] and "4 embedded" in lines[-1]
    assert len(lines) >= 4


def test_batch_size_and_workers_must_be_positive(embedder):
    with pytest.raises(ValueError, match="batch_size"):
        LocalEngine(embedder, batch_size=0)
    with pytest.raises(ValueError, match="decode_workers"):
        LocalEngine(embedder, batch_size=1, workers=0)


def test_cosine_of_unit_vectors_stays_in_range():
    v = np.array([0.6, 0.8000001], dtype=np.float32)
    assert cosine(v, v) == 1.0
    assert cosine(v, -v) == -1.0


def test_decode_processes_and_threads_give_the_same_embeddings(embedder, tmp_path):
    names = ["cat.jpg", "img1.png", "img9.jpg", "img3.jpg", "img2_small.png"]
    todo = [(hashlib.sha256((PHOTOS / name).read_bytes()).hexdigest(), str(PHOTOS / name)) for name in names]
    todo.append(("0" * 64, str(PHOTOS / "cat.jpg")))  # content that is not the hashed one
    embedded = {}
    for processes in (True, False):
        with LocalEngine(embedder, batch_size=2, workers=2, processes=processes) as engine:
            batches = list(engine.embed(todo, ImageAccess()))
        embedded[processes] = batches
        assert sum(batch.forward_passes for batch in batches) == 3
    (errors,) = {tuple(sorted(e for b in batches for e in b.errors.values())) for batches in embedded.values()}
    assert len(errors) == 1 and "changed while the run read it" in errors[0]
    vectors = [{h: v for b in batches for h, v in b.embeddings.items()} for batches in embedded.values()]
    assert vectors[0].keys() == vectors[1].keys() and len(vectors[0]) == 5
    assert all(np.array_equal(vectors[0][h], vectors[1][h]) for h in vectors[0])


def test_a_run_that_finds_everything_cached_starts_no_decode_worker(embedder, tmp_path):
    samples = manifest_of(tmp_path, [(PHOTOS / "cat.jpg", PHOTOS / "img2.jpg")])
    cache = MemoryCache()
    score_samples(samples, embedder, batch_size=8, cache=cache)
    with LocalEngine(embedder, batch_size=8) as engine, PairScorer(engine, cache) as scorer:
        rows = scorer.score_chunk(samples)
        assert engine._pool is None and rows[0].status is Status.OK


UNGUARDED_SCRIPT = """
import sys
from pathlib import Path
with open(sys.argv[2], "a") as marker:
    marker.write("top level ran\\n")
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.scoring import score_samples
from pairfilter_dagster_tests.conftest import read_samples_with_photos

embedder = ClipEmbedder.load(ModelSpec(sys.argv[1], device="cpu"))
engine = LocalEngine(embedder, batch_size=2, processes=True)
with engine:
    rows, _ = score_samples(read_samples_with_photos(Path(sys.argv[3])), embedder, batch_size=2, engine=engine)
print(engine.processes, [row.status.value for row in rows])
"""


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_scores_in_worker_processes_only_when_its_top_level_is_guarded(tmp_path, tiny_clip_dir, guarded):
    """Worker processes import the main script first: one without `if __name__ == "__main__":` would run again in
    each of them, so it decodes in threads instead; either way its top level runs once."""
    manifest_of(tmp_path, [(PHOTOS / "cat.jpg", PHOTOS / "img2.jpg"), (PHOTOS / "img3.jpg", PHOTOS / "img1.png")])
    body = UNGUARDED_SCRIPT
    if guarded:
        body = "def main():\n" + "".join(f"    {line}\n" for line in body.strip().splitlines()) + \
            'if __name__ == "__main__":\n    main()\n'
    script, marker = tmp_path / "score.py", tmp_path / "marker.txt"
    script.write_text(body)
    done = subprocess.run([sys.executable, str(script), str(tiny_clip_dir), str(marker), str(tmp_path / "raw")],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"{guarded} ['ok', 'ok']"
    assert marker.read_text().splitlines() == ["top level ran"]


def test_a_large_chunk_is_hashed_in_worker_processes_with_the_same_outcome(embedder, tmp_path):
    """1,200 paths (hard links onto four photos, one missing) take the hashing processes; statuses, hashes and scores
    are those of hashing in the step's own process."""
    images = tmp_path / "images"
    images.mkdir()
    names = ["cat.jpg", "img2.jpg", "img3.jpg", "img1.png"]
    links = [images / f"{i:04d}{Path(names[i % 4]).suffix}" for i in range(1200)]
    for i, link in enumerate(links):
        os.link(PHOTOS / names[i % 4], link)
    links[7].unlink()
    pairs = list(zip(links[::2], links[1::2]))
    samples = manifest_of(tmp_path, pairs)
    with LocalEngine(embedder, batch_size=8) as engine, PairScorer(engine, hash_workers=2) as scorer:
        rows = scorer.score_chunk(samples)
        assert scorer._hashing is not None
    with LocalEngine(embedder, batch_size=8) as engine, PairScorer(engine, hash_workers=1) as scorer:
        inline = scorer.score_chunk(samples)
        assert scorer._hashing is None
    assert [(r.status, r.image_hashes) for r in rows] == [(r.status, r.image_hashes) for r in inline]
    assert rows[3].status is Status.MISSING_IMAGE and sum(r.status is Status.OK for r in rows) == 599
    expected = {name: hashlib.sha256((PHOTOS / name).read_bytes()).hexdigest() for name in names}
    assert rows[0].image_hashes == (expected["cat.jpg"], expected["img2.jpg"])
    for row, again in zip(rows, inline):
        assert row.image_pair_similarity == pytest.approx(again.image_pair_similarity, abs=1e-6)
