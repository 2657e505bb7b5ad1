"""The two error kinds an entry point reports as one line, without a traceback.

- :class:`UsageError`: the user's input (bad config, bad input file, busy run directory), found before
  any work; exit status :data:`USAGE_EXIT_CODE` (2), nothing written.
- :class:`FaultError`: a fault outside the code met while working (an image that does not decode, a
  full disk); exit status :data:`FAULT_EXIT_CODE` (1), and the line is the last line of the output.

Anything else is a bug (exit 1 with its traceback). Kept free of heavy imports so every entry point
can use it before torch loads.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

USAGE_EXIT_CODE = 2
FAULT_EXIT_CODE = 1


class UsageError(ValueError):
    """Bad input from the user; nothing was written. One line, exit status 2."""


class FaultError(RuntimeError):
    """A fault of the data or the machine (not a bug) that stops a stage. One line, exit status 1."""


def one_line(err: BaseException) -> str:
    """The message on one line (a multi-line message's lines joined with '; ')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


@contextmanager
def reported_as_one_line(prog: str) -> Iterator[None]:
    """Turn a UsageError / FaultError into ``<prog>: <message>`` on stderr, the last line of the
    output, and exit 2 / 1. Everything else propagates (a bug keeps its traceback)."""
    try:
        yield
    except UsageError as err:
        code = USAGE_EXIT_CODE
        message = one_line(err)
    except FaultError as err:
        code = FAULT_EXIT_CODE
        message = one_line(err)
    else:
        return
    sys.stdout.flush()  # the log lines first: the error is the last thing printed
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
