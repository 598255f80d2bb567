import duckdb

from pairfilter_dagster.core import store


def stats_row(sample_id, line, scores, status="ok"):
    return {
        "sample_id": sample_id, "manifest": "m.jsonl", "line_number": line, "images": ["a.jpg", "b.jpg"],
        "image_pair_similarity": scores, "status": status, "error": "" if status == "ok" else "why",
        "sample_json": "{}",
    }


def test_tables_round_trip_with_typed_list_columns_in_input_order(tmp_path):
    database = tmp_path / "p.duckdb"
    rows = [stats_row("m.jsonl:2", 2, [0.5]), stats_row("m.jsonl:1", 1, [], "missing_image")]
    with store.connect(database) as conn:
        assert store.replace_table(conn, "image_pair_stats", rows) == 2
    with store.connect(database, read_only=True) as conn:
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'image_pair_stats'").fetchall())
        read = store.read_rows(conn, "image_pair_stats")
    assert types["image_pair_similarity"] == "DOUBLE[]" and types["images"] == "VARCHAR[]"
    assert [r["sample_id"] for r in read] == ["m.jsonl:1", "m.jsonl:2"]
    assert read[1]["image_pair_similarity"] == [0.5] and read[0]["image_pair_similarity"] == []


def test_empty_tables_are_valid(tmp_path):
    with store.connect(tmp_path / "p.duckdb") as conn:
        store.replace_table(conn, "image_pair_stats", [])
        assert store.row_count(conn, "image_pair_stats") == 0


def test_a_failed_replace_keeps_the_old_table(tmp_path):
    database = tmp_path / "p.duckdb"
    with store.connect(database) as conn:
        store.replace_table(conn, "image_pair_stats", [stats_row("m.jsonl:1", 1, [0.5])])
        bad = stats_row("m.jsonl:2", "not a number", [0.1])
        try:
            store.replace_table(conn, "image_pair_stats", [bad])
        except duckdb.Error:
            pass
        else:
            raise AssertionError("a non-integer line number must be refused")
        assert [r["sample_id"] for r in store.read_rows(conn, "image_pair_stats")] == ["m.jsonl:1"]
