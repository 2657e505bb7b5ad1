"""Test-only fault injection: ``BURN_TEST_KILL_AT_STEP=<rank>:<step>`` makes that global rank SIGKILL
itself right after it completes that optimizer step, on every run of the stage (what the kernel's
out-of-memory killer does to a rank). The cluster tests use it to show the crash-loop rule
(tests/slurm/test_faults_cluster.py). Read only when set; nothing sets it outside the tests.
"""

from __future__ import annotations

import os
import signal

ENV = "BURN_TEST_KILL_AT_STEP"


def kill_if_asked(step: int, rank: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted_rank, _, wanted_step = spec.partition(":")
    if int(wanted_rank) == rank and int(wanted_step) == step:
        print(f"{ENV}={spec}: rank {rank} kills itself (SIGKILL) after step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
