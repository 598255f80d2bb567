"""The filtered dataset as Data-Juicer JSONL: original fields unchanged, plus `__dj__stats__`."""

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

DJ_STATS_FIELD = "__dj__stats__"
SIMILARITY_STAT = "image_pair_similarity"


def dj_record(sample_json: str, scores: Sequence[float]) -> str:
    """The sample's JSON line with Data-Juicer's stats field added (kept fields and their order untouched)."""
    record = json.loads(sample_json)
    stats = record.get(DJ_STATS_FIELD)
    record[DJ_STATS_FIELD] = {**(stats if isinstance(stats, dict) else {}), SIMILARITY_STAT: list(scores)}
    return json.dumps(record, ensure_ascii=False)


@dataclass
class StagedFile:
    """Lines written and fsynced to a temp file beside `path`, not yet visible under `path`."""

    path: Path
    temp_path: Path
    lines_written: int

    def publish(self) -> None:
        """Rename the temp file over `path`: readers see the old file or the new one, never half of either."""
        os.replace(self.temp_path, self.path)


@contextmanager
def staged_lines(path: Path, lines: Iterable[str]) -> Iterator[StagedFile]:
    """Stage `lines` for `path`; publish inside the block. If the block fails or does not publish, the temp file
    is removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        count = 0
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line)
                handle.write("\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        yield StagedFile(path, Path(tmp_name), count)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def write_lines_atomically(path: Path, lines: Iterable[str]) -> int:
    """Write lines to a temp file beside `path`, fsync, then rename over it: readers never see half a file,
    and a failure leaves the previous file intact. Returns the number of lines written."""
    with staged_lines(path, lines) as staged:
        staged.publish()
    return staged.lines_written
