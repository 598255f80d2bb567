"""`pairfilter-materialize` as a user runs it: a real subprocess over a copy of the bundled data with a real (tiny,
random) CLIP checkpoint. What it prints: the summary, the progress lines, Dagster's DEBUG lines only with
--verbose, one line saying why a run failed, argparse-style errors for bad input."""

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from pairfilter_dagster.cli import main
from pairfilter_dagster.core.catalog import catalog_views
from pairfilter_dagster.run_console import RunConsole

from .test_assets import ASSETS, EDGE_CASES, query, run

OK_SAMPLES = 9  # pairs.jsonl: every line a scorable pair


def materialize(data_dir: Path, clip_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(data_dir), "PAIRFILTER_HF_CLIP": str(clip_dir)}
    env.pop("DAGSTER_HOME", None)  # a throwaway instance
    return subprocess.run([sys.executable, "-m", "pairfilter_dagster.cli", *args], cwd=data_dir.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def summary_fields(stdout: str) -> dict[str, str]:
    """The summary's `  name: value` lines."""
    return dict(re.findall(r"^  (\w+): +(.*)$", stdout, flags=re.MULTILINE))


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_run_prints_progress_lines_and_a_summary_from_the_run_metadata(bundled_data_dir, tiny_clip_dir):
    done = materialize(bundled_data_dir, tiny_clip_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^Run \S+ succeeded in [\d.]+ s$", done.stdout, flags=re.MULTILINE), done.stdout
    fields = summary_fields(done.stdout)
    assert fields["shards"] == "2"
    expected = {"ok": OK_SAMPLES, **Counter(EDGE_CASES.values())}
    total, statuses = re.fullmatch(r"(\d+) \((.*)\)", fields["samples"]).groups()
    assert int(total) == sum(expected.values()) == 13
    assert dict((name, int(n)) for name, n in (s.split() for s in statuses.split(", "))) == expected
    kept, of = map(int, re.match(r"(\d+) of (\d+) samples", fields["kept"]).groups())
    dropped = int(fields["dropped"].split()[0])
    assert kept + dropped == OK_SAMPLES and of == 13
    # 15 paths, one duplicate content: 14 embedded. Shards are scored one after the other, so the picture both
    # shards hold is found in the cache by the second.
    assert fields["images"] == "14 embedded, 1 from cache"
    filtered, report, results = (Path(fields[name]) for name in ("filtered", "report", "results"))
    assert filtered == bundled_data_dir / "output" / "filtered_samples.jsonl"
    assert len(filtered.read_text().splitlines()) == kept
    assert report.is_dir() and any(report.glob("*.png"))
    assert results == bundled_data_dir / "output" / "results"
    assert (results / "image_pair_stats" / "pairs.jsonl.parquet").is_file()
    catalog = Path(fields["catalog"].split(" (")[0])
    assert catalog == bundled_data_dir / "catalog.duckdb" and catalog.is_file()
    assert not (bundled_data_dir / "pairfilter.duckdb").exists()  # no single store any more

    # stderr is not a TTY: the scoring progress as plain lines, and none of Dagster's own chatter.
    progress = [line for line in done.stderr.splitlines() if line.startswith("Images ")]
    assert progress and re.match(r"Images \d+/\d+ \([\d.]+/s, ETA .*\): \d+ embedded", progress[-1])
    assert progress[-1].startswith("Images 20/20 ") and len(set(progress)) == len(progress)
    assert "\rImages" not in done.stderr and "DEBUG" not in done.stderr and " - INFO - " not in done.stderr


def test_verbose_shows_dagsters_debug_lines_and_config_files_merge(bundled_data_dir, tiny_clip_dir, tmp_path):
    config = tmp_path / "thresholds.yaml"
    config.write_text("ops:\n  filtered_samples:\n    config: {min_score: 0.99, max_score: 1.0}\n")
    keep_all = json.dumps({"ops": {"filtered_samples": {"config": {"min_score": 0.0}}}})  # wins over the file
    done = materialize(bundled_data_dir, tiny_clip_dir, "--verbose", "-c", str(config), "--config-json", keep_all)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r" - DEBUG - pairfilter_job - \S+ - \d+ - raw_samples - STEP_START - ", done.stderr)
    assert summary_fields(done.stdout)["kept"].startswith(f"{OK_SAMPLES} of 13 ")


def test_a_model_that_cannot_load_ends_with_one_line_naming_it_and_the_fix(bundled_data_dir, tmp_path):
    missing = tmp_path / "no-such-model"
    done = materialize(bundled_data_dir, missing)
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert line.startswith("pairfilter-materialize: failed in ") and str(missing) in line
    assert "PAIRFILTER_HF_CLIP" in line and "Traceback" not in done.stderr and "Stack Trace" not in done.stderr
    assert "Not executing" not in done.stderr  # Dagster's errors about the steps it skipped: the last line tells


def test_a_bad_threshold_ends_with_one_line_naming_the_field(bundled_data_dir, tiny_clip_dir):
    too_high = json.dumps({"ops": {"filtered_samples": {"config": {"min_score": 5}}}})
    done = materialize(bundled_data_dir, tiny_clip_dir, "--config-json", too_high)
    assert done.returncode == 1
    assert last_line(done.stderr) == ("pairfilter-materialize: failed in raw_samples: 1 validation error for "
                                      "FilterConfig: min_score: Input should be less than or equal to 1 (got 5)")
    assert "Traceback" not in done.stderr


def test_json_that_is_not_json_is_refused_with_exit_code_2(bundled_data_dir, tiny_clip_dir):
    done = materialize(bundled_data_dir, tiny_clip_dir, "--config-json", "nope")
    assert done.returncode == 2 and done.stdout == ""
    assert last_line(done.stderr).startswith("pairfilter-materialize: error: --config-json: not valid JSON")


@pytest.mark.parametrize("argv, says", [
    (["--config-json", "[1]"], "--config-json: must be a mapping of run config, got list"),
    (["--config-json", '"text"'], "--config-json: must be a mapping of run config, got str"),
    (["-c", "{missing}"], "-c/--config {missing}: No such file or directory"),
    (["-c", "{listing}"], "-c/--config {listing}: must be a mapping of run config, got list"),
    (["-c", "{broken}"], "-c/--config {broken}: not valid YAML"),
])
def test_bad_input_gives_one_argparse_style_line_and_exit_code_2(argv, says, tmp_path, capsys):
    files = {"missing": tmp_path / "missing.yaml", "listing": tmp_path / "list.yaml", "broken": tmp_path / "bad.yaml"}
    files["listing"].write_text("- ops\n")
    files["broken"].write_text("ops: [\n")
    argv = [arg.format(**files) for arg in argv]
    assert main(argv) == 2  # refused before any Dagster instance or run
    err = capsys.readouterr().err
    assert err.startswith("usage: pairfilter-materialize")
    assert last_line(err).startswith(f"pairfilter-materialize: error: {says.format(**files)}")


def result_file(data_dir: Path, table: str, shard: str) -> Path:
    return data_dir / "output" / "results" / table / f"{shard}.parquet"


def test_shard_runs_one_shard_and_dataset_builds_from_the_results_without_scoring(bundled_data_dir, tiny_clip_dir,
                                                                                   tmp_path):
    done = materialize(bundled_data_dir, tiny_clip_dir, "--shard", "pairs.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shard_job over shard pairs.jsonl" in done.stdout
    fields = summary_fields(done.stdout)
    assert fields["shards"] == "1" and fields["samples"] == f"{OK_SAMPLES} (ok {OK_SAMPLES})"
    for table in ("raw_samples", "image_pair_stats"):
        assert result_file(bundled_data_dir, table, "pairs.jsonl").is_file()
        assert not result_file(bundled_data_dir, table, "more/edge_cases.jsonl").exists()  # the other shard: untouched
    assert not (bundled_data_dir / "output" / "filtered_samples.jsonl").exists()  # the dataset is --dataset's work
    assert query(bundled_data_dir, "SELECT DISTINCT manifest FROM image_pair_stats") == [("pairs.jsonl",)]

    unknown = materialize(bundled_data_dir, tiny_clip_dir, "--shard", "pairs.jsonl", "--shard", "nope.jsonl")
    assert unknown.returncode == 2
    assert last_line(unknown.stderr).startswith("pairfilter-materialize: error: --shard nope.jsonl: no such shard")
    assert "(shards: more/edge_cases.jsonl, pairs.jsonl)" in unknown.stderr

    done = materialize(bundled_data_dir, tiny_clip_dir, "--shard", "more/edge_cases.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    stats_files = {shard: result_file(bundled_data_dir, "image_pair_stats", shard).read_bytes()
                   for shard in ("pairs.jsonl", "more/edge_cases.jsonl")}

    # A model folder that does not exist: scoring, or loading the model at all, would fail the run.
    done = materialize(bundled_data_dir, tmp_path / "no-model-here", "--dataset")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dataset_job over 2 shards" in done.stdout
    fields = summary_fields(done.stdout)
    assert fields["shards"].startswith("2 (their result files; no shard was ingested or scored)")
    assert "images" not in fields and "samples" not in fields
    kept = int(fields["kept"].split()[0])
    assert fields["kept"].startswith(f"{kept} of 13 samples ({OK_SAMPLES} scored)")
    lines = (bundled_data_dir / "output" / "filtered_samples.jsonl").read_text().splitlines()
    assert len(lines) == kept == query(bundled_data_dir, "SELECT count(*) FROM filtered_samples")[0][0]
    assert {shard: result_file(bundled_data_dir, "image_pair_stats", shard).read_bytes()
            for shard in stats_files} == stats_files  # nothing re-scored
    assert (bundled_data_dir / "catalog.duckdb").is_file()


def view_rows(conn) -> dict[str, list]:
    return {view: conn.execute(f'SELECT * FROM "{view}" ORDER BY ALL').fetchall() for view in catalog_views()}


def test_pairfilter_catalog_rebuild_gives_the_same_views_over_the_result_files(bundled_data_dir, tiny_clip_dir):
    assert run(ASSETS, bundled_data_dir, tiny_clip_dir).success
    catalog = bundled_data_dir / "catalog.duckdb"
    with duckdb.connect(str(catalog), read_only=True) as conn:
        before = view_rows(conn)
    assert len(before["image_pair_stats"]) == 13 and len(before["embedding_cache"]) == 14 and before["filtered_samples"]
    catalog.unlink()

    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(bundled_data_dir.parent / "elsewhere")}  # --data-dir wins
    done = subprocess.run([sys.executable, "-m", "pairfilter_dagster.catalog_cli", "rebuild",
                           "--data-dir", str(bundled_data_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Catalog {catalog}: views over {bundled_data_dir / 'output' / 'results'}" in done.stdout
    assert "  image_pair_stats: 13 rows" in done.stdout and "  embedding_cache: 14 rows" in done.stdout
    with duckdb.connect(str(catalog), read_only=True) as conn:
        assert view_rows(conn) == before
        # Views only: the data stays in the result files.
        assert conn.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0] == 0


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_one_bar_rewritten_in_place():
    screen = Terminal()
    console = RunConsole(screen, verbose=False)
    for message in ["Images 5/20 (4.0/s, ETA 4 s): 5 embedded", "Loaded CLIP model",
                    "Images 20/20 (5.0/s, ETA 0 s): 14 embedded", "Images 20/20 (5.0/s, ETA 0 s): 14 embedded"]:
        console.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO, "levelname": "INFO"}))
    assert screen.getvalue() == (
        f"\rImages [{'#' * 7}{'.' * 23}] 5/20 (4.0/s, ETA 4 s)"
        f"\rImages [{'#' * 30}] 20/20 (5.0/s, ETA 0 s)\n"  # INFO hidden; the end told once
    )
