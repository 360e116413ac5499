#!/usr/bin/env bash
# Makes sure a Slurm cluster answers: when `sinfo` does not, installs Debian's slurm-wlm and
# munge and starts a one-node cluster on this host (slurmctld + slurmd, this machine's real CPU
# count and memory), by hand (no systemd). Idempotent, and quick when the cluster is up.
#
# To use a real cluster instead, run `ledger run --executor slurm` on a login node whose
# `sbatch`/`scontrol` reach it, with the ledger directory (and the `ledger` binary) on a
# file system every node mounts at the same path; see the README.
#
# Environment:
#   SLURM_WAIT_SECS=N   how long to wait for the fresh daemons (default 60)
set -euo pipefail

if sinfo -h >/dev/null 2>&1 && scontrol ping 2>/dev/null | grep -q UP; then
    exit 0
fi

sudo=()
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then
    sudo=(sudo)
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends slurm-wlm munge
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

# munge: a key, and the daemon as user munge.
if ! pgrep -x munged >/dev/null; then
    "${sudo[@]}" mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        "${sudo[@]}" dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    "${sudo[@]}" chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    "${sudo[@]}" chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    "${sudo[@]}" chmod 0755 /run/munge
    "${sudo[@]}" chmod 0400 /etc/munge/munge.key
    "${sudo[@]}" runuser -u munge -- /usr/sbin/munged
fi

conf=/etc/slurm/slurm.conf
"${sudo[@]}" mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# Scheduling every few hundred milliseconds rather than every few seconds: the project's units
# are small, and waiting for the scheduler would be most of their time.
"${sudo[@]}" tee "$conf" >/dev/null <<EOF
ClusterName=ledger
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0,sched_interval=1
MinJobAge=600
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO DefMemPerCPU=512
EOF

if ! pgrep -x slurmctld >/dev/null; then
    "${sudo[@]}" /usr/sbin/slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    "${sudo[@]}" /usr/sbin/slurmd
fi

wait_secs="${SLURM_WAIT_SECS:-60}"
for _ in $(seq 1 "$wait_secs"); do
    if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o '%t' 2>/dev/null | grep -qE 'idle|mix|alloc'; then
        echo "slurm: a one-node cluster is up on $host ($cpus CPUs)" >&2
        exit 0
    fi
    # A node that came up DOWN (e.g. after a restart) is put back into service.
    "${sudo[@]}" scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm: the cluster did not come up within ${wait_secs}s; the end of its logs:" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
