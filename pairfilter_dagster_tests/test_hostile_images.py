"""Image files that would hang a run, exhaust its memory, or lead it outside the allowed roots: each gets a status
and a reason, and nothing else is lost. Real files: named pipes, a device node, a huge sparse file, a 200000 x 1
strip, symlinks swapped and pictures replaced while a run works. Memory-bound cases run in a subprocess under an
address-space cap, so a regression fails the test instead of the machine."""

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pairfilter_dagster.core.embedding.cache import MemoryCache
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.images import ImageAccess, inspect_image_file
from pairfilter_dagster.core.ingest.formats import read_samples
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.core.scoring import PairScorer
from pairfilter_dagster.testing import PHOTOS

from .conftest import write_manifest
from .hostile import python

CAP = 2_500 * 2**20
"""The address space a scoring subprocess gets: torch and the tiny model fit well within it."""


def scored(data: Path, tiny_clip_dir: Path, *, memory_bytes: int = CAP) -> dict[str, list]:
    """{sample id: [status, error, scores]} of scoring the data folder's manifests in a fresh, capped process."""
    done = python(f"""
import json
from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec
from pairfilter_dagster.core.images import ImageAccess
from pairfilter_dagster.core.ingest.formats import read_samples
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.scoring import score_samples
rules = SampleRules.for_data_dir({str(data)!r})
embedder = ClipEmbedder.load(ModelSpec({str(tiny_clip_dir)!r}, device="cpu"))
rows, _ = score_samples(read_samples({str(data / "raw")!r}, rules), embedder, batch_size=4,
                        access=ImageAccess(rules.image_roots))
print(json.dumps({{r.sample_id: [r.status.value, r.error, list(r.image_pair_similarity)] for r in rows}}))
""", memory_bytes=memory_bytes, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def data_with(tmp_path: Path, *bad_images: str) -> Path:
    """A data folder whose manifest pairs a real photo with each bad image, then holds one good pair."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for name in ("cat.jpg", "img2.jpg"):
        (data / "images" / name).write_bytes((PHOTOS / name).read_bytes())
    write_manifest(data / "raw" / "m.jsonl", [*({"images": ["../images/cat.jpg", f"../images/{bad}"]}
                                                for bad in bad_images),
                                              {"images": ["../images/cat.jpg", "../images/img2.jpg"]}])
    return data


def test_named_pipes_and_links_to_them_are_refused_without_waiting(tmp_path, tiny_clip_dir):
    data = data_with(tmp_path, "pipe.jpg", "link-to-pipe.jpg")
    os.mkfifo(data / "images" / "pipe.jpg")  # reading it would wait for a writer forever
    (data / "images" / "link-to-pipe.jpg").symlink_to(data / "images" / "pipe.jpg")
    rows = scored(data, tiny_clip_dir)
    for line in ("m.jsonl:1", "m.jsonl:2"):
        assert rows[line][:2] == ["unreadable_image", rows[line][1]] and "not a regular file (a named pipe)" in rows[line][1]
    assert rows["m.jsonl:3"][0] == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_is_refused(tmp_path, tiny_clip_dir):
    data = data_with(tmp_path, "zero.jpg")
    os.mknod(data / "images" / "zero.jpg", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero: endless bytes
    rows = scored(data, tiny_clip_dir)
    assert rows["m.jsonl:1"][0] == "unreadable_image" and "a character device" in rows["m.jsonl:1"][1]
    assert rows["m.jsonl:2"][0] == "ok"


def test_a_huge_sparse_file_is_refused_by_its_size_without_being_read(tmp_path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(64 * 2**30)  # 64 GiB of holes
    done = python(f"""
from pairfilter_dagster.core.images import inspect_image_file
found = inspect_image_file({str(huge)!r})
print(found.status.value, found.error)""", memory_bytes=1024 * 2**20, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("image_too_large") and "more than max_image_bytes=268435456" in done.stdout


def test_an_extreme_strip_is_refused_before_the_processor_blows_it_up(tmp_path, tiny_clip_dir):
    data = data_with(tmp_path, "strip.png")
    Image.new("RGB", (200_000, 1), (200, 30, 30)).save(data / "images" / "strip.png")  # resized: 6.4M x 32 px
    rows = scored(data, tiny_clip_dir)
    assert rows["m.jsonl:1"][0] == "image_too_large"
    assert "200000x1, an aspect ratio above max_image_aspect_ratio=100" in rows["m.jsonl:1"][1]
    assert rows["m.jsonl:2"][0] == "ok"


def test_thousands_of_images_in_one_line_are_refused_before_any_pair_is_built(tmp_path):
    raw = tmp_path / "data" / "raw"
    write_manifest(raw / "m.jsonl", [{"images": [f"img{i}.jpg" for i in range(5000)]}, {"images": ["a.jpg", "b.jpg"]}])
    done = python(f"""
from pairfilter_dagster.core.ingest.formats import read_samples
from pairfilter_dagster.core.ingest.samples import SampleRules
rules = SampleRules.for_data_dir({str(raw.parent)!r}, pairing="all_pairs")
for sample in read_samples({str(raw)!r}, rules):
    print(sample.status.value, len(sample.image_pairs), sample.error)""", memory_bytes=1024 * 2**20, timeout=60)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == ("too_many_pairs 0 5000 images make 12497500 pairs under pairing all_pairs, more than "
                     "max_pairs_per_sample=1024")
    assert second.startswith("ok 1")


def test_a_line_that_never_ends_is_refused_without_holding_it_and_the_next_line_is_read(tmp_path):
    manifest = tmp_path / "data" / "raw" / "m.jsonl"
    manifest.parent.mkdir(parents=True)
    with open(manifest, "wb") as handle:
        handle.write(b'{"images": ["')
        handle.seek(2 * 2**30)  # two GiB of NUL bytes, no newline...
        handle.write(b'"]}\n{"images": ["a.jpg", "b.jpg"]}\n')  # ...then one good line
    done = python(f"""
from pairfilter_dagster.core.ingest.manifests import count_lines
from pairfilter_dagster.core.ingest.formats import read_samples
for sample in read_samples({str(manifest.parent)!r}):
    print(sample.sample_id, sample.status.value, len(sample.sample_json), sample.error)
print(count_lines({str(manifest)!r}))""", memory_bytes=1024 * 2**20, timeout=120)
    assert done.returncode == 0, done.stderr
    first, second, lines = done.stdout.splitlines()
    assert first.startswith("m.jsonl:1 malformed_line 200 line longer than max_line_bytes=16777216")
    assert second.startswith("m.jsonl:2 ok") and lines == "2"


def swap_target(link: Path, target: Path) -> None:
    swapped = link.with_name(link.name + ".new")
    swapped.symlink_to(target)
    os.replace(swapped, link)


def test_a_symlink_swapped_after_ingestion_is_not_followed_out_of_the_roots(tmp_path, embedder):
    data = data_with(tmp_path, "linked.jpg")
    (data / "images" / "linked.jpg").symlink_to(data / "images" / "img2.jpg")
    outside = tmp_path / "private" / "secret.jpg"
    outside.parent.mkdir()
    outside.write_bytes((PHOTOS / "img3.jpg").read_bytes())
    rules = SampleRules.for_data_dir(data)
    samples = list(read_samples(data / "raw", rules))
    assert samples[0].status is Status.OK  # at ingestion the link stays inside the data folder
    swap_target(data / "images" / "linked.jpg", outside)
    cache = MemoryCache()
    with LocalEngine(embedder, batch_size=4) as engine, \
            PairScorer(engine, cache, access=ImageAccess(rules.image_roots)) as scorer:
        rows = scorer.score_chunk(samples)
    assert rows[0].status is Status.PATH_NOT_ALLOWED and "now resolves to" in rows[0].error
    assert str(outside) in rows[0].error and "img3" not in rows[0].error  # the path, never any content
    assert hashlib.sha256(outside.read_bytes()).hexdigest() not in cache.embeddings
    assert rows[1].status is Status.OK


class ReplacingCache(MemoryCache):
    """Replaces a picture right after the scorer hashed it and before the engine decodes it: the race of a file
    rewritten while a run scores it, at the exact moment it matters."""

    def __init__(self, victim: Path, replacement: bytes) -> None:
        super().__init__()
        self.victim, self.replacement = victim, replacement

    def get_many(self, content_hashes):
        self.victim.write_bytes(self.replacement)
        return super().get_many(content_hashes)


def test_a_picture_replaced_while_scored_never_leaves_its_embedding_under_the_old_hash(tmp_path, embedder):
    data = data_with(tmp_path, "changing.jpg")
    victim = data / "images" / "changing.jpg"
    victim.write_bytes((PHOTOS / "img3.jpg").read_bytes())
    old_hash = inspect_image_file(str(victim)).content_hash
    new_content = (PHOTOS / "img1.png").read_bytes()
    cache = ReplacingCache(victim, new_content)
    rules = SampleRules.for_data_dir(data)
    with LocalEngine(embedder, batch_size=4) as engine, \
            PairScorer(engine, cache, access=ImageAccess(rules.image_roots)) as scorer:
        rows = scorer.score_chunk(list(read_samples(data / "raw", rules)))
    assert rows[0].status is Status.UNREADABLE_IMAGE and "changed while the run read it" in rows[0].error
    assert old_hash not in cache.embeddings and hashlib.sha256(new_content).hexdigest() not in cache.embeddings
    assert rows[1].status is Status.OK and set(cache.embeddings) == set(rows[1].image_hashes)
    assert np.isfinite(rows[1].image_pair_similarity).all()
