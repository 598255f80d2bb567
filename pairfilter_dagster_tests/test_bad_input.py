"""Every kind of bad input, each on a real file, through one real Dagster run of the whole pipeline with the
network blocked: each sample gets its status and reason, none is kept, the unusual but valid images score, the
run succeeds and every count reconciles."""

import json
import shutil
import socket

import pytest

from pairfilter_dagster.core.schema import Status
from pairfilter_dagster.testing import PHOTOS, write_decompression_bomb, write_unusual_images

from .test_assets import ASSETS, metadata, query, read_jsonl, run

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns, we refuse

# (kind, status, words of its reason, the manifest line); images are relative to raw/.
CAT, IMG2 = "../images/cat.jpg", "../images/img2.jpg"
BAD_LINES = [
    ("missing_image", Status.MISSING_IMAGE, "not found", {"images": [CAT, "../images/gone.jpg"]}),
    ("zero_byte_file", Status.UNREADABLE_IMAGE, "empty", {"images": [CAT, "../bad/empty.jpg"]}),
    ("truncated_jpeg", Status.UNREADABLE_IMAGE, "truncated", {"images": [CAT, "../bad/truncated.jpg"]}),
    ("html_named_jpg", Status.UNREADABLE_IMAGE, "starts with b'<!DOCTYPE html>", {"images": ["../bad/page.jpg", IMG2]}),
    ("text_named_jpg", Status.UNREADABLE_IMAGE, "not an image format", {"images": ["../bad/notes.jpg", IMG2]}),
    ("folder_named_jpg", Status.UNREADABLE_IMAGE, "cannot read", {"images": ["../bad/album.jpg", IMG2]}),
    ("decompression_bomb", Status.IMAGE_TOO_LARGE, "max_image_pixels", {"images": [CAT, "../bad/bomb.png"]}),
    ("no_images", Status.NOT_A_PAIR, "found 0", {"images": []}),
    ("one_image", Status.NOT_A_PAIR, "found 1", {"images": [CAT]}),
    ("three_images", Status.NOT_A_PAIR, "found 3", {"images": [CAT, IMG2, "../images/img3.jpg"]}),
    ("identical_paths", Status.NOT_A_PAIR, "same file", {"images": [CAT, "../images/./cat.jpg"]}),
    ("images_field_missing", Status.INVALID_IMAGES, "no `images`", {"text": "no images at all"}),
    ("images_not_strings", Status.INVALID_IMAGES, "list of path strings", {"images": [CAT, 7]}),
    ("invalid_json", Status.MALFORMED_LINE, "not valid JSON", '{"images": ["../images/cat.jpg",'),
    ("not_an_object", Status.MALFORMED_LINE, "JSON object", json.dumps([CAT, IMG2])),
    ("empty_line", Status.MALFORMED_LINE, "empty line", ""),
    ("path_escaping_roots", Status.PATH_NOT_ALLOWED, "outside the allowed image roots",
     {"images": ["../../../../../../etc/passwd", CAT]}),
    ("url", Status.URL_NOT_ALLOWED, "never fetched", {"images": ["http://127.0.0.1:9/cat.jpg", CAT]}),
    ("non_utf8", Status.MALFORMED_LINE, "UTF-8", b'{"images": ["../images/caf\xe9.jpg", "../images/cat.jpg"]}'),
]
# Unusual but valid images, each paired with a reference that holds the same picture.
UNUSUAL_PAIRS = {
    "gray.png": "gray16.png", "gray16.png": "gray.png", "rgba.png": "../images/cat.jpg",
    "palette.png": "../images/cat.jpg", "cmyk.jpg": "../images/cat.jpg", "photo.webp": "../images/cat.jpg",
    "rotated.jpg": "../images/cat.jpg",
}
SAME_PIXELS = {"gray.png", "gray16.png", "rgba.png"}  # lossless: decodes to exactly the reference's pixels


def bad_sample_id(kind):
    return f"bad.jsonl:{[name for name, *_ in BAD_LINES].index(kind) + 1}"


def build_data_folder(data):
    shutil.copytree(PHOTOS, data / "images")
    bad = data / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes((PHOTOS / "cat.jpg").read_bytes()[:4000])
    (bad / "page.jpg").write_text("<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>")
    (bad / "notes.jpg").write_text("remember to buy milk\n")
    (bad / "album.jpg").mkdir()
    write_decompression_bomb(bad / "bomb.png")
    write_unusual_images(data / "unusual")
    raw = data / "raw"
    raw.mkdir()
    with open(raw / "bad.jsonl", "wb") as handle:
        for _, _, _, line in BAD_LINES:
            text = line if isinstance(line, (bytes, str)) else json.dumps(line)
            handle.write((text if isinstance(text, bytes) else text.encode()) + b"\n")
    (raw / "unusual.jsonl").write_text("".join(
        json.dumps({"images": [f"../unusual/{name}", f"../unusual/{other}" if "/" not in other else other]}) + "\n"
        for name, other in UNUSUAL_PAIRS.items()
    ))
    (raw / "empty.jsonl").write_bytes(b"")


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, tiny_clip_dir):
    """The whole pipeline over the bad data, once, with every outgoing network connection refused."""
    data = tmp_path_factory.mktemp("bad") / "data"
    build_data_folder(data)
    attempts = []

    def refuse(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network access during the pipeline: {address}")
        return original_connect(self, address, *args)

    original_connect = socket.socket.connect
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        result = run(ASSETS, data, tiny_clip_dir, {"min_score": 0.0, "max_score": 1.0})
    stats = {row[0]: row[1:] for row in query(
        data, "SELECT sample_id, status, error, image_pair_similarity, image_pairs FROM image_pair_stats")}
    return result, data, stats, attempts


@pytest.mark.parametrize("kind", [name for name, *_ in BAD_LINES])
def test_each_bad_input_gets_its_status_and_reason_and_is_not_kept(bad_run, kind):
    _, data, stats, _ = bad_run
    _, status, reason, _ = next(entry for entry in BAD_LINES if entry[0] == kind)
    found_status, error, scores, pairs = stats[bad_sample_id(kind)]
    assert (found_status, scores, pairs) == (status.value, [], [])
    assert reason in error
    kept_ids = {row[0] for row in query(data, "SELECT sample_id FROM filtered_samples")}
    assert bad_sample_id(kind) not in kept_ids


@pytest.mark.parametrize("name", list(UNUSUAL_PAIRS))
def test_unusual_image_modes_score_and_are_kept(bad_run, name):
    _, data, stats, _ = bad_run
    status, error, scores, pairs = stats[f"unusual.jsonl:{list(UNUSUAL_PAIRS).index(name) + 1}"]
    assert (status, error, pairs) == ("ok", "", [[0, 1]])
    if name in SAME_PIXELS:
        assert scores[0] == pytest.approx(1.0, abs=1e-6)
    else:  # lossy or converted: the same picture, hence very similar even under a random tiny model
        assert scores[0] > 0.95
    output_ids = {row[0] for row in query(data, "SELECT sample_id FROM filtered_samples")}
    assert f"unusual.jsonl:{list(UNUSUAL_PAIRS).index(name) + 1}" in output_ids


def test_the_run_succeeds_without_network_and_every_count_reconciles(bad_run):
    result, data, stats, attempts = bad_run
    assert result.success and attempts == []
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {name: e.passed for name, e in checks.items()} == dict.fromkeys(
        ["scores_finite_and_in_range", "one_row_per_sample", "kept_samples_satisfy_config",
         "every_sample_accounted_for", "every_manifest_readable"], True)

    expected = {status.value: 0 for status in Status}
    for _, status, _, _ in BAD_LINES:
        expected[status.value] += 1
    expected["ok"] = len(UNUSUAL_PAIRS)
    stats_meta = metadata(result, "image_pair_stats")
    assert {s: stats_meta[f"status_{s}"] for s in expected} == expected
    assert metadata(result, "raw_samples")["shards"] == 3

    reconciliation = {k: v.value for k, v in checks["every_sample_accounted_for"].metadata.items()}
    lines = len(BAD_LINES) + len(UNUSUAL_PAIRS)
    assert reconciliation["manifest_lines"] == reconciliation["ingested"] == len(stats) == lines
    assert reconciliation["ok"] + reconciliation["rejected"] == lines
    assert reconciliation["kept"] + reconciliation["dropped"] == reconciliation["ok"] == len(UNUSUAL_PAIRS)
    assert len(read_jsonl(data / "output" / "filtered_samples.jsonl")) == reconciliation["kept"]


def test_an_empty_manifest_and_a_missing_raw_folder_give_valid_empty_outputs(tmp_path, tiny_clip_dir):
    (tmp_path / "with_empty" / "raw").mkdir(parents=True)
    (tmp_path / "with_empty" / "raw" / "empty.jsonl").write_bytes(b"")
    (tmp_path / "no_raw").mkdir()
    for data in (tmp_path / "with_empty", tmp_path / "no_raw"):
        result = run(ASSETS, data, tiny_clip_dir)
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        assert (data / "output" / "filtered_samples.jsonl").read_bytes() == b""
        for table in ("raw_samples", "image_pair_stats", "filtered_samples"):
            assert query(data, f"SELECT count(*) FROM {table}") == [(0,)]
