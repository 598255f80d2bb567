"""What changed among the shards under raw/ since last time: the state the new-data sensor keeps.

A local manifest's fingerprint is the SHA-256 of its bytes, so touching a file without changing it is no change,
and a rewrite that keeps size and timestamp still is one. A remote shard's is what its listing says (ETag, or size
and modification time): reading every object at every sensor tick would cost more than the run."""

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..locations import is_remote_path
from .manifests import ShardListing, open_manifest


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


def fingerprint_manifests(listing: ShardListing, previous: dict[str, str] | None = None) -> dict[str, str]:
    """{shard: SHA-256 of its bytes} for every listed shard. A shard that cannot be read is fingerprinted by its
    problem, so that fixing it is a change; one that may still exist under a folder that could not be read keeps
    its `previous` fingerprint, so it is not taken for removed."""
    fingerprints = {name: f"problem: {f.problem}" if f.problem else f.fingerprint or file_digest(f.path)  # type: ignore[arg-type]
                    for name, f in listing.files.items()}
    fingerprints.update({name: fp for name, fp in (previous or {}).items()
                         if name not in fingerprints and listing.may_hold(name)})
    return fingerprints


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        for block in blocks(path):
            digest.update(block)
    except OSError as exc:  # gone or changed since it was listed
        return f"problem: {exc.strerror or exc}"
    return digest.hexdigest()


def compare(previous: dict[str, str], current: dict[str, str]) -> ManifestChanges:
    return ManifestChanges(
        added=sorted(set(current) - set(previous)),
        changed=sorted(name for name in set(current) & set(previous) if current[name] != previous[name]),
        removed=sorted(set(previous) - set(current)),
    )


def still_being_written(listing: ShardListing, settle_seconds: float) -> list[str]:
    """Manifests modified within the last `settle_seconds`: a copy may still be in progress (an object in a store
    appears whole)."""
    now = time.time()
    busy = []
    for name, path in listing.readable.items():
        if is_remote_path(path):
            continue
        try:
            if now - path.stat().st_mtime < settle_seconds:
                busy.append(name)
        except OSError:
            continue
    return busy


def blocks(path: Path) -> Iterator[bytes]:
    with open_manifest(path) as handle:
        yield from iter(lambda: handle.read(1 << 20), b"")
