import json

from pairfilter_dagster.core.samples import find_manifests, read_samples
from pairfilter_dagster.core.status import Status

from .conftest import PHOTOS, write_manifest


def test_manifests_are_read_recursively_in_sorted_relative_order(tmp_path):
    raw = tmp_path / "raw"
    for name in ["b.jsonl", "a/z.jsonl", "a.jsonl", "a/b/c.jsonl"]:
        write_manifest(raw / name, [{"images": ["x.jpg", "y.jpg"]}])
    (raw / "notes.txt").write_text("not a manifest")
    found = [p.relative_to(raw).as_posix() for p in find_manifests(raw)]
    assert found == ["a.jsonl", "a/b/c.jsonl", "a/z.jsonl", "b.jsonl"]
    assert [s.sample_id for s in read_samples(raw)] == ["a.jsonl:1", "a/b/c.jsonl:1", "a/z.jsonl:1", "b.jsonl:1"]


def test_missing_raw_folder_gives_no_samples(tmp_path):
    assert list(read_samples(tmp_path / "nothing-here")) == []


def test_sample_ids_paths_and_original_line(tmp_path):
    raw = tmp_path / "raw"
    absolute = str(PHOTOS / "cat.jpg")
    line = {"text": "hi", "images": ["../img/a.jpg", absolute], "extra": {"k": [1, 2]}}
    write_manifest(raw / "sub" / "m.jsonl", [{"images": ["a.jpg", "b.png"]}, line])
    first, second = read_samples(raw)
    assert first.sample_id == "sub/m.jsonl:1" and first.line_number == 1 and first.manifest == "sub/m.jsonl"
    assert first.images == (str(raw / "sub" / "a.jpg"), str(raw / "sub" / "b.png"))
    assert second.sample_id == "sub/m.jsonl:2"
    assert second.images == (str(tmp_path / "raw" / "img" / "a.jpg"), absolute)
    assert json.loads(second.sample_json) == line
    assert second.status is Status.OK and second.error == ""


def test_bad_lines_become_samples_with_a_status_and_reason(tmp_path):
    manifest = tmp_path / "raw" / "m.jsonl"
    write_manifest(manifest, [
        '{"images": ["a.jpg", ',                      # 1 broken JSON
        "[1, 2]",                                     # 2 not an object
        "",                                           # 3 empty line
        {"text": "no images"},                        # 4
        {"images": "a.jpg"},                          # 5 not a list
        {"images": ["a.jpg", 3]},                     # 6 not strings
        {"images": ["a.jpg"]},                        # 7 one image
        {"images": ["a.jpg", "b.jpg", "c.jpg"]},      # 8 three images
        {"images": ["a.jpg", "a.jpg"]},               # 9 same path twice
        {"images": ["a.jpg", "./x/../a.jpg"]},        # 10 same file, two spellings
        {"images": ["a.jpg", "b.jpg"]},               # 11 fine
    ])
    with open(manifest, "ab") as handle:
        handle.write(b'{"images": ["\xff.jpg", "b.jpg"]}\n')  # 12 not UTF-8
    samples = list(read_samples(tmp_path / "raw"))
    assert [s.line_number for s in samples] == list(range(1, 13))
    expected = [
        Status.MALFORMED_LINE, Status.MALFORMED_LINE, Status.MALFORMED_LINE, Status.INVALID_IMAGES,
        Status.INVALID_IMAGES, Status.INVALID_IMAGES, Status.NOT_A_PAIR, Status.NOT_A_PAIR, Status.NOT_A_PAIR,
        Status.NOT_A_PAIR, Status.OK, Status.MALFORMED_LINE,
    ]
    assert [s.status for s in samples] == expected
    for sample in samples:
        assert (sample.error == "") == (sample.status is Status.OK)
    assert "JSON" in samples[0].error and "object" in samples[1].error and "empty" in samples[2].error
    assert "found 1" in samples[6].error and "found 3" in samples[7].error
    assert "same file" in samples[8].error and "UTF-8" in samples[11].error
    assert samples[0].sample_id == "m.jsonl:1"
