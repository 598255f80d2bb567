"""Manifest lines whose published form must stay what they were: every byte of a line that other Data-Juicer ops
wrote (big integers, 1e400, long decimals, duplicate keys, its own `__dj__stats__`), a raw carriage return, and
relative image paths that must still name the scored pictures from where the output file lives."""

import hashlib
import json
import os

from pairfilter_dagster.core.publish import dj_record

from .conftest import write_manifest
from .test_assets import ASSETS, query, run

CAT, IMG2 = "../images/cat.jpg", "../images/img2.jpg"
VALUES = ('"id": 123456789012345678901234567890, "big": 1e400, "tiny": 0.1000000000000000055511151231257827, '
          '"sci": 1E5, "esc": "caf\\u00e9 \\"q\\"", "dup": 1, "dup": 2')


def test_every_other_value_keeps_its_bytes_and_existing_stats_are_merged():
    line = f'{{"images": ["/abs/a.jpg", "/abs/b.jpg"], {VALUES}, "__dj__stats__": {{"lang_score": 0.12345678901234567890}}}}'
    out = dj_record(line, [0.5])
    assert out == (f'{{"images": ["/abs/a.jpg", "/abs/b.jpg"], {VALUES}, "__dj__stats__": '
                   f'{{"lang_score": 0.12345678901234567890, "image_pair_similarity": [0.5]}}}}')
    assert json.loads(out)["dup"] == 2


def test_a_line_that_merely_mentions_the_stats_field_keeps_its_bytes():
    line = '{"images": ["/a.jpg", "/b.jpg"], "text": "see __dj__stats__ below", "n": 1.50}'
    assert dj_record(line, [0.25]) == line[:-1] + ', "__dj__stats__": {"image_pair_similarity": [0.25]}}'


def test_our_stat_replaces_an_older_one_of_the_same_name_in_place():
    line = '{"images": ["/a.jpg", "/b.jpg"], "__dj__stats__": {"image_pair_similarity": [0.9], "x": 1E5}, "z": 1}'
    assert dj_record(line, [0.25]) == line.replace("[0.9]", "[0.25]")


def test_published_lines_keep_values_and_name_the_scored_files_and_every_reader_reads_them(bundled_data_dir,
                                                                                          tiny_clip_dir):
    raw = bundled_data_dir / "raw"
    for path in raw.rglob("*.jsonl"):
        path.unlink()
    lines = [
        f'{{"images": ["{CAT}", "{IMG2}"], {VALUES}}}',
        f'{{"images": ["{CAT}",\r "{IMG2}"],\r"text": "a raw carriage return between tokens"}}',
        f'{{"images": ["{CAT}", "{IMG2}"], "text": "line\u2028separator", "__dj__stats__": {{"keep": 1E5}}}}',
        f'{{"images": ["{CAT}", "{IMG2}"], "__dj__stats__": [1, 2]}}',
        f'{{"images": ["{bundled_data_dir / "images" / "img3.jpg"}", "../../images/cat.jpg"]}}',
    ]
    write_manifest(raw / "top.jsonl", lines[:4])
    write_manifest(raw / "deeper" / "nested.jsonl", lines[4:])
    result = run(ASSETS, bundled_data_dir, tiny_clip_dir, {"min_score": 0.0})
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())

    stats = dict(query(bundled_data_dir, "SELECT sample_id, status || ': ' || error FROM image_pair_stats"))
    assert stats["top.jsonl:4"].startswith("malformed_line: `__dj__stats__` must be a JSON object")
    assert query(bundled_data_dir, "SELECT sample_json FROM raw_samples WHERE sample_id = 'top.jsonl:4'") == \
        [(lines[3],)]  # the rejected line, kept as written
    output = bundled_data_dir / "output" / "filtered_samples.jsonl"
    published = output.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(published) == 4
    with open(output, encoding="utf-8") as handle:  # universal newlines: splits at \r too
        assert len(handle.readlines()) == 4
    assert len(output.read_text(encoding="utf-8").splitlines()) == 4  # splits at U+2028 too
    assert all(json.loads(line) for line in published)
    kept_ids = [sid for (sid,) in query(bundled_data_dir, "SELECT sample_id FROM filtered_samples ORDER BY manifest, line_number")]
    assert kept_ids == ["deeper/nested.jsonl:1", "top.jsonl:1", "top.jsonl:2", "top.jsonl:3"]  # input order
    fourth, first, second, third = published
    assert VALUES in first
    assert "\r" not in second and json.loads(second)["text"] == "a raw carriage return between tokens"
    assert json.loads(third)["text"] == "line\u2028separator" and '"keep": 1E5' in third

    # Data-Juicer resolves relative paths against the dataset file's folder (get_abs_path in its formatter):
    # each published path must open the very file that was scored.
    def dj_path(path: str) -> str:
        return path if os.path.isabs(path) else os.path.abspath(os.path.join(output.parent, path))

    scored = {sid: hashes for sid, hashes in query(bundled_data_dir, "SELECT sample_id, image_hashes FROM image_pair_stats")}
    for line, sample_id in zip(published, kept_ids):
        images = json.loads(line)["images"]
        assert [hashlib.sha256(open(dj_path(p), "rb").read()).hexdigest() for p in images] == scored[sample_id]
    assert json.loads(fourth)["images"] == [str(bundled_data_dir / "images" / "img3.jpg"), "../images/cat.jpg"]
