"""`pairfilter-materialize`: the whole pipeline over every shard of a data folder, headless, in one run.

`dagster asset materialize --select '*'` cannot do this: it needs a partition for the shard assets, and cannot add
the partitions of new manifests. This command makes the shard partitions match the manifests under <data>/raw/,
then executes `pairfilter_job` over all of them in one run (model loaded once), recording it in $DAGSTER_HOME when
that is set (visible in `dagster dev` afterwards) or in a throwaway instance otherwise."""

import argparse
import json
import os
import sys

import dagster as dg
import yaml

from .definitions import defs
from .defs.resources import PairfilterStorage
from .defs.partitions import all_shards_tags, registered_shards, sync_shard_partitions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pairfilter-materialize", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-c", "--config", action="append", default=[],
        help="run config YAML file(s), as for `dagster asset materialize -c` (e.g. filtered_samples thresholds)",
    )
    parser.add_argument("--config-json", help="run config as a JSON string, applied after the files")
    return parser.parse_args(argv)


def load_run_config(paths: list[str], config_json: str | None = None) -> dict:
    """The YAML files, then the JSON string, merged: later ones win, key by key at every level."""
    def merge(into: dict, extra: dict) -> dict:
        for key, value in extra.items():
            into[key] = merge(into.get(key, {}), value) if isinstance(value, dict) else value
        return into

    config: dict = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            merge(config, yaml.safe_load(handle) or {})
    return merge(config, json.loads(config_json)) if config_json else config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_config = load_run_config(args.config, args.config_json)
    # The data folder as the run will see it: the definitions' default, or the run config's override.
    overrides = run_config.get("resources", {}).get("storage", {}).get("config", {})
    storage = PairfilterStorage(data_dir=overrides.get("data_dir", defs.resources["storage"].data_dir))
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        added, deleted = sync_shard_partitions(instance, storage.raw_dir)
        shards = registered_shards(instance)
        print(f"{len(shards)} shards under {storage.raw_dir} (partitions added: {len(added)}, deleted: "
              f"{len(deleted)})")
        job = defs.resolve_job_def("pairfilter_job" if shards else "dataset_job")
        result = job.execute_in_process(
            run_config=run_config, instance=instance, tags=all_shards_tags(shards) if shards else None,
            raise_on_error=False,
        )
        failed_checks = [check.check_name for check in result.get_asset_check_evaluations() if not check.passed]
    if not result.success:
        print(f"Run {result.run_id} failed; see the log above", file=sys.stderr)
        return 1
    if failed_checks:
        print(f"Run {result.run_id} succeeded, but checks failed: {', '.join(failed_checks)}", file=sys.stderr)
        return 1
    print(f"Run {result.run_id} succeeded: {storage.filtered_jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
