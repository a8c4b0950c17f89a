#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for `make test-slurm` and for trying sweeps locally.
#
#   scripts/slurm-cluster.sh start    install slurm-wlm + munge with apt if missing (root), write a
#                                     minimal slurm.conf, start munged, slurmctld, slurmd; wait until
#                                     the node is idle
#   scripts/slurm-cluster.sh stop     cancel jobs, stop slurmd/slurmctld/munged, keep the logs
#   scripts/slurm-cluster.sh status   sinfo of the running cluster
#   scripts/slurm-cluster.sh env      the line to eval so sinfo/sbatch (and submitit) find it
#
# Everything (config, munge key and socket, state, spool, logs, pid files) lives under
# $STEEREXP_SLURM_DIR (default <repo>/.slurm, git-ignored); nothing under /etc is changed.
# Clients find the cluster through SLURM_CONF=$STEEREXP_SLURM_DIR/slurm.conf.
# The node has STEEREXP_SLURM_CPUS CPUs (default 2), the machine's real hostname, proctrack/linuxproc,
# no cgroups and no accounting database (so `sacct` is unavailable; submitit then reads job results
# from its own files). Daemons run as root, which installing and starting them needs anyway.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$(mkdir -p "${STEEREXP_SLURM_DIR:-$REPO/.slurm}" && cd "${STEEREXP_SLURM_DIR:-$REPO/.slurm}" && pwd)"
CPUS="${STEEREXP_SLURM_CPUS:-2}"
NODE="$(hostname -s)"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

say() { echo "slurm-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

# whether process $1 runs (a zombie does not: in containers whose init never reaps, exited
# daemons stay zombies)
running() { local stat; stat="$(cat "/proc/$1/stat" 2>/dev/null)" && [[ "${stat##*) }" != Z* ]]; }
# the pid in pid file $1 when that process runs
alive() { local pid; pid="$(cat "$1" 2>/dev/null)" && running "$pid" && echo "$pid"; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed and installing needs root (apt-get)"
    say "installing slurm-wlm and munge with apt"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >&2
}

write_conf() {
    local mem_mb
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    rm -rf "${DIR:?}/state/"*  # a fresh cluster: no jobs left over from an earlier start
    cat >"$CONF" <<EOF
# Written by scripts/slurm-cluster.sh: a single-node test cluster, everything under $DIR.
ClusterName=steerexp
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/run/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    alive "$DIR/run/munged.pid" >/dev/null && return
    if [[ ! -f "$DIR/munge.key" ]]; then
        mungekey --create --keyfile="$DIR/munge.key"
    fi
    chmod 600 "$DIR/munge.key"
    munged --force --key-file="$DIR/munge.key" --socket="$DIR/run/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/run/munged.seed"
}

wait_idle() {
    local state=""
    for _ in $(seq 60); do
        state="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)"
        [[ "$state" == idle* ]] && return
        sleep 1
    done
    die "node $NODE is '${state:-unreachable}' after 60 s, not idle; see $DIR/log/"
}

start() {
    if alive "$DIR/run/slurmctld.pid" >/dev/null && alive "$DIR/run/slurmd.pid" >/dev/null; then
        wait_idle
        say "already running (SLURM_CONF=$CONF)"
        return
    fi
    install
    stop >/dev/null 2>&1 || die "could not stop the daemons of an earlier start; see $DIR/log/"
    write_conf
    start_munge
    slurmctld -f "$CONF"
    slurmd -f "$CONF" -N "$NODE"
    wait_idle
    say "node $NODE idle with $CPUS CPUs (SLURM_CONF=$CONF)"
}

stop() {
    local name pid
    if alive "$DIR/run/slurmctld.pid" >/dev/null; then
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    for name in slurmd slurmctld munged; do
        if pid="$(alive "$DIR/run/$name.pid")"; then
            kill "$pid"
            for _ in $(seq 30); do running "$pid" || break; sleep 0.5; done
            if running "$pid"; then
                say "error: $name (pid $pid) did not stop"
                return 1
            fi
        fi
        rm -f "$DIR/run/$name.pid"
    done
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "unknown command '${1:-}'; valid: start, stop, status, env" ;;
esac
