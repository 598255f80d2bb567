import json

import pytest

from pairfilter_dagster.core.publish import dj_record, staged_file


def test_dj_record_keeps_every_field_and_its_order_and_adds_stats():
    line = '{"text": "héllo", "images": ["a.jpg", "b.jpg"], "meta": {"n": 1}, "z": null}'
    record = json.loads(dj_record(line, [0.25]))
    assert list(record) == ["text", "images", "meta", "z", "__dj__stats__"]
    assert record["text"] == "héllo" and record["meta"] == {"n": 1} and record["z"] is None
    assert record["__dj__stats__"] == {"image_pair_similarity": [0.25]}


def test_dj_record_keeps_the_original_text_byte_for_byte():
    line = '{"text":"caf\\u00e9",  "images": ["a.jpg","b.jpg"], "n": 1.50 }'
    out = dj_record(line, [0.5])
    assert out.startswith('{"text":"caf\\u00e9",  "images": ["a.jpg","b.jpg"], "n": 1.50')
    assert json.loads(out) == {**json.loads(line), "__dj__stats__": {"image_pair_similarity": [0.5]}}
    assert json.loads(dj_record("{ }", [0.25])) == {"__dj__stats__": {"image_pair_similarity": [0.25]}}


def test_dj_record_merges_existing_stats():
    line = json.dumps({"images": ["a", "b"], "__dj__stats__": {"lang_score": 0.9}})
    assert json.loads(dj_record(line, [0.5]))["__dj__stats__"] == {"lang_score": 0.9, "image_pair_similarity": [0.5]}


def test_a_staged_file_appears_whole_when_published(tmp_path):
    target = tmp_path / "out" / "f.jsonl"
    with staged_file(target) as staged:
        staged.write_line("a")
        staged.write_line("b")
        assert not target.exists()  # invisible until published
        staged.publish()
    assert staged.lines_written == 2 and target.read_text() == "a\nb\n"
    assert [p.name for p in target.parent.iterdir()] == ["f.jsonl"]


def test_a_failed_write_leaves_the_previous_file_and_no_temp_files(tmp_path):
    target = tmp_path / "f.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with staged_file(target) as staged:
            staged.write_line("new")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.jsonl"]


def test_an_unpublished_file_is_discarded(tmp_path):
    target = tmp_path / "f.jsonl"
    with staged_file(target) as staged:
        staged.write_line("never published")
    assert not target.exists() and list(tmp_path.iterdir()) == []
