"""pairfilter-dagster: curate image-pair datasets with CLIP, as Dagster assets.

`pairfilter_dagster.core` does the work and knows nothing of Dagster; `pairfilter_dagster.defs` wires it into
assets, resources, checks and schedules; `ImagePairSimilarityFilter` (the Component) builds them from YAML;
`pairfilter_dagster.definitions` is what Dagster loads.
"""

from typing import Any

__all__ = ["ImagePairSimilarityFilter"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the core (and Ray workers importing it) never pays for importing Dagster.
    if name == "ImagePairSimilarityFilter":
        from .component import ImagePairSimilarityFilter

        return ImagePairSimilarityFilter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
