"""The object a Submitit stage job unpickles and calls; light on purpose.

Submitit's job process unpickles this class (importing this module) and only then installs its own
signal handlers; the stage code (torch, DALI, the models) takes seconds to import, more on a loaded
node. So this module imports nothing heavy: on import inside a job, and again first thing in
`__call__` (over Submitit's handlers), it installs burn's flag-only recorder, and only then imports
the stage code. A preemption notice during any of that is recorded and ends in a checkpoint at step
boundary 0 and a requeue, not in a FAILED job (see burn/runtime/signal_flags.py for which signal means what).
"""

from __future__ import annotations

from typing import Any

import submitit

from burn.runtime.environment import Environment
from burn.runtime.signal_flags import ignore_once_complete, install_early

if Environment.read().submitit_folder:  # unpickling inside a job (not submit.py importing us)
    install_early()


class StageJob(submitit.helpers.Checkpointable):
    """One stage on every task of a Submitit job (the stage config travels as resolved YAML)."""

    def __init__(self, stage_yaml: str, max_requeues: int):
        self.stage_yaml = stage_yaml
        self.max_requeues = max_requeues

    def __call__(self) -> dict[str, Any]:
        install_early()  # Submitit replaced the handlers after unpickling; the heavy imports follow
        from burn.runtime.errors import reported_as_one_line
        from launch.task import run_task

        # Bad input (exit 2) or a fault (exit 1): one line, the last of the job's log, no traceback;
        # SystemExit leaves no Submitit result, SLURM marks the job FAILED and cancels its dependants.
        with reported_as_one_line("burn job"):
            result = run_task(self.stage_yaml, self.max_requeues)
        ignore_once_complete()  # the stage is done: a USR2 now must not turn it into a FAILED job
        return result
