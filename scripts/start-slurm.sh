#!/usr/bin/env bash
# A one-node SLURM (munged, slurmctld, slurmd on 127.0.0.1) in a folder of its own, for the
# tests of `lebench slurm`: scripts/start-slurm.sh DIR [--install]
#   --install   apt-get the packages (slurm-wlm, munge) when they are missing.
# Needs root (slurmd runs jobs as their user). Writes DIR/slurm.conf and DIR/env (source it:
# it sets SLURM_CONF for sbatch, squeue, scontrol); stop with scripts/stop-slurm.sh DIR.
# Ports: SLURMCTLD_PORT and SLURMD_PORT (default 6817 and 6818).
# Exit status: 0 when `sinfo` shows the node idle; 2 when this machine cannot run SLURM (the
# reason is the last line on stderr); 1 when a daemon failed to start (see DIR/*.log).
set -euo pipefail

DIR="${1:?usage: start-slurm.sh DIR [--install]}"
INSTALL="${2:-}"
CTLD_PORT="${SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${SLURMD_PORT:-6818}"

cannot() { echo "start-slurm: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || cannot "needs root (slurmd runs jobs as their user)"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [ "$INSTALL" = "--install" ] || cannot "slurm-wlm and munge are not installed (apt-get install slurm-wlm munge)"
  command -v apt-get >/dev/null || cannot "slurm-wlm is not installed and there is no apt-get"
  echo "start-slurm: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || cannot "apt-get update failed"
  apt-get install -y -qq slurm-wlm munge >&2 || cannot "apt-get install slurm-wlm munge failed"
fi

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool"
chmod 700 "$DIR/munge"
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEMORY_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))

# munged as root with --force, on a socket of its own: nothing of a system munge is touched.
if [ ! -f "$DIR/munge/munge.key" ]; then
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
fi
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
  || { echo "start-slurm: munged failed (see $DIR/munge/munged.log)" >&2; exit 1; }

# What a machine without systemd or cgroup access needs: linuxproc tracking, no task plugin,
# no accounting.
cat > "$DIR/slurm.conf" <<CONF
ClusterName=lebench-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MpiDefault=none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
printf 'export SLURM_CONF=%q\n' "$DIR/slurm.conf" > "$DIR/env"
export SLURM_CONF="$DIR/slurm.conf"

slurmctld -i || { echo "start-slurm: slurmctld failed (see $DIR/slurmctld.log)" >&2; exit 1; }
slurmd || { echo "start-slurm: slurmd failed (see $DIR/slurmd.log)" >&2; exit 1; }
for _ in $(seq 1 60); do
  if [ "$(sinfo -h -N -o '%T' 2>/dev/null | head -n1)" = "idle" ]; then
    echo "start-slurm: node $NODE idle; export SLURM_CONF=$DIR/slurm.conf" >&2
    exit 0
  fi
  sleep 0.5
done
echo "start-slurm: the node did not become idle in 30 s (see $DIR/slurmctld.log, $DIR/slurmd.log)" >&2
exit 1
