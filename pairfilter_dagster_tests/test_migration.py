"""A data folder made by the version before the result files (one DuckDB store, `pairfilter.duckdb`; the fixture
was made by that version itself, see fixtures/README.md): every run refuses it before any work with one message
naming the one-line command that migrates it; the migration keeps every row and every embedding, and the next run
embeds nothing."""

import gzip
import os
import shlex
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pairfilter_dagster.core.catalog import open_catalog
from pairfilter_dagster.defs.resources import PairfilterStorage

from .conftest import REPO
from .test_assets import ASSETS, metadata, query, run, step_failure

FIXTURE = Path(__file__).parent / "fixtures" / "pairfilter-store-v1.duckdb.gz"
TABLES = ("raw_samples", "image_pair_stats", "filtered_samples", "embedding_cache")


def old_data_folder(data_dir: Path) -> Path:
    store = data_dir / "pairfilter.duckdb"
    store.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    return store


def command(line: str, data_dir: Path, clip_dir: Path) -> subprocess.CompletedProcess:
    """A command line as a user types it, run with the repo's Python."""
    program, *args = shlex.split(line)
    module = {"pairfilter-catalog": "pairfilter_dagster.catalog_cli", "pairfilter-materialize": "pairfilter_dagster.cli"}
    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(data_dir), "PAIRFILTER_HF_CLIP": str(clip_dir),
           "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([sys.executable, "-m", module[program], *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_run_refuses_an_old_data_folder_naming_the_command_that_migrates_it(bundled_data_dir, tiny_clip_dir):
    old_data_folder(bundled_data_dir)
    migrate = PairfilterStorage(data_dir=str(bundled_data_dir)).migrate_command()
    assert migrate == f"pairfilter-catalog migrate --data-dir {bundled_data_dir}"
    done = command("pairfilter-materialize", bundled_data_dir, tiny_clip_dir)
    assert done.returncode == 2 and migrate in done.stderr and "single DuckDB store" in done.stderr
    result = run(ASSETS, bundled_data_dir, tiny_clip_dir, raise_on_error=False)
    step, error = step_failure(result)
    assert step == "raw_samples" and migrate in error
    assert not (bundled_data_dir / "output").exists()  # refused before any work


def test_the_migration_keeps_every_row_and_embedding_and_the_next_run_embeds_nothing(bundled_data_dir, tiny_clip_dir):
    store = old_data_folder(bundled_data_dir)
    with duckdb.connect(str(store), read_only=True) as conn:
        old = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
        old_scores = dict(conn.execute("SELECT sample_id, image_pair_similarity FROM image_pair_stats").fetchall())
    assert old == {"raw_samples": 13, "image_pair_stats": 13, "filtered_samples": 9, "embedding_cache": 14}

    storage = PairfilterStorage(data_dir=str(bundled_data_dir))
    done = command(storage.migrate_command(), bundled_data_dir, tiny_clip_dir)
    assert done.returncode == 0, done.stderr
    assert "2 shards" in done.stdout and "14 embeddings" in done.stdout
    assert not store.exists() and store.with_name("pairfilter.duckdb.migrated").is_file()
    with open_catalog(storage.catalog, storage.results) as conn:
        assert {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES} == old
        assert dict(conn.execute("SELECT sample_id, image_pair_similarity FROM image_pair_stats").fetchall()) == \
            old_scores
    again = command(storage.migrate_command(), bundled_data_dir, tiny_clip_dir)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout

    result = run(ASSETS, bundled_data_dir, tiny_clip_dir)
    assert result.success
    stats = metadata(result, "image_pair_stats")
    assert (stats["forward_passes"], stats["images_embedded"]) == (0, 0)  # every embedding came from the old store
    new_scores = dict(query(bundled_data_dir, "SELECT sample_id, image_pair_similarity FROM image_pair_stats"))
    assert new_scores.keys() == old_scores.keys()
    for sample_id, scores in old_scores.items():
        assert new_scores[sample_id] == pytest.approx(scores, abs=1e-6)
