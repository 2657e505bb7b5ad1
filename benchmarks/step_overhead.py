"""Overhead of the suite's training loop over a bare loop, on the same tiny model and data.

Both loops run in this process on the same model, optimizer and DALI loader, interleaved in rounds
(this machine is noisy), so the ratio compares like with like. The suite loop is `train_until`: the
step plus the per-step preemption all-reduce, logging (TensorBoard, progress.json) every
`--log-every` steps and checkpoints every `--ckpt-every` steps.

    python benchmarks/step_overhead.py            # prints seconds per step of each and the ratio last
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from burn.config import CONF_DIR, register_configs  # noqa: E402
from burn.demo.synthetic import ensure_synthetic  # noqa: E402
from burn.engine.distributed import init_distributed, seed_everything  # noqa: E402
from burn.engine.trainer import PretrainTrainer  # noqa: E402
from burn.objective import lambda_at  # noqa: E402
from burn.resume.signals import PreemptionHandler  # noqa: E402


def bare_steps(trainer: PretrainTrainer, n: int) -> None:
    """The minimum a training loop must do: data, forward, backward, Adam step, schedule."""
    parts = trainer.parts
    model, optimizer, loader, accum = parts.model, parts.optimizer, parts.data, parts.batch.accumulation
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accum):
            view1, view2 = next(loader)
            out = model(view1, view2, lambda_at(trainer.step, parts.total_steps), 0.2)
            (out["loss"] / accum).backward()
        optimizer.step()
        parts.scheduler.step()
        trainer.step += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--ckpt-every", type=int, default=500)
    args = parser.parse_args()

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="burn-overhead-"))
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            "config",
            overrides=[
                "preset=tiny",
                "model.teacher_weights=null",
                f"data.root={work / 'data'}",
                f"run_dir={work / 'run'}",
                "log.progress_bar=off",
                f"steps={args.steps * args.rounds * 4}",
                f"log.every_steps={args.log_every}",
                f"checkpoint.every_steps={args.ckpt_every}",
            ],
        )
    ensure_synthetic(cfg.data)
    info = init_distributed()
    seed_everything(cfg.seed, info.rank)
    with PreemptionHandler() as preemption:
        trainer = PretrainTrainer(cfg, info, work / "run", preemption)
        trainer.prepare()
        bare_steps(trainer, 3)  # warm-up: allocator, DALI prefetch
        trainer.train_until(trainer.step + 3)
        suite, bare = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            bare_steps(trainer, args.steps)
            bare.append((time.perf_counter() - t0) / args.steps)
            t0 = time.perf_counter()
            trainer.train_until(trainer.step + args.steps)
            suite.append((time.perf_counter() - t0) / args.steps)
        trainer.metrics.close()
    # Short interleaved chunks; the minimum is the least disturbed measurement of each loop.
    print(f"{'loop':<8}{'min s/step':>12}{'median s/step':>15}   ({args.rounds} chunks of {args.steps} steps)")
    for name, times in (("bare", bare), ("suite", suite)):
        print(f"{name:<8}{min(times):>12.4f}{statistics.median(times):>15.4f}")
    print(f"median ratio: {statistics.median(suite) / statistics.median(bare):.3f}")
    print(f"overhead ratio (suite / bare, min): {min(suite) / min(bare):.3f}   (goal <= 1.05)")


if __name__ == "__main__":
    main()
