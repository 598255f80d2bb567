"""What Dagster loads (`dg dev`, `dagster dev`, `pairfilter-materialize`, `dagster asset materialize -m
pairfilter_dagster.definitions`): every component and module under defs/, the project's own pipeline being the
`ImagePairSimilarityFilter` instance in defs/pairfilter/defs.yaml.

Importing this module must stay cheap: no torch, no transformers (the model loads inside the scoring step)."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
