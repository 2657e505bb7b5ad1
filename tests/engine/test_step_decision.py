"""checkpoint.every_minutes: rank 0's clock decides for every rank (burn/engine/step_decision.py). On the
cluster, with two ranks, a kill and an exact resume from a timed checkpoint:
tests/slurm/test_faults_cluster.py."""

from __future__ import annotations

import time

from burn.engine.step_decision import CheckpointClock, step_decision


def test_only_rank_0s_clock_says_due_and_a_checkpoint_resets_it():
    main, other, off = (
        CheckpointClock(0.001, is_main=True),
        CheckpointClock(0.001, is_main=False),
        CheckpointClock(None, True),
    )
    assert not main.due()
    time.sleep(0.07)
    assert main.due() and not other.due() and not off.due()
    main.reset()
    assert not main.due()
    assert step_decision(2, True, distributed=False) == (2, True)
