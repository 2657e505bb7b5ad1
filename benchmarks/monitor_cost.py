"""Share of stage time the online k-NN monitor takes, on the tiny preset (CPU or GPU).

Runs `train_until` (the stage's real loop: steps, logging, checkpoints, monitors) of a tiny-preset
stage 1 in this process and times the k-NN evaluations inside it. Prints the measured share at the
cadence used, then the share at the default cadence (`monitor.knn_every` of the schema) projected
from the measured seconds per step and per evaluation: eval / (eval + every x step).

    python benchmarks/monitor_cost.py                      # the tiny preset's cadence, 24 steps
    python benchmarks/monitor_cost.py --steps 100 --every 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from burn.config import CONF_DIR, MonitorConfig, register_configs  # noqa: E402
from burn.demo.synthetic import ensure_synthetic  # noqa: E402
from burn.engine.distributed import init_distributed, seed_everything  # noqa: E402
from burn.engine.trainer import KnnEvaluation, PretrainTrainer  # noqa: E402
from burn.resume.signals import PreemptionHandler  # noqa: E402


class TimedMonitor:
    """The trainer's KnnMonitor (in its KnnEvaluation), with the wall time of each call recorded."""

    def __init__(self, monitor):
        self.monitor, self.seconds, self.last = monitor, [], {}

    def due(self, step: int, total_steps: int) -> bool:
        return self.monitor.due(step, total_steps)

    def __call__(self, student):
        started = time.perf_counter()
        self.last = self.monitor(student)
        self.seconds.append(time.perf_counter() - started)
        return self.last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="stage length (default: the tiny preset's)")
    parser.add_argument("--every", type=int, default=None, help="monitor.knn_every (default: the tiny preset's)")
    parser.add_argument("--data", default="data/synthetic-tiny", help="the tiny dataset (generated if absent)")
    args = parser.parse_args()

    register_configs()
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            "preset=tiny",
            "model.teacher_weights=null",
            f"data.root={args.data}",
            f"run_dir={run_dir}",
            "log.progress_bar=off",
            "checkpoint.every_steps=1000000",
        ]
        overrides += [f"steps={args.steps}"] if args.steps else []
        overrides += [f"monitor.knn_every={args.every}"] if args.every else []
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=overrides)
        ensure_synthetic(cfg.data)
        info = init_distributed()
        seed_everything(cfg.seed, info.rank)
        with PreemptionHandler() as preemption:
            trainer = PretrainTrainer(cfg, info, Path(run_dir), preemption)
            trainer.prepare()
            (evaluation,) = (m for m in trainer.parts.after_step if isinstance(m, KnnEvaluation))
            timed = evaluation.monitor = TimedMonitor(evaluation.monitor)
            started = time.perf_counter()
            trainer.train_until(trainer.total_steps)
            stage = time.perf_counter() - started
            trainer.metrics.close()

    knn = sum(timed.seconds)
    evals = len(timed.seconds)
    per_step = (stage - knn) / trainer.total_steps
    per_eval = knn / evals
    default_every = MonitorConfig().knn_every
    print(
        f"{trainer.total_steps} steps, k-NN every {cfg.monitor.knn_every} steps and at the last "
        f"({evals} evaluations, bank {timed.last['bank']} / queries {timed.last['queries']} images)"
    )
    print(f"stage loop {stage:.1f} s, of which k-NN {knn:.1f} s: {100 * knn / stage:.1f}% at this cadence")
    print(f"{per_step:.3f} s per step, {per_eval:.2f} s per k-NN evaluation ({per_eval / per_step:.1f} steps)")
    print(
        f"projected at the default cadence (every {default_every} steps): "
        f"{100 * per_eval / (per_eval + default_every * per_step):.2f}% of stage time"
    )


if __name__ == "__main__":
    main()
