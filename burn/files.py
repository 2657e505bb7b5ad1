"""Small file-system helpers shared by the modules that write files atomically (kept free of heavy
imports: the data tools and the stage start-up both use them)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: the permissions a plain ``open()`` (0o666) or ``mkdir()``
    (0o777) would give, for files that ``mkstemp``/``mkdtemp`` created private (0600/0700)."""
    mask = os.umask(0)  # the only way to read the umask; restored at once
    os.umask(mask)
    return mode & ~mask


def write_atomic(path: Union[str, os.PathLike], data: Union[bytes, str]) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one, never a part.

    The temp file lives in the same directory (``os.replace`` is atomic only within one
    filesystem) and is fsynced first, so a crash cannot leave an empty file under the real name.
    Permissions follow the umask, as a plain ``open()`` would create them."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data.encode() if isinstance(data, str) else data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
