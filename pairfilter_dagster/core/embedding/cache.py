"""The embedding cache: unit-length embeddings by (model key, image content hash), kept in the DuckDB store
(`EmbeddingCache`) or for one run only (`MemoryCache`).

Re-scoring unchanged data runs no forward pass, new data only embeds new pictures, and a different model (other
weights, dtype or preprocessing) never sees another model's embeddings. Each `put_many` commits at once, so work
done before a crash or a kill is kept."""

from typing import Iterable, Mapping, Protocol

import duckdb
import numpy as np
import pandas as pd

from ..store import scalar

CACHE_TABLE = "embedding_cache"
CREATE_CACHE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {CACHE_TABLE} (
    model_key VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    embedding BLOB NOT NULL,          -- float32 little-endian, unit length
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (model_key, content_hash)
)"""


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


class EmbeddingCache:
    def __init__(self, conn: duckdb.DuckDBPyConnection, model_key: str) -> None:
        """`conn` should be a cursor of its own: the cache commits independently of other open transactions."""
        self.conn = conn
        self.model_key = model_key
        conn.execute(CREATE_CACHE_TABLE)

    def get_many(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = pd.DataFrame({"content_hash": list(dict.fromkeys(content_hashes))}, dtype=object)
        if wanted.empty:
            return {}
        self.conn.register("wanted_hashes", wanted)
        try:
            rows = self.conn.execute(
                f"SELECT c.content_hash, c.embedding FROM {CACHE_TABLE} c JOIN wanted_hashes w USING (content_hash) "
                "WHERE c.model_key = ?",
                [self.model_key],
            ).fetchall()
        finally:
            self.conn.unregister("wanted_hashes")
        return {content_hash: np.frombuffer(blob, dtype="<f4") for content_hash, blob in rows}

    def put_many(self, embeddings: Mapping[str, np.ndarray]) -> None:
        if not embeddings:
            return
        incoming = pd.DataFrame(
            {
                "model_key": self.model_key,
                "content_hash": list(embeddings),
                "embedding": [np.asarray(v, dtype="<f4").tobytes() for v in embeddings.values()],
            }
        )
        self.conn.register("incoming_embeddings", incoming)
        try:
            self.conn.execute(
                f"INSERT OR IGNORE INTO {CACHE_TABLE} (model_key, content_hash, embedding) "
                "SELECT model_key, content_hash, embedding FROM incoming_embeddings"
            )
        finally:
            self.conn.unregister("incoming_embeddings")

    def count(self) -> int:
        return scalar(self.conn, f"SELECT count(*) FROM {CACHE_TABLE} WHERE model_key = ?", [self.model_key])
