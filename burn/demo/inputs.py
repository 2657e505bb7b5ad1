"""The demo's inputs, made once by the entry points before a stage config is validated, saved or queued.

launch/run.py and launch/submit.py call :func:`prepare_demo_inputs` right after the composed config is
made ready (launch/entry.py: closed choices, absolute paths, the synthetic-data rule). It generates the
preset's dataset (``data.synthetic.generate``) and trains the auto teacher (``model.teacher_weights=auto``)
when they are missing, and writes the teacher's path into every stage config. Nothing changes a stage
config after that: the checks, the saved config.yaml, the queued job and the trainer all see the path,
and the stage runner (burn/engine) imports nothing from this package.

Every rank of a job started without launch/submit.py (torchrun or slurm/stage.sbatch running
launch/run.py per task) calls it too: the generator builds aside and renames, and one rank trains the
teacher while the others wait for its file (burn/demo/auto_teacher.py), so all of them get the same
inputs or the same one-line refusal before the ranks meet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from burn.config import AUTO_TEACHER, EVALUATIONS


def _root_of(cfg: DictConfig) -> str | None:
    """data.root when it is set (the checks refuse an unset one with their own message)."""
    return None if OmegaConf.is_missing(cfg.data, "root") or not cfg.data.root else str(cfg.data.root)


def prepare_demo_inputs(
    stage_cfgs: Sequence[DictConfig], *, complete: Iterable[DictConfig] = (), write: bool = True
) -> list[DictConfig]:
    """Make the generated dataset and the auto teacher the stages need, and replace
    ``model.teacher_weights=auto`` in each config by the cached teacher's path (in place).

    `complete`: the configs of stages that are done already (their run directory holds DONE): nothing is
    made for them, their teacher path is only resolved (the identity check compares it with the saved
    one). An evaluation (linear, finetune) reads no teacher: its path is resolved, never trained. `write=False` (a
    dry run): make nothing, but refuse what a real run would refuse (an over-size folder for the auto
    teacher). Returns the configs whose auto teacher is not on disk yet (only with `write=False`): their
    teacher file cannot be checked."""
    from burn.data.lists import dataset_root
    from burn.demo.auto_teacher import check_fits, ensure_teacher, teacher_path
    from burn.demo.synthetic import ensure_synthetic

    done = {id(cfg) for cfg in complete}
    needed = [cfg for cfg in stage_cfgs if id(cfg) not in done and _root_of(cfg)]
    generated: set[str | None] = set()
    for cfg in needed:  # the stages of one submission share their dataset: generated once
        if write and cfg.data.synthetic.generate and _root_of(cfg) not in generated:
            ensure_synthetic(cfg.data)  # builds aside and renames: safe when several ranks race
            generated.add(_root_of(cfg))
    pending = []
    for cfg in stage_cfgs:
        if cfg.model.teacher_weights != AUTO_TEACHER or not _root_of(cfg):
            continue
        path = teacher_path(cfg.data, cfg.model.teacher_arch, cfg.auto_teacher)
        reads_it = any(cfg is c for c in needed) and str(cfg.stage) not in EVALUATIONS
        if reads_it and write:
            ensure_teacher(cfg.data, cfg.model.teacher_arch, cfg.auto_teacher)  # cached: returns its path
        elif reads_it and not path.is_file():
            # A dry run refuses what a real run would, from the lists (a dataset still to be generated
            # is not there to count).
            if dataset_root(cfg.data).is_dir():
                check_fits(cfg.data, cfg.auto_teacher)
            pending.append(cfg)
        cfg.model.teacher_weights = str(path)
    return pending
