#!/usr/bin/env bash
# Stop the local test cluster started by start.sh: only the daemons recorded in its pid files.
# State (job accounting, MariaDB data, logs) stays in $BURN_CLUSTER_STATE for the next start;
# `--purge` also deletes it (job ids then restart from a new, clock-based first id).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

[[ $(id -u) == 0 ]] || die "stop.sh must run as root"
for node in "${NODES[@]}"; do stop_daemon "slurmd-$node" slurmd; done
stop_daemon slurmctld slurmctld
stop_daemon slurmdbd slurmdbd
stop_daemon mariadbd mariadbd
stop_daemon munged munged
if [[ ${1:-} == --purge ]]; then
    log "removing $BURN_CLUSTER_STATE"
    rm -rf "$BURN_CLUSTER_STATE"
fi
log "stopped"
