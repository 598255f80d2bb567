import duckdb
import pytest

from pairfilter_dagster.core import store
from pairfilter_dagster.core.schema import FilteredRow, StatsRow, Status


def stats_row(sample_id, line, scores, status=Status.OK):
    return StatsRow(
        sample_id=sample_id, manifest="m.jsonl", line_number=line, images=("a.jpg", "b.jpg"),
        image_pair_similarity=tuple(scores), status=status, error="" if status is Status.OK else "why",
        sample_json="{}", image_pairs=((0, 1),) if scores else (),
    )


def replace(conn, row_type, rows):
    with store.table_writer(conn, row_type) as table:
        table.write(rows)
    return table.rows_written


def test_tables_round_trip_typed_rows_in_input_order(tmp_path):
    database = tmp_path / "p.duckdb"
    rows = [stats_row("m.jsonl:2", 2, [0.5]), stats_row("m.jsonl:1", 1, [], Status.MISSING_IMAGE)]
    with store.connect(database) as conn:
        assert replace(conn, StatsRow, rows) == 2
    with store.connect(database, read_only=True) as conn:
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'image_pair_stats'").fetchall())
        read = [row for chunk in store.read_rows(conn, StatsRow) for row in chunk]
    assert types["image_pair_similarity"] == "DOUBLE[]" and types["images"] == "VARCHAR[]"
    assert types["image_pairs"] == "INTEGER[][]"
    assert read == sorted(rows, key=lambda row: row.line_number)  # the same typed rows come back, status an enum
    assert read[0].status is Status.MISSING_IMAGE and read[1].image_pairs == ((0, 1),)


def test_empty_tables_are_valid(tmp_path):
    with store.connect(tmp_path / "p.duckdb") as conn:
        replace(conn, StatsRow, [])
        assert store.row_count(conn, "image_pair_stats") == 0


def test_a_failed_replace_keeps_the_old_table(tmp_path):
    database = tmp_path / "p.duckdb"
    with store.connect(database) as conn:
        replace(conn, StatsRow, [stats_row("m.jsonl:1", 1, [0.5])])
        bad = stats_row("m.jsonl:2", "not a number", [0.1])
        with pytest.raises(duckdb.Error):
            replace(conn, StatsRow, [bad])
        assert [r.sample_id for chunk in store.read_rows(conn, StatsRow) for r in chunk] == ["m.jsonl:1"]


def test_a_shard_writer_replaces_only_its_shards_rows_and_refuses_others(tmp_path):
    with store.connect(tmp_path / "p.duckdb") as conn:
        rows = [FilteredRow(sample_id=f"{m}:1", manifest=m, line_number=1, sample_json="{}") for m in ("a", "b")]
        replace(conn, FilteredRow, rows)
        with store.table_writer(conn, FilteredRow, shards=["a"]) as table:
            table.write([FilteredRow(sample_id="a:2", manifest="a", line_number=2, sample_json="{}")])
        with pytest.raises(ValueError, match="rows of shards"):
            with store.table_writer(conn, FilteredRow, shards=["a"]) as table:
                table.write(rows)
        assert sorted(r.sample_id for chunk in store.read_rows(conn, FilteredRow) for r in chunk) == ["a:2", "b:1"]
