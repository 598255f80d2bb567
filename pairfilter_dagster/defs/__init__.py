"""The Dagster layer: assets, resources, checks and schedules that wire `pairfilter_dagster.core` together."""
