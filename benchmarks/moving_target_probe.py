"""How do the two classifiers evolve? Diagnostics per checkpoint of a pretraining stage.

    python launch/run.py stage=1 preset=tiny ... checkpoint.every_steps=20 checkpoint.keep_last=1000 run_dir=R
    python benchmarks/moving_target_probe.py R [--images 256]

For every checkpoint in R/checkpoints it runs both sides on the same fixed validation images (resize +
center crop, no augmentation) and prints, per classifier: the std of the L2-normalised outputs across
images (x sqrt(K): ~1 spread out, 0 all equal), the number of distinct argmax dimensions, the norms of
the output layer's weight and bias, and the mean |gamma| of its BatchNorm; and the mean cosine between
the student's and the teacher's output of the same image. It shows *which way* a pair collapses. The
first row is the run's own initialisation (the model built from its seed, as the trainer builds it:
stage 1's starting point), and ``drift`` the mean cosine between the target's output of an image now and
at that initialisation: 1.000 for a frozen target, lower the further a trained one has moved.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from burn.data.loaders import build_eval_loader  # noqa: E402
from burn.engine.distributed import seed_everything  # noqa: E402
from burn.models.burn import build_burn_model  # noqa: E402
from burn.resume.checkpoint import CheckpointManager  # noqa: E402
from burn.runtime.rundir import CHECKPOINTS  # noqa: E402


def spread(out: torch.Tensor) -> float:
    z = F.normalize(out.float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def top_share(out: torch.Tensor) -> float:
    """Share of the variance across images on the first principal direction (1/K: isotropic, 1: a line)."""
    s = torch.linalg.svdvals(out.float() - out.float().mean(0))
    return float(s[0] ** 2 / (s**2).sum())


def head_stats(head) -> str:
    s = torch.linalg.svdvals(head.fc1.weight.detach())
    return (
        f"|W1|={head.fc1.weight.norm():.2f} sv1(W1)^2 share={float(s[0] ** 2 / (s**2).sum()):.3f} "
        f"|b1|={head.fc1.bias.norm():.2f} gamma={head.bn0.weight.abs().mean():.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    manager = CheckpointManager(args.run_dir / CHECKPOINTS, keep_last=10**6)
    paths = manager.list_checkpoints()
    if not paths:
        raise SystemExit(f"no checkpoints in {args.run_dir / CHECKPOINTS}")
    cfg = OmegaConf.create(manager.load(paths[0])["config"])
    seed_everything(int(cfg.seed), 0)  # as the stage runner: the model below is the run's initialisation
    model = build_burn_model(cfg.model, "binact" if str(cfg.stage) == "1" else "binary")
    loader = build_eval_loader(cfg.data, split="val", batch_size=args.images, shard_id=0, num_shards=1, seed=0)
    images = next(iter(loader))[0][: args.images].cpu().float()
    with torch.no_grad():
        teacher_features = model.teacher(images)
    print(f"{len(images)} validation images; K={cfg.model.classifier_out}")
    initial_target = None
    for path in [None, *paths]:  # None: the initialisation
        state = manager.load(path) if path else {"step": 0}
        if path:
            model.load_trainable_state_dicts(state["model"])
        model.train()  # as in training: BatchNorm with batch statistics
        with torch.no_grad():
            p = model.student_classifier(model.student(images))
            t = model.teacher_classifier(teacher_features)
        if cfg.model.get("center_target", False):  # the target the loss saw
            t = t - t.mean(dim=0, keepdim=True)
        agree = float(F.cosine_similarity(p, t, dim=1).mean())
        initial_target = t if initial_target is None else initial_target
        drift = float(F.cosine_similarity(t, initial_target, dim=1).mean())
        print(
            f"step {state['step']:5d}  student spread={spread(p):.3f} pc1={top_share(p):.2f} "
            f"argmax={p.argmax(1).unique().numel():3d}  teacher spread={spread(t):.3f} pc1={top_share(t):.2f} "
            f"argmax={t.argmax(1).unique().numel():3d} "
            f"{head_stats(model.teacher_classifier)}  cos(p,t)={agree:.3f} drift={drift:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
