"""Shard formats, chosen by file name, mixed freely under raw/: each file is one shard (one partition), read by the
reader of its format into samples."""

import os
from typing import Callable, Iterator, Mapping, Sequence

from ..locations import AnyPath, as_path, is_remote_path
from ..schema import Sample
from .manifests import count_lines, list_shards, open_manifest
from .parquet_shards import read_parquet_shard
from .samples import SampleRules, read_manifest
from .webdataset import intact_members, read_tar_shard, sample_key

Reader = Callable[[AnyPath, str, SampleRules], Iterator[Sample]]
READERS: dict[str, Reader] = {"jsonl": read_manifest, "parquet": read_parquet_shard, "tar": read_tar_shard}
FORMATS = {".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".parquet": "parquet", ".tar": "tar"}


def shard_format(name: str) -> str:
    """`jsonl` (a `.jsonl.gz` too), `parquet` or `tar`."""
    return next(kind for suffix, kind in FORMATS.items() if name.endswith(suffix))


def read_samples(
    raw_dir: AnyPath, rules: SampleRules | None = None, shards: Sequence[str] | None = None
) -> Iterator[Sample]:
    """All samples of the readable shards under `raw_dir` (of the named `shards` only, if given), in input
    order. Default rules: `exactly_two` pairing, images confined to the data folder (the folder holding
    `raw_dir`)."""
    raw_dir = as_path(raw_dir)
    rules = rules or SampleRules.for_data_dir(raw_dir.parent)
    found = list_shards(raw_dir, rules.manifest_roots).readable
    yield from read_shards({name: path for name, path in found.items() if shards is None or name in shards}, rules)


def read_shards(shards: Mapping[str, AnyPath], rules: SampleRules) -> Iterator[Sample]:
    """The samples of {shard name: file path}, shard by shard in name order. A file that vanished since it was
    listed is a shard that is gone: it has no samples."""
    for name in sorted(shards):
        try:
            yield from READERS[shard_format(name)](shards[name], name, rules)
        except FileNotFoundError:
            path = shards[name]
            if path.exists() if is_remote_path(path) else os.path.lexists(path):
                raise


def count_records(path: AnyPath, shard: str) -> int:
    """The samples a shard holds, counted independently of parsing them (the reconciliation check compares it
    with the samples ingested): lines, Parquet rows (from the footer), or tar keys."""
    kind = shard_format(shard)
    if kind == "jsonl":
        return count_lines(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        with open_manifest(path) as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    import tarfile

    with open_manifest(path) as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
        return len({sample_key(member.name)[0] for member in intact_members(archive) if member.isfile()})
