"""The filtered dataset as Data-Juicer JSONL: original fields unchanged, plus `__dj__stats__`."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

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


class StagedFile:
    """Lines written to a temp file beside `path`, invisible under `path` until `publish()`."""

    def __init__(self, path: Path, temp_path: Path) -> None:
        self.path = path
        self.temp_path = temp_path
        self.lines_written = 0
        self._handle = open(temp_path, "w", encoding="utf-8", newline="\n")

    def write_line(self, line: str) -> None:
        self._handle.write(line + "\n")
        self.lines_written += 1

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
def staged_file(path: Path) -> Iterator[StagedFile]:
    """A `StagedFile` for `path`; publish inside the block. If the block fails or does not publish, the temp file
    is removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    staged = StagedFile(path, Path(tmp_name))
    try:
        yield staged
    finally:
        staged.discard()
