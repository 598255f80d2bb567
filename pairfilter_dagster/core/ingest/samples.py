"""Reading Data-Juicer manifests into samples.

Every line of every manifest becomes exactly one `Sample`, good or bad: a line that cannot be used is kept with a
non-ok status and a reason, so counts always reconcile with the input.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..schema import Sample, Status
from .manifests import manifests_by_shard
from .pairing import DEFAULT_PAIRING, check_pairing, image_pairs, pairing_problem


@dataclass(frozen=True)
class SampleRules:
    """How manifest lines become samples: which image pairs are scored, and where images may live."""

    image_roots: tuple[str, ...]
    """Folders (real paths, symlinks resolved) every image must lie in."""
    pairing: str = DEFAULT_PAIRING

    @classmethod
    def for_data_dir(
        cls, data_dir: Path, image_roots: Sequence[str] = (), pairing: str = DEFAULT_PAIRING
    ) -> "SampleRules":
        """Roots are absolute or relative to the data folder; none given means the data folder itself. A root
        that is not an existing folder is refused (most likely a typo), naming the field."""
        data_dir = Path(data_dir).expanduser()
        roots = []
        for root in image_roots or [str(data_dir)]:
            folder = data_dir / Path(root).expanduser()  # an absolute root replaces data_dir
            if not folder.is_dir():
                raise ValueError(f"image_roots: {root!r} is not an existing folder (resolved to {folder})")
            roots.append(os.path.realpath(folder))
        return cls(tuple(roots), check_pairing(pairing))


def read_samples(
    raw_dir: Path, rules: SampleRules | None = None, shards: Sequence[str] | None = None
) -> Iterator[Sample]:
    """All samples of the manifests under `raw_dir` (of the named `shards` only, if given; a shard whose file is
    gone has no samples), in input order. Default rules: `exactly_two` pairing, images confined to the data
    folder (the folder holding `raw_dir`)."""
    raw_dir = Path(raw_dir)
    rules = rules or SampleRules.for_data_dir(raw_dir.parent)
    for name, manifest_path in manifests_by_shard(raw_dir).items():
        if shards is None or name in shards:
            yield from read_manifest(manifest_path, name, rules)


def read_manifest(path: Path, manifest: str, rules: SampleRules) -> Iterator[Sample]:
    with open(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            yield parse_line(raw_line, manifest=manifest, line_number=line_number, base_dir=path.parent, rules=rules)


def parse_line(raw_line: bytes, *, manifest: str, line_number: int, base_dir: Path, rules: SampleRules) -> Sample:
    """One manifest line as a sample: ok (with its image pairs) or rejected with the first problem found."""
    sample_id = f"{manifest}:{line_number}"

    def rejected(status: Status, error: str, text: str, images: tuple[str, ...] = ()) -> Sample:
        return Sample(sample_id=sample_id, manifest=manifest, line_number=line_number, images=images,
                      status=status, error=error, sample_json=text)

    try:
        text = raw_line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return rejected(Status.MALFORMED_LINE, f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                        raw_line.decode("utf-8", errors="replace").rstrip("\r\n"))
    if line_number == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark, as Windows tools write
    record, problem = parse_json_object(text)
    if problem:
        return rejected(Status.MALFORMED_LINE, problem, text)

    problem = images_problem(record.get("images"), "images" in record)
    if problem:
        return rejected(Status.INVALID_IMAGES, problem, text)
    images: list[str] = record["images"]
    resolved = tuple(image if is_url(image) else resolve_image_path(image, base_dir) for image in images)

    pairing = pairing_problem(len(images), rules.pairing)
    if pairing:
        return rejected(Status.NOT_A_PAIR, pairing, text, resolved)
    if len(set(resolved)) < len(resolved):
        twice = next(images[i] for i, path in enumerate(resolved) if resolved.index(path) != i)
        return rejected(Status.NOT_A_PAIR, f"the same file appears twice: {twice!r}", text, resolved)
    urls = [image for image in images if is_url(image)]
    if urls:
        return rejected(Status.URL_NOT_ALLOWED, f"images must be local files; URLs are never fetched: {urls[0]!r}",
                        text, resolved)
    outside = [(image, path) for image, path in zip(images, resolved) if not is_within(path, rules.image_roots)]
    if outside:
        image, path = outside[0]
        return rejected(Status.PATH_NOT_ALLOWED, f"image path {image!r} resolves to {os.path.realpath(path)}, "
                                                 f"outside the allowed image roots {list(rules.image_roots)}",
                        text, resolved)
    pairs = tuple(image_pairs(len(images), rules.pairing))
    return Sample(sample_id=sample_id, manifest=manifest, line_number=line_number, images=resolved,
                  sample_json=text, image_pairs=pairs)


def parse_json_object(text: str) -> tuple[dict, str]:
    """The line's JSON object, or why there is none."""
    if not text.strip():
        return {}, "empty line"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"not valid JSON: {exc.msg} (column {exc.colno})"
    except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, or nesting thousands deep
        return {}, f"not valid JSON: {type(exc).__name__}: {str(exc)[:200]}"
    if not isinstance(record, dict):
        return {}, f"a sample must be a JSON object, got {type(record).__name__}"
    if "\\u" in text:
        try:  # an escaped lone surrogate (\ud800) parses, but cannot be written back as UTF-8
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return {}, "the line holds an unpaired UTF-16 surrogate escape (e.g. \\ud800): not valid Unicode"
    return record, ""


def images_problem(images: object, present: bool) -> str:
    if not present:
        return "no `images` field"
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        return "`images` must be a list of path strings"
    if any(not image.strip() for image in images):
        return "`images` holds an empty path"
    if any("\0" in image for image in images):
        return "`images` holds a path with a NUL character"
    return ""


URL_PATTERN = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]+://|data:)")


def is_url(image: str) -> bool:
    """http://, https://, s3://, file://, ... and data: URIs (a one-letter scheme would be a Windows drive)."""
    return bool(URL_PATTERN.match(image))


def resolve_image_path(image: str, base_dir: Path) -> str:
    """Relative paths resolve against the manifest's folder; absolute paths stay as they are (normalised)."""
    return os.path.normpath(os.path.join(base_dir, image))


def is_within(path: str, roots: Sequence[str]) -> bool:
    """Whether the file `path` names (symlinks followed, `..` resolved) lies inside one of the real-path roots."""
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, root]) == root for root in roots)
