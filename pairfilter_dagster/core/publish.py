"""Publishing outputs: the Data-Juicer line of a kept sample (original fields unchanged, plus `__dj__stats__`), and
files that appear whole or not at all."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from .schema import FilteredRow, StatsRow

DJ_STATS_FIELD = "__dj__stats__"
SIMILARITY_STAT = "image_pair_similarity"


def dj_record(sample_json: str, scores: Sequence[float]) -> str:
    """The sample's JSON line with Data-Juicer's stats field added, every original field untouched.

    The field is spliced in before the closing brace, so the original text is kept byte for byte (and a JSON
    round trip per kept sample is saved); a line that already mentions `__dj__stats__` is merged through JSON."""
    # json.dumps writes floats with repr(); kept scores are finite, so this is the same text, made faster.
    similarity = f'{{"{SIMILARITY_STAT}": [{", ".join(repr(float(score)) for score in scores)}]}}'
    body = sample_json.rstrip()
    if DJ_STATS_FIELD not in sample_json and body.endswith("}"):
        head = body[:-1].rstrip()
        separator = "" if head.endswith("{") else ", "
        return f'{head}{separator}"{DJ_STATS_FIELD}": {similarity}}}'
    record = json.loads(sample_json)
    stats = record.get(DJ_STATS_FIELD)
    record[DJ_STATS_FIELD] = {**(stats if isinstance(stats, dict) else {}), **json.loads(similarity)}
    return json.dumps(record, ensure_ascii=False)


def filtered_row(row: StatsRow) -> FilteredRow:
    """A kept sample as the filtered dataset holds it."""
    return FilteredRow(
        sample_id=row.sample_id, manifest=row.manifest, line_number=row.line_number,
        image_pair_similarity=row.image_pair_similarity,
        sample_json=dj_record(row.sample_json, row.image_pair_similarity),
    )


class StagedFile:
    """Content written to a temp file beside `path`, invisible under `path` until `publish()`."""

    def __init__(self, path: Path, temp_path: Path, binary: bool = False) -> None:
        self.path = path
        self.temp_path = temp_path
        self.lines_written = 0
        self._handle: IO[Any] = (
            open(temp_path, "wb") if binary else open(temp_path, "w", encoding="utf-8", newline="\n")
        )

    @property
    def handle(self) -> IO[Any]:
        return self._handle

    def write_line(self, line: str) -> None:
        self._handle.write(line + "\n")
        self.lines_written += 1

    def write_lines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write_line(line)

    def publish(self) -> None:
        """fsync, then rename the temp file over `path`: readers see the old file or the new one, never half."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.temp_path, self.path)

    def discard(self) -> None:
        self._handle.close()
        self.temp_path.unlink(missing_ok=True)


@contextmanager
def staged_file(path: Path, *, binary: bool = False) -> Iterator[StagedFile]:
    """A `StagedFile` for `path`; publish inside the block. If the block fails or does not publish, the temp file
    is removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    staged = StagedFile(path, Path(tmp_name), binary)
    try:
        yield staged
    finally:
        staged.discard()


def write_atomically(path: Path, data: bytes) -> None:
    with staged_file(path, binary=True) as staged:
        staged.handle.write(data)
        staged.publish()
