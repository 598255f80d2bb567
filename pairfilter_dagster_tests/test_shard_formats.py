"""Shards in every format, from the same real photos: JSONL with paths, Parquet with paths, bytes or Hugging Face
`Image` structs, and WebDataset tar. Real Dagster runs score each the same; the kept outputs come back in the
shard's own format, read with pyarrow and tarfile; bad input of each format gets a status and a reason."""

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.testing import PHOTOS

from .test_assets import ASSETS, query, run

PAIRS = [("cat.jpg", "cat_crop.jpg"), ("img2.jpg", "img3.jpg"), ("blip.jpg", "blip_flip.jpg"), ("img8.jpg", "img9.jpg"),
         ("img_pair_1.jpg", "img_pair_2.jpg"), ("img1.png", "img10.jpg")]
SCHEMA_METADATA = {b"huggingface": b'{"info": {"features": {"images": "Image"}}}'}


def data_folder(tmp_path: Path, name: str) -> Path:
    data = tmp_path / name
    shutil.copytree(PHOTOS, data / "images")
    (data / "raw").mkdir()
    return data


def records() -> list[dict]:
    return [{"id": f"pair-{i}", "text": f"pair {i}: {a} and {b}", "n": i} for i, (a, b) in enumerate(PAIRS)]


def write_parquet(path: Path, images: list, image_type: pa.DataType) -> None:
    rows = records()
    table = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows], "n": [r["n"] for r in rows],
                      "images": pa.array(images, type=pa.list_(image_type))})
    pq.write_table(table.replace_schema_metadata(SCHEMA_METADATA), path, row_group_size=4)  # two row groups


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def write_dataset(data: Path, kind: str) -> str:
    raw, relative = data / "raw", [[f"../images/{a}", f"../images/{b}"] for a, b in PAIRS]
    if kind in ("jsonl", "jsonl-gz"):
        lines = "".join(json.dumps({**r, "images": images}) + "\n" for r, images in zip(records(), relative))
        if kind == "jsonl":
            (raw / "pairs.jsonl").write_text(lines)
            return "pairs.jsonl"
        (raw / "pairs.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
        return "pairs.jsonl.gz"
    if kind == "parquet-paths":
        write_parquet(raw / "pairs.parquet", relative, pa.string())
    elif kind == "parquet-bytes":
        write_parquet(raw / "pairs.parquet", [[photo(a), photo(b)] for a, b in PAIRS], pa.binary())
    elif kind == "parquet-hf":
        struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        write_parquet(raw / "pairs.parquet", [[{"bytes": photo(a), "path": a}, {"bytes": None, "path": f"../images/{b}"}]
                                              for a, b in PAIRS], struct)
    else:
        write_tar(raw / "pairs.tar", [(f"{i:06d}", [photo(a), photo(b)], r) for i, ((a, b), r) in enumerate(zip(PAIRS, records()))])
        return "pairs.tar"
    return "pairs.parquet"


def write_tar(path: Path, samples: list[tuple[str, list[bytes], dict | None]], truncate: bool = False) -> None:
    """A WebDataset tar; `truncate`: cut short in the middle of its last member's bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for key, images, record in samples:
            members = [(f"{key}.{n}.{extension(data)}", data) for n, data in enumerate(images)]
            if record is not None:
                members.append((f"{key}.json", json.dumps(record).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    if truncate:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            last = archive.getmembers()[-1]
        data = data[: last.offset_data + last.size // 2]
    path.write_bytes(data)


def extension(data: bytes) -> str:
    return "png" if data.startswith(b"\x89PNG") else "jpg"


KINDS = ["jsonl", "jsonl-gz", "parquet-paths", "parquet-bytes", "parquet-hf", "tar"]


@pytest.fixture(scope="module")
def every_format(tmp_path_factory, tiny_clip_dir):
    """Each format in a data folder of its own, materialized with the same share of the data kept."""
    results = {}
    for kind in KINDS:
        data = data_folder(tmp_path_factory.mktemp(kind), "data")
        shard = write_dataset(data, kind)
        result = run(ASSETS, data, tiny_clip_dir, {"keep_top_fraction": 0.5})
        assert result.success and all(check.passed for check in result.get_asset_check_evaluations()), kind
        scores = {json.loads(text).get("id"): (status, list(s)) for text, status, s in
                  query(data, "SELECT sample_json, status, image_pair_similarity FROM image_pair_stats")}
        kept = {sid for (sid,) in query(data, "SELECT sample_id FROM filtered_samples")}
        results[kind] = (data, shard, scores, kept)
    return results


def test_every_format_scores_the_same_pairs_the_same_and_keeps_the_same_samples(every_format):
    _, _, reference, _ = every_format["jsonl"]
    assert len(reference) == len(PAIRS) and all(status == "ok" for status, _ in reference.values())
    kept_ids = {}
    for kind, (data, _, scores, _) in every_format.items():
        assert scores.keys() == reference.keys(), kind
        for sample, (status, values) in scores.items():
            assert status == "ok" and values == pytest.approx(reference[sample][1], abs=1e-6), (kind, sample)
        kept_ids[kind] = sorted(json.loads(text)["id"] for (text,) in
                                query(data, "SELECT s.sample_json FROM filtered_samples f JOIN image_pair_stats s USING (sample_id)"))
    assert len(kept_ids["jsonl"]) == len(PAIRS) // 2
    assert all(ids == kept_ids["jsonl"] for ids in kept_ids.values()), kept_ids


@pytest.mark.parametrize("kind", ["parquet-paths", "parquet-bytes", "parquet-hf"])
def test_the_kept_parquet_has_the_original_schema_plus_the_stat(every_format, kind):
    data, shard, scores, kept = every_format[kind]
    original = pq.read_table(data / "raw" / shard)
    found = pq.read_table(data / "output" / "kept" / shard)
    assert found.schema.remove(found.schema.get_field_index("image_pair_similarity")).equals(original.schema,
                                                                                             check_metadata=True)
    assert found.schema.field("image_pair_similarity").type == pa.list_(pa.float64())
    kept_rows = sorted(int(sample_id.rsplit(":", 1)[1]) for sample_id in kept)
    assert found.drop_columns(["image_pair_similarity"]).to_pylist() == [original.to_pylist()[row - 1] for row in kept_rows]
    for record in found.to_pylist():
        assert record["image_pair_similarity"] == scores[record["id"]][1]
    assert (data / "output" / "kept_ids.txt").read_text().splitlines() == sorted(kept, key=lambda s: int(s.rsplit(":", 1)[1]))


def test_the_kept_tar_holds_the_original_members_and_the_score_in_each_json(every_format):
    data, shard, scores, kept = every_format["tar"]
    with tarfile.open(data / "raw" / shard) as original, tarfile.open(data / "output" / "kept" / shard) as found:
        source = {m.name: original.extractfile(m).read() for m in original}
        members = {m.name: found.extractfile(m).read() for m in found}
    keys = sorted(sample_id.split(":", 1)[1] for sample_id in kept)
    assert sorted({name.split(".")[0] for name in members}) == keys
    for key in keys:
        record = json.loads(members[f"{key}.json"])
        assert record["image_pair_similarity"] == scores[record["id"]][1]
        assert {k: v for k, v in record.items() if k != "image_pair_similarity"} == json.loads(source[f"{key}.json"])
        for n in (0, 1):
            name = next(m for m in members if m.startswith(f"{key}.{n}."))
            assert members[name] == source[name]  # the image bytes as they were


@pytest.mark.parametrize("kind", ["jsonl", "jsonl-gz"])
def test_the_kept_jsonl_names_the_scored_files_from_its_own_folder(every_format, kind):
    data, shard, scores, kept = every_format[kind]
    written = (data / "output" / "kept" / shard).read_bytes()
    text = gzip.decompress(written).decode() if shard.endswith(".gz") else written.decode()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == len(kept)
    for line in lines:
        assert line["__dj__stats__"]["image_pair_similarity"] == scores[line["id"]][1]
        for image in line["images"]:  # resolved as Data-Juicer does, from the kept file's folder
            assert (data / "output" / "kept" / image).resolve().parent == (data / "images").resolve()


def test_bad_input_of_each_format_gets_a_status_and_nothing_is_lost(tmp_path, tiny_clip_dir):
    data = data_folder(tmp_path, "data")
    raw = data / "raw"
    cat, img2, img3 = photo("cat.jpg"), photo("img2.jpg"), photo("img3.jpg")
    write_tar(raw / "truncated.tar", [("a", [cat, img2], {"id": "a"}), ("b", [img3, cat], None)], truncate=True)
    write_tar(raw / "odd.tar", [("text", [cat, b"plain text, not an image"], {"id": "t"}), ("one", [cat], {"id": "o"}),
                                ("fine", [cat, img2], None)])
    byte_rows = [[cat, img2], None, [cat, None]]
    pq.write_table(pa.table({"id": ["ok", "null", "null-item"],
                             "images": pa.array(byte_rows, type=pa.list_(pa.binary()))}), raw / "bytes.parquet")
    pq.write_table(pa.table({"id": ["outside"], "images": [["../../elsewhere.jpg", "../images/cat.jpg"]]}),
                   raw / "paths.parquet")
    (raw / "fake.parquet").write_text("id,images\n1,cat.jpg\n")
    good = json.dumps({"images": ["../images/cat.jpg", "../images/img2.jpg"]}) + "\n"
    (raw / "damaged.jsonl.gz").write_bytes(gzip.compress((good * 200).encode())[:-40])  # its end cut off
    result = run(ASSETS, data, tiny_clip_dir, {"min_score": 0.0}, raise_on_error=False)
    stats = {sid: (status, error) for sid, status, error in query(data, "SELECT sample_id, status, error FROM image_pair_stats")}
    assert stats["truncated.tar:a"][0] == "ok"
    assert stats["truncated.tar:b"][0] == "unreadable_image" and "truncated" in stats["truncated.tar:b"][1]
    assert stats["odd.tar:text"][0] == "unreadable_image" and "not an image format PIL knows" in stats["odd.tar:text"][1]
    assert stats["odd.tar:one"] == ("not_a_pair", stats["odd.tar:one"][1]) and "found 1" in stats["odd.tar:one"][1]
    assert stats["odd.tar:fine"][0] == "ok"
    assert stats["bytes.parquet:1"][0] == "ok"
    assert stats["bytes.parquet:2"] == ("invalid_images", "`images`: is null")
    assert stats["bytes.parquet:3"][0] == "invalid_images" and "item 1 is empty" in stats["bytes.parquet:3"][1]
    assert stats["paths.parquet:1"][0] == "path_not_allowed"
    damaged = sorted((sid for sid in stats if sid.startswith("damaged.jsonl.gz:")), key=lambda s: int(s.rsplit(":", 1)[1]))
    assert all(stats[sid][0] == "ok" for sid in damaged[:-1]) and len(damaged) > 2
    assert stats[damaged[-1]][0] == "malformed_line" and "the gzip stream is damaged" in stats[damaged[-1]][1]
    assert list_shards(raw).problems == {"raw/fake.parquet": "not a Parquet file (no PAR1 magic at its start and end)"}
    assert "fake.parquet" not in {s.split(":")[0] for s in stats}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["every_manifest_readable"] is False
    assert all(passed for name, passed in checks.items() if name != "every_manifest_readable"), checks
    kept = {sid for (sid,) in query(data, "SELECT sample_id FROM filtered_samples")}
    assert kept == {"truncated.tar:a", "odd.tar:fine", "bytes.parquet:1", *damaged[:-1]}


@pytest.fixture(scope="module")
def fast_embedder(tiny_clip_dir):
    from pairfilter_dagster.core.embedding.model import ClipEmbedder, ModelSpec

    return ClipEmbedder.load(ModelSpec(str(tiny_clip_dir), device="cpu", precision="fast"))


@pytest.mark.parametrize("kind", ["parquet-bytes", "parquet-hf", "tar"])
def test_held_images_hash_and_decode_in_worker_processes_as_files_do(tmp_path, embedder, fast_embedder, kind, monkeypatch):
    """Images held in a shard (tar members, Parquet items) go through the hashing processes, the decode processes
    and fast decoding as files do: the same hashes, and the scores of the same photos given as paths."""
    from pairfilter_dagster.core import scoring
    from pairfilter_dagster.core.embedding.local import LocalEngine
    from pairfilter_dagster.core.images import ImageAccess
    from pairfilter_dagster.core.ingest.formats import read_samples
    from pairfilter_dagster.core.ingest.samples import SampleRules

    def scored(data: Path, model, *, processes: bool) -> list:
        rules = SampleRules.for_data_dir(data)
        samples = list(read_samples(data / "raw", rules))
        with LocalEngine(model, batch_size=3, workers=2, processes=processes) as engine, \
                scoring.PairScorer(engine, access=ImageAccess(rules.image_roots), hash_workers=2 if processes else 1) as scorer:
            rows = scorer.score_chunk(samples)
            assert (scorer._hashing is not None) is processes and engine.processes is processes
        return rows

    monkeypatch.setattr(scoring, "HASH_IN_PROCESSES_FROM", 1)
    held, paths = data_folder(tmp_path, "held"), data_folder(tmp_path, "paths")
    write_dataset(held, kind), write_dataset(paths, "jsonl")
    for model in (embedder, fast_embedder):
        rows = scored(held, model, processes=True)
        inline, as_files = scored(held, model, processes=False), scored(paths, model, processes=False)
        assert all(r.status.value == "ok" for r in rows) and len(rows) == len(PAIRS)
        if kind != "parquet-hf":  # its second images are paths
            assert all(h.startswith(("tar:", "parquet:")) for r in rows for h in r.images)
        assert [r.image_hashes for r in rows] == [r.image_hashes for r in inline] == [r.image_hashes for r in as_files]
        assert [r.image_pair_similarity for r in rows] == [r.image_pair_similarity for r in inline]
        for row, file_row in zip(rows, as_files):
            assert row.image_pair_similarity == pytest.approx(file_row.image_pair_similarity, abs=1e-6)


def test_images_in_the_steps_memory_are_hashed_and_decoded_in_its_process(tmp_path, embedder, monkeypatch):
    """fsspec's memory:// lives in the step's process: worker processes would see an empty one, so its images (files
    and those held in shards) are hashed and decoded in the step's process, with processes asked for."""
    import fsspec

    from pairfilter_dagster.core import scoring
    from pairfilter_dagster.core.embedding.local import LocalEngine
    from pairfilter_dagster.core.ingest.formats import read_shards
    from pairfilter_dagster.core.processes import readable_in_workers
    from pairfilter_dagster.defs.resources import PairfilterStorage

    assert not readable_in_workers(["memory://d/a.jpg"]) and not readable_in_workers(["tar:memory://d/s.tar#512+10"])
    assert readable_in_workers(["/d/a.jpg", "tar:/d/s.tar#512+10", "s3://b/a.jpg", "parquet:s3://b/s.parquet#0.1"])
    monkeypatch.setattr(scoring, "HASH_IN_PROCESSES_FROM", 1)
    local = data_folder(tmp_path, "data")
    write_dataset(local, "tar"), write_dataset(local, "jsonl")
    memory = fsspec.filesystem("memory")
    memory.put(f"{local}/", "/in-memory", recursive=True)
    try:
        storage = PairfilterStorage(data_dir="memory://in-memory", state_dir=str(tmp_path / "state"))
        samples = list(read_shards(storage.list_shards().readable, storage.sample_rules()))
        assert len(samples) == 2 * len(PAIRS)
        with LocalEngine(embedder, batch_size=3, workers=2, processes=True) as engine, \
                scoring.PairScorer(engine, access=storage.image_access(), hash_workers=2) as scorer:
            rows = scorer.score_chunk(samples)
            assert scorer._hashing is None and engine._processes is None and engine._pool is not None
    finally:
        memory.rm("/in-memory", recursive=True)
    assert all(r.status.value == "ok" for r in rows), [r.error for r in rows if r.error]
    by_hashes = {}
    for row in rows:
        by_hashes.setdefault(row.image_hashes, set()).add(row.image_pair_similarity)
    assert len(by_hashes) == len(PAIRS) and all(len(scores) == 1 for scores in by_hashes.values())
