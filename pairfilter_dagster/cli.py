"""`pairfilter-materialize`: the whole pipeline over every shard of a data folder, headless, in one run; or, with
`--shard KEY`, only those shards (one worker per shard, by hand or from any scheduler: workers on different shards
run at once, nothing is shared but files of their own); or, with `--dataset`, only the filtered dataset from every
shard's results.

`dagster asset materialize --select '*'` cannot do this: it needs a partition for the shard assets, and cannot add
the partitions of new manifests. This command makes the shard partitions match the manifests under <data>/raw/,
then executes `pairfilter_job` over all of them in one run (model loaded once), recording it in $DAGSTER_HOME when
that is set (visible in `dagster dev` afterwards) or in a throwaway instance otherwise.

It shows a progress bar while scoring and a summary at the end, read from the run's materialization metadata.
Dagster's own log lines show only with --verbose; warnings and errors always do. A failed run ends with one line
saying why."""

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Mapping, Sequence

import dagster as dg
import pydantic
import yaml

from .definitions import defs as load_defs
from .defs.partitions import every_shard_tags, registered_shards
from .defs.resources import PairfilterStorage
from .run_console import PROG, RunConsole, with_console
from .run_outcome import failure_line, one_line, summary, validation_reason


class BadInput(ValueError):
    """A command-line value that cannot be used: argparse-style error, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-c", "--config", action="append", default=[],
        help="run config YAML file(s), as for `dagster asset materialize -c` (e.g. filtered_samples thresholds)",
    )
    parser.add_argument("--config-json", help="run config as a JSON object, applied after the files")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every Dagster log line (DEBUG too)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--shard", action="append", metavar="KEY", help="ingest, score and export only this shard "
                      "(its path relative to raw/; repeatable), one run each; then build the dataset with --dataset")
    only.add_argument("--dataset", action="store_true", help="only build the filtered dataset and the report from "
                      "every shard's results")
    return parser


def load_run_config(paths: list[str], config_json: str | None = None) -> dict:
    """The YAML files, then the JSON string, merged: later ones win, key by key at every level."""
    def merge(into: dict, extra: Mapping) -> dict:
        for key, value in extra.items():
            inner = into.get(key)
            into[key] = merge(inner if isinstance(inner, dict) else {}, value) if isinstance(value, dict) else value
        return into

    def mapping(value: Any, source: str) -> Mapping:
        if value is None:
            return {}  # an empty file
        if not isinstance(value, dict):
            raise BadInput(f"{source}: must be a mapping of run config, got {type(value).__name__} {value!r:.60}")
        return value

    config: dict = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                merge(config, mapping(yaml.safe_load(handle), f"-c/--config {path}"))
        except OSError as exc:
            raise BadInput(f"-c/--config {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise BadInput(f"-c/--config {path}: not valid YAML: {one_line(str(exc))}") from exc
    if config_json is not None:
        try:
            extra = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise BadInput(f"--config-json: not valid JSON: {exc}") from exc
        merge(config, mapping(extra, "--config-json"))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        run_config = load_run_config(args.config, args.config_json)
    except SystemExit as exit_:  # --help, or argparse's own error (it printed it)
        return int(exit_.code or 0)
    except BadInput as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:  # about Dagster's own APIs, nothing for the user to act on
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    return materialize(run_config, RunConsole(sys.stderr, verbose=args.verbose), args.shard or (), args.dataset)


def materialize(run_config: dict, console: RunConsole, shards: Sequence[str] = (), dataset_only: bool = False) -> int:
    """Make the shard partitions match the manifests, run every shard (or only the dataset when there is none, or
    `dataset_only`) in one run, or `shards` one run each, and tell how it went: the summary, or the one line
    saying why it failed. A manifest that cannot be read then gets a run of its own, which fails saying why
    (Dagster cannot fail one partition of a run over several, dagster#17836), and the command names it and exits
    1."""
    started = time.monotonic()
    defs = load_defs()
    partitions = defs.resolve_assets_def("raw_samples").partitions_def
    assert isinstance(partitions, dg.DynamicPartitionsDefinition)
    try:
        storage = storage_for(run_config, (defs.resources or {})["storage"])
        storage.check_data_dir()
        listing = storage.list_shards()
    except pydantic.ValidationError as exc:
        print(f"{PROG}: error: {validation_reason(str(exc))}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    unknown = [shard for shard in shards if shard not in listing.names]
    if unknown:
        print(f"{PROG}: error: --shard {', '.join(unknown)}: no such shard under {storage.raw_dir} (shards: "
              f"{', '.join(listing.names[:10]) or 'none'}{', ...' if len(listing.names) > 10 else ''})", file=sys.stderr)
        return 2
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        tags = every_shard_tags(instance, partitions, listing)
        runs: list[tuple[str, dict[str, Any]]]
        if shards:
            runs = [("shard_job", {"partition_key": shard}) for shard in shards]
        else:
            runs = [("pairfilter_job", {"tags": tags})] if tags and not dataset_only else [("dataset_job", {})]
        what = f"shard {', '.join(shards)}" if shards else f"{len(registered_shards(instance, partitions))} shards"
        print(f"{', '.join(dict.fromkeys(name for name, _ in runs))} over {what} under {storage.raw_dir}", flush=True)
        results = []
        for name, options in runs:
            job, job_config = with_console(defs.resolve_job_def(name), run_config, console)
            try:
                results.append(job.execute_in_process(run_config=job_config, instance=instance, raise_on_error=False,
                                                      **options))
            except dg.DagsterInvalidConfigError as exc:  # refused before the run started
                print(f"{PROG}: invalid run config: {'; '.join(one_line(e.message) for e in exc.errors)}",
                      file=sys.stderr)
                return 1
            finally:
                console.end_bar()
        if runs[0][0] == "pairfilter_job":
            for shard, file in listing.files.items():
                if file.problem:
                    fail_partition(defs.resolve_job_def("shard_job"), shard, run_config, instance, console)
    problems = {name: problem for name, problem in listing.problems.items() if not shards or name in shards}
    for name, problem in problems.items():
        print(f"{PROG}: {name}: {problem}", file=sys.stderr)
    failed = False
    for result in results:
        checks_failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
        if not result.success or [c for c in checks_failed if c.check_name != "every_manifest_readable"]:
            print(failure_line(result), file=sys.stderr)
            failed = True
        else:
            print(summary(result, storage, time.monotonic() - started))
    return 1 if failed or problems else 0


def fail_partition(shard_job: dg.JobDefinition, shard: str, run_config: dict, instance: dg.DagsterInstance,
                   console: RunConsole) -> None:
    """Run the shard job for one unreadable shard: it fails in its first step, saying why, so the UI shows that
    partition failed."""
    ops = {name: config for name, config in (run_config.get("ops") or {}).items() if name in shard_job.graph.node_dict}
    job, job_config = with_console(shard_job, {**run_config, "ops": ops}, console)
    job.execute_in_process(run_config=job_config, instance=instance, partition_key=shard, raise_on_error=False)


def storage_for(run_config: dict, defaults: PairfilterStorage) -> PairfilterStorage:
    """The storage resource as the run will see it: the definitions' one, with the run config's overrides."""
    overrides: Any = run_config
    for depth, key in enumerate(("resources", "storage", "config")):
        overrides = overrides.get(key) or {}
        if not isinstance(overrides, dict):
            where = ".".join(("resources", "storage", "config")[: depth + 1])
            raise ValueError(f"{where}: must be a mapping, got {type(overrides).__name__} {overrides!r:.60}")
    return PairfilterStorage(**{**defaults.model_dump(), **overrides})


if __name__ == "__main__":
    sys.exit(main())
