"""One dataclass per table row, each field carrying its SQL type and description: the DDL, the UI's column schema
and the column lineage are all derived from these classes, and readers yield them.

Field order is column order (tables written by earlier versions are checked against it)."""

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

from .ingest.pairing import ImagePair

DJ_STATS_FIELD = "__dj__stats__"
"""Where Data-Juicer keeps a sample's stats; this filter's stat goes in it, as `SIMILARITY_STAT`."""
SIMILARITY_STAT = "image_pair_similarity"


class Status(str, Enum):
    """Every ingested sample gets exactly one status; a sample's checks run in this order and it gets the status
    of the first problem found."""

    OK = "ok"
    MALFORMED_LINE = "malformed_line"
    INVALID_IMAGES = "invalid_images"
    NOT_A_PAIR = "not_a_pair"
    TOO_MANY_PAIRS = "too_many_pairs"
    URL_NOT_ALLOWED = "url_not_allowed"
    PATH_NOT_ALLOWED = "path_not_allowed"
    MISSING_IMAGE = "missing_image"
    IMAGE_TOO_LARGE = "image_too_large"
    UNREADABLE_IMAGE = "unreadable_image"

    def __str__(self) -> str:
        return self.value


STATUS_DESCRIPTIONS = {
    Status.OK: "scored: every image was read and embedded, one score per image pair",
    Status.MALFORMED_LINE: "the manifest line is empty, not UTF-8, not valid JSON, not a JSON object, longer than "
    "`max_line_bytes`, or its `__dj__stats__` is not an object",
    Status.INVALID_IMAGES: "the sample has no `images` field, or it is not a list of non-empty path strings",
    Status.NOT_A_PAIR: "the images do not form pairs under the `pairing` rule (default: exactly two), "
    "or one path appears twice",
    Status.TOO_MANY_PAIRS: "the pairing rule makes more image pairs of the sample than `max_pairs_per_sample`",
    Status.URL_NOT_ALLOWED: "an image is a URL (http://, s3://, data:, ...); the pipeline never fetches images",
    Status.PATH_NOT_ALLOWED: "an image path lies outside the allowed image roots (default: the data folder)",
    Status.MISSING_IMAGE: "an image file does not exist",
    Status.IMAGE_TOO_LARGE: "an image file is larger than `max_image_bytes`, has more pixels than `max_image_pixels` "
    "(decompression-bomb guard), or is more elongated than `max_image_aspect_ratio`",
    Status.UNREADABLE_IMAGE: "an image file exists but cannot be read or decoded as an image (empty, truncated, "
    "not an image, not a regular file, changed while the run read it, ...)",
}


class Column(NamedTuple):
    name: str
    sql_type: str
    description: str


def column(sql_type: str, description: str, **kwargs: Any) -> Any:
    return field(metadata={"sql_type": sql_type, "description": description}, **kwargs)


def images_column() -> Any:
    return column("VARCHAR[]", "image paths, resolved against the manifest's folder", default=())


def status_column() -> Any:
    return column("VARCHAR", "ok, or why the sample cannot be scored", default=Status.OK)


def error_column() -> Any:
    return column("VARCHAR", "empty when ok, else a human-readable reason", default="")


def similarity_column() -> Any:
    return column("DOUBLE[]", "cosine similarity of the image embeddings, one per image pair", default=())


def sample_json_column() -> Any:
    return column("VARCHAR", "the manifest line as written")


def pairs_column() -> Any:
    return column("INTEGER[][]", "0-based index pairs of the images, in score order (from the pairing rule)",
                  default=())


@dataclass(frozen=True, kw_only=True)
class SampleKey:
    """The columns every table starts with: which manifest line a row is about."""

    sample_id: str = column("VARCHAR", "`<shard path relative to raw/>:<line number, row number, or tar key>`")
    manifest: str = column("VARCHAR", "shard path relative to raw/ (a manifest, Parquet or tar file): the partition key")
    line_number: int = column("INTEGER", "1-based line (JSONL), row (Parquet) or sample (tar) number in the shard")


@dataclass(frozen=True, kw_only=True)
class Sample(SampleKey):
    """A row of `raw_samples`: one manifest line, usable (status ok, with the pairs to score) or not."""

    TABLE: ClassVar[str] = "raw_samples"
    images: tuple[str, ...] = images_column()
    status: Status = status_column()
    error: str = error_column()
    sample_json: str = sample_json_column()
    image_pairs: tuple[ImagePair, ...] = pairs_column()


@dataclass(frozen=True, kw_only=True)
class StatsRow(SampleKey):
    """A row of `image_pair_stats`: a sample, its pair scores, its status."""

    TABLE: ClassVar[str] = "image_pair_stats"
    images: tuple[str, ...] = images_column()
    image_pair_similarity: tuple[float, ...] = similarity_column()
    status: Status = status_column()
    error: str = error_column()
    image_hashes: tuple[str, ...] = column(
        "VARCHAR[]", "sha256 of each image file's content (the embedding cache key)", default=()
    )
    sample_json: str = sample_json_column()
    image_pairs: tuple[ImagePair, ...] = pairs_column()


@dataclass(frozen=True, kw_only=True)
class FilteredRow(SampleKey):
    """A row of `filtered_samples`: a kept sample and its output line."""

    TABLE: ClassVar[str] = "filtered_samples"
    image_pair_similarity: tuple[float, ...] = similarity_column()
    sample_json: str = column("VARCHAR", "the output line: original fields plus __dj__stats__")


Row = Sample | StatsRow | FilteredRow
ROW_TYPES: tuple[type[Row], ...] = (Sample, StatsRow, FilteredRow)


def columns(row_type: type[Row]) -> list[Column]:
    return [Column(f.name, f.metadata["sql_type"], f.metadata["description"]) for f in fields(row_type)]


def column_names(row_type: type[Row]) -> list[str]:
    return [f.name for f in fields(row_type)]


LIST_COLUMNS = frozenset(c.name for t in ROW_TYPES for c in columns(t) if c.sql_type.endswith("[]"))


def column_values(rows: Sequence[Row], name: str) -> list[Any]:
    """One column of `rows` as the database takes it: statuses as their values, tuples as lists."""
    values = [getattr(row, name) for row in rows]
    if name == "status":
        return [status.value for status in values]
    if name == "image_pairs":
        return [[list(pair) for pair in pairs] for pairs in values]
    if name in LIST_COLUMNS:
        return [list(items) for items in values]
    return values


def row_reader(row_type: type[Row], names: Sequence[str]) -> Callable[[Sequence[Any]], Any]:
    """Turns a database record (the values of the columns `names`, in order) into a row: the reverse of
    `column_values`, with a NULL list or error read as empty."""
    statuses = Status._value2member_map_

    def reader(name: str) -> Callable[[Any], Any]:
        if name == "status":
            return statuses.__getitem__
        if name == "image_pairs":
            return lambda pairs: tuple(map(tuple, pairs or ()))
        if name in LIST_COLUMNS:
            return lambda items: tuple(items or ())
        if name == "error":
            return lambda error: error or ""
        return lambda value: value

    readers = [reader(name) for name in names]
    return lambda record: row_type(**{name: read(value) for name, read, value in zip(names, readers, record)})
