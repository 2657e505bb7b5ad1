"""Queue a stage, or all three chained, on SLURM (or run them here): the front door of burn-suite.

    python launch/submit.py stage=1 nodes=2 preset=tiny            # one stage, 2 nodes
    python launch/submit.py stage=all preset=tiny                  # stage 1 -> 2 -> linear (afterok)
    python launch/submit.py stage=all preset=tiny cluster=local    # same code, in this process
    python launch/submit.py stage=finetune preset=tiny pretrained=runs/tiny/stage2    # fine-tune a backbone
    python launch/submit.py -m stage=finetune finetune.lr=0.001,0.01,0.1 ...   # the lr grid (docs/finetuning.md)
    python launch/submit.py -m hydra/launcher=submitit_slurm optim.lr=1e-4,3e-4 ...   # a sweep

The config is composed, given the demo's inputs (a preset's generated dataset, the auto teacher's
path: burn/demo/inputs.py) and validated (dataset lists, batch divisibility, weight files) *before*
anything is queued: a queued job's config names every file it reads. On SLURM the command prints
job ids, the run dir, log locations and the TensorBoard command, and returns at once. Re-running the
same command skips complete stages (DONE), leaves still-queued jobs alone and resumes the others in
the same run dirs.

Sweeps (hydra-submitit-launcher): `-m hydra/launcher=submitit_slurm` queues one array task per
combination; inside it this same script runs the requested stage(s) on every task, one after the
other, in runs/<name>/<swept overrides>/. The job size comes from hydra.launcher.* (nodes,
tasks_per_node, timeout_min, signal_delay_s, cpus_per_task), not from nodes/gpus_per_node/time (give
signal_delay_s= the launcher's value too: the stages' slow-checkpoint warning reads it). The
launcher BLOCKS until every job has finished (run it under tmux/nohup). Its max_num_timeout
(default 0) only concerns Submitit's own USR2 handler, which burn's replaces: a preempted or timed
out sweep job still checkpoints and requeues itself up to max_requeues.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HELP = """
usage: python launch/submit.py stage=1|2|linear|finetune|all [key=value ...]

Validates the config, the dataset lists and every weight file, then queues the stage(s) on SLURM
through Submitit and returns at once (job ids, run directory, logs, status and TensorBoard commands),
or runs them here with cluster=local. Rerunning the same command skips complete stages, leaves queued
jobs alone and resumes the others. Jobs checkpoint and requeue themselves on preemption.

Stages:
  stage=1|2|linear|finetune  one stage (as launch/run.py --help describes; all but 1 need pretrained=)
  stage=all              stage 1 -> stage 2 -> linear evaluation chained with afterok, in
                         <run_dir>/stage1, stage2, linear; steps=/epochs= set the two pretraining
                         stages' length, linear evaluation keeps linear.epochs; chain_finetune=true also
                         fine-tunes stage 2's backbone after it, in <run_dir>/finetune

Keys people change:
  preset=paper|tiny            the paper's recipe (default) | minutes on generated data
  data.root=DIR                ImageNet-style dataset: train/, val/, meta/{train,train_labeled,val_labeled}.txt
  model.teacher_weights=FILE   the frozen teacher (MoCo v2 release, ...); auto: train a small one (small folders)
  run_dir=DIR                  where the run goes (default runs/<name>)
  nodes=N  gpus_per_node=N     job size: tasks = nodes x gpus_per_node
  partition=P  time=MIN  account=A  qos=Q  mem=64G  cpus_per_task=N
  cluster=auto|slurm|local     auto: SLURM when sbatch answers; local: in this process
  steps=N  epochs=E            the (pretraining) stages' length
  max_requeues=N               requeues after preemptions, time-outs and faults (a dead rank, a lost node)
  dry_run=true                 print the plan and the sbatch script(s); queue nothing
  container.runtime=pyxis|apptainer|podman container.image=IMAGE   run the jobs inside an image
  slurm.setup=[LINE,...] slurm.sbatch={OPTION:VALUE,...} slurm.srun=[ARG,...]   site set-up (docs/containers.md)
Every key with its meaning: burn/config.py. The composed config: --cfg job. Hydra's options: --hydra-help.

Exit status: 0 queued (or, cluster=local, complete); 2 bad config or input: one line naming the culprit,
nothing queued; 1 error. A local run stopped by a signal exits as launch/run.py does (75, 143, 130).

Examples:
  python launch/submit.py preset=tiny stage=all cluster=local
  python launch/submit.py stage=all nodes=2 partition=gpu time=4320 data.root=/datasets/imagenet \\
      model.teacher_weights=/models/moco_v2_800ep_pretrain.pth.tar
  python launch/submit.py stage=all nodes=2 data.root=/datasets/imagenet ... dry_run=true
  python launch/status.py runs/burn
"""

from launch.entry import CONF, prepare_config, print_help_if_asked, quote_image_argv, refuse_renamed_keys  # noqa: E402

print_help_if_asked(HELP)
refuse_renamed_keys("submit.py")
quote_image_argv()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from burn.config import LAUNCH, PATH_KEYS, RANDOM_BACKBONE, STAGES, absolute_path, keys_with_role, register_configs  # noqa: E402
from burn.demo.inputs import prepare_demo_inputs  # noqa: E402
from burn.demo.teacher_report import teacher_quality  # noqa: E402
from burn.resume.identity import check_resume_config  # noqa: E402
from burn.runtime import rundir, slurm_cli  # noqa: E402
from burn.runtime.environment import Environment  # noqa: E402
from burn.runtime.errors import UsageError, reported_as_one_line  # noqa: E402
from burn.validation import (  # noqa: E402
    check_batch,
    check_labels,
    check_pretrained,
    check_teacher,
    check_values,
    check_writable,  # shared with the stage runner
    stage_splits,
)
from launch import jobs, task  # noqa: E402
from launch.site import site_settings  # noqa: E402

register_configs()

STAGE_ORDER = ("1", "2", "linear")  # stage=all; chain_finetune=true adds "finetune" after linear
#: What each chained stage starts from: the product of this earlier stage (stage 2 the stage-1 extraction,
#: the evaluations stage 2's backbone).
STARTS_FROM = {"2": "1", "linear": "2", "finetune": "2"}
#: The stages the evaluations' own length keys (linear.epochs, finetune.epochs) set: steps=/epochs= are the
#: pretraining stages' in stage=all.
EVALUATION_STAGES = ("linear", "finetune")
#: Keys that choose where and how to queue, not what to compute (burn/config.py role=LAUNCH).
LAUNCH_KEYS = keys_with_role(LAUNCH)
#: Keys a sweep's run directory names already (runs/<name>/<overrides>/stage<N>), besides the launch keys.
IN_RUN_DIR_PATH = ("stage", "preset", "name")


class LaunchConfigError(UsageError):
    """The composed config cannot run; raised before anything is queued."""


# ---- run directories and the per-stage configs ----------------------------------------------------


def _sweep_suffix() -> str | None:
    """In a multirun, a deterministic sub-directory per job from its overrides (``optim.lr=0.0001``),
    leaving out launch keys, logging keys and the preset/name already in the path."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    skip = set(LAUNCH_KEYS) | set(IN_RUN_DIR_PATH)
    keep = sorted(
        o
        for o in HydraConfig.get().overrides.task
        if not o.startswith(("hydra", "log."))
        and not {k for k in skip if (o.split("=", 1)[0].lstrip("+~") + ".").startswith(k + ".")}
    )
    return ",".join(keep).replace("/", "_") or "default"


def base_run_dir(cfg: DictConfig) -> Path:
    """run_dir as given (absolute), else runs/<name>[/<sweep overrides>]: never a timestamp, so the
    same command lands in the same directory and resumes."""
    if cfg.run_dir:
        return Path(cfg.run_dir).absolute()
    path = Path("runs") / cfg.name
    suffix = _sweep_suffix()
    return (path / suffix if suffix else path).absolute()


def plan_stages(cfg: DictConfig) -> list[DictConfig]:
    """One resolved config per stage to run, in order, with run_dir and pretrained filled in.

    stage=all: run_dir is the parent of stage1/, stage2/, linear/ (and finetune/ with chain_finetune=true);
    stage 2 starts from stage1/stage1_extraction.pth, linear evaluation and fine-tuning from
    stage2/backbone.pth; steps=/epochs= shorten the pretraining stages, the evaluations keep their own
    linear.epochs / finetune.epochs."""
    stage = str(cfg.stage)
    if stage not in STAGES:
        raise LaunchConfigError(f"stage={stage!r}: choose one of {', '.join(STAGES)}")
    if OmegaConf.is_missing(cfg.data, "root"):
        raise LaunchConfigError(
            "data.root is not set: point it at an ImageNet-style tree (or use preset=tiny for the generated one)"
        )
    base = task.stage_config(OmegaConf.to_yaml(cfg, resolve=True))  # typed, detached from Hydra
    for key in PATH_KEYS:  # jobs may start in another directory
        OmegaConf.update(base, key, absolute_path(OmegaConf.select(base, key)))
    root = base_run_dir(cfg)
    if stage != "all":
        stage_cfg = copy.deepcopy(base)
        stage_cfg.run_dir = str(root if cfg.run_dir else root / rundir.stage_dir_name(stage))
        return [stage_cfg]
    if cfg.pretrained:
        raise LaunchConfigError(
            "pretrained= cannot be combined with stage=all: stage 2 starts from "
            "stage 1's extraction and linear evaluates stage 2's backbone"
        )
    planned = []
    for name in STAGE_ORDER + (("finetune",) if cfg.chain_finetune else ()):
        stage_cfg = copy.deepcopy(base)
        stage_cfg.stage = name
        stage_cfg.run_dir = str(root / rundir.stage_dir_name(name))
        previous = STARTS_FROM.get(name)
        start = root / rundir.stage_dir_name(previous) / rundir.STAGE_PRODUCTS[previous] if previous else None
        stage_cfg.pretrained = str(start) if start else None
        if name in EVALUATION_STAGES:  # a short pretraining is no reason to cut the evaluation of its result
            stage_cfg.steps = stage_cfg.epochs = None
        planned.append(stage_cfg)
    return planned


# ---- validation (before queueing) -----------------------------------------------------------------


def check_launch_keys(cfg: DictConfig) -> None:
    """The job size and limits (cluster is a closed choice: checked when the config is composed)."""
    for key in ("nodes", "gpus_per_node", "cpus_per_task", "time"):
        if cfg[key] < 1:
            raise LaunchConfigError(f"{key}={cfg[key]}: must be at least 1")
    if not 0 < cfg.signal_delay_s < cfg.time * 60:
        raise LaunchConfigError(
            f"signal_delay_s={cfg.signal_delay_s} must lie between 0 and the time "
            f"limit ({cfg.time} min = {cfg.time * 60} s)"
        )
    if cfg.max_requeues < 0:
        raise LaunchConfigError(f"max_requeues={cfg.max_requeues}: must be >= 0")
    site_settings(cfg)  # slurm.* and container.*: an option the suite sets itself, a bad image name


def dataset_splits(planned: list[DictConfig]) -> list[str]:
    """The splits the planned stages read: pretraining the unlabelled train list (and, with the k-NN
    monitor on, the labelled ones), linear the labelled train and val lists."""
    return list(dict.fromkeys(split for stage_cfg in planned for split in stage_splits(stage_cfg)))


def check_dataset(data_cfg: DictConfig, splits: list[str]) -> dict:
    """Check the root, its lists and their files (a root still to be generated, in a dry run, is not
    checked). Returns the sample lists by split."""
    from burn.data.loaders import validate_dataset

    try:
        return validate_dataset(data_cfg, splits)
    except (OSError, ValueError) as err:  # DatasetError is a ValueError
        raise LaunchConfigError(f"data.root={data_cfg.root}: {err}") from None


def complete_stages(planned: list[DictConfig]) -> list[DictConfig]:
    """The planned stages whose run directory holds DONE (skipped: nothing is made or run for them)."""
    return [c for c in planned if (Path(c.run_dir) / rundir.DONE).exists()]


def validate(
    cfg: DictConfig,
    planned: list[DictConfig],
    world_size: int,
    with_data: bool = True,
    pending: Sequence[DictConfig] = (),
) -> None:
    """Everything about the stages that can be known before queueing; raises LaunchConfigError naming the
    key. The launch keys were checked first, before the demo's inputs were made (:func:`launch`). The
    planned configs are final (prepare_demo_inputs ran): nothing here changes them. `pending`: the
    stages whose auto teacher a dry run left untrained (no file to check yet)."""
    for stage_cfg in planned:
        check_values(stage_cfg)
    done = complete_stages(planned)
    todo = [c for c in planned if not any(c is d for d in done)]
    if with_data and todo:
        lists = check_dataset(todo[0].data, dataset_splits(todo))
        for stage_cfg in todo:
            if str(stage_cfg.stage) in EVALUATION_STAGES:  # the head's classes hold every label
                check_labels({s: lists[s] for s in stage_splits(stage_cfg) if s in lists}, stage_cfg.linear.num_classes)
    for stage_cfg in planned:
        check_identity(stage_cfg)
    produced = set()  # weight files an earlier stage of this submission will write
    for stage_cfg in todo:
        check_batch(stage_cfg, world_size)
        check_writable(Path(stage_cfg.run_dir))
        if not any(stage_cfg is p for p in pending):
            check_teacher(stage_cfg)
        check_pretrained(stage_cfg, produced)
        produced |= {str(Path(stage_cfg.run_dir) / n) for n in (rundir.STAGE1_EXTRACTION, rundir.BACKBONE)}


def check_identity(stage_cfg: DictConfig) -> None:
    """A stage directory that holds a run already (complete or not) must hold this config's run: the
    stage runner checks it too, but a complete stage is skipped here and would otherwise look valid."""
    run_dir = Path(stage_cfg.run_dir)
    if (run_dir / rundir.CONFIG).is_file():
        check_resume_config((run_dir / rundir.CONFIG).read_text(), stage_cfg, run_dir, stage_cfg.checkpoint.force)


# ---- where to run ---------------------------------------------------------------------------------


def pick_cluster(choice: str, world_size: int) -> str:
    if choice == "auto":
        choice = "slurm" if slurm_cli.answers() else "local"
    elif choice == "slurm" and not slurm_cli.answers():
        raise LaunchConfigError(
            "cluster=slurm but `sbatch --version` / `sinfo` do not answer; start "
            "the controller (or bash slurm/local-cluster/start.sh), or use cluster=local"
        )
    if choice == "local" and world_size != 1:
        raise LaunchConfigError(
            f"cluster=local runs one process, but nodes x gpus_per_node = {world_size}; "
            "use nodes=1 gpus_per_node=1, or torchrun launch/run.py for several ranks"
        )
    return choice


def print_submission(cfg: DictConfig, submitted: list[jobs.SubmittedStage]) -> None:
    root = base_run_dir(cfg) if str(cfg.stage) == "all" else Path(submitted[0].stage_dir)
    print(f"burn-suite: stage={cfg.stage} on SLURM, {cfg.nodes} node(s) x {cfg.gpus_per_node} task(s)")
    for item in submitted:
        name = rundir.stage_dir_name(item.stage)
        if item.action == "done":
            print(f"  {name:7s} complete (DONE) - skipped")
            continue
        what = "already queued" if item.action == "queued" else "submitted"
        print(f"  {name:7s} job {item.job_id} {what}; logs {item.log_dir}/{item.job_id}_<task>_log.{{out,err}}")
    ids = " ".join(i.job_id for i in submitted if i.job_id)
    print(f"run dir:     {root}")
    print(f"status:      python {REPO / 'launch' / 'status.py'} {root}")
    print(f"TensorBoard: tensorboard --logdir {root}")
    if ids:
        print(f"cancel:      scancel {ids}")


def print_local_results(summaries: list[dict]) -> None:
    for summary in summaries:
        if "top1" in summary:
            what = "fine-tuning" if summary.get("stage") == "finetune" else "linear evaluation"
            results = Path(summary["run_dir"]) / rundir.RESULTS.get(str(summary.get("stage")), rundir.LINEAR_RESULTS)
            print(f"{what} top-1: {summary['top1']:.2f}% (top-5 {summary.get('top5', 0):.2f}%) in {results}")
    if summaries:
        print(f"TensorBoard: tensorboard --logdir {Path(summaries[0]['run_dir']).parent}")


def _length(stage_cfg: DictConfig) -> str:
    if stage_cfg.steps:
        return f"steps={stage_cfg.steps}"
    stage = str(stage_cfg.stage)
    section = stage_cfg[stage] if stage in EVALUATION_STAGES else stage_cfg.train
    return f"epochs={stage_cfg.epochs if stage_cfg.epochs is not None else section.epochs}"


def print_dry_run(cfg: DictConfig, planned: list[DictConfig], cluster: str) -> None:
    """The plan and, on SLURM, the sbatch script of every stage to queue; nothing is queued or written."""
    where = f"on SLURM, {cfg.nodes} node(s) x {cfg.gpus_per_node} task(s)" if cluster == "slurm" else "here"
    print(f"burn-suite dry run: stage={cfg.stage} {where}; nothing queued, run or written")
    todo = []
    for stage_cfg in planned:
        name = rundir.stage_dir_name(str(stage_cfg.stage))
        done = (Path(stage_cfg.run_dir) / rundir.DONE).exists()
        start = f", pretrained={stage_cfg.pretrained}" if stage_cfg.pretrained else ""
        print(
            f"  {name:7s} {stage_cfg.run_dir}"
            + (" complete (DONE): skipped" if done else f"  ({_length(stage_cfg)}{start})")
        )
        if not done:
            todo.append(stage_cfg)
    if cluster != "slurm" or not todo:
        return
    use_gpus = slurm_cli.partition_has_gpus(cfg.partition)
    previous = None
    for stage_cfg in todo:
        name = rundir.stage_dir_name(str(stage_cfg.stage))
        dependency = f"afterok:<job id of {previous}>" if previous else None
        executor = jobs.build_executor(stage_cfg, Path(stage_cfg.run_dir), dependency, use_gpus)
        folder = Path(stage_cfg.run_dir) / rundir.SLURM_DIR
        print(f"\n# sbatch script of {name} (Submitit writes it into {folder}/<job id>/)")
        print(jobs.sbatch_script(executor).rstrip())
        previous = name


def compare_with_baseline(eval_cfg: DictConfig, burn_summary: dict, max_requeues: int) -> None:
    """The same evaluation (linear, or finetune) of a randomly initialised student: what pretraining has
    to beat, in <run_dir>/baseline (<run_dir>/finetune-baseline)."""
    stage = str(eval_cfg.stage)
    baseline_cfg = copy.deepcopy(eval_cfg)
    baseline_cfg.pretrained = RANDOM_BACKBONE
    folder = rundir.BASELINE_DIR if stage == "linear" else f"{rundir.stage_dir_name(stage)}-{rundir.BASELINE_DIR}"
    baseline_cfg.run_dir = str(Path(eval_cfg.run_dir).parent / folder)
    baseline = task.run_stages_here([baseline_cfg], max_requeues)[-1]
    if "top1" in burn_summary and "top1" in baseline:
        print(f"teacher: {teacher_quality(eval_cfg.model.teacher_weights)}")
        print(
            f"{stage} top-1: BURN {burn_summary['top1']:.2f}% | no pretraining (random student) "
            f"{baseline['top1']:.2f}% | BURN - baseline: {burn_summary['top1'] - baseline['top1']:+.2f} points"
        )


def plan_and_prepare(cfg: DictConfig) -> tuple[list[DictConfig], list[DictConfig]]:
    """The stage configs to run, final: planned, then given the demo's inputs (the generated dataset,
    the auto teacher's path: burn/demo/inputs.py) before anything is validated or queued; a dry run
    makes nothing. Returns them and the stages whose auto teacher a dry run left untrained."""
    planned = plan_stages(cfg)
    pending = prepare_demo_inputs(planned, complete=complete_stages(planned), write=not cfg.dry_run)
    return planned, pending


def launch(cfg: DictConfig) -> None:
    """Validate, then queue on SLURM, run here, or (inside a sweep job) run on every task."""
    prepare_config(cfg, STAGES)  # closed choices; absolute paths; a preset generates data at its own data.root only
    # The launch keys need no data: refuse a bad one before the demo's inputs are generated and trained
    # (minutes on a busy machine, and files written, for a command that then exits 2).
    check_launch_keys(cfg)
    planned, pending = plan_and_prepare(cfg)
    if cfg.dry_run:
        validate(cfg, planned, cfg.nodes * cfg.gpus_per_node, pending=pending)
        print_dry_run(cfg, planned, pick_cluster(cfg.cluster, cfg.nodes * cfg.gpus_per_node))
        return
    environment = Environment.read()
    if environment.in_submitit_job:  # a hydra-submitit-launcher sweep job: run the stages here, queue nothing
        # Every task prepared the same inputs above (one trains the auto teacher, the others wait for
        # it); the stage runner validates the data on rank 0, the rest is checked here.
        validate(cfg, planned, environment.ntasks or 1, with_data=False)
        task.run_stages_here(planned, cfg.max_requeues)
        return
    world_size = cfg.nodes * cfg.gpus_per_node
    validate(cfg, planned, world_size)
    if pick_cluster(cfg.cluster, world_size) == "local":
        summaries = task.run_stages_here(planned, cfg.max_requeues)
        print_local_results(summaries)
        if cfg.compare_baseline and str(cfg.stage) == "all":
            for stage_cfg, summary in zip(planned, summaries):
                if str(stage_cfg.stage) in EVALUATION_STAGES:  # linear (and finetune with chain_finetune)
                    compare_with_baseline(stage_cfg, summary, cfg.max_requeues)
        return
    print_submission(cfg, jobs.submit_stages(planned, cfg.max_requeues))


@hydra.main(version_base=None, config_path=str(CONF), config_name="config")  # also as the burn-submit command
def main(cfg: DictConfig) -> None:
    # Hydra would print a traceback for an error that is the user's config (or data), not a bug.
    with reported_as_one_line("submit.py"):
        launch(cfg)


if __name__ == "__main__":
    main()
