"""The embedding cache as files beside the results: `embedding_cache/<model key>/<shard>/<block>.parquet`, one file
per block of new embeddings (content hash, model key, unit vector), each written whole and never rewritten. An
embedding depends only on the model and the image's content, so files written by runs at once never disagree: two
runs that embed the same new image both keep it, and either copy serves.

Lookup without scanning embeddings: the cache keeps an index in memory, one 8-byte key per embedding (the first 64
bits of the content hash, a column of its own in each file) with the file and row it lies in. It is read once per
run, from the key column only (8 MB for a million embeddings), and then only for files that appeared since (the
folder is listed again at each lookup). A hit reads the row group holding it (256 rows) and checks the full hash.
A block is flushed once `block` embeddings are waiting (and when the run ends), so a killed run loses at most one
block: the rerun finds the rest."""

import os
import secrets
import socket
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..locations import AnyPath, is_remote_path
from ..publish import StagedSink, staged_file
from ..results import ResultFiles, parquet_files

DEFAULT_BLOCK = 1024
ROW_GROUP_ROWS = 256
OPEN_FILES = 64
LISTING_THREADS = 16
MODEL_KEY = b"pairfilter.model_key"
CACHE_VIEW_COLUMNS = [("model_key", "VARCHAR"), ("content_hash", "VARCHAR"), ("embedding", "FLOAT[]")]


def hash_key(content_hash: str) -> int:
    """The index key: the first 64 bits of a hex sha256 (of the text itself, for anything else)."""
    try:
        return int(content_hash[:16], 16)
    except ValueError:
        import hashlib

        return int(hashlib.sha256(content_hash.encode()).hexdigest()[:16], 16)


def hash_keys(content_hashes: Iterable[str]) -> np.ndarray:
    return np.fromiter((hash_key(h) for h in content_hashes), dtype=np.uint64)


def block_table(model_key: str, embeddings: Mapping[str, np.ndarray]) -> pa.Table:
    vectors = np.stack([np.asarray(v, dtype="<f4") for v in embeddings.values()])
    hashes = list(embeddings)
    return pa.table({
        "model_key": pa.array([model_key] * len(hashes)),
        "content_hash": pa.array(hashes),
        "hash_key": pa.array(hash_keys(hashes)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
    }).replace_schema_metadata({MODEL_KEY: model_key.encode()})


def write_block(path: AnyPath, table: pa.Table) -> None:
    with staged_file(path) as staged:
        compression = {"model_key": "zstd", "content_hash": "zstd", "hash_key": "zstd", "embedding": "none"}
        with pq.ParquetWriter(StagedSink(staged), table.schema, compression=compression) as writer:
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        staged.publish()


class EmbeddingFiles:
    """The `Cache` of one model over the files; new embeddings go to blocks of `shard`'s folder."""

    def __init__(self, results: ResultFiles, model_key: str, shard: str = "_", *, block: int = DEFAULT_BLOCK) -> None:
        self.folder = results.cache_folder(model_key)
        self.model_key = model_key
        self.shard = shard
        self.block = block
        self.pending: dict[str, np.ndarray] = {}
        self.files: list[str] = []
        self.blocks_written = 0
        self._keys = np.zeros(0, dtype=np.uint64)
        self._file_ids = np.zeros(0, dtype=np.int32)
        self._rows = np.zeros(0, dtype=np.int32)
        self._open: OrderedDict[int, pq.ParquetFile] = OrderedDict()
        self._token = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{socket.gethostname()}-{os.getpid()}-" \
                      f"{secrets.token_hex(3)}"

    def __enter__(self) -> "EmbeddingFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()
        self.close()

    def get_many(self, content_hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(content_hashes))
        found = {h: self.pending[h] for h in wanted if h in self.pending}
        rest = [h for h in wanted if h not in found]
        if not rest:
            return found
        self.refresh()
        keys = hash_keys(rest)
        # Every index entry of a key is a candidate (copies written by two runs, or two hashes sharing 64 bits): the
        # first entries are read first, later ones only for the hashes still not found.
        left, right = np.searchsorted(self._keys, keys, "left"), np.searchsorted(self._keys, keys, "right")
        candidates = [(h, int(a), int(b)) for h, a, b in zip(rest, left, right) if a < b]
        while candidates:
            by_file: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
            for content_hash, position, _ in candidates:
                by_file[int(self._file_ids[position])][int(self._rows[position])].add(content_hash)
            for file_id, rows in by_file.items():
                found.update(self._read_rows(file_id, rows))
            candidates = [(h, a + 1, b) for h, a, b in candidates if h not in found and a + 1 < b]
        return found

    def put_many(self, embeddings: Mapping[str, np.ndarray]) -> None:
        self.pending.update(embeddings)
        if len(self.pending) >= self.block:
            self.flush()

    def flush(self) -> None:
        """Write the waiting embeddings as one block file (whole, or not at all)."""
        if not self.pending:
            return
        name = f"{self.shard}/{self._token}-{self.blocks_written:05d}.parquet"
        table = block_table(self.model_key, self.pending)
        write_block(self.folder / name, table)
        self.blocks_written += 1
        self._add(name, table.column("hash_key").to_numpy())
        self.pending = {}

    def refresh(self) -> None:
        """Index the files that appeared since the last look (other runs write them too)."""
        known = set(self.files)
        new = [name for name in parquet_files(self.folder) if name not in known]
        if not new:
            return
        with ThreadPoolExecutor(LISTING_THREADS) as pool:
            for name, keys in zip(new, pool.map(self._read_keys, new)):
                if keys is not None:
                    self._add(name, keys)

    def dimension(self) -> int:
        """The embeddings' length, from a file's schema (0 while the model has no file)."""
        self.refresh()
        if self.pending:
            return len(next(iter(self.pending.values())))
        for file_id in range(len(self.files)):
            try:
                return self._parquet(file_id).schema_arrow.field("embedding").type.list_size
            except (FileNotFoundError, pa.ArrowException, OSError):
                continue
        return 0

    def count(self) -> int:
        self.refresh()
        return len(np.unique(self._keys)) + len(self.pending)

    def close(self) -> None:
        self._open.clear()

    def _read_keys(self, name: str) -> np.ndarray | None:
        try:
            with (self.folder / name).open("rb") as handle:
                return pq.read_table(handle, columns=["hash_key"]).column("hash_key").to_numpy()
        except (FileNotFoundError, pa.ArrowException, OSError):
            return None  # gone since the listing, or not a cache file: its images are embedded again

    def _add(self, name: str, keys: np.ndarray) -> None:
        file_id = len(self.files)
        self.files.append(name)
        order = np.argsort(keys, kind="stable")
        keys = keys[order].astype(np.uint64)
        at = np.searchsorted(self._keys, keys)
        self._keys = np.insert(self._keys, at, keys)
        self._file_ids = np.insert(self._file_ids, at, np.full(len(keys), file_id, dtype=np.int32))
        self._rows = np.insert(self._rows, at, order.astype(np.int32))

    def _parquet(self, file_id: int) -> pq.ParquetFile:
        if file_id in self._open:
            self._open.move_to_end(file_id)
            return self._open[file_id]
        path = self.folder / self.files[file_id]
        handle = pq.ParquetFile(path.open("rb")) if is_remote_path(path) else pq.ParquetFile(str(path), memory_map=True)
        self._open[file_id] = handle
        if len(self._open) > OPEN_FILES:
            self._open.popitem(last=False)
        return handle

    def _read_rows(self, file_id: int, rows: dict[int, set[str]]) -> dict[str, np.ndarray]:
        """The embeddings at `rows` ({row: the content hashes it may hold}) of one file: the row groups holding them,
        read in one call (a call costs more than the bytes of a group)."""
        try:
            parquet = self._parquet(file_id)
        except (FileNotFoundError, pa.ArrowException, OSError):
            return {}
        starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
        wanted = np.fromiter(rows, dtype=np.int64)
        group_of = np.searchsorted(starts, wanted, side="right") - 1
        groups = np.unique(group_of)
        table = parquet.read_row_groups(groups.tolist(), columns=["content_hash", "embedding"])
        group_start = np.cumsum([0] + [int(starts[g + 1] - starts[g]) for g in groups])  # within `table`
        local = group_start[np.searchsorted(groups, group_of)] + wanted - starts[group_of]
        hashes = table.column("content_hash").take(pa.array(local)).to_pylist()
        column = table.column("embedding").combine_chunks()
        vectors = column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1)[local]
        # A 64-bit key shared by two hashes: the full hash decides.
        return {found: vectors[i] for i, (candidates, found) in enumerate(zip(rows.values(), hashes))
                if found in candidates}

def full_model_key(results: ResultFiles, recorded: str) -> str:
    """The model key that the recorded one (the stats metadata shows its first 16 characters) starts with, from
    the cache files' metadata."""
    folder = results.cache_folder(recorded)
    for name in parquet_files(folder):
        with (folder / name).open("rb") as handle:
            key = (pq.read_schema(handle).metadata or {}).get(MODEL_KEY, b"").decode()
        if key.startswith(recorded):
            return key
    raise LookupError(f"the embedding cache under {results.cache_root} holds no model whose key starts with "
                      f"{recorded!r}: materialize image_pair_stats for the shard again")
