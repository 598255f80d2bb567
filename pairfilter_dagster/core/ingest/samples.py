"""Reading Data-Juicer manifests into samples.

Every line of every manifest becomes exactly one `Sample`, good or bad: a line that cannot be used is kept with a
non-ok status and a reason, so counts always reconcile with the input.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from ..images import is_within
from ..locations import AnyPath, as_path, is_remote, is_remote_path, join_url, normalize_url, scheme_of, url_within
from ..schema import DJ_STATS_FIELD, Sample, SampleKey, Status
from .manifests import GZIP_ERRORS, open_lines
from .pairing import DEFAULT_PAIRING, check_pairing, image_pairs, pair_count, pairing_problem

DEFAULT_MAX_LINE_BYTES = 16 * 2**20
"""A manifest line longer than this is not read into memory (a line that never ends would take it all)."""
DEFAULT_MAX_PAIRS_PER_SAMPLE = 1024
"""`all_pairs` over N images makes N(N-1)/2 pairs: 46 images already make 1035."""


@dataclass(frozen=True)
class SampleRules:
    """How manifest lines become samples: which image pairs are scored, where images (and manifests) may live,
    how long a line and how many pairs a sample may be."""

    image_roots: tuple[str, ...]
    """Folders (real paths, symlinks resolved; or URLs) every image must lie in."""
    pairing: str = DEFAULT_PAIRING
    data_root: str = ""
    """The data folder's real path (or URL): manifests may lie in it or in the image roots."""
    max_pairs_per_sample: int = DEFAULT_MAX_PAIRS_PER_SAMPLE
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    image_column: str = "images"
    """The column of Parquet shards that holds each sample's images."""

    @classmethod
    def for_data_dir(
        cls, data_dir: AnyPath, image_roots: Sequence[str] = (), pairing: str = DEFAULT_PAIRING, **limits: Any
    ) -> "SampleRules":
        """Roots are absolute, URLs, or relative to the data folder; none given means the data folder itself. A
        local root that is not an existing folder is refused (most likely a typo), naming the field. For a remote
        data folder, an absolute root is a path on its filesystem."""
        data_dir = as_path(data_dir)
        if is_remote_path(data_dir):
            base = str(data_dir)
            remote_roots = tuple(normalize_url(root) if is_remote(root) else join_url(base, root)
                                 for root in image_roots or [base])
            return cls(remote_roots, check_pairing(pairing), base, **limits)
        data_dir = data_dir.expanduser()
        roots = []
        for root in image_roots or [str(data_dir)]:
            if is_remote(root):
                roots.append(normalize_url(root))
                continue
            folder = data_dir / Path(root).expanduser()  # an absolute root replaces data_dir
            if not folder.is_dir():
                raise ValueError(f"image_roots: {root!r} is not an existing folder (resolved to {folder})")
            roots.append(os.path.realpath(folder))
        return cls(tuple(roots), check_pairing(pairing), os.path.realpath(data_dir), **limits)

    @property
    def manifest_roots(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(root for root in (self.data_root, *self.image_roots) if root))


def read_manifest(path: AnyPath, manifest: str, rules: SampleRules) -> Iterator[Sample]:
    """The samples of a `.jsonl` (or `.jsonl.gz`) manifest, one per line."""
    line_number = 0
    with open_lines(path) as handle:
        lines = bounded_lines(handle, rules.max_line_bytes)
        while True:
            try:
                raw_line, whole = next(lines)
            except StopIteration:
                return
            except GZIP_ERRORS as exc:
                yield Sample(sample_id=f"{manifest}:{line_number + 1}", manifest=manifest, line_number=line_number + 1,
                             status=Status.MALFORMED_LINE, sample_json="",
                             error=f"the gzip stream is damaged after line {line_number}: {exc}")
                return
            line_number += 1
            if whole:
                yield parse_line(raw_line, manifest=manifest, line_number=line_number, base_dir=path.parent,
                                 rules=rules)
            else:
                yield Sample(sample_id=f"{manifest}:{line_number}", manifest=manifest, line_number=line_number,
                             status=Status.MALFORMED_LINE, sample_json=raw_line.decode("utf-8", errors="replace"),
                             error=f"line longer than max_line_bytes={rules.max_line_bytes}: not read (its first "
                             f"{LONG_LINE_PREVIEW} bytes are kept as sample_json)")


LONG_LINE_PREVIEW = 200


def bounded_lines(handle: BinaryIO, max_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """(line, True) for each line of at most `max_bytes` (newline not counted); (its first bytes, False) for a
    longer one, whose rest is skipped without holding it in memory."""
    while line := handle.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line, True
            continue
        preview = line[:LONG_LINE_PREVIEW]
        while line and not line.endswith(b"\n"):
            line = handle.readline(1 << 20)
        yield preview, False


def parse_line(raw_line: bytes, *, manifest: str, line_number: int, base_dir: AnyPath, rules: SampleRules) -> Sample:
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

    stats = record.get(DJ_STATS_FIELD, {})
    if not isinstance(stats, dict):
        return rejected(Status.MALFORMED_LINE, f"`{DJ_STATS_FIELD}` must be a JSON object (Data-Juicer's stats), "
                        f"got {type(stats).__name__}: its stats cannot be merged", text)
    problem = images_problem(record.get("images"), "images" in record)
    if problem:
        return rejected(Status.INVALID_IMAGES, problem, text)
    return sample_from_images(SampleKey(sample_id=sample_id, manifest=manifest, line_number=line_number), record["images"],
                              text, base_dir, rules)


@dataclass(frozen=True)
class InlineImage:
    """An image held inside a shard (a tar member, a Parquet cell): its reference and content hash."""

    ref: str
    content_hash: str


ImageItem = str | InlineImage
"""A path as written in the sample (relative to the shard's folder, or absolute), or an image held in the shard."""


def sample_from_images(key: SampleKey, images: Sequence[ImageItem], text: str, base_dir: AnyPath,
                       rules: SampleRules) -> Sample:
    """A sample of any shard format from its images: ok (with its image pairs) or rejected with the first problem
    found. Two images are the same when their resolved paths are, or (held in the shard) their contents."""

    def rejected(status: Status, error: str, refs: tuple[str, ...] = ()) -> Sample:
        return Sample(sample_id=key.sample_id, manifest=key.manifest, line_number=key.line_number, images=refs,
                      status=status, error=error, sample_json=text)

    pairs_wanted = pair_count(len(images), rules.pairing)
    if pairs_wanted > rules.max_pairs_per_sample:
        return rejected(Status.TOO_MANY_PAIRS, f"{len(images)} images make {pairs_wanted} pairs under pairing "
                        f"{rules.pairing}, more than max_pairs_per_sample={rules.max_pairs_per_sample}")
    refs = tuple(image.ref if isinstance(image, InlineImage) else resolve_image_path(image, base_dir)
                 for image in images)
    identities = [image.content_hash if isinstance(image, InlineImage) else ref for image, ref in zip(images, refs)]
    pairing = pairing_problem(len(images), rules.pairing)
    if pairing:
        return rejected(Status.NOT_A_PAIR, pairing, refs)
    if len(set(identities)) < len(identities):
        twice = next(images[i] for i, same in enumerate(identities) if identities.index(same) != i)
        what = f"the same image content appears twice ({twice.ref})" if isinstance(twice, InlineImage) \
            else f"the same file appears twice: {twice!r}"
        return rejected(Status.NOT_A_PAIR, what, refs)
    paths = [(image, ref) for image, ref in zip(images, refs) if isinstance(image, str)]
    schemes = {scheme_of(root) for root in rules.image_roots if is_remote(root)}
    urls = [image for image, ref in paths if is_url(ref) and scheme_of(ref) not in schemes]
    if urls:
        return rejected(Status.URL_NOT_ALLOWED, f"images must be files on the data's filesystem or in an image root; "
                        f"URLs of other schemes are never fetched: {urls[0]!r}", refs)
    outside = [(image, path) for image, path in paths if not path_allowed(path, rules.image_roots)]
    if outside:
        image, path = outside[0]
        where = path if is_remote(path) else os.path.realpath(path)
        return rejected(Status.PATH_NOT_ALLOWED, f"image path {image!r} resolves to {where}, "
                                                 f"outside the allowed image roots {list(rules.image_roots)}", refs)
    return Sample(sample_id=key.sample_id, manifest=key.manifest, line_number=key.line_number, images=refs,
                  sample_json=text, image_pairs=tuple(image_pairs(len(images), rules.pairing)))


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


def resolve_image_path(image: str, base_dir: AnyPath) -> str:
    """Relative paths resolve against the manifest's folder (a URL against a remote one); absolute paths stay on
    the manifest's filesystem, URLs as they are (normalised)."""
    if is_url(image):
        return normalize_url(image) if is_remote(image) else image
    if is_remote_path(base_dir):
        return join_url(str(base_dir), image)
    return os.path.normpath(os.path.join(base_dir, image))


def path_allowed(path: str, roots: tuple[str, ...]) -> bool:
    return url_within(path, roots) if is_remote(path) else is_within(os.path.realpath(path), roots)
