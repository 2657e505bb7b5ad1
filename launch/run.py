"""Stage runner: `burn-run stage=1|2|linear [overrides]` (or `python launch/run.py ...`).

Runs one stage in this process, or as one rank of many under srun / torchrun. Exit status: 0 done,
75 checkpointed after a preemption signal (requeue me), 143 cancelled (SIGTERM) and 130 interrupted
(Ctrl-C) after a checkpoint, 1 error, 2 bad input (one line). See burn/engine/stage.py.
"""

import sys

# Before the heavy imports (seconds, more on a loaded node): a preemption notice, scancel or Ctrl-C
# that arrives meanwhile is recorded, not fatal; the stage acts on it at start-up.
from burn.runtime.signal_flags import ignore_once_complete, install_early

install_early()

HELP = """
usage: python launch/run.py stage=1|2|linear|finetune [key=value ...]

Runs one stage in this process: alone, as one rank under torchrun, or as one task of srun inside
sbatch. A rerun of the same command resumes from the run directory's newest checkpoint; a complete
stage does nothing. (launch/submit.py queues stages on SLURM and chains them.)

Stages:
  stage=1        pretraining, binary activations; writes <run_dir>/stage1_extraction.pth
  stage=2        pretraining, binary weights too; pretrained=<stage-1 extraction>, or pretrained=random
                 for single-stage pretraining from scratch; writes <run_dir>/backbone.pth
  stage=linear   linear evaluation of pretrained=<backbone.pth or stage-2 run dir> (random: the
                 no-pretraining baseline); writes <run_dir>/linear_eval.json
  stage=finetune fine-tuning of the whole binary student + a new head on data.train_labeled_list, from
                 pretrained=<backbone.pth or stage-2 run dir> (or random); writes <run_dir>/finetune_eval.json
                 (recipe: finetune.*, docs/finetuning.md)

Keys people change:
  preset=paper|tiny            the paper's recipe (default) | minutes on generated data (data/synthetic-tiny)
  data.root=DIR                ImageNet-style dataset: train/, val/, meta/{train,train_labeled,val_labeled}.txt
  model.teacher_weights=FILE   the frozen teacher (MoCo v2 release, ...); auto: train a small one (small folders)
  pretrained=FILE|DIR|random   what stage 2 / linear / finetune start from
  run_dir=DIR                  the stage's directory (default runs/<name>/stage1, stage2, linear)
  steps=N  epochs=E            this stage's length (steps win)
  train.global_batch=N         images per optimizer step over all ranks (at most train.per_gpu_batch per forward)
  train.precision=fp16|bf16|fp32
  optim.lr=LR                  pretraining learning rate (linear evaluation: linear.lr, linear.epochs)
  checkpoint.every_steps=N     periodic checkpoints (also on preemption and at the end)
  checkpoint.every_minutes=M   ... or every M minutes, whichever comes first (default 20)
  checkpoint.force=true        resume although the model, data, optim.* or the teacher file changed (logged);
                               without it such a resume is refused with one line naming the key (old -> new)
Every key with its meaning: burn/config.py. The composed config: --cfg job. Hydra's options: --hydra-help.

Exit status: 0 complete; 75 preempted (SIGUSR2): checkpoint written, requeue me; 143 cancelled (SIGTERM)
and 130 interrupted (Ctrl-C), after a checkpoint; 1 error (a bad image or a full disk: one line, last);
2 bad input: one line naming the culprit, nothing written.

Examples:
  python launch/run.py stage=1 preset=tiny
  torchrun --nproc_per_node 8 launch/run.py stage=1 data.root=/datasets/imagenet model.teacher_weights=moco.pth
  python launch/run.py stage=2 pretrained=runs/burn/stage1/stage1_extraction.pth data.root=/datasets/imagenet ...
  python launch/run.py stage=linear pretrained=runs/burn/stage2/backbone.pth data.root=/datasets/imagenet
  python launch/run.py stage=finetune pretrained=runs/burn/stage2 data.root=/datasets/imagenet \
      data.train_labeled_list=meta/train_labeled_1pct.txt
"""

from launch.entry import CONF, prepare_config, print_help_if_asked, quote_image_argv, refuse_renamed_keys  # noqa: E402

print_help_if_asked(HELP)
refuse_renamed_keys("run.py")
quote_image_argv()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from burn.config import register_configs  # noqa: E402
from burn.demo.inputs import prepare_demo_inputs  # noqa: E402
from burn.engine.stage import resolve_run_dir, run_stage  # noqa: E402
from burn.runtime.environment import Environment, image_stamp  # noqa: E402
from burn.runtime.errors import reported_as_one_line  # noqa: E402
from burn.runtime.rundir import DONE  # noqa: E402

register_configs()


@hydra.main(version_base=None, config_path=str(CONF), config_name="config")  # also as the burn-run command
def main(cfg: DictConfig) -> None:
    # Bad input (exit 2) or a fault such as an undecodable image or a full disk (exit 1): one line
    # naming the culprit, the last line of the output, no traceback.
    with reported_as_one_line("run.py"):
        prepare_config(cfg)
        image = image_stamp()
        if image:  # which image every task runs in (container.runtime, slurm/stage.sbatch)
            environment = Environment.read()
            print(f"burn: rank {environment.rank}/{environment.world_size} in image {image}", flush=True)
        # The demo's inputs (generated data, the auto teacher's path) before anything is checked or saved;
        # every rank does it (one trains the teacher, the others wait for its file). cfg is final after it.
        complete = [cfg] if (resolve_run_dir(cfg) / DONE).exists() else []
        prepare_demo_inputs([cfg], complete=complete)
        code = run_stage(cfg)
    if code == 0:
        ignore_once_complete()  # under sbatch, a late time-limit USR2 must not fail a finished stage
    sys.exit(code)


if __name__ == "__main__":
    main()
