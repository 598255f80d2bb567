"""A dataset on a real S3 API: moto's server on 127.0.0.1 (started and stopped here), s3fs as the client, pointed at
it by AWS_ENDPOINT_URL as a user points it at MinIO. Data, images and outputs all on the bucket; the scores and the
kept set equal a local run's; the sensor finds a shard uploaded later; the CLI runs on the bucket; bad locations
are refused before work with one message naming the setting and the fix."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairfilter_dagster.core.catalog import open_catalog, query_engine
from pairfilter_dagster.core.held_reads import HELD_READS
from pairfilter_dagster.core.ingest.formats import read_shards
from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.locations import LocationError, as_location
from pairfilter_dagster.core.scoring import score_samples
from pairfilter_dagster.defs.resources import PairfilterStorage
from pairfilter_dagster.testing import local_s3

from .pipeline import PIPELINE
from .test_assets import ASSETS, query, run
from .test_sensors import Daemon
from .test_shard_formats import PAIRS, data_folder, photo, records, write_parquet, write_tar

pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
BUCKET = "pairfilter-test"
SHARDS = ["paths.jsonl", "paths.parquet", "bytes.parquet", "hf.parquet", "webdataset.tar"]
EXPORT = [*ASSETS, PIPELINE.image_embeddings]


@pytest.fixture(scope="module")
def s3():
    with local_s3(BUCKET) as fs:
        yield fs


def mixed_dataset(tmp_path):
    """The same six pairs in every shard format, in one data folder."""
    data = data_folder(tmp_path, "data")
    raw, relative = data / "raw", [[f"../images/{a}", f"../images/{b}"] for a, b in PAIRS]
    (raw / "paths.jsonl").write_text("".join(json.dumps({**r, "images": images}) + "\n"
                                             for r, images in zip(records(), relative)))
    write_parquet(raw / "paths.parquet", relative, pa.string())
    write_parquet(raw / "bytes.parquet", [[photo(a), photo(b)] for a, b in PAIRS], pa.binary())
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    write_parquet(raw / "hf.parquet", [[{"bytes": photo(a), "path": a}, {"bytes": None, "path": f"../images/{b}"}]
                                       for a, b in PAIRS], struct)
    write_tar(raw / "webdataset.tar", [(f"{i:06d}", [photo(a), photo(b)], r)
                                       for i, ((a, b), r) in enumerate(zip(PAIRS, records()))])
    return data


def upload(fs, folder, prefix: str) -> str:
    fs.put(f"{folder}/", f"{BUCKET}/{prefix}", recursive=True)
    return f"s3://{BUCKET}/{prefix}"


def url_query(url: str, sql: str) -> list[tuple]:
    """`sql` over the views of the result files of a data folder given by its URL."""
    with query_engine(PairfilterStorage(data_dir=url).results) as conn:
        return conn.execute(sql).fetchall()


def scores_by_sample(location):
    sql = "SELECT sample_id, status, image_pair_similarity FROM image_pair_stats"
    rows = url_query(location, sql) if isinstance(location, str) else query(location, sql)
    return {sample_id: (status, list(scores)) for sample_id, status, scores in rows}


@pytest.fixture(scope="module")
def local_and_bucket_runs(s3, tmp_path_factory, tiny_clip_dir):
    local = mixed_dataset(tmp_path_factory.mktemp("local"))
    url = upload(s3, local, "datasets/pairs")
    local_result = run(EXPORT, local, tiny_clip_dir, {"keep_top_fraction": 0.5})
    state = tmp_path_factory.mktemp("state")
    bucket_result = run(EXPORT, url, tiny_clip_dir, {"keep_top_fraction": 0.5},
                        storage_options={"state_dir": str(state)})
    return local, local_result, url, state, bucket_result


def test_a_dataset_on_s3_scores_and_keeps_exactly_what_the_same_files_on_disk_do(local_and_bucket_runs, s3):
    local, local_result, url, state, bucket_result = local_and_bucket_runs
    for result in (local_result, bucket_result):
        assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
    expected, found = scores_by_sample(local), scores_by_sample(url)
    assert sorted({sample_id.split(":")[0] for sample_id in found}) == sorted(SHARDS)
    assert found.keys() == expected.keys() and len(found) == len(SHARDS) * len(PAIRS)
    for sample_id, (status, scores) in found.items():
        assert status == "ok" and scores == pytest.approx(expected[sample_id][1], abs=1e-6), sample_id
    kept_sql = "SELECT sample_id FROM filtered_samples ORDER BY 1"
    assert url_query(url, kept_sql) == query(local, kept_sql) and len(query(local, kept_sql)) == len(found) // 2
    assert not (state / "output" / "kept").exists()  # the outputs and the results went to the bucket
    results = f"{BUCKET}/datasets/pairs/output/results"
    assert s3.exists(f"{results}/image_pair_stats/webdataset.tar.parquet") and s3.exists(f"{results}/raw_samples")
    assert s3.find(f"{results}/embedding_cache") and not (state / "output" / "results").exists()
    storage = PairfilterStorage(data_dir=url, state_dir=str(state))
    with open_catalog(storage.catalog, storage.results) as conn:  # the local catalog reads the bucket's files
        assert sorted(conn.execute(kept_sql).fetchall()) == query(local, kept_sql)
        assert conn.execute("SELECT count(DISTINCT content_hash) FROM embedding_cache").fetchone()[0] == \
            query(local, "SELECT count(DISTINCT content_hash) FROM embedding_cache")[0][0]


def test_the_outputs_on_the_bucket_read_back_like_the_local_ones(local_and_bucket_runs, s3):
    local, _, url, _, _ = local_and_bucket_runs
    remote = f"{BUCKET}/datasets/pairs/output"
    assert s3.cat_file(f"{remote}/kept_ids.txt") == (local / "output" / "kept_ids.txt").read_bytes()
    for shard in ("paths.parquet", "bytes.parquet", "hf.parquet"):
        with s3.open(f"{remote}/kept/{shard}", "rb") as handle:
            table = pq.read_table(handle)
        assert table.equals(pq.read_table(local / "output" / "kept" / shard), check_metadata=True), shard
    with s3.open(f"{remote}/kept/webdataset.tar", "rb") as handle, tarfile.open(fileobj=handle) as found, \
            tarfile.open(local / "output" / "kept" / "webdataset.tar") as expected:
        assert {m.name: found.extractfile(m).read() for m in found} == {
            m.name: expected.extractfile(m).read() for m in expected}
    lines = [json.loads(line) for line in s3.cat_file(f"{remote}/kept/paths.jsonl").decode().splitlines()]
    assert lines and all("image_pair_similarity" in line["__dj__stats__"] for line in lines)
    for line in lines:  # relative to the kept file's folder on the bucket, where the images are
        for image in line["images"]:
            assert s3.exists(os.path.normpath(f"{remote}/kept/{image}")), image
    assert s3.cat_file(f"{remote}/filtered_samples.jsonl").decode().count("\n") == len(lines)
    local_npy = sorted((local / "output" / "embeddings" / "img_emb").iterdir())
    assert len(local_npy) == len(SHARDS)
    for path in local_npy:
        found = np.load(io.BytesIO(s3.cat_file(f"{remote}/embeddings/img_emb/{path.name}")))
        assert found.shape == np.load(path).shape and np.allclose(found, np.load(path), atol=1e-6), path.name
    assert not [name for name in s3.find(f"{BUCKET}/datasets") if name.endswith(".tmp")]


def test_a_shard_uploaded_to_the_bucket_is_found_by_the_sensor(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRFILTER_HOME", str(tmp_path / "home"))
    url = upload(s3, mixed_dataset(tmp_path), "sensed")
    import dagster as dg

    with dg.instance_for_test() as instance:
        daemon = Daemon(instance, url)
        first = daemon.evaluate()
        assert sorted(daemon.shards()) == sorted(SHARDS) and first.run_requests
        daemon.evaluate()  # the dataset run after the shard runs
        assert "no new or changed manifest among 5" in daemon.evaluate().skip_message
        s3.put_file(str(tmp_path / "data" / "raw" / "bytes.parquet"), f"{BUCKET}/sensed/raw/later/more.parquet")
        found = daemon.evaluate()
        assert [request.partition_key for request in found.run_requests] == ["later/more.parquet"]
        assert "added: later/more.parquet" in found.run_requests[0].tags["pairfilter/manifest_changes"]
        s3.pipe_file(f"{BUCKET}/sensed/raw/paths.jsonl", s3.cat_file(f"{BUCKET}/sensed/raw/paths.jsonl") + b"\n")
        changed = daemon.evaluate()
        assert [request.partition_key for request in changed.run_requests] == ["paths.jsonl"]


def test_pairfilter_materialize_runs_the_whole_pipeline_on_a_bucket(s3, tmp_path, tiny_clip_dir):
    url = upload(s3, mixed_dataset(tmp_path), "cli")
    env = {**os.environ, "PAIRFILTER_DATA_DIR": url, "PAIRFILTER_HF_CLIP": str(tiny_clip_dir),
           "PAIRFILTER_HOME": str(tmp_path / "home")}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([sys.executable, "-m", "pairfilter_dagster.cli"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"shards under {url}/raw" in done.stdout
    (state,) = (tmp_path / "home").iterdir()
    assert state.name.startswith("s3-pairfilter-test-cli-")
    assert len(scores_by_sample(url)) == len(SHARDS) * len(PAIRS) and (state / "catalog.duckdb").is_file()
    assert s3.exists(f"{BUCKET}/cli/output/kept_ids.txt") and s3.exists(f"{BUCKET}/cli/output/kept/webdataset.tar")


def test_an_object_that_vanishes_between_listing_and_reading_loses_nothing_silently(s3, tmp_path, embedder):
    url = upload(s3, mixed_dataset(tmp_path), "vanishing")
    data = as_location(url)
    rules = SampleRules.for_data_dir(data)
    listing = list_shards(data / "raw")
    s3.rm(f"{BUCKET}/vanishing/raw/webdataset.tar")  # listed, then gone: a shard that is gone has no samples
    samples = list(read_shards(listing.readable, rules))
    assert {s.manifest for s in samples} == set(SHARDS) - {"webdataset.tar"}
    s3.rm(f"{BUCKET}/vanishing/images/cat.jpg")  # ingested, then gone: its samples say so
    rows, _ = score_samples(samples, embedder, batch_size=4)
    missing = [row for row in rows if row.status.value == "missing_image"]
    assert {row.sample_id for row in missing} == {"paths.jsonl:1", "paths.parquet:1"}  # hf.parquet holds cat.jpg's bytes
    assert all("image file not found: s3://pairfilter-test/vanishing/images/cat.jpg" in row.error for row in missing)
    assert sum(row.status.value == "ok" for row in rows) == len(rows) - len(missing)


def test_images_outside_the_roots_on_the_bucket_or_of_another_scheme_get_a_status(s3, tmp_path, embedder):
    data = data_folder(tmp_path, "data")
    (data / "raw" / "escape.jsonl").write_text("".join(json.dumps({"images": images}) + "\n" for images in (
        ["../images/cat.jpg", "../../elsewhere/cat.jpg"],  # above the data folder, on the same bucket
        ["../images/cat.jpg", "/other-bucket/cat.jpg"],  # absolute: the same filesystem, another bucket
        ["../images/cat.jpg", "https://example.com/cat.jpg"],
        ["../images/cat.jpg", "../images/img2.jpg"],
    )))
    url = upload(s3, data, "escape")
    samples = list(read_shards(list_shards(as_location(url) / "raw").readable, SampleRules.for_data_dir(as_location(url))))
    assert [s.status.value for s in samples] == ["path_not_allowed", "path_not_allowed", "url_not_allowed", "ok"]
    assert "s3://pairfilter-test/elsewhere/cat.jpg" in samples[0].error and "s3://other-bucket/cat.jpg" in samples[1].error


def test_bad_locations_are_refused_before_work_naming_the_setting_and_the_fix(s3, monkeypatch):
    with pytest.raises(LocationError, match=r"data_dir: 'zz://bucket/data': unknown scheme zz://"):
        PairfilterStorage(data_dir="zz://bucket/data").check_data_dir()
    with pytest.raises(LocationError, match=r"data_dir: 's3://no-such-bucket/data' does not exist or is empty"):
        PairfilterStorage(data_dir="s3://no-such-bucket/data").check_data_dir()
    with pytest.raises(LocationError, match=r"output_dir: 'zz://x': unknown scheme"):
        PairfilterStorage(data_dir=f"s3://{BUCKET}/datasets/pairs", output_dir="zz://x").check_data_dir()
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as on a machine without the gcs extra
    with pytest.raises(LocationError, match=r"data_dir: 'gs://bucket/data' needs a library .*pip install -e '\.\[gcs\]'"):
        PairfilterStorage(data_dir="gs://bucket/data").check_data_dir()


def test_a_bucket_that_refuses_listing_is_named_with_the_credentials_to_check(s3, monkeypatch):
    from s3fs import S3FileSystem

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there: the store cannot be reached
    S3FileSystem.clear_instance_cache()
    try:
        storage = PairfilterStorage(data_dir=f"s3://{BUCKET}/datasets/pairs",
                                    storage_options={"config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})
        with pytest.raises(LocationError, match=r"data_dir: cannot list 's3://pairfilter-test/datasets/pairs': .*credentials"):
            storage.check_data_dir()
    finally:
        S3FileSystem.clear_instance_cache()


def test_a_parquet_object_that_is_not_parquet_is_listed_with_its_problem(s3):
    s3.pipe_file(f"{BUCKET}/fake/raw/fake.parquet", b"id,images\n1,cat.jpg\n")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ["a"], "images": [[b"x", b"y"]]}), buffer)
    s3.pipe_file(f"{BUCKET}/fake/raw/real.parquet", buffer.getvalue())
    listing = list_shards(as_location(f"s3://{BUCKET}/fake") / "raw")
    assert listing.problems == {"raw/fake.parquet": "not a Parquet file (no PAR1 magic at its start and end)"}
    assert list(listing.readable) == ["real.parquet"] and listing.files["real.parquet"].fingerprint.startswith("ETag:")


def test_any_fsspec_filesystem_serves_as_the_data_folder(tmp_path, tiny_clip_dir):
    """fsspec's in-memory filesystem, as a stand-in for the ones without a local server here (gs://, hf://)."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.put(f"{mixed_dataset(tmp_path)}/", "/memory-data", recursive=True)
    try:
        result = run(ASSETS, "memory://memory-data", tiny_clip_dir, {"min_score": 0.0},
                     storage_options={"state_dir": str(tmp_path / "state")})
        assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
        assert len(scores_by_sample("memory://memory-data")) == len(SHARDS) * len(PAIRS)
        assert memory.cat_file("/memory-data/output/kept_ids.txt").decode().count("\n") == len(SHARDS) * len(PAIRS)
    finally:
        memory.rm("/memory-data", recursive=True)


def test_local_manifests_may_name_images_on_a_bucket_inside_an_image_root(s3, tmp_path, embedder):
    data = data_folder(tmp_path, "data")
    upload(s3, data / "images", "shared/images")
    inside, outside = f"s3://{BUCKET}/shared/images", f"s3://{BUCKET}/shared/elsewhere"
    (data / "raw" / "urls.jsonl").write_text("".join(json.dumps({"images": images}) + "\n" for images in (
        [f"{inside}/cat.jpg", f"{inside}/img2.jpg"],
        [f"{inside}/cat.jpg", f"{inside}/../elsewhere/img2.jpg"],
        [f"{inside}/cat.jpg", "../images/img3.jpg"],  # a local file needs a local root
    )))
    storage = PairfilterStorage(data_dir=str(data), image_roots=[inside])
    samples = list(read_shards(storage.list_shards().readable, storage.sample_rules()))
    assert [s.status.value for s in samples] == ["ok", "path_not_allowed", "path_not_allowed"]
    assert f"{outside}/img2.jpg" in samples[1].error
    held_before = HELD_READS.hits
    rows, report = score_samples(samples[:1], embedder, batch_size=4, access=storage.image_access())
    assert rows[0].status.value == "ok" and len(rows[0].image_pair_similarity) == 1
    assert report.images_embedded == 2 == HELD_READS.hits - held_before  # decoded from the bytes read for hashing


KILLED_AFTER_THE_COMMIT = """
import os, signal, sys
from pathlib import Path
from pairfilter_dagster.core import publish
from pairfilter_dagster.core.locations import as_location

jsonl, table = (as_location(url) for url in sys.argv[2:])
with publish.staged_file(jsonl) as lines, publish.staged_file(table) as rows:
    lines.write_lines(['{"images": ["a.jpg", "b.jpg"]}'])
    rows.write(b"the filtered table")
    write_record = publish.StagedFile.publish
    publish.StagedFile.publish = lambda self: write_record(self) if self.path.suffix == ".json" else \
        os.kill(os.getpid(), signal.SIGKILL)  # dies once the record is written, before the first upload
    publish.publish_together([lines, rows], Path(sys.argv[1]))
"""


def test_uploads_committed_but_not_done_are_completed_by_the_next_run(s3, tmp_path):
    """The state a run killed between the commit of the filtered files (their record) and their uploads leaves."""
    from pairfilter_dagster.core.publish import complete_pending

    records = tmp_path / "pending_publish"
    targets = [f"s3://{BUCKET}/pending/output/filtered_samples.jsonl",
               f"s3://{BUCKET}/pending/output/results/filtered_samples.parquet"]
    died = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_COMMIT, str(records), *targets], timeout=120)
    assert died.returncode == -9
    assert not any(s3.exists(url) for url in targets) and len(list(records.iterdir())) == 1
    assert complete_pending(records) == targets
    assert s3.cat_file(targets[0]) == b'{"images": ["a.jpg", "b.jpg"]}\n'
    assert s3.cat_file(targets[1]) == b"the filtered table"
    assert not list(records.iterdir()) and complete_pending(records) == []
