"""Remembered hashes of unchanged image files: a re-scored shard reads only what changed. Real photos, real result
files, the real scoring stage; an entry is trusted only once its file has been still for RACY_NS, and the tests
wait that long rather than bend the clock."""

import hashlib
import os
import shutil
import time

import pyarrow.parquet as pq
import pytest

from pairfilter_dagster.core import stages
from pairfilter_dagster.core.catalog import query_engine
from pairfilter_dagster.core.embedding.local import LocalEngine
from pairfilter_dagster.core.file_hashes import RACY_NS
from pairfilter_dagster.core.images import ImageAccess
from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.testing import PHOTOS

from .conftest import write_manifest

NAMES = ["cat.jpg", "img2.jpg", "img3.jpg", "img8.jpg", "blip.jpg", "img9.jpg", "img_pair_1.jpg", "img10.jpg"]


@pytest.fixture
def still_data(tmp_path):
    """Four pairs of real photos, left still for longer than the racy window."""
    data = tmp_path / "data"
    shutil.copytree(PHOTOS, data / "images")
    write_manifest(data / "raw" / "pairs.jsonl", [{"images": [f"../images/{a}", f"../images/{b}"]}
                                                  for a, b in zip(NAMES[::2], NAMES[1::2])])
    time.sleep(RACY_NS / 1e9 + 0.2)
    return data


def remembered(data, shard="pairs.jsonl"):
    return data / "local_state" / "file_hashes" / f"{shard}.parquet"


def score(data, embedder, **limits):
    rules = SampleRules.for_data_dir(data)
    results = ResultFiles.under(data / "output")
    shards = list_shards(data / "raw").readable
    stages.ingest(results, shards, rules)
    with LocalEngine(embedder, batch_size=4) as engine:
        return stages.score(results, sorted(shards), embedder, engine, access=ImageAccess(rules.image_roots, **limits),
                            file_hashes=data / "local_state" / "file_hashes")


def hashes(data):
    with query_engine(ResultFiles.under(data / "output")) as conn:
        return {sample_id: list(found) for sample_id, found in
                conn.execute("SELECT sample_id, image_hashes FROM image_pair_stats").fetchall()}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_rescored_shard_reads_none_of_its_unchanged_files_and_scores_the_same(still_data, embedder):
    first = score(still_data, embedder)
    before = hashes(still_data)
    second = score(still_data, embedder)
    assert (first.hashes_remembered, second.hashes_remembered) == (0, len(NAMES))
    assert hashes(still_data) == before and second.images_embedded == 0
    assert before["pairs.jsonl:1"] == [sha256(still_data / "images" / name) for name in NAMES[:2]]


def test_a_file_rewritten_in_place_with_the_same_size_is_read_again(still_data, embedder):
    score(still_data, embedder)
    cat = still_data / "images" / "cat.jpg"
    data = bytearray(cat.read_bytes())
    data[-3] ^= 0xFF  # among the JPEG's last bytes: the same size, another content
    cat.write_bytes(bytes(data))
    report = score(still_data, embedder)
    assert report.hashes_remembered == len(NAMES) - 1 and report.images_embedded == 1
    assert hashes(still_data)["pairs.jsonl:1"][0] == hashlib.sha256(bytes(data)).hexdigest()


def test_a_file_swapped_for_a_symlink_is_read_again(still_data, embedder):
    score(still_data, embedder)
    img2 = still_data / "images" / "img2.jpg"
    img2.unlink()
    os.symlink(still_data / "images" / "img8.jpg", img2)
    report = score(still_data, embedder)
    assert report.hashes_remembered == len(NAMES) - 1
    assert hashes(still_data)["pairs.jsonl:1"][1] == sha256(still_data / "images" / "img8.jpg")


def test_a_remembered_file_beyond_new_limits_gets_its_status(still_data, embedder):
    score(still_data, embedder)
    tight = score(still_data, embedder, max_pixels=10_000)  # every photo has more pixels
    assert tight.hashes_remembered == 0 and set(tight.status_counts) == {Status.IMAGE_TOO_LARGE}


def test_each_shard_remembers_its_own_files_and_a_damaged_record_only_costs_a_reread(still_data, embedder):
    write_manifest(still_data / "raw" / "more" / "b.jsonl", [{"images": ["../../images/cat.jpg",
                                                                          "../../images/img3.jpg"]}])
    time.sleep(RACY_NS / 1e9 + 0.2)
    score(still_data, embedder)
    assert sorted(pq.read_table(remembered(still_data, "more/b.jsonl")).column("path").to_pylist()) == [
        str(still_data / "images" / name) for name in ("cat.jpg", "img3.jpg")]
    assert pq.read_table(remembered(still_data)).num_rows == len(NAMES)
    before = hashes(still_data)

    remembered(still_data).write_bytes(b"not parquet")  # a damaged record: its files are read and hashed again
    report = score(still_data, embedder)
    assert report.hashes_remembered == 2 and report.images_embedded == 0 and hashes(still_data) == before
    assert pq.read_table(remembered(still_data)).num_rows == len(NAMES)  # and remembered again
    assert score(still_data, embedder).hashes_remembered == len(NAMES) + 2
