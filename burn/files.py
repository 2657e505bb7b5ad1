"""Small file-system helpers shared by the modules that write files atomically (kept free of heavy
imports: the data tools and the stage start-up both use them)."""

from __future__ import annotations

import os


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: the permissions a plain ``open()`` (0o666) or ``mkdir()``
    (0o777) would give, for files that ``mkstemp``/``mkdtemp`` created private (0600/0700)."""
    mask = os.umask(0)  # the only way to read the umask; restored at once
    os.umask(mask)
    return mode & ~mask
