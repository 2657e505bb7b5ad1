"""The two errors of the data package: a bad dataset description, a bad image met while training."""

from __future__ import annotations

from burn.runtime.errors import FaultError


class DatasetError(ValueError):
    """The dataset tree or one of its list files is unusable (missing root, empty list, malformed line,
    missing files). Raised by validation, before any job is queued and before any pipeline is built."""


class DataError(FaultError):
    """A sample could not be read or decoded while iterating, or a saved loader state does not fit.
    The message names the file (and its list line) and the scan command that finds every other bad
    file at once, on one line: the entry points print it as the last line of the output."""


def summarise_problems(source: str, problems: list[tuple[int, str]], what: str) -> str:
    """'<source> line 7: <problem> (and 12 more <what>, e.g. lines 9, 31, 40)' for the first problem."""
    line, text = problems[0]
    where = f"{source} line {line}" if line > 0 else source
    message = f"{where}: {text}"
    rest = problems[1:]
    if rest:
        examples = ", ".join(str(n) for n, _ in rest[:3] if n > 0)
        message += f" (and {len(rest)} more {what}" + (f", e.g. lines {examples})" if examples else ")")
    return message
