"""Each shard's kept samples in the shard's own format, under `<output>/kept/<shard path>`, and `kept_ids.txt` (one
sample id per line, DataComp style):

- JSONL: the kept lines, each as written plus `__dj__stats__`, image paths relative to the kept file's folder;
- Parquet: the original rows of the kept samples, in order, every column and the schema (its metadata too)
  unchanged, plus a column `image_pair_similarity` (list of doubles);
- tar: the kept samples' original members, in order, with `image_pair_similarity` added to each `k.json` (one is
  written after the key's last member where it had none).

Each file is staged and appears whole or not at all."""

import gzip
import io
import json
import tarfile
from typing import Any, Mapping

import duckdb

from .catalog import quoted
from .ingest.formats import shard_format
from .ingest.manifests import open_manifest
from .ingest.webdataset import intact_members, sample_key
from .locations import AnyPath
from .publish import ImagePaths, StagedSink, dj_record, staged_file
from .results import ResultFiles, url_of
from .schema import SIMILARITY_STAT, StatsRow

KEPT_FOLDER, KEPT_IDS = "kept", "kept_ids.txt"
Kept = dict[int, tuple[str, tuple[float, ...], str]]
"""{line number: (sample id, scores, the line as written)} of one shard's kept samples."""


def write_kept_outputs(conn: duckdb.DuckDBPyConnection, results: ResultFiles, shards: Mapping[str, AnyPath],
                       output_dir: AnyPath) -> dict[str, int]:
    """Write every readable shard's kept file and `kept_ids.txt`; returns {shard: samples kept}."""
    written = {}
    with staged_file(output_dir / KEPT_IDS) as ids:
        for shard in sorted(shards):
            kept = kept_of(conn, results, shard)
            target = output_dir / KEPT_FOLDER / shard
            WRITERS[shard_format(shard)](shards[shard], shard, kept, target)
            ids.write_lines([sample_id for sample_id, _, _ in kept.values()])
            written[shard] = len(kept)
        ids.publish()
    return written


def kept_of(conn: duckdb.DuckDBPyConnection, results: ResultFiles, shard: str) -> Kept:
    """Read from the filtered file (its row groups of other shards skipped: it is written in shard order) and the
    shard's own stats file."""
    filtered, stats = (quoted(url_of(path)) for path in (results.filtered_file, results.shard_file(StatsRow, shard)))
    rows = conn.execute(
        f"SELECT f.line_number, f.sample_id, f.image_pair_similarity, s.sample_json FROM read_parquet({filtered}) f "
        f"JOIN read_parquet({stats}) s USING (sample_id) WHERE f.manifest = ? ORDER BY f.line_number", [shard]
    ).fetchall()
    return {line: (sample_id, tuple(scores), text) for line, sample_id, scores, text in rows}


def write_kept_jsonl(source: AnyPath, shard: str, kept: Kept, target: AnyPath) -> None:
    """The kept lines; compressed again for a `.jsonl.gz` shard."""
    paths = ImagePaths(str(source.parent), str(target.parent))
    lines = "".join(f"{dj_record(text, scores, paths)}\n" for _, scores, text in kept.values()).encode("utf-8")
    with staged_file(target) as staged:
        staged.write(gzip.compress(lines, mtime=0) if shard.endswith(".gz") else lines)
        staged.publish()


def write_kept_parquet(source: AnyPath, shard: str, kept: Kept, target: AnyPath) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_manifest(source) as handle, staged_file(target) as staged:
        parquet = pq.ParquetFile(handle)
        stat = pa.field(SIMILARITY_STAT, pa.list_(pa.float64()))
        schema = parquet.schema_arrow.append(stat)
        with pq.ParquetWriter(StagedSink(staged), schema) as writer:
            first_row = 1
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                rows = range(first_row, first_row + table.num_rows)
                first_row += table.num_rows
                mask = pa.array([row in kept for row in rows])
                scores = pa.array([list(kept[row][1]) for row in rows if row in kept], type=stat.type)
                writer.write_table(table.filter(mask).append_column(stat, scores).cast(schema))
        staged.publish()


def write_kept_tar(source: AnyPath, shard: str, kept: Kept, target: AnyPath) -> None:
    scores = {sample_id.split(":", 1)[1]: values for sample_id, values, _ in kept.values()}
    with open_manifest(source) as handle, tarfile.open(fileobj=handle, mode="r:") as archive, \
            staged_file(target) as staged:
        with tarfile.open(fileobj=StagedSink(staged), mode="w", format=archive.format) as out:
            current: str | None = None
            has_json = False
            for member in intact_members(archive):
                key, extension = sample_key(member.name)
                if key != current:
                    if current is not None and current in scores and not has_json:
                        add_json(out, f"{current}.json", {SIMILARITY_STAT: list(scores[current])})
                    current, has_json = key, False
                if key not in scores or not member.isfile():
                    continue
                data = archive.extractfile(member)
                if extension == "json":
                    has_json = True
                    record = json.loads(data.read()) if data else {}
                    add_json(out, member.name, {**record, SIMILARITY_STAT: list(scores[key])}, like=member)
                else:
                    out.addfile(member, data)
            if current is not None and current in scores and not has_json:
                add_json(out, f"{current}.json", {SIMILARITY_STAT: list(scores[current])})
        staged.publish()


def add_json(out: tarfile.TarFile, name: str, record: dict[str, Any], like: tarfile.TarInfo | None = None) -> None:
    data = json.dumps(record, ensure_ascii=False).encode("utf-8")
    info = tarfile.TarInfo(name)
    if like is not None:
        info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
            like.mtime, like.mode, like.uid, like.gid, like.uname, like.gname)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


WRITERS = {"jsonl": write_kept_jsonl, "parquet": write_kept_parquet, "tar": write_kept_tar}


def remove_kept_of(output_dir: AnyPath, shards: list[str]) -> None:
    """The kept files of shards that are gone."""
    for shard in shards:
        kept = output_dir / KEPT_FOLDER / shard
        if kept.exists():
            kept.unlink()

