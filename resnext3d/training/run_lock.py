"""One live process per run directory: a second ``fit`` on a run that is still training (an
orphan of a killed sweep, a second terminal) would interleave its checkpoints and metrics."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from resnext3d.files import describe_os_error
from resnext3d.training.checkpoints import CheckpointError

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on `run_dir` (``flock`` on ``<run_dir>/.lock``) for as long as it is
    held; the lock file says which process holds it. The operating system releases it when the
    process ends, however it ends (SIGKILL included), so a dead run never stays locked.

    Creating the lock file also proves that the run directory can be written, before anything
    is trained: a read-only or unwritable directory is refused here, with the reason.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._descriptor: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise CheckpointError(
                f"{self.path.parent}: the run directory cannot be written "
                f"({describe_os_error(error, self.path)})"
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise CheckpointError(
                f"{self.path.parent} is in use by {holder or 'another process'}: stop that "
                "process, or wait for it to end, before running in this directory again"
            ) from error
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._descriptor = descriptor
        return self

    def __exit__(self, *exc_info) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # releases the lock; the file stays, unlocked
            self._descriptor = None
