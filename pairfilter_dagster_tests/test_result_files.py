"""The result files: typed rows written as one Parquet file per table and shard (`tables`), published whole or not at
all; the DuckDB views over them (`catalog`), in memory and in the catalog file; the embedding cache as block files
(`cache_files`), shared by runs through the files alone; pruning the files of shards that are gone. Real files in a
temporary output folder, read back with DuckDB and with pyarrow."""

import hashlib
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairfilter_dagster.core import stages
from pairfilter_dagster.core.catalog import open_catalog, query_engine, read_view_rows, write_catalog
from pairfilter_dagster.core.embedding.cache_files import EmbeddingFiles, full_model_key
from pairfilter_dagster.core.ingest.manifests import ShardFile, ShardListing, list_shards
from pairfilter_dagster.core.results import ResultFiles, parquet_files
from pairfilter_dagster.core.schema import FilteredRow, Sample, StatsRow, Status
from pairfilter_dagster.core.tables import file_shard, read_rows, table_file

MODEL_KEY = hashlib.sha256(b"a model").hexdigest()


def stats_row(sample_id, line, scores, status=Status.OK, manifest="m.jsonl"):
    return StatsRow(
        sample_id=sample_id, manifest=manifest, line_number=line, images=("a.jpg", "b.jpg"),
        image_pair_similarity=tuple(scores), status=status, error="" if status is Status.OK else "why",
        image_hashes=("h1", "h2") if scores else (), sample_json="{}", image_pairs=((0, 1),) if scores else (),
    )


def write(path, row_type, rows, shard=None):
    with table_file(path, row_type, shard) as table:
        table.write(rows)
    return table.rows_written


@pytest.fixture
def results(tmp_path):
    return ResultFiles.under(tmp_path / "output")


def listing(folder):
    return sorted(os.listdir(folder))


def test_typed_rows_round_trip_in_order_through_the_file_and_the_views(results):
    rows = [stats_row("m.jsonl:2", 2, [0.5]), stats_row("m.jsonl:1", 1, [], Status.MISSING_IMAGE)]
    path = results.shard_file(StatsRow, "m.jsonl")
    assert path == results.root / "image_pair_stats" / "m.jsonl.parquet"
    assert write(path, StatsRow, rows, "m.jsonl") == 2
    assert [row for chunk in read_rows(path, StatsRow, chunk_size=1) for row in chunk] == rows  # as written
    only = [row for chunk in read_rows(path, StatsRow, only=stages.FILTER_READS) for row in chunk]
    assert [(r.sample_id, r.status, r.image_pair_similarity, r.images) for r in only] == [
        ("m.jsonl:2", Status.OK, (0.5,), ()), ("m.jsonl:1", Status.MISSING_IMAGE, (), ())]  # the rest not read
    assert file_shard(path) == "m.jsonl"

    table = pq.read_table(path)  # a plain Parquet file, for any reader
    assert table.schema.field("image_pair_similarity").type == pa.list_(pa.float64())
    assert table.schema.field("image_pairs").type == pa.list_(pa.list_(pa.int32()))
    assert table.column("status").to_pylist() == ["ok", "missing_image"]

    with query_engine(results) as conn:
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'image_pair_stats'").fetchall())
        read = [row for chunk in read_view_rows(conn, StatsRow) for row in chunk]
    assert types["image_pair_similarity"] == "DOUBLE[]" and types["images"] == "VARCHAR[]"
    assert types["image_pairs"] == "INTEGER[][]" and types["line_number"] == "INTEGER"
    assert read == sorted(rows, key=lambda row: row.line_number)  # input order, status an enum again
    assert read[0].status is Status.MISSING_IMAGE and read[1].image_pairs == ((0, 1),)


def test_shards_in_subfolders_have_their_own_files_and_views_select_them(results):
    write(results.shard_file(StatsRow, "m.jsonl"), StatsRow, [stats_row("m.jsonl:1", 1, [0.5])], "m.jsonl")
    sub = "more/b.jsonl"
    write(results.shard_file(StatsRow, sub), StatsRow, [stats_row(f"{sub}:1", 1, [0.2], manifest=sub)], sub)
    assert results.shards(StatsRow) == ["m.jsonl", sub] and results.shards(Sample) == []
    assert results.files(StatsRow, [sub, "gone.jsonl"]) == [str(results.shard_file(StatsRow, sub))]
    with query_engine(results, [sub]) as conn:
        assert conn.execute("SELECT sample_id FROM image_pair_stats").fetchall() == [(f"{sub}:1",)]
        assert conn.execute("SELECT count(*) FROM raw_samples").fetchone() == (0,)  # no file: an empty view
    with query_engine(results) as conn:
        assert conn.execute("SELECT count(*) FROM image_pair_stats").fetchone() == (2,)


def test_an_empty_shard_file_is_valid_and_its_view_is_empty(results):
    path = results.shard_file(StatsRow, "m.jsonl")
    assert write(path, StatsRow, [], "m.jsonl") == 0
    assert path.is_file() and file_shard(path) == "m.jsonl"  # an empty shard still names itself
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.names[:3] == ["sample_id", "manifest", "line_number"]
    assert list(read_rows(path, StatsRow)) == []
    with query_engine(results) as conn:
        assert conn.execute("SELECT count(*) FROM image_pair_stats").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM filtered_samples").fetchone() == (0,)


@pytest.mark.parametrize("failure", ["bad row", "exception mid-block"])
def test_a_failed_write_keeps_the_old_file_byte_for_byte_and_leaves_no_temp_file(results, failure):
    path = results.shard_file(StatsRow, "m.jsonl")
    write(path, StatsRow, [stats_row("m.jsonl:1", 1, [0.5])], "m.jsonl")
    before = path.read_bytes()
    with pytest.raises((ValueError, RuntimeError)):
        with table_file(path, StatsRow, "m.jsonl") as table:
            table.write([stats_row(f"m.jsonl:{i}", i, [0.1]) for i in range(2, 50)])  # a chunk is written
            if failure == "bad row":
                table.write([stats_row("m.jsonl:50", "not a number", [0.1])])
            raise RuntimeError("the run fails half way")
    assert path.read_bytes() == before
    assert listing(path.parent) == ["m.jsonl.parquet"]
    with query_engine(results) as conn:
        assert conn.execute("SELECT sample_id FROM image_pair_stats").fetchall() == [("m.jsonl:1",)]


def test_a_shard_writer_refuses_the_rows_of_other_shards(results):
    path = results.shard_file(StatsRow, "a.jsonl")
    write(path, StatsRow, [stats_row("a.jsonl:1", 1, [0.5], manifest="a.jsonl")], "a.jsonl")
    before = path.read_bytes()
    mixed = [stats_row("a.jsonl:2", 2, [0.5], manifest="a.jsonl"), stats_row("b.jsonl:1", 1, [0.5], manifest="b.jsonl")]
    with pytest.raises(ValueError, match=r"rows of shards \['b.jsonl'\] written to the file of shard 'a.jsonl'"):
        write(path, StatsRow, mixed, "a.jsonl")
    assert path.read_bytes() == before and listing(path.parent) == ["a.jsonl.parquet"]
    filtered = [FilteredRow(sample_id=f"{m}:1", manifest=m, line_number=1, sample_json="{}") for m in ("a", "b")]
    assert write(results.filtered_file, FilteredRow, filtered) == 2  # the whole-dataset file takes every shard
    assert file_shard(results.filtered_file) is None


def content_hash(n: int) -> str:
    return hashlib.sha256(f"image {n}".encode()).hexdigest()


def vector(n: int) -> np.ndarray:
    values = np.random.default_rng(n).normal(size=8).astype(np.float32)
    return values / np.linalg.norm(values)


def embeddings(numbers) -> dict:
    return {content_hash(n): vector(n) for n in numbers}


def cache_blocks(results, shard="_"):
    return [name for name in parquet_files(results.cache_folder(MODEL_KEY)) if name.startswith(f"{shard}/")]


def assert_same(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(found[key], value)


def test_embeddings_round_trip_through_a_block_file(results):
    with EmbeddingFiles(results, MODEL_KEY, "m.jsonl", block=100) as cache:
        cache.put_many(embeddings(range(3)))
        assert_same(cache.get_many([content_hash(0), content_hash(9)]), embeddings([0]))  # waiting, not yet a file
        assert cache_blocks(results, "m.jsonl") == []
    (block,) = cache_blocks(results, "m.jsonl")  # flushed as the cache closed
    assert (results.cache_root / MODEL_KEY[:16]) == results.cache_folder(MODEL_KEY)
    table = pq.read_table(results.cache_folder(MODEL_KEY) / block)
    assert table.num_rows == 3 and set(table.column("model_key").to_pylist()) == {MODEL_KEY}

    again = EmbeddingFiles(results, MODEL_KEY)  # a later run: only the files
    assert_same(again.get_many([content_hash(n) for n in range(5)]), embeddings(range(3)))
    assert again.count() == 3 and again.dimension() == 8
    assert full_model_key(results, MODEL_KEY[:16]) == MODEL_KEY
    with query_engine(results, with_cache=True) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT content_hash), min(model_key) FROM embedding_cache"
                            ).fetchone() == (3, 3, MODEL_KEY)


def test_a_block_is_written_at_block_embeddings_and_never_rewritten(results):
    cache = EmbeddingFiles(results, MODEL_KEY, "m.jsonl", block=2)
    cache.put_many(embeddings([0]))
    assert cache_blocks(results, "m.jsonl") == [] and cache.blocks_written == 0
    cache.put_many(embeddings([1]))
    (first,) = cache_blocks(results, "m.jsonl")
    first_bytes = (results.cache_folder(MODEL_KEY) / first).read_bytes()
    cache.put_many(embeddings([2, 3, 4]))  # over the block: all that waits goes into one file
    cache.put_many(embeddings([5]))
    cache.flush()
    blocks = cache_blocks(results, "m.jsonl")
    assert len(blocks) == cache.blocks_written == 3 and cache.pending == {}
    assert [pq.read_metadata(results.cache_folder(MODEL_KEY) / b).num_rows for b in blocks] == [2, 3, 1]
    assert (results.cache_folder(MODEL_KEY) / first).read_bytes() == first_bytes
    assert cache.count() == 6


def test_another_run_sees_the_blocks_written_since_after_refresh(results):
    writer = EmbeddingFiles(results, MODEL_KEY, "a.jsonl", block=2)
    reader = EmbeddingFiles(results, MODEL_KEY, "b.jsonl", block=2)
    assert reader.count() == 0 and reader.get_many([content_hash(0)]) == {}
    writer.put_many(embeddings([0, 1]))
    assert_same(reader.get_many([content_hash(0), content_hash(1)]), embeddings([0, 1]))  # a lookup refreshes
    writer.put_many(embeddings([2, 3]))
    reader.refresh()
    assert sorted(reader.files) == sorted(writer.files) and reader.count() == 4
    reader.put_many(embeddings([3, 4]))  # both runs embedded image 3: either copy serves, counted once
    third = EmbeddingFiles(results, MODEL_KEY)
    assert third.count() == 5
    assert_same(third.get_many([content_hash(n) for n in range(5)]), embeddings(range(5)))


def test_a_hit_is_checked_on_the_full_hash_not_only_its_64_bit_key(results):
    stored = "ab" * 8 + "0" * 48
    lookalike = "ab" * 8 + "1" * 48  # the same first 64 bits: the same index key
    with EmbeddingFiles(results, MODEL_KEY, block=1) as cache:
        cache.put_many({stored: vector(1)})
    other = EmbeddingFiles(results, MODEL_KEY)
    assert other.get_many([lookalike]) == {}
    assert_same(other.get_many([stored, lookalike]), {stored: vector(1)})  # asked together: each checked
    with EmbeddingFiles(results, MODEL_KEY, block=1) as cache:
        cache.put_many({lookalike: vector(2)})
    third = EmbeddingFiles(results, MODEL_KEY)  # two entries of one key: each found, with its own vector
    assert_same(third.get_many([lookalike, stored]), {stored: vector(1), lookalike: vector(2)})
    assert_same(third.get_many([lookalike]), {lookalike: vector(2)})


def test_another_model_has_a_cache_of_its_own(results):
    with EmbeddingFiles(results, MODEL_KEY, block=1) as cache:
        cache.put_many(embeddings([0]))
    other = EmbeddingFiles(results, hashlib.sha256(b"another model").hexdigest())
    assert other.get_many([content_hash(0)]) == {} and other.count() == 0 and other.dimension() == 0


def shard_results(results):
    for shard in ("a.jsonl", "sub/b.jsonl"):
        rows = [stats_row(f"{shard}:{i}", i, [i / 10], manifest=shard) for i in (1, 2)]
        write(results.shard_file(StatsRow, shard), StatsRow, rows, shard)
        samples = [Sample(sample_id=r.sample_id, manifest=shard, line_number=r.line_number, sample_json="{}")
                   for r in rows]
        write(results.shard_file(Sample, shard), Sample, samples, shard)
    with EmbeddingFiles(results, MODEL_KEY, block=2) as cache:
        cache.put_many(embeddings(range(3)))


QUERIES = ["SELECT * FROM image_pair_stats ORDER BY sample_id", "SELECT * FROM raw_samples ORDER BY sample_id",
           "SELECT count(*) FROM filtered_samples", "SELECT content_hash FROM embedding_cache ORDER BY 1"]


def test_the_catalog_deleted_and_rebuilt_answers_the_same(results, tmp_path):
    shard_results(results)
    catalog = tmp_path / "state" / "catalog.duckdb"
    rows = write_catalog(results, catalog, count=True)
    assert rows == {"raw_samples": 4, "image_pair_stats": 4, "filtered_samples": 0, "embedding_cache": 3}
    with open_catalog(catalog, results) as conn:
        first = [conn.execute(sql).fetchall() for sql in QUERIES]
    with query_engine(results, with_cache=True) as conn:
        assert [conn.execute(sql).fetchall() for sql in QUERIES] == first
    catalog.unlink()
    assert write_catalog(results, catalog, count=True) == rows
    with duckdb.connect(str(catalog), read_only=True) as conn:  # as people open it: the DuckDB CLI, a notebook
        assert [conn.execute(sql).fetchall() for sql in QUERIES] == first
    assert listing(catalog.parent) == ["catalog.duckdb"]  # no temp file beside it

    new = "c.jsonl"  # the catalog's views read every file at query time: a new shard shows up unrebuilt
    write(results.shard_file(StatsRow, new), StatsRow, [stats_row(f"{new}:1", 1, [0.3], manifest=new)], new)
    with open_catalog(catalog, results) as conn:
        assert conn.execute("SELECT count(*) FROM image_pair_stats").fetchone() == (5,)


def test_pruning_deletes_the_files_of_gone_shards_only(results, tmp_path):
    shard_results(results)
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    (raw / "a.jsonl").write_text("{}\n")
    kept_bytes = results.shard_file(StatsRow, "a.jsonl").read_bytes()
    blocks = parquet_files(results.cache_root)

    unreadable = ShardListing(raw, {"a.jsonl": ShardFile("a.jsonl", raw / "a.jsonl")}, {"sub": "permission denied"})
    assert stages.prune_removed_manifests(results, unreadable) == []  # sub/ could not be read: b may be there
    assert results.shards(StatsRow) == results.shards(Sample) == ["a.jsonl", "sub/b.jsonl"]

    assert stages.prune_removed_manifests(results, list_shards(raw)) == ["sub/b.jsonl"]
    assert results.shards(StatsRow) == results.shards(Sample) == ["a.jsonl"]
    assert results.shard_file(StatsRow, "a.jsonl").read_bytes() == kept_bytes
    assert parquet_files(results.cache_root) == blocks  # embeddings serve any shard: never pruned
