import threading


class HeldReads:
    """The bytes of remote images read for hashing, kept within a budget until the same chunk decodes them: one
    request per image instead of two (requests cost time and, on S3, money). `PairScorer` clears it per chunk;
    decoding in other processes (decode_processes, Ray) reads again."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used, self.hits = budget, 0, 0
        self.items: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def offer(self, path: str, data: bytes) -> None:
        with self.lock:
            if path not in self.items and self.used + len(data) <= self.budget:  # the first read are the first decoded
                self.items[path] = data
                self.used += len(data)

    def take(self, path: str) -> bytes | None:
        with self.lock:
            data = self.items.pop(path, None)
            if data is not None:
                self.used -= len(data)
                self.hits += 1
            return data

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.used = 0


HELD_READS = HeldReads(256 * 2**20)
