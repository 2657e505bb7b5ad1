#!/usr/bin/env bash
# Submit stage 1, stage 2 and linear evaluation as three plain sbatch jobs chained with afterok.
#
#   slurm/chain.sh RUN_DIR [sbatch options...] -- [launch/run.py overrides...]
#   slurm/chain.sh runs/tiny --nodes=2 --ntasks-per-node=1 --time=30 -- preset=tiny
#
# RUN_DIR is the parent of stage1/, stage2/, linear/ (the same layout as launch/submit.py
# stage=all): stage 2 starts from stage1/stage1_extraction.pth, linear evaluates
# stage2/backbone.pth. steps=/epochs= apply to the two pretraining stages (linear evaluation keeps
# linear.epochs), as with submit.py stage=all. A stage whose dir holds DONE is skipped. Logs: <stage dir>/slurm/<job id>.out.
# Each job is recorded in <stage dir>/slurm/jobs.jsonl for launch/status.py. Prints the job ids.
# The run directory's names are burn/runtime/rundir.py's (tests/test_layout.py keeps them equal).
# The time-limit warning comes signal_delay_s seconds before the end (--signal=B:USR2@<s>): the value the
# overrides give the stages (burn/config.py), so the stage's slow-checkpoint warning knows it too. Set it
# with signal_delay_s=<s> after the --, not with an sbatch --signal option. BURN_PYTHON: the interpreter
# (default python3). The site keys after the -- apply here too (launch/site.py, docs/containers.md):
# slurm.sbatch options join the sbatch line, slurm.setup lines and slurm.srun arguments reach
# stage.sbatch (BURN_SITE_SETUP, BURN_SITE_SRUN), container.* its srun line (BURN_CONTAINER).
# dry_run=true prints each stage's sbatch command and the srun command line, and submits nothing.
# Requeues (preemption, a dead rank, a lost node) stop at max_requeues, set after the
# -- like any key; stage.sbatch reads it from the same overrides.
set -euo pipefail

if (($# < 1)) || [[ $1 == -* ]]; then
    echo "usage: $0 RUN_DIR [sbatch options...] -- [overrides...]" >&2
    exit 2
fi
RUN_DIR=$(realpath -m "$1")
shift
SBATCH_OPTS=()
while (($#)) && [[ $1 != -- ]]; do
    SBATCH_OPTS+=("$1")
    shift
done
(($#)) && shift # the --
OVERRIDES=("$@")

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BURN_REPO=$REPO

if [[ -n ${BURN_MAX_REQUEUES+set} ]]; then
    echo "$0: BURN_MAX_REQUEUES is no longer read: set max_requeues=$BURN_MAX_REQUEUES after the --" >&2
    exit 2
fi
for option in "${SBATCH_OPTS[@]}"; do
    if [[ $option == --signal* ]]; then
        echo "$0: $option: set signal_delay_s=<seconds> after the -- instead (it also tells the stages)" >&2
        exit 2
    fi
done
SIGNAL_DELAY_S=$(cd "$REPO" && "${BURN_PYTHON:-python3}" -m burn.config signal_delay_s "${OVERRIDES[@]}")
# slurm.* and container.*: SITE_SBATCH, SITE_SRUN (arrays), SITE_SETUP, SITE_CONTAINER (shell words); exit 2 on
# an option the suite sets itself or a bad image name, before anything is queued.
SITE=$(cd "$REPO" && "${BURN_PYTHON:-python3}" -m launch.site "$RUN_DIR" "${OVERRIDES[@]}") || exit 2
eval "$SITE"
export BURN_SITE_SETUP=$SITE_SETUP BURN_CONTAINER=$SITE_CONTAINER
BURN_SITE_SRUN=""
((${#SITE_SRUN[@]})) && BURN_SITE_SRUN=$(printf '%q ' "${SITE_SRUN[@]}")
export BURN_SITE_SRUN
DRY_RUN=$(cd "$REPO" && "${BURN_PYTHON:-python3}" -m burn.config dry_run "${OVERRIDES[@]}")

submit_stage() {
    local stage=$1 dir=$2 dependency=$3 pretrained=$4 job_id extra=()
    [[ -n $dependency ]] && extra+=("--dependency=afterok:$dependency")
    local args=("stage=$stage" "run_dir=$dir") override
    for override in "${OVERRIDES[@]}"; do
        # As submit.py stage=all: steps=/epochs= set the pretraining stages' length; linear keeps linear.epochs.
        [[ $stage == linear && ($override == steps=* || $override == epochs=*) ]] && continue
        [[ $override == dry_run=* ]] && continue # chain.sh's own
        args+=("$override")
    done
    [[ -n $pretrained ]] && args+=("pretrained=$pretrained")
    local sbatch=(sbatch --parsable --job-name="burn-$stage" --output="$dir/slurm/%j.out"
        --signal="B:USR2@$SIGNAL_DELAY_S" "${extra[@]}" "${SBATCH_OPTS[@]}" "${SITE_SBATCH[@]}"
        "$REPO/slurm/stage.sbatch" "${args[@]}")
    if [[ $DRY_RUN == True ]]; then # the sbatch command and what its job script would run; nothing queued
        {
            echo "# stage $stage: sbatch command (BURN_SITE_SETUP, BURN_SITE_SRUN, BURN_CONTAINER in its environment)"
            printf '%q ' "${sbatch[@]}"
            echo
            BURN_DRY_RUN=1 SLURM_JOB_ID="<job id>" SLURM_JOB_NODELIST="<nodes>" SLURM_NTASKS="<tasks>" \
                bash "$REPO/slurm/stage.sbatch" "${args[@]}"
        } >&3
        echo "<job id of stage $stage>"
        return
    fi
    mkdir -p "$dir/slurm"
    job_id=$("${sbatch[@]}")
    job_id=${job_id%%;*}
    printf '{"job_id": "%s", "stage": "%s", "via": "sbatch", "dependency": "%s", "submitted": %s, "log": "%s"}\n' \
        "$job_id" "$stage" "${dependency:+afterok:$dependency}" "$(date +%s)" "$dir/slurm/$job_id.out" \
        >>"$dir/slurm/jobs.jsonl"
    echo "$job_id"
}

exec 3>&1 # the dry run's report, from inside $(submit_stage ...)
[[ $DRY_RUN == True ]] && echo "slurm/chain.sh dry run: nothing queued or written"
previous=""
for stage in 1 2 linear; do
    case $stage in
    1) dir=$RUN_DIR/stage1 pretrained="" ;;
    2) dir=$RUN_DIR/stage2 pretrained=$RUN_DIR/stage1/stage1_extraction.pth ;;
    linear) dir=$RUN_DIR/linear pretrained=$RUN_DIR/stage2/backbone.pth ;;
    esac
    if [[ -e $dir/DONE ]]; then
        echo "stage $stage: complete (DONE), skipped"
        previous=""
        continue
    fi
    previous=$(submit_stage "$stage" "$dir" "$previous" "$pretrained")
    [[ $DRY_RUN == True ]] || echo "stage $stage: job $previous, log $dir/slurm/$previous.out"
done
echo "status: python $REPO/launch/status.py $RUN_DIR"
