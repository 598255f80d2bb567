"""What every embedding engine does: turn (content hash, image path) items into embeddings or reasons."""

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np

from ..images import ImageAccess, ImageDecodeError, ImageRefused, read_verified
from .preprocess import ImagePreparation


@dataclass
class EmbeddedBatch:
    """What an engine hands back for some of the images it was given: their unit-length float32 embeddings, the
    reasons the others could not be decoded or preprocessed, and the forward passes that took."""

    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    forward_passes: int = 0


class EmbeddingEngine(Protocol):
    chunk_samples: int
    """Samples per scoring chunk that suit this engine (each chunk is one call of `embed`)."""

    def embed(self, todo: list[tuple[str, str]], access: ImageAccess) -> Iterator[EmbeddedBatch]:
        """Embed (content hash, path) items, each exactly once (as an embedding or an error), in batches; files
        are read under `access` and must still hold the hashed content."""
        ...

    def __enter__(self) -> "EmbeddingEngine": ...

    def __exit__(self, *exc: Any) -> None: ...


def prepare_pixels(preparation: ImagePreparation, path: str, content_hash: str, access: ImageAccess) -> np.ndarray | str:
    """One image file's pixel values, decoded from the bytes that were hashed, or why it cannot be used: every
    engine gives the same reason."""
    try:
        return preparation.pixels(preparation.decode(path, read_verified(path, content_hash, access)))
    except ImageRefused as exc:
        return exc.reason
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # the processor can refuse odd images (e.g. 1x1 pixels)
        return f"cannot preprocess {path}: {type(exc).__name__}: {exc}"
