"""The filtered dataset as Data-Juicer JSONL: original fields unchanged, plus `__dj__stats__`."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

DJ_STATS_FIELD = "__dj__stats__"
SIMILARITY_STAT = "image_pair_similarity"


def dj_record(sample_json: str, scores: Sequence[float]) -> str:
    """The sample's JSON line with Data-Juicer's stats field added (kept fields and their order untouched)."""
    record = json.loads(sample_json)
    stats = record.get(DJ_STATS_FIELD)
    record[DJ_STATS_FIELD] = {**(stats if isinstance(stats, dict) else {}), SIMILARITY_STAT: list(scores)}
    return json.dumps(record, ensure_ascii=False)


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A text file that appears at `path` whole, or not at all: written to a temp file beside it, fsynced, then
    renamed over it when the block ends without error. Readers never see half a file; a failure leaves the
    previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_lines_atomically(path: Path, lines: Iterable[str]) -> int:
    """Write lines (each followed by a newline) with `atomic_writer`; returns the number of lines written."""
    count = 0
    with atomic_writer(path) as handle:
        for line in lines:
            handle.write(line + "\n")
            count += 1
    return count
