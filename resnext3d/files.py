"""Files written whole or not at all: checkpoints, cache entries, trimmed logs; what a failed
write says to the user."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# A file being written; one a killed writer left behind is removed by the next writer.
PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """A hidden file beside `path`, with a name of its own (writers may run at once), renamed
    onto `path` once written and on disk; removed instead if writing fails. A process killed
    while writing leaves `path` as it was. The file gets the permissions the umask gives a new
    file (a temporary file's are private), so that a shared project's group can read it."""
    path = Path(path)
    descriptor, partial = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX
    )
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)  # gone after the rename; a failed write's remains


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


# Below this much free space, a write that failed without saying why is taken for a full disk.
_NEARLY_FULL_BYTES = 64 * 2**20


def describe_os_error(error: BaseException, path: str | Path) -> str:
    """Why writing `path` failed, in words a user can act on: "no space left on device (2.1 MB
    free on /mnt/runs)", "read-only file system", "permission denied"."""
    folder = Path(path).parent
    code = getattr(error, "errno", None)
    free = _free_bytes(folder)
    # torch.save reports a failed write as a RuntimeError without an errno.
    nearly_full = code is None and free is not None and free < _NEARLY_FULL_BYTES
    if code in (errno.ENOSPC, errno.EDQUOT) or nearly_full:
        space = f"{free / 2**20:.1f} MB free" if free is not None else "free space unknown"
        reason = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
        return f"{reason} ({space} on {folder}): free some space or write elsewhere"
    if code == errno.EROFS:
        return "read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
