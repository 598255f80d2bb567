"""The manifests under <data>/raw/: each is a shard, named by its path relative to raw/; and what changed among
them since last time (the state the new-data sensor keeps).

A manifest's fingerprint is the SHA-256 of its bytes, so touching a file without changing it is no change, and a
rewrite that keeps size and timestamp still is one."""

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST_GLOB = "*.jsonl"


def find_manifests(raw_dir: Path) -> list[Path]:
    """Every `*.jsonl` under `raw_dir` (subfolders included), sorted by path relative to `raw_dir`."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return []
    return sorted(raw_dir.rglob(MANIFEST_GLOB), key=lambda p: p.relative_to(raw_dir).as_posix())


def manifest_name(raw_dir: Path, path: Path) -> str:
    """A manifest's path relative to raw/, in POSIX form: its shard name, partition key and `manifest` column."""
    return Path(path).relative_to(raw_dir).as_posix()


def manifest_names(raw_dir: Path) -> list[str]:
    """The shard names of every manifest under `raw_dir`, sorted."""
    return [manifest_name(raw_dir, path) for path in find_manifests(raw_dir)]


def count_lines(path: Path) -> int:
    """Lines in a file, counted from its bytes (a last line without a newline counts), independently of
    parsing: the reconciliation check compares it with the number of samples."""
    data = Path(path).read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def manifests_by_shard(raw_dir: Path) -> dict[str, Path]:
    """{shard name: manifest path} of every manifest under `raw_dir`: a shard name (a partition key) is never
    turned into a path, so a key such as `../x.jsonl` reads nothing."""
    return {manifest_name(raw_dir, path): path for path in find_manifests(raw_dir)}


@dataclass(frozen=True)
class ManifestChanges:
    added: list[str]
    changed: list[str]
    removed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        parts = [f"{label}: {', '.join(names)}" for label, names in
                 (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if names]
        return "; ".join(parts) or "no change"


def fingerprint_manifests(raw_dir: Path) -> dict[str, str]:
    """{manifest path relative to raw/: SHA-256 of its bytes}, for every manifest the pipeline would read."""
    fingerprints = {}
    for name, path in manifests_by_shard(raw_dir).items():
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        fingerprints[name] = digest.hexdigest()
    return fingerprints


def compare(previous: dict[str, str], current: dict[str, str]) -> ManifestChanges:
    return ManifestChanges(
        added=sorted(set(current) - set(previous)),
        changed=sorted(name for name in set(current) & set(previous) if current[name] != previous[name]),
        removed=sorted(set(previous) - set(current)),
    )


def still_being_written(raw_dir: Path, settle_seconds: float) -> list[str]:
    """Manifests modified within the last `settle_seconds`: a copy may still be in progress."""
    now = time.time()
    return [name for name, path in manifests_by_shard(raw_dir).items() if now - path.stat().st_mtime < settle_seconds]
