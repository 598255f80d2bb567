"""pairfilter-dagster: curate image-pair datasets with CLIP, as Dagster assets.

`pairfilter_dagster.core` does the work and knows nothing of Dagster; `pairfilter_dagster.defs` wires it into
assets, resources, checks and schedules; `pairfilter_dagster.definitions` is what Dagster loads.
"""
