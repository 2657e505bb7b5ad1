"""The error type for a user's mistake (bad config, bad input file, busy run directory).

Entry points print its message as one line and exit with :data:`USAGE_EXIT_CODE`, no traceback:
the message names the culprit and says what to do. Anything else is a bug or a fault (exit 1).
Kept free of heavy imports so every entry point can use it before torch loads.
"""

USAGE_EXIT_CODE = 2


class UsageError(ValueError):
    """Bad input from the user; nothing was written. One line, exit status 2."""
