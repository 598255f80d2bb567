"""Parquet shards: one sample per row. The image column is a list whose items are each a path (relative to the
Parquet file's folder, or absolute), raw image bytes, or a Hugging Face `Image` struct `{bytes, path}` (bytes win
when both are set). The other columns are the sample's fields; sample id `<shard>:<1-based row number>`."""

import base64
import hashlib
import json
from typing import Any, Iterator

from ..image_refs import parquet_item_ref
from ..locations import AnyPath
from ..schema import Sample, SampleKey, Status
from .manifests import open_manifest
from .samples import ImageItem, InlineImage, SampleRules, sample_from_images


class ShardError(ValueError):
    """A shard that cannot be read at all (not Parquet, no image column): the message names it and the setting."""


def read_parquet_shard(path: AnyPath, shard: str, rules: SampleRules) -> Iterator[Sample]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_manifest(path) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(f"raw/{shard}: not a Parquet file ({exc})") from None
        names = parquet.schema_arrow.names
        if rules.image_column not in names:
            raise ShardError(f"image_column: {rules.image_column!r} is not a column of raw/{shard} (its columns: "
                             f"{', '.join(names)}); set storage.image_column")
        row = 0
        for group in range(parquet.num_row_groups):
            for record in parquet.read_row_group(group).to_pylist():
                row += 1
                yield parquet_sample(record, SampleKey(sample_id=f"{shard}:{row}", manifest=shard, line_number=row),
                                     path, rules)


def parquet_sample(record: dict[str, Any], key: SampleKey, path: AnyPath, rules: SampleRules) -> Sample:
    cell = record.pop(rules.image_column)
    text = json.dumps(record, ensure_ascii=False, default=json_value)
    items, problem = image_items(cell, path, key.line_number - 1)
    if problem:
        return Sample(sample_id=key.sample_id, manifest=key.manifest, line_number=key.line_number,
                      status=Status.INVALID_IMAGES, error=f"`{rules.image_column}`: {problem}", sample_json=text)
    return sample_from_images(key, items, text, path.parent, rules)


def image_items(cell: Any, path: AnyPath, row: int) -> tuple[list[ImageItem], str]:
    if cell is None:
        return [], "is null"
    if not isinstance(cell, list):
        return [], f"must be a list of images, got {type(cell).__name__}"
    items: list[ImageItem] = []
    for index, item in enumerate(cell):
        if isinstance(item, dict):  # a Hugging Face Image struct
            item = item.get("bytes") or item.get("path")
        if isinstance(item, bytes):
            items.append(InlineImage(parquet_item_ref(str(path), row, index), hashlib.sha256(item).hexdigest()))
        elif isinstance(item, str) and item.strip() and "\0" not in item:
            items.append(item)
        else:
            return [], f"item {index} is {'empty' if item in (None, '', b'') else type(item).__name__}, not a path or image bytes"
    return items, ""


def json_value(value: Any) -> Any:
    """Parquet values JSON has no type for, as sample_json shows them: bytes as base64, dates as ISO text."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value[:64]).decode("ascii"), "bytes": len(value)}
    return str(value)
