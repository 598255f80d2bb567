"""A real `dagster dev` (webserver, daemon and code server) on a free 127.0.0.1 port, for tests.

It runs the README's command in the repo root, in its own process group (so stopping it also stops the daemon,
the code server and any run it launched), with a temporary DAGSTER_HOME holding the shipped dagster.yaml (its
concurrency pool) with telemetry off; every wait is bounded."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

from .conftest import REPO

DAGSTER = str(Path(sys.executable).parent / "dagster")
LOCATION = "pairfilter_dagster"
REPOSITORY = "__repository__"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.5) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class DagsterDev:
    def __init__(self, home: Path, env: dict[str, str], log_path: Path):
        self.home, self.log_path = home, log_path
        self.env = {**os.environ, "DAGSTER_HOME": str(home), **env}
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():  # the shipped instance settings (pools), as the README says
            shipped = (REPO / "dagster.yaml").read_text()
            (home / "dagster.yaml").write_text(f"{shipped.rstrip()}\ntelemetry:\n  enabled: false\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> "DagsterDev":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_for(self.location_loaded, timeout=timeout, what=f"dagster dev on {self.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after `grace` seconds."""
        if self.process is None:
            return
        group = self.process.pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_alive(group):
                time.sleep(0.2)
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.port = free_port()
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, **variables: Any) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def location_loaded(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
        except (OSError, AssertionError, ValueError):
            return False
        entries = data["workspaceOrError"].get("locationEntries") or []
        return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries)

    def repository_selector(self) -> dict:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}

    def selector(self, name_field: str, name: str) -> dict:
        return {**self.repository_selector(), name_field: name}


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    # Zombies count as gone: the group leader is reaped by Popen.wait, its children by init.
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                return True
    return False
