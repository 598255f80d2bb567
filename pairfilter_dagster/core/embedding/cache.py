"""The embedding cache: unit-length embeddings by (model key, image content hash), kept in files beside the results
(`cache_files.EmbeddingFiles`) or for one run only (`MemoryCache`).

Re-scoring unchanged data runs no forward pass, new data only embeds new pictures, and a different model (other
weights, dtype or preprocessing) never sees another model's embeddings."""

from typing import Iterable, Mapping, Protocol

import numpy as np


class Cache(Protocol):
    def get_many(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]: ...
    def put_many(self, embeddings: Mapping[str, np.ndarray]) -> None: ...


class MemoryCache:
    """Deduplication within one run, nothing kept after it."""

    def __init__(self) -> None:
        self.embeddings: dict[str, np.ndarray] = {}

    def get_many(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        return {h: self.embeddings[h] for h in content_hashes if h in self.embeddings}

    def put_many(self, embeddings: Mapping[str, np.ndarray]) -> None:
        self.embeddings.update(embeddings)
