# Shared settings and helpers of start.sh / stop.sh (sourced, not executed).
#
# Everything this local test cluster owns lives under $BURN_CLUSTER_STATE: generated configs'
# originals, the MariaDB data directory, slurmctld state, per-node spools, logs and the pid files
# of the daemons we started. Only /etc/slurm/{slurm,slurmdbd}.conf sit outside it, because the
# SLURM clients (sbatch, sinfo, Submitit) look for them there.

BURN_CLUSTER_STATE=${BURN_CLUSTER_STATE:-/var/lib/burn-local-cluster}
CLUSTER_NAME=burnlocal
ACCOUNT_NAME=burn
NODES=(node1 node2)
SLURM_ETC=/etc/slurm
PID_DIR=$BURN_CLUSTER_STATE/pids
LOG_DIR=$BURN_CLUSTER_STATE/log
MYSQL_DIR=$BURN_CLUSTER_STATE/mysql
MYSQL_SOCKET=$BURN_CLUSTER_STATE/mysqld/mysqld.sock
MUNGE_SOCKET=/run/munge/munge.socket.2

# True when the process exists and is not a zombie waiting to be reaped.
is_alive() {
    [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

log() { echo "[local-cluster] $*" >&2; }

die() {
    log "ERROR: $*"
    exit 1
}

# pid of a daemon we started, if it is still alive and still the program we started.
own_pid() {
    local name=$1 program=$2 pid
    [[ -f $PID_DIR/$name.pid ]] || return 1
    pid=$(<"$PID_DIR/$name.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    is_alive "$pid" || return 1
    # The pid may have been recycled by an unrelated process since.
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$program" || return 1
    echo "$pid"
}

# Stop one daemon by its pid file: TERM, wait up to 15 s, then KILL.
stop_daemon() {
    local name=$1 program=$2 pid i
    if ! pid=$(own_pid "$name" "$program"); then
        rm -f "$PID_DIR/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        is_alive "$pid" || break
        sleep 0.1
    done
    if is_alive "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_DIR/$name.pid"
}

# Last lines of a log file, for error messages.
tail_log() {
    local file=$1
    if [[ -f $file ]]; then
        echo "---- last lines of $file ----" >&2
        tail -n 25 "$file" >&2
        echo "----" >&2
    fi
}
