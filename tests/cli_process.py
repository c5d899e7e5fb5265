"""`resnext3d` in a subprocess, as a user runs it: for what only a process of its own shows (an
exit status, an abort at exit, a kill, several ranks)."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def run_resnext3d(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run `python -m resnext3d ARGS` in `cwd` with no standard input; test modules (callbacks,
    toy data) importable; a run version from this process is not inherited."""
    environment = {**(os.environ if env is None else env), "PYTHONPATH": str(TESTS)}
    environment.pop("RESNEXT3D_RUN_VERSION", None)
    return subprocess.run(
        [sys.executable, "-m", "resnext3d", *args],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
