"""The one exception the data layer raises for unusable data, and how it reports many problems."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# Enough to see the pattern of a systematic problem without flooding the terminal.
MAX_REPORTED_PROBLEMS = 20


class DataError(ValueError):
    """The data on disk cannot be used; the message names each offending file or folder."""

    def __init__(self, message: str) -> None:
        super().__init__(_without_worker_traceback(message, type(self)))


def _without_worker_traceback(message: str, error_type: type) -> str:
    """The message of a DataError raised in a DataLoader worker process, where PyTorch re-raises
    it in the main process as ``DataError("Caught DataError in DataLoader worker process N.
    Original Traceback ...")``: the worker's whole traceback, whose last lines are the message,
    would otherwise bury the file it names."""
    if not message.startswith(f"Caught {error_type.__name__} in DataLoader worker process"):
        return message
    _, found, original = message.rpartition(
        f"\n{error_type.__module__}.{error_type.__qualname__}: "
    )
    return original.rstrip("\n") if found else message


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set, tied to the file (or folder, or CSV line) at fault.

    Attributes:
        path: the file, folder or ``csv:line`` to fix.
        message: what is wrong with it.
        case: the case it belongs to, or "" for a problem of the whole data set.
        severity: an "error" stops training; a "warning" (e.g. an all-zero modality) does not.
    """

    path: str
    message: str
    case: str = ""
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        # Name the case unless the file or the message already does.
        named = not self.case or self.case in self.path or self.case in self.message
        return f"{self.path}: {self.message}" + ("" if named else f" (case {self.case})")


def raise_for_problems(problems: Sequence[str | Problem], summary: str) -> None:
    """Raise one DataError listing the first errors (each naming its file), if there are any;
    warnings do not count."""
    errors = [p for p in problems if not isinstance(p, Problem) or p.severity == "error"]
    if not errors:
        return
    lines = [f"{summary} ({len(errors)} problem{'s' if len(errors) > 1 else ''}):"]
    lines += [f"  - {problem}" for problem in errors[:MAX_REPORTED_PROBLEMS]]
    if len(errors) > MAX_REPORTED_PROBLEMS:
        lines.append(f"  ... and {len(errors) - MAX_REPORTED_PROBLEMS} more")
    raise DataError("\n".join(lines))
