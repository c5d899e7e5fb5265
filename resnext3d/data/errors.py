"""The one exception the data layer raises for unusable data, and how it reports many problems."""

from __future__ import annotations

from collections.abc import Sequence

# Enough to see the pattern of a systematic problem without flooding the terminal.
MAX_REPORTED_PROBLEMS = 20


class DataError(ValueError):
    """The data on disk cannot be used; the message names each offending file or folder."""


def raise_for_problems(problems: Sequence[str], summary: str) -> None:
    """Raise one DataError listing the first problems (each naming its file), if there are any."""
    if not problems:
        return
    lines = [f"{summary} ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"]
    lines += [f"  - {problem}" for problem in problems[:MAX_REPORTED_PROBLEMS]]
    if len(problems) > MAX_REPORTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_REPORTED_PROBLEMS} more")
    raise DataError("\n".join(lines))
