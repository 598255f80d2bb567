"""What Dagster loads (`dagster dev`, `pairfilter-materialize`, `dagster asset materialize -m
pairfilter_dagster.definitions --partition ...`).

Importing this module must stay cheap: no torch, no transformers (the model loads inside the scoring step)."""

import dagster as dg

from .core.embedding import default_hf_clip
from .defs import assets, checks, report
from .defs.resources import ClipModel, PairfilterStorage, default_data_dir
from .defs.schedules import dataset_job, pairfilter_daily, pairfilter_job, shard_job
from .defs.sensors import pairfilter_new_manifests

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets, report]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[shard_job, dataset_job, pairfilter_job],
    schedules=[pairfilter_daily],
    sensors=[pairfilter_new_manifests],
    resources={
        "clip": ClipModel(hf_clip=default_hf_clip()),
        "storage": PairfilterStorage(data_dir=default_data_dir()),
    },
)
