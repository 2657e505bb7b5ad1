#!/usr/bin/env bash
# The GPU check: proves the GPU path on any one-GPU machine in <= 8 minutes, no network needed.
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]        # WHEEL_DIR default .whl (from `make gpu-wheels`)
#   benchmarks/gpu_check.sh --cpu              # the same sequence on the CPU, small: checks the script
#
# 1. the GPU tests (pytest -m gpu), 2. a short fp16 stage 1 on generated data, preempted with SIGUSR2
# (exit 75, checkpoint) and resumed to the end, 3. a tiny stage=all (stage 1 -> 2 -> linear eval) on
# the GPU, 4. benchmarks/gpu_step.py (trainer vs naive step, images/s, peak memory). Then a summary.
# Needs PyTorch, TensorBoard, tqdm, Pillow, pytest. Hydra, OmegaConf and Submitit are installed from
# WHEEL_DIR into a private folder when missing; without DALI the GPU uses data.backend=torchvision.
# Environment: PYTHON (default python3), BURN_CHECK_DIR (work folder, default a new /tmp folder).
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
CPU=0
WHEELS=.whl
for arg in "$@"; do
    case $arg in
    --cpu) CPU=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) WHEELS=$arg ;;
    esac
done
WORK=${BURN_CHECK_DIR:-$(mktemp -d /tmp/burn-gpu-check.XXXXXX)}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
SUMMARY=()
FAILED=0
say() { echo; echo "=== $*"; }
record() { # record STATUS TEXT
    SUMMARY+=("$(printf '%-5s %s' "$1" "$2")")
    [[ $1 == FAIL ]] && FAILED=1
}

# ---- 0. dependencies ------------------------------------------------------------------------------
if ! "$PY" -c "import hydra, omegaconf, submitit" 2>/dev/null; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl ||
            { echo "installing the wheels of $WHEELS failed" >&2; exit 1; }
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
        names=("$WHEELS"/*.whl)
        names=("${names[@]##*/}")
        record ok "installed ${names[*]%%-py3*} from $WHEELS"
    else
        echo "Hydra/OmegaConf/Submitit missing and no wheels in '$WHEELS': run 'make gpu-wheels' where" \
            "there is network and pass the folder" >&2
        exit 1
    fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Sizes and time limits (seconds) per part; the CPU mode is smaller and slower (a busy CPU is ~50x slower).
S1_STEPS=40 PREEMPT_AT=8 ALL_STEPS=12 SCALE=1
if ((CPU)); then
    S1_STEPS=12 PREEMPT_AT=3 ALL_STEPS=3 SCALE=4
    export CUDA_VISIBLE_DEVICES=""
    DEVICE_KEYS=(train.precision=fp16)  # falls back to fp32 on the CPU, as configured
    STEP_ARGS=(--cpu --images 200 --steps 1 --warmup 0)
else
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
        { echo "no CUDA GPU visible to $PY (use --cpu to check the script)" >&2; exit 1; }
    DEVICE_KEYS=(train.precision=fp16 data.device=gpu)
    STEP_ARGS=(--images 2000 --steps 15 --warmup 3)
fi
if "$PY" -c "import nvidia.dali" 2>/dev/null; then
    BACKEND=dali
else
    BACKEND=torchvision
    record note "DALI is not installed: the GPU ran data.backend=torchvision (PIL workers, pinned copies)"
fi
DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')")
VERSIONS=$("$PY" -c "import torch; print('torch', torch.__version__)")
echo "device: $DEVICE, $VERSIONS, data.backend=$BACKEND, work folder $WORK"

DATA=$WORK/data
COMMON=(preset=tiny model.teacher_weights=null "data.root=$DATA" data.synthetic.generate=true "data.backend=$BACKEND"
    log.progress_bar=off "${DEVICE_KEYS[@]}")

# ---- 1. GPU tests ----------------------------------------------------------------------------------
say "1. GPU tests (pytest -m gpu)"
if timeout $((100 * SCALE)) "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$WORK/tests.log" | tail -15; then
    record ok "GPU tests: $(grep -E '[0-9]+ (passed|failed|skipped)' "$WORK/tests.log" | tail -1)"
else
    record FAIL "GPU tests: $(grep -E '[0-9]+ (passed|failed|error)|Timeout' "$WORK/tests.log" | tail -1) (log $WORK/tests.log)"
fi

# ---- 2. stage 1, preempted and resumed -------------------------------------------------------------
say "2. fp16 stage 1: SIGUSR2 at step >= $PREEMPT_AT (or after $((90 * SCALE)) s), then resume"
S1=$WORK/stage1
S1_KEYS=("${COMMON[@]}" stage=1 "run_dir=$S1" "steps=$S1_STEPS" log.every_steps=2 checkpoint.every_steps=1000)
progress_step() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$S1/progress.json" 2>/dev/null || echo -1; }
started=$SECONDS
"$PY" launch/run.py "${S1_KEYS[@]}" >"$WORK/stage1-first.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null && (($(progress_step) < PREEMPT_AT)) && ((SECONDS - started < 90 * SCALE)); do sleep 0.5; done
kill -USR2 "$pid" 2>/dev/null
wait "$pid"
first=$?
at=$(progress_step)
if ((first == 75)) && timeout $((120 * SCALE)) "$PY" launch/run.py "${S1_KEYS[@]}" >"$WORK/stage1-resume.log" 2>&1 &&
    grep -q "resuming from" "$WORK/stage1-resume.log" && [[ -f $S1/DONE && -f $S1/stage1_extraction.pth ]]; then
    record ok "stage 1 fp16: preempted at step $at (exit 75), resumed to step $(progress_step), $((SECONDS - started)) s"
else
    record FAIL "stage 1 fp16: first run exit $first at step $at; logs $WORK/stage1-*.log"
    tail -20 "$WORK/stage1-first.log" "$WORK/stage1-resume.log" 2>/dev/null
fi
first_step=$(grep -ho "first step[^;]*" "$WORK"/stage1-*.log 2>/dev/null | head -1)
[[ -n $first_step ]] && record note "$first_step"

# ---- 3. tiny stage=all -------------------------------------------------------------------------------
say "3. tiny stage=all on the device (stage 1 -> 2 -> linear eval; train.compile=false: part 2 compiled)"
ALL=$WORK/all
started=$SECONDS
if timeout $((90 * SCALE)) "$PY" launch/submit.py "${COMMON[@]}" stage=all cluster=local "steps=$ALL_STEPS" linear.epochs=1 train.compile=false "run_dir=$ALL" \
    >"$WORK/all.log" 2>&1 && [[ -f $ALL/linear/linear_eval.json ]]; then
    record ok "stage=all: $(grep -o 'linear evaluation top-1: [0-9.]*%' "$WORK/all.log" | tail -1), $((SECONDS - started)) s"
else
    record FAIL "stage=all: no linear_eval.json (log $WORK/all.log)"
    tail -20 "$WORK/all.log"
fi

# ---- 4. step benchmark ---------------------------------------------------------------------------------
say "4. benchmarks/gpu_step.py"
if timeout $((210 * SCALE)) "$PY" benchmarks/gpu_step.py "${STEP_ARGS[@]}" 2>&1 | tee "$WORK/step.log" | grep -v "^\[" | tail -12 &&
    grep -q "images/s per GPU" "$WORK/step.log"; then
    while IFS= read -r line; do record step "$line"; done < <(grep -E "^(device|step |naive |trainer)" "$WORK/step.log")
else
    record FAIL "gpu_step.py did not finish (log $WORK/step.log)"
fi

# ---- summary ----------------------------------------------------------------------------------------------
echo
echo "=== summary ($DEVICE; $VERSIONS; data.backend=$BACKEND; ${SECONDS} s; logs in $WORK)"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
