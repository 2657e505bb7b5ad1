"""Stage runner: `python launch/run.py stage=1|2|linear [overrides]`.

Runs one stage in this process, or as one rank of many under srun / torchrun. Exit status: 0 done,
75 checkpointed after a preemption signal (requeue me), 143 cancelled (SIGTERM) and 130 interrupted
(Ctrl-C) after a checkpoint, 1 error, 2 bad input (one line). See burn/engine/stage.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# Before the heavy imports (seconds, more on a loaded node): a preemption notice, scancel or Ctrl-C
# that arrives meanwhile is recorded, not fatal; the stage acts on it at start-up.
from burn.signal_flags import install_early  # noqa: E402

install_early()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from burn.config import register_configs  # noqa: E402
from burn.engine.stage import run_stage  # noqa: E402
from burn.errors import USAGE_EXIT_CODE, UsageError  # noqa: E402

register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        code = run_stage(cfg)
    except UsageError as err:
        # The user's input, not a bug: one line naming the culprit, no traceback.
        print(f"run.py: {err}", file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT_CODE)
    sys.exit(code)


if __name__ == "__main__":
    main()
