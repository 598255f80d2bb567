"""Where data lives: a local folder, or a folder of any fsspec filesystem named by URL (`s3://bucket/prefix`,
`gs://...`, `hf://datasets/org/name`, `memory://...`; `file://` is a local path).

A local location is a `pathlib.Path` and keeps every check of the local disk (real paths, regular files, opening
without blocking). A remote one is a `upath.UPath` carrying its `storage_options`; images inside it are named by
URL strings, confined by prefix (object stores have no symlinks to follow). Credentials come from where each
filesystem's library finds them (environment, profiles) or from `storage_options`, never from the data."""

import hashlib
import io
import os
import posixpath
import re
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Union

from typing_extensions import TypeIs
from upath import UPath

AnyPath = Union[Path, UPath]
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
LOCAL_SCHEMES = ("file", "local")
HOME_ENV_VAR = "PAIRFILTER_HOME"
READ_ONLY_SCHEMES = ("hf", "http", "https")
"""Where the default output location (beside the data) cannot be written: outputs go to the state folder."""
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
"""The project's extra that installs each scheme's library (hf:// comes with huggingface_hub, a dependency)."""


class LocationError(ValueError):
    """A location that cannot be used (unknown scheme, a library missing, nothing listable): names the fix."""


def scheme_of(location: str) -> str:
    found = SCHEME.match(location)
    return found[1].lower() if found else ""


def is_remote(location: object) -> bool:
    """A URL (or `UPath`) of a filesystem other than the local disk."""
    text = str(location) if isinstance(location, (str, UPath)) else ""
    return bool(scheme_of(text)) and scheme_of(text) not in LOCAL_SCHEMES


def is_remote_path(path: AnyPath) -> TypeIs[UPath]:
    """A remote location: a `UPath` that is not a local `Path` (text is turned into either by `as_path`)."""
    return isinstance(path, UPath) and not isinstance(path, Path)


def as_path(location: "AnyPath | str") -> AnyPath:
    """A path given as text or as a path: a `UPath` for a URL, else a `Path`."""
    if isinstance(location, (Path, UPath)):
        return location
    return UPath(location) if is_remote(location) else Path(location)


def as_location(text: str, storage_options: Mapping[str, Any] | None = None, *, setting: str = "data_dir") -> AnyPath:
    """The folder `text` names: a resolved local `Path`, or a `UPath` whose filesystem is known to fsspec and
    importable (else `LocationError` naming `setting` and the install command)."""
    if not is_remote(text):
        local = text.split("://", 1)[1] if scheme_of(text) else text
        return Path(local).expanduser().resolve()
    filesystem_for(text, storage_options or {}, setting=setting)
    return UPath(text.rstrip("/"), **dict(storage_options or {}))


def filesystem_for(url: str, storage_options: Mapping[str, Any], *, setting: str = "data_dir") -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of a URL; fsspec keeps one filesystem per scheme and options."""
    import fsspec

    scheme = scheme_of(url)
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:
        extra = EXTRAS.get(scheme)
        fix = f"pip install -e '.[{extra}]'" if extra else f"install the fsspec implementation of {scheme}://"
        raise LocationError(f"{setting}: {url!r} needs a library that is not installed ({exc}): {fix}") from None
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise
        raise LocationError(f"{setting}: {url!r}: unknown scheme {scheme}:// (fsspec knows none of that name); use a "
                            "local folder or an s3://, gs://, hf://, memory:// URL") from None


def stored_in(image: str) -> str:
    """The file an image is read from: its path, or the shard of a `tar:` / `parquet:` reference."""
    return image.split("#", 1)[0].removeprefix("tar:").removeprefix("parquet:")


def read_remotely(image: str) -> bool:
    """Whether reading the image (a path, or a reference into a shard) goes to a remote store."""
    return is_remote(stored_in(image))


def join_url(base: str, relative: str) -> str:
    """`relative` (a POSIX path; one starting with / is absolute on the same filesystem) against the URL folder
    `base`, `..` resolved; a result above the bucket keeps its `..`, which no root contains."""
    scheme, rest = base.split("://", 1)
    return normalize_url(f"{scheme}://{relative.lstrip('/') if relative.startswith('/') else posixpath.join(rest, relative)}")


def normalize_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}://{posixpath.normpath(rest)}"


def url_within(url: str, roots: tuple[str, ...]) -> bool:
    """Whether a normalised URL lies under one of the root URLs, on the same filesystem."""
    scheme, _, path = url.partition("://")
    for root in roots:
        root_scheme, _, root_path = root.partition("://")
        if root_scheme == scheme and root_path and not path.startswith("../") and \
                (path == root_path or path.startswith(root_path.rstrip("/") + "/")):
            return True
    return False


def relative_url(target: str, start: str) -> str | None:
    """`target` relative to the folder `start` when both are on the same filesystem and bucket, else None."""
    target_scheme, _, target_path = target.partition("://")
    start_scheme, _, start_path = start.partition("://")
    if target_scheme != start_scheme or target_path.split("/", 1)[0] != start_path.split("/", 1)[0]:
        return None
    return posixpath.relpath(target_path, start_path)


def open_remote(path: UPath) -> BinaryIO:
    """Buffered by `io` (fsspec's files lack `readline(size)`, which bounded line reading needs)."""
    return io.BufferedReader(path.open("rb"), buffer_size=1 << 20)  # type: ignore[arg-type,type-var]


def remote_fingerprint(info: Mapping[str, Any]) -> str:
    """An object's identity from its listing: the ETag (S3, GCS's md5/generation, the Hub's blob id) where the
    store gives one, else size and modification time."""
    for key in ("ETag", "etag", "md5Hash", "generation", "blob_id", "sha256"):
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))} size:{info.get('size')}"
    modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or info.get("created")
    return f"size:{info.get('size')} modified:{modified}"


def state_name(url: str) -> str:
    """A folder name for a remote location's local state: readable, and unique by a hash of the URL."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", url.replace("://", "-")).strip("-")[:80]
    return f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def default_state_folder(url: str) -> Path:
    """The local folder of a remote location's state: `$PAIRFILTER_HOME/<name>`, else `~/.cache/pairfilter/<name>`."""
    home = os.environ.get(HOME_ENV_VAR)
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "pairfilter"
    return (base / state_name(url)).resolve()


def check_listable(root: UPath, setting_value: str, fix: str) -> None:
    """A remote data folder that can be listed and holds something (its raw/ is listed again for each run);
    `LocationError` naming `data_dir` otherwise."""
    try:
        found = root.fs.ls(root.path, detail=False)
    except FileNotFoundError:
        found = []
    except Exception as exc:  # the stores' own errors: no such bucket, no credentials, denied
        raise LocationError(f"data_dir: cannot list {setting_value!r}: {type(exc).__name__}: {exc}; check the bucket "
                            "name, the credentials (AWS_* variables, profiles, gcloud auth) and storage.storage_options"
                            ) from None
    if not found:
        raise LocationError(f"data_dir: {setting_value!r} does not exist or is empty (no raw/ in it); {fix} to a "
                            "location holding raw/")
