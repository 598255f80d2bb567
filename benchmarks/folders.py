"""A data folder ingested and scored the way the two shard assets do it, outside Dagster: what every benchmark
times."""

from pathlib import Path

from pairfilter_dagster.core import stages
from pairfilter_dagster.core.ingest.manifests import list_shards
from pairfilter_dagster.core.ingest.samples import SampleRules
from pairfilter_dagster.core.locations import AnyPath
from pairfilter_dagster.core.results import ResultFiles
from pairfilter_dagster.core.scoring import ScoringReport


def results_of(data: AnyPath) -> ResultFiles:
    return ResultFiles.under(data / "output")


def ingest_folder(data: AnyPath, rules: SampleRules) -> list[str]:
    """Ingest every shard under raw/; returns the shards."""
    readable = list_shards(data / "raw", rules.manifest_roots).readable
    stages.ingest(results_of(data), readable, rules)
    return sorted(readable)


def score_folder(data: AnyPath, shards: list[str], embedder, engine, *, state: Path | None = None,
                 **options) -> ScoringReport:
    """Score the shards into the folder's result files (remembered hashes under `state`, as the asset keeps
    them in the state folder)."""
    return stages.score(results_of(data), shards, embedder, engine,
                        file_hashes=state / "file_hashes" if state else None, **options)
