"""The run's log as `pairfilter-materialize` shows it on stderr: a progress bar while scoring, warnings and
errors, and Dagster's own lines only when asked for."""

import logging
import re
from typing import TextIO

import dagster as dg

from .core.progress import PROGRESS_PREFIX

PROG = "pairfilter-materialize"
CLI_LOGGER = "pairfilter_cli"
PROGRESS_LINE = re.compile(rf"{PROGRESS_PREFIX} (\d+)/(\d+) \(([^)]*)\)")
BAR_WIDTH = 30


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
