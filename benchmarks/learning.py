"""Does BURN pretraining help? The learning benchmark, on CPU, from nothing.

    python benchmarks/learning.py            # 3 seeds, every variant, label-free teacher (<= 30 min on 2 cores)
    python benchmarks/learning.py --teacher supervised   # the same with a teacher trained on the labels
    python benchmarks/learning.py --quick    # 1 seed, BURN and the baseline only (<= 8 min): the edit loop
    python benchmarks/learning.py --variant lr01=optim.teacher_classifier_lr_scale=0.1 --only burn lr01
    python benchmarks/learning.py --finetune # also fine-tunes on 10% of the labels (last line: its gap)

1. Generates a dataset with the project's generator (classes differ in shape and texture; hues are
   shared between classes, so colour alone does not name a class).
2. Trains a small teacher (ResNet-18) on its train split and saves it as a torchvision state dict
   (burn/demo/auto_teacher.py; the tiny preset's ``model.teacher_weights=auto``): ``--teacher ssl``
   (the default) without labels, as the paper's MoCo v2 teacher, its quality the k-NN top-1 of its
   features; ``--teacher supervised`` on the labels, its quality its top-1.
3. Runs, with the same linear-evaluation recipe and seeds:
   - ``burn``: stage 1 -> stage 2 -> linear with that teacher, the suite's defaults;
   - ``baseline``: linear evaluation of a randomly initialised student (``pretrained=random``);
   - ``random-teacher``: BURN with a random teacher trunk (shows that the teacher's knowledge is what
     transfers);
   - ``frozen``: BURN with the teacher classifier frozen at its random init;
   plus any ``--variant NAME=OVERRIDES`` (space-separated Hydra overrides inside one argument).
4. Prints top-1 per seed, mean and spread per variant, the KL term at the end of stage 1 (near 0
   means the two classifiers agree on a constant: collapse), the student's k-NN top-1 at the end of stage 2
   (the monitor's, a second view of the same backbone), and last ``BURN - baseline: +X.X points``.

5. With ``--finetune``: fine-tunes (stage=finetune) the ``burn`` runs' stage-2 backbones and random inits,
   same seeds, on 10% of the train labels (``meta/train_labeled_10pct.txt``, class-balanced), and prints
   last ``finetune 10%: BURN - random init: +X.X points``.

Every run is a real ``launch/submit.py ... cluster=local`` process; results land in --workdir
(default runs/learning-benchmark) and are reused when a run is complete (delete the folder to redo).

Deterministic on one machine: the teacher trains with ``auto_teacher.threads`` threads whatever the
process has, every run with OMP_NUM_THREADS = cores / --jobs (part of a run's cache key). The bits of a
CPU convolution depend on its thread count, so another --jobs (or another core count) gives other
numbers for the same seed; the same command gives the same ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from burn.runtime import rundir  # noqa: E402  (torch-free: the run directory's names)

DATA = {"classes": 16, "per_class": 80, "val_per_class": 25, "size": 48}
#: The pretraining and linear recipe of every run (tiny preset underneath).
COMMON = [
    "preset=tiny",
    f"data.synthetic.classes={DATA['classes']}",
    f"data.synthetic.per_class={DATA['per_class']}",
    f"data.synthetic.val_per_class={DATA['val_per_class']}",
    f"data.synthetic.size={DATA['size']}",
    "data.synthetic.generate=true",
    f"linear.num_classes={DATA['classes']}",
    "log.progress_bar=off",
    "checkpoint.every_steps=100000",
    "log.every_steps=10",
    "compare_baseline=false",
    "monitor.knn_every=60",
    # One micro-batch per step (the tiny preset accumulates two of 16): fewer, larger kernels.
    "train.per_gpu_batch=32",
    "linear.per_gpu_batch=64",
    # A probe that fits: after the tiny preset's 20 epochs its training loss is still ~2.0
    # (chance: ln 16 = 2.77), and the ranking of the runs is then partly the probe's noise.
    "linear.epochs=40",
    "linear.milestones=[24,32]",
]
#: 10 epochs (400 steps) per pretraining stage: at 6 BURN was still learning fast (32.3% -> 36.6% top-1 on the
#: same seeds, the baseline unchanged; docs/moving-target.md), and the table fits 30 minutes either way.
PRETRAIN = ["train.epochs=10"]
#: The teacher's length here: a label-free teacher that knows more gives BURN more (docs/moving-target.md:
#: k-NN 48.5% after 20 epochs, the tiny preset's, and BURN - baseline +9.3; 60 epochs, see there). The
#: demo keeps 20 (its 3 minutes).
TEACHER_EPOCHS = 60
VARIANTS = {
    "burn": [],
    "baseline": None,  # linear evaluation only, of a random student
    "random-teacher": ["model.teacher_weights=null"],
    "frozen": ["model.teacher_classifier=frozen"],
}


def run(cmd: list, log_path: Path, threads: int) -> None:
    # Runs go side by side with a share of the cores each: torch's thread pool slows down many times
    # over when it competes for cores (measured: 5x on 2 busy cores), so never oversubscribe.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{' '.join(cmd)} failed with {code}; log {log_path}:\n{tail}")


KL_TAG = "pretrain/loss/kl"  # burn/monitor/reporting.py: tag_of("pretrain", "kl")
KNN_TAG = "knn/top1"  # burn/engine/trainer.py: KnnEvaluation


def last_logged(stage_dir: Path, tag: str) -> float | None:
    """The value of `tag` logged last in a stage's TensorBoard files, or None."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(stage_dir / rundir.TENSORBOARD))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        return acc.Scalars(tag)[-1].value if tag in tags else None
    except Exception:  # a monitor, not the result: never fail the benchmark on it
        return None


def one(
    workdir: Path, data_root: Path, name: str, overrides: list | None, seed: int, extra: list, threads: int
) -> dict:
    # The teacher's objective comes in `extra` (main): it is part of every command, so of the cache key.
    base = [sys.executable, "launch/submit.py", *COMMON, f"data.root={data_root}", f"seed={seed}", "cluster=local"]
    if overrides is None:
        settings = ["stage=linear", "pretrained=random", *extra]
    else:
        settings = ["stage=all", "model.teacher_weights=auto", *PRETRAIN, *extra, *overrides]
    # Reuse a finished run only when its command and the config defaults (schema, preset) were the same.
    defaults = b"".join((REPO / f).read_bytes() for f in ("burn/config.py", "conf/preset/tiny.yaml"))
    key = " ".join(COMMON + settings) + f" threads={threads}"  # the numbers' bits depend on the thread count
    digest = hashlib.sha256(key.encode() + defaults).hexdigest()[:8]
    run_dir = workdir / "runs" / f"{name}-s{seed}-{digest}"
    linear_dir = run_dir / rundir.stage_dir_name("linear")
    result = linear_dir / rundir.LINEAR_RESULTS
    if not result.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        target = linear_dir if overrides is None else run_dir
        cmd = base + settings + [f"run_dir={target}"]
        started = time.time()
        run(cmd, run_dir / "log.txt", threads)
        print(f"  {name} seed {seed}: {time.time() - started:.0f} s", flush=True)
    top1 = json.loads(result.read_text())["top1"]
    if overrides is None:
        return {"top1": top1, "kl": None, "knn": None, "run_dir": run_dir}
    kl = last_logged(run_dir / rundir.stage_dir_name("1"), KL_TAG)
    knn = last_logged(run_dir / rundir.stage_dir_name("2"), KNN_TAG)
    return {"top1": top1, "kl": kl, "knn": knn, "run_dir": run_dir}


#: --finetune: the fine-tuning recipe on the 10% list (16 classes x 8 images: 2 steps per epoch of the tiny
#: preset's batch of 64, so 3x the tiny preset's 20 epochs, milestones scaled alike). lr and head multiplier:
#: the grid point 0.001 x 10, the tiny preset's (docs/finetuning.md: x10 on lr 0.01 diverged here).
FINETUNE = [
    "data.train_labeled_list=meta/train_labeled_10pct.txt",
    "finetune.epochs=60",
    "finetune.milestones=[36,48]",
    "finetune.eval_every_epochs=0",
    "finetune.lr=0.001",
    "finetune.head_lr_scale=10",
]


def finetune_one(
    workdir: Path, data_root: Path, start: str, backbone: Path | None, seed: int, extra: list, threads: int
):
    """Top-1 of one fine-tuning run (stage=finetune) from `backbone` (None: a random init), reused when done."""
    settings = [*FINETUNE, *extra, f"pretrained={backbone or 'random'}"]
    defaults = b"".join((REPO / f).read_bytes() for f in ("burn/config.py", "conf/preset/tiny.yaml"))
    digest = hashlib.sha256(" ".join(COMMON + settings).encode() + defaults).hexdigest()[:8]
    run_dir = workdir / "runs" / f"finetune-{start}-s{seed}-{digest}"
    result = run_dir / rundir.FINETUNE_RESULTS
    if not result.is_file():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "launch/submit.py", *COMMON, f"data.root={data_root}", f"seed={seed}", "cluster=local"]
        started = time.time()
        run(
            [*cmd, "stage=finetune", *settings, f"run_dir={run_dir}"], workdir / "runs" / f"{run_dir.name}.log", threads
        )
        print(f"  finetune from {start} seed {seed}: {time.time() - started:.0f} s", flush=True)
    return json.loads(result.read_text())


def finetune_comparison(workdir: Path, data_root: Path, burn_runs: dict, extra: list, jobs: int) -> None:
    """--finetune: the burn runs' stage-2 backbones and random inits fine-tuned on 10% of the labels, same
    seeds; a table, then last the line ``finetune 10%: BURN - random init: +X.X points``."""
    from burn.demo.synthetic import write_labeled_subsets

    if not (data_root / "meta" / "train_labeled_10pct.txt").is_file():  # a dataset generated before they were
        write_labeled_subsets(data_root)
    seeds = sorted(burn_runs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(jobs) as pool:
        futures = {
            (start, s): pool.submit(finetune_one, workdir, data_root, start, backbone, s, extra, threads)
            for s in seeds
            for start, backbone in (
                ("burn", Path(burn_runs[s]) / rundir.stage_dir_name("2") / rundir.BACKBONE),
                ("random", None),
            )
        }
        results = {key: future.result() for key, future in futures.items()}
    first = results["burn", seeds[0]]
    print(
        f"\nfine-tuning on {first['labeled_images']} labelled images ({first['labeled_list']}), "
        f"{first['recipe']['steps']} steps, every layer of the binary student + a new head:"
    )
    print(f"| start | top-1 per seed ({', '.join(map(str, seeds))}) | mean | spread (sd) |")
    print("| --- | --- | --- | --- |")
    means = {}
    for start in ("burn", "random"):
        tops = [results[start, s]["top1"] for s in seeds]
        means[start] = statistics.mean(tops)
        sd = statistics.stdev(tops) if len(tops) > 1 else 0.0
        print(f"| {start} | {' / '.join(f'{t:.1f}' for t in tops)} | {means[start]:.1f} | {sd:.1f} |")
    print(f"finetune 10%: BURN - random init: {means['burn'] - means['random']:+.1f} points")


def train_teacher_once(data_root: Path, extra: list) -> Path:
    """The tiny preset's auto teacher for this dataset, trained here before the runs start (they would
    otherwise race to train it side by side)."""
    from hydra import compose, initialize_config_dir

    from burn.config import CONF_DIR, register_configs
    from burn.demo.auto_teacher import ensure_teacher

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*COMMON, f"data.root={data_root}", *extra])
    return ensure_teacher(cfg.data, cfg.model.teacher_arch, cfg.auto_teacher)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one seed; burn, baseline and any --variant only (the edit loop)"
    )
    parser.add_argument("--seeds", type=int, nargs="*", help="default 0 1 2 (0 with --quick)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "learning-benchmark")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="an extra variant: NAME=override [override ...] (one argument)",
    )
    parser.add_argument("--only", nargs="*", help="run only these variants (baseline always runs)")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (each gets cores / jobs threads)")
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="also fine-tune the burn runs' backbones and random inits on 10%% of the labels (last line: the gap)",
    )
    parser.add_argument(
        "--teacher",
        choices=("ssl", "supervised"),
        default="ssl",
        help="the auto teacher's objective: label-free (the paper's kind of teacher) or on the labels",
    )
    parser.add_argument(
        "--teacher-epochs",
        type=int,
        default=TEACHER_EPOCHS,
        help=f"the auto teacher's training epochs (default {TEACHER_EPOCHS}; the tiny preset's own: 20)",
    )
    args = parser.parse_args()
    teacher = [f"auto_teacher.objective={args.teacher}", f"auto_teacher.epochs={args.teacher_epochs}"]
    args.extra = [*teacher, *args.extra]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    variants = dict(VARIANTS)
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        variants[name] = rest.split()
    if args.quick and not args.only:  # the controls cost two more BURN runs: the full benchmark has them
        variants = {k: v for k, v in variants.items() if k not in ("random-teacher", "frozen")}
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only or k == "baseline"}

    workdir = args.workdir.absolute()
    data_root = workdir / "data"
    started = time.time()
    from burn.demo.synthetic import generate_atomically

    if not data_root.is_dir():
        generate_atomically(data_root, **DATA, seed=0)
    print(
        f"learning benchmark: {DATA['classes']} classes x {DATA['per_class']} train / {DATA['val_per_class']} "
        f"val images ({DATA['size']} px) in {data_root}; seeds {seeds}",
        flush=True,
    )

    from burn.demo.teacher_report import quality

    teacher = train_teacher_once(data_root, args.extra)
    print(f"teacher: {teacher}", flush=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    report = json.loads(teacher.with_suffix(".json").read_text())
    if report["epochs"] != args.teacher_epochs:  # the file's name does not say its length: never mix them
        raise SystemExit(
            f"{teacher} was trained for {report['epochs']} epochs, --teacher-epochs {args.teacher_epochs} asked: "
            "delete it (and its .json) or use another --workdir"
        )
    made = f"{report['epochs']} epochs, seed {report['seed']}, {report['seconds']:.0f} s"
    print(f"teacher: {report['arch']}, {quality(report)} ({made})", flush=True)
    print(f"runs: OMP_NUM_THREADS={threads} each, {args.jobs} side by side", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            (name, s): pool.submit(one, workdir, data_root, name, ov, s, args.extra, threads)
            for s in seeds
            for name, ov in variants.items()
        }
        results = {name: [futures[name, s].result() for s in seeds] for name in variants}

    print(
        f"\n| variant | top-1 per seed ({', '.join(map(str, seeds))}) | mean | spread (sd) | stage-1 final KL "
        "| k-NN top-1 at the end of stage 2, mean |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    means = {}
    for name, rows in results.items():
        tops = [r["top1"] for r in rows]
        means[name] = statistics.mean(tops)
        sd = statistics.stdev(tops) if len(tops) > 1 else 0.0
        kls = [r["kl"] for r in rows if r["kl"] is not None]
        kl = " / ".join(f"{k:.3g}" for k in kls) if kls else "-"
        knns = [r["knn"] for r in rows if r["knn"] is not None]
        knn = f"{statistics.mean(knns):.1f}" if knns else "-"
        print(f"| {name} | {' / '.join(f'{t:.1f}' for t in tops)} | {means[name]:.1f} | {sd:.1f} | {kl} | {knn} |")
    print(f"\nwall time {time.time() - started:.0f} s")
    if "burn" in means:
        for other in ("random-teacher", "frozen"):
            if other in means:
                print(f"BURN - {other}: {means['burn'] - means[other]:+.1f} points")
        print(f"BURN - baseline: {means['burn'] - means['baseline']:+.1f} points")
    if args.finetune and "burn" in results:
        burn_runs = {s: row["run_dir"] for s, row in zip(seeds, results["burn"])}
        finetune_comparison(workdir, data_root, burn_runs, args.extra, args.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
