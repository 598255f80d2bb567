"""Reading Data-Juicer manifests into samples.

Every line of every manifest becomes exactly one `Sample`, good or bad: a line that cannot be used is kept with a
non-ok status and a reason, so counts always reconcile with the input.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .status import Status

MANIFEST_GLOB = "*.jsonl"


@dataclass(frozen=True)
class Sample:
    sample_id: str
    """`<manifest path relative to raw/>:<1-based line number>`."""
    manifest: str
    line_number: int
    sample_json: str
    """The line as written in the manifest (without its newline)."""
    images: tuple[str, ...] = ()
    """Image paths, resolved: relative ones against the manifest's folder."""
    status: Status = Status.OK
    error: str = ""

    def as_row(self) -> dict:
        """The sample as a row of the `raw_samples` table."""
        return {
            "sample_id": self.sample_id,
            "manifest": self.manifest,
            "line_number": self.line_number,
            "images": list(self.images),
            "status": self.status.value,
            "error": self.error,
            "sample_json": self.sample_json,
        }

    @classmethod
    def from_row(cls, row: dict) -> "Sample":
        return cls(
            sample_id=row["sample_id"],
            manifest=row["manifest"],
            line_number=row["line_number"],
            sample_json=row["sample_json"],
            images=tuple(row["images"] or ()),
            status=Status(row["status"]),
            error=row["error"] or "",
        )


def find_manifests(raw_dir: Path) -> list[Path]:
    """Every `*.jsonl` under `raw_dir` (subfolders included), sorted by path relative to `raw_dir`."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return []
    return sorted(raw_dir.rglob(MANIFEST_GLOB), key=lambda p: p.relative_to(raw_dir).as_posix())


def read_samples(raw_dir: Path) -> Iterator[Sample]:
    """All samples of all manifests under `raw_dir`, in input order."""
    raw_dir = Path(raw_dir)
    for manifest_path in find_manifests(raw_dir):
        yield from read_manifest(manifest_path, manifest_path.relative_to(raw_dir).as_posix())


def read_manifest(path: Path, manifest: str) -> Iterator[Sample]:
    with open(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            yield parse_line(raw_line, manifest=manifest, line_number=line_number, base_dir=path.parent)


def parse_line(raw_line: bytes, *, manifest: str, line_number: int, base_dir: Path) -> Sample:
    sample_id = f"{manifest}:{line_number}"

    def rejected(status: Status, error: str, text: str, images: tuple[str, ...] = ()) -> Sample:
        return Sample(sample_id, manifest, line_number, text, images, status, error)

    try:
        text = raw_line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return rejected(Status.MALFORMED_LINE, f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                        raw_line.decode("utf-8", errors="replace").rstrip("\r\n"))
    if not text.strip():
        return rejected(Status.MALFORMED_LINE, "empty line", text)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return rejected(Status.MALFORMED_LINE, f"not valid JSON: {exc.msg} (column {exc.colno})", text)
    if not isinstance(record, dict):
        return rejected(Status.MALFORMED_LINE, f"a sample must be a JSON object, got {type(record).__name__}", text)

    images = record.get("images")
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        reason = "no `images` field" if "images" not in record else "`images` must be a list of path strings"
        return rejected(Status.INVALID_IMAGES, reason, text)
    resolved = tuple(resolve_image_path(image, base_dir) for image in images)
    if len(images) != 2:
        return rejected(Status.NOT_A_PAIR, f"a sample must hold exactly two images, found {len(images)}", text, resolved)
    if resolved[0] == resolved[1]:
        return rejected(Status.NOT_A_PAIR, f"both images are the same file: {images[0]!r}", text, resolved)
    return Sample(sample_id, manifest, line_number, text, resolved)


def resolve_image_path(image: str, base_dir: Path) -> str:
    """Relative paths resolve against the manifest's folder; absolute paths stay as they are (normalised)."""
    return os.path.normpath(os.path.join(base_dir, image))
