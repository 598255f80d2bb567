"""`pairfilter-materialize`: the whole pipeline over every shard of a data folder, headless, in one run.

`dagster asset materialize --select '*'` cannot do this: it needs a partition for the shard assets, and cannot add
the partitions of new manifests. This command makes the shard partitions match the manifests under <data>/raw/,
then executes `pairfilter_job` over all of them in one run (model loaded once), recording it in $DAGSTER_HOME when
that is set (visible in `dagster dev` afterwards) or in a throwaway instance otherwise.

It shows a progress bar while scoring and a summary at the end, read from the run's materialization metadata.
Dagster's own log lines show only with --verbose; warnings and errors always do. A failed run ends with one line
saying why."""

import argparse
import json
import logging
import os
import re
import sys
import time
import warnings
from typing import Any, Mapping, TextIO

import dagster as dg
import yaml

from .core.progress import PROGRESS_PREFIX
from .definitions import defs as load_defs
from .defs.partitions import every_shard_tags, registered_shards
from .defs.resources import PairfilterStorage

PROG = "pairfilter-materialize"
CLI_LOGGER = "pairfilter_cli"
PROGRESS_LINE = re.compile(rf"{PROGRESS_PREFIX} (\d+)/(\d+) \(([^)]*)\)")
BAR_WIDTH = 30
FAILURES = (
    dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RESOURCE_INIT_FAILURE, dg.DagsterEventType.RUN_FAILURE,
)


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
    return parser


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


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


class RunConsole(logging.Handler):
    """The run's log on stderr: scoring progress as a bar rewritten in place (a TTY) or as plain lines (a file or
    pipe), warnings and errors; with `verbose`, every line as Dagster's console logger writes it."""

    def __init__(self, stream: TextIO, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.stream, self.verbose, self.tty = stream, verbose, stream.isatty()
        self.bar = ""  # the bar on screen, not yet ended by a newline
        self.finished: str | None = None  # the total of the progress last told complete
        # Warnings and errors show from running code: a resource, a step that started (Dagster's own errors, such
        # as about the steps it does not run after a failure, are told by the last line instead).
        self.started: set[str | None] = {None}
        self.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", {})
        event, step = meta.get("dagster_event"), meta.get("step_key")
        text = meta.get("orig_message") or record.getMessage()
        if event is not None and event.event_type == dg.DagsterEventType.STEP_START:
            self.started.add(step)
        progress = PROGRESS_LINE.match(text) if event is None else None
        if progress:
            self.progress(progress, record)
        elif self.verbose:
            self.write(self.format(record))
        elif record.levelno >= logging.WARNING and event is None and step in self.started:
            where = step or (meta.get("resource_name") and f"resource {meta['resource_name']}")
            self.write(f"{record.levelname.lower()}: {where + ': ' if where else ''}{text}")

    def progress(self, line: re.Match[str], record: logging.LogRecord) -> None:
        done, total = line[1], line[2]
        if done == total == self.finished:
            return  # the end, told again
        self.finished = total if done == total else None
        if self.tty:
            self.draw_bar(int(done), int(total), line[3])
        else:
            self.write(self.format(record) if self.verbose else line.string)

    def draw_bar(self, done: int, total: int, rate: str) -> None:
        filled = BAR_WIDTH * done // total if total else BAR_WIDTH
        line = f"{PROGRESS_PREFIX} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} ({rate})"
        self.stream.write("\r" + line.ljust(len(self.bar)))
        self.stream.flush()
        self.bar = line
        if done >= total:
            self.end_bar()

    def end_bar(self) -> None:
        if self.bar:
            self.stream.write("\n")
            self.bar = ""

    def write(self, line: str) -> None:
        self.end_bar()
        self.stream.write(line + "\n")
        self.stream.flush()


def with_console(job: dg.JobDefinition, run_config: dict, console: RunConsole) -> tuple[dg.JobDefinition, dict]:
    """The job logging through `console` (Dagster's console logger stays available, off unless the run config
    names it) and the run config that selects it."""
    logger = logging.Logger(PROG)  # not registered with `logging`: only this run writes to it
    logger.addHandler(console)
    console_logger = dg.LoggerDefinition(lambda _: logger, description=f"{PROG}'s progress bar and warnings")
    loggers = {**run_config.get("loggers", {}), CLI_LOGGER: {}}
    return job.with_logger_defs({**job.loggers, CLI_LOGGER: console_logger}), {**run_config, "loggers": loggers}


def metadata_of(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Each materialized asset's metadata values, by asset name (the first event: a run over several shards
    records the same metadata on each shard's)."""
    found: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        found.setdefault(materialization.asset_key.path[-1],
                         {key: value.value for key, value in materialization.metadata.items()})
    return found


def summary(result: dg.ExecuteInProcessResult, storage: PairfilterStorage, seconds: float) -> str:
    meta = metadata_of(result)
    raw, stats, filtered = (meta.get(name, {}) for name in ("raw_samples", "image_pair_stats", "filtered_samples"))
    counted = stats or raw  # the statuses after scoring; after ingestion only when scoring did not run
    statuses = ", ".join(f"{key[len('status_'):]} {n}" for key, n in counted.items() if key.startswith("status_") and n)
    lines = [f"Run {result.run_id} succeeded in {seconds:.1f} s"]
    if raw:
        lines.append(f"  shards:   {raw.get('shards', 0)}")
        lines.append(f"  samples:  {raw.get('dagster/row_count', 0)} ({statuses or 'none'})")
    else:
        lines.append("  shards:   0 (no manifest under raw/: only the filtered dataset and the report were rebuilt)")
    if stats:
        lines.append(f"  images:   {stats.get('images_embedded', 0)} embedded, {stats.get('cache_hits', 0)} from cache")
    if filtered:
        lines.append(f"  kept:     {filtered['kept']} of {filtered['total']} samples ({filtered['scored']} scored)")
        lines.append(f"  dropped:  {filtered['dropped']} (scored outside the thresholds)")
        lines.append(f"  filtered: {filtered['output_path']}")
        if filtered.get("shards_removed"):
            lines.append(f"  removed:  {', '.join(filtered['shards_removed'])} (manifest gone: its rows deleted)")
    if "similarity_report" in meta:
        lines.append(f"  report:   {meta['similarity_report']['report_dir']}")
    lines.append(f"  duckdb:   {storage.database}")
    return "\n".join(lines)


PYDANTIC_DETAIL = re.compile(r" \[type=[^,\]]+, input_value=(.*), input_type=[^\]]+\]$")


def validation_reason(message: str) -> str:
    """pydantic's ValidationError on one line: "1 validation error for FilterConfig: min_score: Input should be
    less than or equal to 1 (got 5)"."""
    header, *lines = message.splitlines()
    told, field = [], ""
    for line in lines:
        if line.startswith("    "):  # "For further information visit ..."
            continue
        if line.startswith("  "):
            detail = PYDANTIC_DETAIL.sub(r" (got \1)" if field else "", line.strip()).removeprefix("Value error, ")
            told.append(field + detail)
            field = ""
        else:
            field = line.strip() + ": "
    return f"{header}: {'; '.join(told)}"


def error_reason(error: Any) -> str:
    """The user code's own message from a Dagster error: Dagster's wrappers unwrapped, the module path dropped,
    and no class name for `dg.Failure` (its description is the message)."""
    while error.cls_name.startswith("Dagster") and error.cause is not None:
        error = error.cause
    message = error.message.strip()
    qualified = message.split(": ", 1)[0]
    if qualified.endswith(error.cls_name):
        message = message[len(qualified) + 2:]
    if error.cls_name == "ValidationError":
        return validation_reason(message)
    return one_line(message if error.cls_name == "Failure" else f"{error.cls_name}: {message}")


def failure_line(result: dg.ExecuteInProcessResult) -> str:
    """The last line of a failed run: which checks failed, else the first failure (a step, or the resources the
    run starts with) and why."""
    failed_checks = [check for check in result.get_asset_check_evaluations() if not check.passed]
    if failed_checks:
        told = [f"{check.check_name} on {check.asset_key.to_user_string()}"
                + (f" ({one_line(check.description)})" if check.description else "") for check in failed_checks]
        return f"{PROG}: checks failed: {'; '.join(told)}"
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if event.event_type in FAILURES and error is not None:
            where = event.step_key or ("the run" if event.event_type == dg.DagsterEventType.RUN_FAILURE
                                       else "resource setup")
            return f"{PROG}: failed in {where}: {error_reason(error)}"
    return f"{PROG}: run {result.run_id} failed; run again with --verbose to see why"


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
    return materialize(run_config, RunConsole(sys.stderr, verbose=args.verbose))


def materialize(run_config: dict, console: RunConsole) -> int:
    """Make the shard partitions match the manifests, run every shard (or only the dataset when there is none) in
    one run, and tell how it went: the summary, or the one line saying why it failed."""
    started = time.monotonic()
    defs = load_defs()
    partitions = defs.resolve_assets_def("raw_samples").partitions_def
    assert isinstance(partitions, dg.DynamicPartitionsDefinition)
    # The data folder as the run will see it: the definitions' default, or the run config's override.
    overrides = run_config.get("resources", {}).get("storage", {}).get("config", {})
    storage = PairfilterStorage(data_dir=overrides.get("data_dir", (defs.resources or {})["storage"].data_dir))
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        tags = every_shard_tags(instance, partitions, storage.raw_dir)
        job, run_config = with_console(defs.resolve_job_def("pairfilter_job" if tags else "dataset_job"), run_config,
                                       console)
        print(f"{job.name} over {len(registered_shards(instance, partitions))} shards under {storage.raw_dir}",
              flush=True)
        try:
            result = job.execute_in_process(run_config=run_config, instance=instance, tags=tags,
                                            raise_on_error=False)
        except dg.DagsterInvalidConfigError as exc:  # refused before the run started
            print(f"{PROG}: invalid run config: {'; '.join(one_line(e.message) for e in exc.errors)}",
                  file=sys.stderr)
            return 1
        finally:
            console.end_bar()
    if not result.success or any(not check.passed for check in result.get_asset_check_evaluations()):
        print(failure_line(result), file=sys.stderr)
        return 1
    print(summary(result, storage, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
