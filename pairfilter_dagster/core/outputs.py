"""The filtered dataset as Data-Juicer JSONL: original fields unchanged, plus `__dj__stats__`."""

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

DJ_STATS_FIELD = "__dj__stats__"
SIMILARITY_STAT = "image_pair_similarity"


def dj_record(sample_json: str, scores: Sequence[float]) -> str:
    """The sample's JSON line with Data-Juicer's stats field added (kept fields and their order untouched)."""
    record = json.loads(sample_json)
    stats = record.get(DJ_STATS_FIELD)
    record[DJ_STATS_FIELD] = {**(stats if isinstance(stats, dict) else {}), SIMILARITY_STAT: list(scores)}
    return json.dumps(record, ensure_ascii=False)


def write_lines_atomically(path: Path, lines: Iterable[str]) -> int:
    """Write lines to a temp file beside `path`, fsync, then rename over it: readers never see half a file,
    and a failure leaves the previous file intact. Returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line)
                handle.write("\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count
