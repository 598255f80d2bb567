import json

import pytest

from pairfilter_dagster.core.ingest.formats import read_samples
from pairfilter_dagster.core.ingest.manifests import count_lines, list_shards
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.testing import PHOTOS

from .conftest import read_samples_with_photos, write_manifest


def test_manifests_are_read_recursively_in_sorted_relative_order(tmp_path):
    raw = tmp_path / "raw"
    for name in ["b.jsonl", "a/z.jsonl", "a.jsonl", "a/b/c.jsonl"]:
        write_manifest(raw / name, [{"images": ["x.jpg", "y.jpg"]}])
    (raw / "notes.txt").write_text("not a manifest")
    found = list_shards(raw).names
    assert found == ["a.jsonl", "a/b/c.jsonl", "a/z.jsonl", "b.jsonl"]
    assert [s.sample_id for s in read_samples(raw)] == ["a.jsonl:1", "a/b/c.jsonl:1", "a/z.jsonl:1", "b.jsonl:1"]


def test_missing_raw_folder_gives_no_samples(tmp_path):
    assert list(read_samples(tmp_path / "nothing-here")) == []


def test_sample_ids_paths_and_original_line(tmp_path):
    raw = tmp_path / "raw"
    absolute = str(PHOTOS / "cat.jpg")
    line = {"text": "hi", "images": ["../img/a.jpg", absolute], "extra": {"k": [1, 2]}}
    write_manifest(raw / "sub" / "m.jsonl", [{"images": ["a.jpg", "b.png"]}, line])
    first, second = read_samples_with_photos(raw)
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
    assert samples[10].image_pairs == ((0, 1),) and all(s.image_pairs == () for s in samples if s.status != "ok")
    assert samples[0].sample_id == "m.jsonl:1"


def one_sample(tmp_path, line, rules=None):
    """The single sample of a manifest holding `line` (a dict becomes JSON; str or bytes are written as is)."""
    manifest = tmp_path / "raw" / "m.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    data = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
    manifest.write_bytes(data + b"\n")
    (sample,) = read_samples(tmp_path / "raw", rules)
    return sample


@pytest.mark.parametrize("pairing, images, status, pairs", [
    ("exactly_two", [], Status.NOT_A_PAIR, ()),
    ("exactly_two", ["a.jpg"], Status.NOT_A_PAIR, ()),
    ("exactly_two", ["a.jpg", "b.jpg", "c.jpg"], Status.NOT_A_PAIR, ()),
    ("consecutive", ["a.jpg"], Status.NOT_A_PAIR, ()),
    ("consecutive", ["a.jpg", "b.jpg", "c.jpg"], Status.OK, ((0, 1), (1, 2))),
    ("all_pairs", ["a.jpg", "b.jpg", "c.jpg"], Status.OK, ((0, 1), (0, 2), (1, 2))),
    ("all_pairs", ["a.jpg", "b.jpg", "sub/../a.jpg"], Status.NOT_A_PAIR, ()),
])
def test_pairing_decides_which_samples_are_pairs_and_which_pairs_are_scored(tmp_path, pairing, images, status, pairs):
    sample = one_sample(tmp_path, {"images": images}, SampleRules.for_data_dir(tmp_path, pairing=pairing))
    assert sample.status is status and sample.image_pairs == pairs
    assert (sample.error == "") == (status is Status.OK)
    if status is Status.NOT_A_PAIR:
        assert (f"found {len(images)}" in sample.error) or ("same file" in sample.error)


@pytest.mark.parametrize("image", [
    "../../etc/passwd", "/etc/passwd", "../../../../../../../../etc/hostname", "../outside/../../x.jpg",
])
def test_paths_escaping_the_data_folder_are_not_allowed(tmp_path, image):
    sample = one_sample(tmp_path / "data", {"images": [image, "../images/cat.jpg"]})
    assert sample.status is Status.PATH_NOT_ALLOWED
    assert repr(image) in sample.error and "outside the allowed image roots" in sample.error


def test_a_symlink_inside_the_data_folder_pointing_outside_is_not_allowed(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "innocent.jpg").symlink_to(PHOTOS / "cat.jpg")
    sample = one_sample(data, {"images": ["../images/innocent.jpg", "../images/other.jpg"]})
    assert sample.status is Status.PATH_NOT_ALLOWED and str(PHOTOS / "cat.jpg") in sample.error


def test_image_roots_are_configurable_and_checked(tmp_path):
    data = tmp_path / "data"
    line = {"images": [str(PHOTOS / "cat.jpg"), "../images/x.jpg"]}
    assert one_sample(data, line).status is Status.PATH_NOT_ALLOWED  # default: the data folder only
    (data / "images").mkdir()
    both = SampleRules.for_data_dir(data, [str(PHOTOS), "images"])
    assert both.image_roots == (str(PHOTOS.resolve()), str((data / "images").resolve()))
    assert one_sample(data, line, both).status is Status.OK
    only_photos = SampleRules.for_data_dir(data, [str(PHOTOS)])
    assert one_sample(data, line, only_photos).status is Status.PATH_NOT_ALLOWED  # roots replace the default
    with pytest.raises(ValueError, match="image_roots: 'no-such-folder'"):
        SampleRules.for_data_dir(data, ["no-such-folder"])


@pytest.mark.parametrize("url", [
    "http://example.com/cat.jpg", "https://example.com/a.png?x=1", "s3://bucket/key.jpg", "file:///etc/passwd",
    "gs://bucket/cat.jpg", "data:image/png;base64,iVBORw0KGgo=",
])
def test_urls_are_never_fetched_and_get_their_own_status(tmp_path, url):
    sample = one_sample(tmp_path, {"images": ["a.jpg", url]})
    assert sample.status is Status.URL_NOT_ALLOWED and repr(url) in sample.error
    assert sample.images[1] == url  # kept as written, not mangled into a path


@pytest.mark.parametrize("line, status, reason", [
    (b'{"images": ["a.jpg", "b.jpg"], "text": "\\ud800"}', Status.MALFORMED_LINE, "surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, Status.MALFORMED_LINE, "not valid JSON"),
    (b'{"images": ["a.jpg", "b.jpg"], "n": ' + b"9" * 5000 + b"}", Status.MALFORMED_LINE, "not valid JSON"),
    (b"   \t", Status.MALFORMED_LINE, "empty line"),
    (b"null", Status.MALFORMED_LINE, "JSON object"),
    (b'"a string"', Status.MALFORMED_LINE, "JSON object"),
    (b'\xef\xbb\xbf{"images": ["a.jpg", "b.jpg"]}', Status.OK, ""),  # a UTF-8 byte-order mark on line 1
    (b'{"images": ["a.jpg", "b.jpg"]}\r', Status.OK, ""),  # Windows line ending
    (b'{"images": ["a.jpg", ""]}', Status.INVALID_IMAGES, "empty path"),
    (b'{"images": ["a.jpg", "b\\u0000.jpg"]}', Status.INVALID_IMAGES, "NUL"),
    (b'{"images": null}', Status.INVALID_IMAGES, "list of path strings"),
    (b'{"images": {"a": "b"}}', Status.INVALID_IMAGES, "list of path strings"),
    (b'{"images": [["a.jpg"], "b.jpg"]}', Status.INVALID_IMAGES, "list of path strings"),
    (b'\xff\xfe{\x00"\x00', Status.MALFORMED_LINE, "UTF-8"),  # a UTF-16 manifest
])
def test_odd_lines_get_a_status_and_a_reason(tmp_path, line, status, reason):
    sample = one_sample(tmp_path, line)
    assert sample.status is status and reason in sample.error
    assert sample.sample_id == "m.jsonl:1"


def test_an_empty_manifest_gives_no_samples_and_lines_are_counted_from_bytes(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "empty.jsonl").write_bytes(b"")
    (raw / "no_final_newline.jsonl").write_bytes(b'{"images": ["a.jpg", "b.jpg"]}\n\n{"images": []}')
    samples = list(read_samples(raw))
    assert [s.sample_id for s in samples] == [f"no_final_newline.jsonl:{i}" for i in (1, 2, 3)]
    assert [count_lines(path) for path in list_shards(raw).readable.values()] == [0, 3]
