"""Atomic, verifiable checkpoint files that survive ``kill -9`` at any moment.

Layout of a checkpoint directory (the contract, what goes in and how a restart picks one:
docs/checkpoint-contract.md)::

    ckpt-00001000.pt          torch.save(state) of the trainer's dict
    ckpt-00001000.pt.sha256   sidecar: "<sha256 hex>  ckpt-00001000.pt" (sha256sum format)

A ``.pt`` file without a sidecar whose digest matches it is incomplete and never read.

Write protocol of :meth:`CheckpointManager.save` (each step survives a kill at any instant):

1. ``torch.save`` into a hidden temp file in the same directory, flush, ``fsync``.
2. Hash the temp file, ``os.replace`` it onto ``ckpt-<step>.pt``, fsync the directory.
3. Write the sidecar the same way (temp, fsync, replace, fsync the directory).
4. Only then prune checkpoints older than the ``keep_last`` newest.

Overwriting a step that already holds a valid checkpoint must never leave the step without
a valid copy. Between steps 2 and 3 the old sidecar would not match the new bytes, so before
the replace the sidecar is rewritten to list *both* digests (old and new, one line each);
whichever file is in place verifies. Step 3 then rewrites it with the new digest alone.

Hidden temp files (``.tmp-ckpt-*``) left by a killed writer are ignored by readers and
removed by the next save. One writer per directory (the trainer saves on rank 0 only);
this module makes no process-group calls. It imports torch only to save and load: finding the newest
valid checkpoint (:meth:`CheckpointManager.latest_step`) is quick without it (launch/batch.py, in the
batch shell, decides a requeue with it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from burn.runtime.errors import UsageError
from burn.runtime.files import raise_if_disk_full, state_nbytes
from burn.runtime.rundir import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, fsync_directory, write_temp_beside

log = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
_SIDECAR_RE = re.compile(r"^ckpt-(\d{8})\.pt\.sha256$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_TEMP_PREFIX = ".tmp-"
_HASH_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded or written. The message names the file."""


class CheckpointIntegrityError(CheckpointError):
    """A checkpoint is incomplete or corrupt (missing/mismatching sidecar, truncated bytes).

    This is what a killed writer or a damaged disk leaves behind;
    :meth:`CheckpointManager.load_latest` skips such files and falls back to older ones.
    """


class CheckpointVersionError(CheckpointError, UsageError):
    """A suite checkpoint of a version this code does not read: the run directory belongs to another
    burn-suite. One line, exit status 2 (the entry points), like any run directory that does not fit."""


def check_version(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a burn-suite checkpoint whose ``version`` is not :data:`CHECKPOINT_VERSION`, naming the
    file and the version. A dict without the suite's ``format`` tag is not one and passes."""
    if state.get("format") == CHECKPOINT_FORMAT and state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointVersionError(
            f"{path}: checkpoint version {state.get('version')!r}, but this burn-suite reads version "
            f"{CHECKPOINT_VERSION} only; continue it with the burn-suite that wrote it, or start the stage "
            f"in a new run_dir"
        )


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint of ``step``: ``ckpt-<step:08d>.pt``."""
    return f"ckpt-{step:08d}.pt"


def sidecar_path(checkpoint: Path) -> Path:
    """The sha256 sidecar of a checkpoint file: ``<name>.sha256`` next to it."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


def _hash_stream(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as stream:
        return _hash_stream(stream)


def read_sidecar(checkpoint: Path) -> list[str]:
    """Digests the sidecar of ``checkpoint`` accepts (one, or two during an overwrite).

    Raises CheckpointIntegrityError when the sidecar is missing or malformed.
    """
    sidecar = sidecar_path(checkpoint)
    try:
        text = sidecar.read_text(encoding="ascii")
    except FileNotFoundError:
        raise CheckpointIntegrityError(
            f"{checkpoint}: sidecar {sidecar.name} is missing, so the checkpoint is incomplete "
            "(the writer was probably killed before finishing)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointIntegrityError(f"{checkpoint}: cannot read sidecar {sidecar}: {err}") from err
    digests = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if len(fields) != 2 or not _DIGEST_RE.match(fields[0]) or fields[1] != checkpoint.name:
            raise CheckpointIntegrityError(
                f"{checkpoint}: sidecar {sidecar}, line {line_number} is malformed: {line!r} "
                f"(expected '<64 hex digits>  {checkpoint.name}')"
            )
        digests.append(fields[0])
    if not digests:
        raise CheckpointIntegrityError(f"{checkpoint}: sidecar {sidecar} is empty")
    return digests


def _write_temp(directory: Path, final_name: str, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a hidden, fsynced temp file next to ``final_name``; the caller replaces it."""
    return write_temp_beside(directory / final_name, write, prefix=f"{_TEMP_PREFIX}{final_name}.", suffix="")


def _write_sidecar(checkpoint: Path, digests: list[str]) -> None:
    text = "".join(f"{digest}  {checkpoint.name}\n" for digest in dict.fromkeys(digests))
    sidecar = sidecar_path(checkpoint)
    temp = _write_temp(checkpoint.parent, sidecar.name, lambda stream: stream.write(text.encode("ascii")))
    os.replace(temp, sidecar)
    fsync_directory(checkpoint.parent)


class CheckpointManager:
    """Saves, verifies, lists and prunes the checkpoints of one run directory.

    Args:
        directory: the ``checkpoints/`` folder of a stage run; created on the first save.
        keep_last: how many of the newest checkpoints survive pruning (at least 1).
    """

    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 3) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"CheckpointManager: keep_last must be an int >= 1, got {keep_last!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.last_save_seconds: float | None = None
        """Wall-clock seconds of the latest successful save (write, hash, fsyncs, prune)."""

    def path_for(self, step: int) -> Path:
        """Where the checkpoint of ``step`` lives (whether or not it exists)."""
        return self.directory / checkpoint_name(step)

    def list_checkpoints(self) -> list[Path]:
        """All ``ckpt-<step>.pt`` files, oldest step first, *not* verified (see :meth:`verify`)."""
        return [self.path_for(step) for step in self._steps(_CHECKPOINT_RE)]

    def verify(self, path: str | os.PathLike[str]) -> None:
        """Check that ``path`` exists and matches its sidecar; raise CheckpointIntegrityError if not."""
        path = Path(path)
        with self._open_verified(path):
            pass

    def latest_step(self) -> int | None:
        """Step of the newest checkpoint whose bytes match its sidecar, or None."""
        for path in reversed(self.list_checkpoints()):
            try:
                self.verify(path)
            except CheckpointIntegrityError as err:
                log.warning("Skipping checkpoint %s: %s", path, err)
                continue
            return int(_CHECKPOINT_RE.match(path.name).group(1))
        return None

    def save(self, state: Mapping[str, Any], step: int) -> Path:
        """Write ``state`` as the checkpoint of ``step`` atomically, then prune; return its path.

        A full disk raises :class:`burn.runtime.files.DiskFullError` (one line: directory, size, the checkpoint
        that is still intact); nothing earlier is touched."""
        try:
            return self._save(state, step)
        except BaseException as err:
            older = [p.name for p in self.list_checkpoints() if p.name < checkpoint_name(step)]
            intact = f"the previous checkpoint {older[-1]} is intact" if older else "no earlier checkpoint"
            raise_if_disk_full(err, f"the checkpoint of step {step}", self.directory, state_nbytes(state), intact)
            raise

    def _save(self, state: Mapping[str, Any], step: int) -> Path:
        """:meth:`save` without the full-disk message.

        A failed save raises, deletes nothing and leaves every earlier checkpoint intact.
        Saving a step that already exists replaces it without a moment where the step lacks
        a valid copy.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"CheckpointManager.save: state must be a dict, got {type(state).__name__}")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 10**8:
            raise ValueError(f"CheckpointManager.save: step must be an int in [0, 1e8), got {step!r}")
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
        final = self.path_for(step)
        import torch

        temp = _write_temp(self.directory, final.name, lambda stream: torch.save(dict(state), stream))
        try:
            digest = sha256_of_file(temp)
            previous = self._listed_digests(final)
            if previous:
                # Overwrite: let the sidecar accept old and new bytes while the replace happens.
                _write_sidecar(final, previous + [digest])
            os.replace(temp, final)
            fsync_directory(self.directory)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _write_sidecar(final, [digest])
        self._prune(saved_step=step)
        self.last_save_seconds = time.perf_counter() - started
        log.info("Saved checkpoint %s in %.2f s", final, self.last_save_seconds)
        return final

    def load(self, path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
        """Verify ``path`` against its sidecar and load it with ``torch.load(weights_only=True)``.

        Raises CheckpointIntegrityError for missing/incomplete/corrupt files and CheckpointError
        for files that verify but cannot be loaded safely (e.g. pickled objects).
        """
        import torch

        path = Path(path)
        # Hash and load through one open file: a concurrent replace cannot swap the bytes between.
        with self._open_verified(path) as stream:
            try:
                state = torch.load(stream, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as err:
                raise CheckpointError(
                    f"{path}: refused by torch.load(weights_only=True); the file holds objects "
                    f"outside the tensor/container allowlist and is not a burn-suite checkpoint: {err}"
                ) from err
            except Exception as err:  # zip/storage errors from a file that nonetheless verifies
                raise CheckpointError(f"{path}: torch.load failed: {type(err).__name__}: {err}") from err
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a dict of state, found {type(state).__name__}")
        check_version(state, path)
        return state

    def load_latest(self, map_location: Any = "cpu") -> tuple[dict[str, Any], Path] | None:
        """Load the newest valid checkpoint: ``(state, path)``, or None when there is none.

        Incomplete or corrupt files are skipped with a warning naming each one. A file that
        verifies but is unsafe to load, or is a suite checkpoint of another version, raises
        CheckpointError: that is not a crash artefact.
        """
        for path in reversed(self.list_checkpoints()):
            try:
                return self.load(path, map_location=map_location), path
            except CheckpointIntegrityError as err:
                log.warning("Skipping checkpoint %s: %s", path, err)
        return None

    # -- internals ---------------------------------------------------------------------------

    def _open_verified(self, path: Path) -> IO[bytes]:
        """Open ``path``, check its sha256 against the sidecar, return it rewound to byte 0."""
        accepted = read_sidecar(path)
        try:
            stream = open(path, "rb")
        except FileNotFoundError:
            raise CheckpointIntegrityError(f"{path}: checkpoint file is missing") from None
        try:
            actual = _hash_stream(stream)
            if actual not in accepted:
                raise CheckpointIntegrityError(
                    f"{path}: sha256 {actual} does not match sidecar {sidecar_path(path).name} "
                    f"({', '.join(accepted)}); the file is truncated or corrupt"
                )
            stream.seek(0)
        except BaseException:
            stream.close()
            raise
        return stream

    def _listed_digests(self, checkpoint: Path) -> list[str]:
        """Digests the current sidecar accepts; empty when absent or malformed (nothing to keep)."""
        if not checkpoint.exists():
            return []
        try:
            return read_sidecar(checkpoint)
        except CheckpointIntegrityError:
            return []

    def _steps(self, pattern: re.Pattern[str]) -> list[int]:
        if not self.directory.is_dir():
            return []
        steps = (pattern.match(entry.name) for entry in self.directory.iterdir())
        return sorted(int(match.group(1)) for match in steps if match)

    def _remove_stale_temp_files(self) -> None:
        for stale in self.directory.glob(f"{_TEMP_PREFIX}ckpt-*"):
            log.info("Removing leftover temp file %s (a writer was interrupted)", stale)
            stale.unlink(missing_ok=True)

    def _prune(self, saved_step: int) -> None:
        """Delete all but the ``keep_last`` newest checkpoints at or below ``saved_step``.

        The checkpoint just written always survives. Steps above it (left by a run that resumed
        from an older checkpoint) are not touched: training overwrites them when it gets there.
        """
        older = {*self._steps(_CHECKPOINT_RE), *self._steps(_SIDECAR_RE)}
        older = sorted((step for step in older if step < saved_step), reverse=True)
        doomed = older[self.keep_last - 1 :]
        for step in doomed:
            checkpoint = self.path_for(step)
            # Sidecar first: an interrupted prune leaves an unreadable .pt, never a bad match.
            sidecar_path(checkpoint).unlink(missing_ok=True)
            checkpoint.unlink(missing_ok=True)
            log.debug("Pruned checkpoint %s (keep_last=%d)", checkpoint, self.keep_last)
        if doomed:
            fsync_directory(self.directory)
