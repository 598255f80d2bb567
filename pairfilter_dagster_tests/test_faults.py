"""Faults: a failed run leaves the previous outputs intact, and nobody reading the results stops a run. There is no
lock to wait for any more: each shard's results are files of its own, the catalog is views rewritten beside the old
one and renamed over it. Readers are real second processes, driven by what they report, never by sleeping. (Two
shard runs at once never waiting for each other: test_shard_workers, whose workers meet at a barrier mid-scoring.)"""

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from pairfilter_dagster.core import publish, stages
from pairfilter_dagster.core.filtering import FilterSettings
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.schema import StatsRow
from pairfilter_dagster.defs.resources import PairfilterStorage
from pairfilter_dagster.testing import write_clip_checkpoint

from .pipeline import PIPELINE as assets
from .test_assets import ASSETS, query, read_jsonl, run, step_failure

HOLD_CATALOG = (
    "import duckdb, sys; conn = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'read')\n"
    "for _ in sys.stdin:\n"
    "    print(conn.execute('SELECT count(*) FROM filtered_samples').fetchone()[0], flush=True)\n"
    "conn.close()"
)


@contextmanager
def catalog_held_by_another_process(database: Path, mode: str):
    """Another process holds the catalog open ('read': read-only; 'write': as the DuckDB CLI opens a file by
    default) and answers each line sent with the rows it sees in filtered_samples."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CATALOG, str(database), mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask() -> int:
        holder.stdin.write("count\n")
        holder.stdin.flush()
        return int(holder.stdout.readline())

    try:
        yield ask
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0


def result_files(data_dir: Path) -> dict[str, bytes]:
    """Every result file (the embedding cache aside) and output file, byte for byte."""
    output = data_dir / "output"
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*"))
            if p.is_file() and "embedding_cache" not in p.parts}


def snapshot(data_dir: Path) -> dict:
    """Everything a run writes: the three tables as queried, and their files and the JSONL byte for byte."""
    tables = {table: query(data_dir, f"SELECT * FROM {table} ORDER BY sample_id")
              for table in ("raw_samples", "image_pair_stats", "filtered_samples")}
    return {**tables, "files": result_files(data_dir)}


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(publish.TEMP_SUFFIX))


@pytest.mark.parametrize("mode", ["read", "write"])
def test_a_process_holding_the_catalog_open_does_not_stop_a_run(bundled_data_dir, tiny_clip_dir, mode):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0}).success
    catalog = PairfilterStorage(data_dir=str(bundled_data_dir)).catalog
    old_inode = catalog.stat().st_ino
    with catalog_held_by_another_process(catalog, mode) as holder_count:
        assert holder_count() == 9
        refiltered = run([assets.filtered_samples], bundled_data_dir, tiny_clip_dir, {"min_score": 0.99})
        assert refiltered.success
        kept = len(read_jsonl(bundled_data_dir / "output" / "filtered_samples.jsonl"))
        assert kept < 9
        assert holder_count() == kept  # its old catalog's views read the files as they are now
    assert catalog.stat().st_ino != old_inode  # rewritten beside it and renamed over it
    with duckdb.connect(str(catalog), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM filtered_samples").fetchone() == (kept,)
    assert sorted(p.name for p in catalog.parent.glob("*catalog*")) == ["catalog.duckdb"]


def failing_publish(monkeypatch, *names: str):
    """Publishing a file of one of these names, or into a folder of one of them, fails (as a full disk or a lost
    connection would); every other file (the embedding cache's blocks, say) is published as usual."""
    move = publish.move_into_place

    def move_unless_named(temp_path, path):
        if path.name in names or path.parent.name in names:
            raise OSError(f"simulated failure publishing {path}")
        move(temp_path, path)

    monkeypatch.setattr(publish, "move_into_place", move_unless_named)


def test_a_failed_run_leaves_the_previous_outputs_intact(bundled_data_dir, tiny_clip_dir, tmp_path, monkeypatch):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0}).success
    before = snapshot(bundled_data_dir)
    other_model = write_clip_checkpoint(tmp_path / "other-clip", seed=7)
    results = ResultFiles.under(bundled_data_dir / "output")
    cache_folders = sorted(p.name for p in results.cache_root.iterdir())

    # The scoring step does all its work with another model, then fails to publish its stats file; the filter
    # step alone stages its table and JSONL, then fails to write the record that publishes them together.
    failing_publish(monkeypatch, "pairs.jsonl.parquet", "edge_cases.jsonl.parquet", "pending_publish")
    rescored = run([assets.image_pair_stats, assets.filtered_samples], bundled_data_dir, other_model,
                   {"min_score": 0.5}, raise_on_error=False)
    refiltered = run([assets.filtered_samples], bundled_data_dir, tiny_clip_dir, {"min_score": 0.99},
                     raise_on_error=False)

    for result, step in ((rescored, "image_pair_stats"), (refiltered, "filtered_samples")):
        assert not result.success
        failed_step, error = step_failure(result)
        assert failed_step == step and "simulated failure publishing" in error
    assert snapshot(bundled_data_dir) == before
    assert temp_files(bundled_data_dir) == []  # and no temp file left
    # What the other model embedded is kept (block files are published before the stats that use them).
    assert len(sorted(p.name for p in results.cache_root.iterdir())) == len(cache_folders) + 1


@pytest.fixture
def scored_results(bundled_data_dir, tiny_clip_dir):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0}).success
    storage = PairfilterStorage(data_dir=str(bundled_data_dir))
    return storage, result_files(bundled_data_dir)


def filter_again(storage: PairfilterStorage, min_score: float) -> stages.FilterCounts:
    return stages.filter_and_publish(storage.results, FilterSettings(min_score=min_score), storage.filtered_jsonl,
                                     storage.raw_dir, storage.local_state / "pending_publish")


def test_a_failure_while_filtering_keeps_the_old_filtered_files_and_jsonl(scored_results, monkeypatch):
    storage, before = scored_results
    rows_seen = []
    filtered_row = publish.filtered_row

    def fail_on_the_fifth_kept_row(row, *args):
        rows_seen.append(row)
        if len(rows_seen) == 5:
            raise RuntimeError("the filter fails half way")
        return filtered_row(row, *args)

    monkeypatch.setattr(publish, "filtered_row", fail_on_the_fifth_kept_row)
    with pytest.raises(RuntimeError, match="half way"):
        filter_again(storage, 0.0)
    assert result_files(storage.root) == before and temp_files(storage.root) == []
    assert list((storage.local_state / "pending_publish").glob("*")) == []


def test_a_failure_before_the_publish_record_keeps_both_files(scored_results, monkeypatch):
    storage, before = scored_results

    def no_space(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(publish, "write_atomically", no_space)  # the record that commits the two files
    with pytest.raises(OSError, match="No space left"):
        filter_again(storage, 0.99)
    assert result_files(storage.root) == before and temp_files(storage.root) == []


def test_a_failure_between_the_two_publishes_is_completed_by_the_next_run(scored_results, monkeypatch):
    storage, before = scored_results
    failing_publish(monkeypatch, "filtered_samples.jsonl")  # the table is published, its JSONL is not
    with pytest.raises(OSError, match="simulated failure"):
        filter_again(storage, 0.99)
    monkeypatch.undo()
    table = [json for (json,) in query(storage.root, "SELECT sample_json FROM filtered_samples "
                                                     "ORDER BY manifest, line_number")]
    assert len(table) < 9 and result_files(storage.root)["filtered_samples.jsonl"] == before["filtered_samples.jsonl"]
    assert len(temp_files(storage.root)) == 1  # the JSONL's temp file is kept: the record commits it

    assert publish.complete_pending(storage.local_state / "pending_publish") == [str(storage.filtered_jsonl)]
    assert storage.filtered_jsonl.read_text().splitlines() == table  # the two agree again
    assert temp_files(storage.root) == [] and list((storage.local_state / "pending_publish").glob("*")) == []
    stats = str(storage.results.shard_file(StatsRow, "pairs.jsonl").relative_to(storage.output_root))
    assert result_files(storage.root)[stats] == before[stats]  # the stats were only read
