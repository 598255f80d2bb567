"""The project's own pipeline (the instance with no key prefix) as the tests use it: its assets, checks, jobs and
partitions, built by the same factory that the Component and defs/pairfilter/defs.yaml use."""

from pairfilter_dagster.definitions import defs as load_definitions
from pairfilter_dagster.defs.pipeline import build_pipeline

PIPELINE = build_pipeline()
MANIFEST_SHARDS = PIPELINE.spec.partitions
ASSETS = [PIPELINE.raw_samples, PIPELINE.image_pair_stats, PIPELINE.filtered_samples]
DEFS = load_definitions()
"""What Dagster loads: defs/pairfilter/defs.yaml, the same pipeline as a Component instance."""
