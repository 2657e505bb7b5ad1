"""Small file-system helpers: the umask, and a full disk reported in one line (kept free of heavy
imports: the data tools and the stage start-up both use them). The atomic writer: burn/runtime/rundir.py."""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

from burn.runtime.errors import FaultError


class DiskFullError(FaultError):
    """A write ran out of space (ENOSPC / EDQUOT): names the directory and the size that did not fit."""


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: the permissions a plain ``open()`` (0o666) or ``mkdir()``
    (0o777) would give, for files that ``mkstemp``/``mkdtemp`` created private (0600/0700)."""
    mask = os.umask(0)  # the only way to read the umask; restored at once
    os.umask(mask)
    return mode & ~mask


def out_of_space(err: BaseException) -> bool:
    """Whether ENOSPC / EDQUOT caused ``err`` (torch.save wraps the OSError in a RuntimeError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def raise_if_disk_full(
    err: BaseException, what: str, directory: str | os.PathLike, size: int, intact: str = ""
) -> None:
    """Raise a one-line DiskFullError from ``err`` when it is a full disk; return otherwise."""
    if not out_of_space(err):
        return
    try:
        free = f"{_megabytes(shutil.disk_usage(directory).free)} free there"
    except OSError:
        free = "free space unknown"
    raise DiskFullError(
        f"no space left on device in {directory}: {what} ({_megabytes(size)}) did not fit ({free})"
        f"{'; ' + intact if intact else ''}. Free some space, then run the same command again"
    ) from err


def state_nbytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (dicts, lists, tuples): about a checkpoint's size."""
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return len(obj) if isinstance(obj, (bytes, str)) else 0
