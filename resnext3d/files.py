"""Files written whole or not at all: checkpoints, cache entries, trimmed logs."""

from __future__ import annotations

import os
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
    while writing leaves `path` as it was."""
    path = Path(path)
    descriptor, partial = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX
    )
    try:
        with os.fdopen(descriptor, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)  # gone after the rename; a failed write's remains
