"""WebDataset tar shards: one sample per key (a member's name up to the first dot of its file name). Its images are
the key's members with an image extension, in member-name order (`k.0.jpg, k.1.jpg` or `k.input.jpg,
k.output.jpg` both give a pair); its fields come from `k.json` (an object), and `k.txt` becomes `text` when the
json has none. Sample id `<shard>:<key>`; its line number is the key's place in the tar."""

import hashlib
import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from ..image_refs import tar_member_ref
from ..images import DEFAULT_MAX_IMAGE_BYTES
from ..locations import AnyPath
from ..schema import Sample, SampleKey, Status
from .manifests import open_manifest
from .parquet_shards import ShardError
from .samples import ImageItem, InlineImage, SampleRules, parse_json_object, sample_from_images

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")


def sample_key(member_name: str) -> tuple[str, str]:
    """(key, extension): `a/b/000123.0.jpg` -> (`a/b/000123`, `0.jpg`)."""
    folder, name = posixpath.split(member_name)
    stem, _, extension = name.partition(".")
    return posixpath.join(folder, stem), extension


def intact_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's members up to where it is cut short or damaged (the reader gives the sample there a status)."""
    try:
        yield from archive
    except (tarfile.TarError, EOFError):
        return


@dataclass
class KeyMembers:
    images: dict[str, ImageItem] = field(default_factory=dict)
    json_text: str | None = None
    text: str | None = None
    problem: str = ""


def read_tar_shard(path: AnyPath, shard: str, rules: SampleRules) -> Iterator[Sample]:
    keys: dict[str, KeyMembers] = {}
    with open_manifest(path) as handle:
        try:
            archive = tarfile.open(fileobj=handle, mode="r:")
        except tarfile.TarError as exc:
            raise ShardError(f"raw/{shard}: not a tar file ({exc})") from None
        with archive:
            try:
                for member in archive:
                    collect(archive, member, keys, path, rules)
            except (tarfile.TarError, EOFError, OSError) as exc:  # the archive ends inside a member
                last = next(reversed(keys.values()), None)
                if last is not None:
                    last.problem = f"the tar is truncated or damaged after this sample's members ({exc})"
    for number, (key, members) in enumerate(keys.items(), start=1):
        yield tar_sample(SampleKey(sample_id=f"{shard}:{key}", manifest=shard, line_number=number), members, path, rules)


def collect(archive: tarfile.TarFile, member: tarfile.TarInfo, keys: dict[str, KeyMembers], path: AnyPath,
            rules: SampleRules) -> None:
    if not member.isfile():
        return
    key, extension = sample_key(member.name)
    members = keys.setdefault(key, KeyMembers())
    kind = extension.rsplit(".", 1)[-1].lower()
    if kind in IMAGE_EXTENSIONS or extension.lower() in ("json", "txt"):
        limit = DEFAULT_MAX_IMAGE_BYTES if kind in IMAGE_EXTENSIONS else rules.max_line_bytes
        handle = archive.extractfile(member)
        data = handle.read(limit + 1) if handle and member.size <= limit else b""
        if member.size <= limit and len(data) < member.size:
            raise EOFError(f"member {member.name} is cut short")
        if kind in IMAGE_EXTENSIONS:  # one too large is refused when scored; its hash is only a distinct name
            content_hash = hashlib.sha256(data).hexdigest() if member.size <= limit else f"large:{member.name}"
            members.images[member.name] = InlineImage(tar_member_ref(str(path), member.offset_data, member.size),
                                                      content_hash)
        elif extension.lower() == "json":
            members.json_text = data.decode("utf-8", errors="replace")
        else:
            members.text = data.decode("utf-8", errors="replace")


def tar_sample(key: SampleKey, members: KeyMembers, path: AnyPath, rules: SampleRules) -> Sample:
    record, problem = parse_json_object(members.json_text) if members.json_text is not None else ({}, "")
    if members.text is not None and "text" not in record:
        record["text"] = members.text
    text = json.dumps(record, ensure_ascii=False)

    def rejected(status: Status, error: str) -> Sample:
        return Sample(sample_id=key.sample_id, manifest=key.manifest, line_number=key.line_number, status=status,
                      error=error, sample_json=text)

    if members.problem:
        return rejected(Status.UNREADABLE_IMAGE, members.problem)
    if problem:
        return rejected(Status.MALFORMED_LINE, f"{posixpath.basename(key.sample_id.split(':', 1)[1])}.json: {problem}")
    images = [members.images[name] for name in sorted(members.images)]
    return sample_from_images(key, images, text, path.parent, rules)
