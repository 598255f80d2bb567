"""Progress of a scoring run, for people: a callback the scorer calls after each batch."""

import time
from typing import Callable

from .scoring import ScoringReport

ProgressCallback = Callable[[ScoringReport, float], None]
"""Called with the running report and the estimated image references done so far."""


def progress_logger(log: Callable[[str], None], refs_total: int, every_seconds: float = 5.0) -> ProgressCallback:
    """A progress callback that writes one line at most every few seconds, and always at the end."""
    last = [-float("inf")]

    def report_progress(report: ScoringReport, refs_done: float) -> None:
        finished = refs_done >= refs_total
        if not finished and time.monotonic() - last[0] < every_seconds:
            return
        last[0] = time.monotonic()
        rate = refs_done / report.seconds if report.seconds > 0 else 0.0
        eta = f"{(refs_total - refs_done) / rate:.0f} s" if rate > 0 else "unknown"
        log(
            f"{PROGRESS_PREFIX} {refs_done:.0f}/{refs_total} ({rate:.1f}/s, ETA {eta}): {report.images_embedded} "
            f"embedded, {report.cache_hits} from cache, {report.images_per_second:.1f} embedded/s"
        )

    return report_progress


PROGRESS_PREFIX = "Images"
