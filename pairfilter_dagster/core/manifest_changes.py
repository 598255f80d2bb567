"""What changed among the manifests under <data>/raw/ since last time: the state the new-data sensor keeps.

A manifest's fingerprint is the SHA-256 of its bytes, so touching a file without changing it is no change, and a
rewrite that keeps size and timestamp still is one."""

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from .samples import find_manifests, manifest_name


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
    raw_dir = Path(raw_dir)
    fingerprints = {}
    for path in find_manifests(raw_dir):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        fingerprints[manifest_name(raw_dir, path)] = digest.hexdigest()
    return fingerprints


def compare(previous: dict[str, str], current: dict[str, str]) -> ManifestChanges:
    return ManifestChanges(
        added=sorted(set(current) - set(previous)),
        changed=sorted(name for name in set(current) & set(previous) if current[name] != previous[name]),
        removed=sorted(set(previous) - set(current)),
    )


def still_being_written(raw_dir: Path, settle_seconds: float) -> list[str]:
    """Manifests modified within the last `settle_seconds`: a copy may still be in progress."""
    raw_dir = Path(raw_dir)
    now = time.time()
    return [
        manifest_name(raw_dir, path)
        for path in find_manifests(raw_dir)
        if now - path.stat().st_mtime < settle_seconds
    ]
