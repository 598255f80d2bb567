"""What the hostile-input tests need beyond fixtures: a subprocess that obeys file permissions although the tests
run as root, a subprocess under a memory cap, and the pipeline's CLI run that way."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

NO_PERMISSION_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
"""root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: chmod 000 keeps it out, as it keeps a user out."""


def obeying_permissions(command: list[str]) -> list[str]:
    return [*NO_PERMISSION_OVERRIDE, *command] if os.geteuid() == 0 else command


def python(code: str, *, memory_bytes: int | None = None, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter, obeying file permissions; under an address-space cap if given, so a
    regression fails the test instead of the machine."""
    def cap() -> None:
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return subprocess.run(obeying_permissions([sys.executable, "-c", code]), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, **kwargs)


def materialize(data_dir: Path, clip_dir: Path, *args: str, keep_dagster_home: bool = False,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """`pairfilter-materialize` over `data_dir`, obeying file permissions; with a throwaway Dagster instance
    unless `keep_dagster_home`."""
    env = {**os.environ, "PAIRFILTER_DATA_DIR": str(data_dir), "PAIRFILTER_HF_CLIP": str(clip_dir)}
    if not keep_dagster_home:
        env.pop("DAGSTER_HOME", None)
    return subprocess.run(obeying_permissions([sys.executable, "-m", "pairfilter_dagster.cli", *args]),
                          cwd=data_dir.parent, env=env, capture_output=True, text=True, timeout=timeout)


def make_unreadable(path: Path) -> None:
    path.chmod(0)
    if os.geteuid() == 0 and subprocess.run(obeying_permissions(["test", "-r", str(path)])).returncode == 0:
        pytest.skip("cannot make a file unreadable here (no setpriv, or capabilities cannot be dropped)")
