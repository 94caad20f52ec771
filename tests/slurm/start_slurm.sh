#!/usr/bin/env bash
# start_slurm.sh [DIR] -- start a real single-node Slurm cluster on localhost (no systemd, no cgroups), fresh.
#
# For tests/test_slurm.py and for trying `snakemake --profile slurm` by hand. Needs root. Everything lives in DIR
# (default /tmp/proganomaly-slurm; keep it short: munge and MariaDB put unix sockets there, limit ~107 chars) except
# one symlink, /etc/slurm/slurm.conf -> DIR/slurm.conf: the slurm-jobstep plugin strips SLURM_CONF from the `srun`
# it runs inside each job, so srun must find the config at Slurm's compiled-in path.
#
# Every start is a fresh cluster: daemons left from an earlier start in DIR are stopped first (stop_slurm.sh) and
# the state (job ids, database) is wiped, so a test never sees another run's jobs.
#
# Environment (all optional):
#   SLURM_TEST_ACCOUNTING=none|slurmdbd  none (default): munged + slurmctld + slurmd; `sacct` does not work, so
#                                 snakemake needs --slurm-status-command squeue. slurmdbd: adds a private MariaDB
#                                 and slurmdbd, so `sacct` (the plugin's default status command) works.
#   SLURM_TEST_PARTITIONS="a b"   partitions, all on the one node; the first is the default (default: "debug").
#   SLURM_TEST_GPUS=N             fake GPUs on the node (gres/gpu backed by symlinks to /dev/null; default 0).
#   SLURM_TEST_GPU_TYPE=name      gres type of the fake GPUs (for `gpu_model` / --gpus=name:N); default untyped.
#   SLURM_TEST_CPUS=N             CPUs the node advertises (default nproc); may exceed the hardware.
#   SLURM_TEST_MEM_MB=N           RealMemory of the node (default 85% of MemTotal); may exceed the hardware.
#   SLURM_TEST_PORT=N             slurmctld port; slurmd uses N+1, slurmdbd N+2 (default 6817).
#   SLURM_TEST_DB_PORT=N          MariaDB port on 127.0.0.1 (default 13306).
#   SLURM_TEST_WAIT=seconds       how long to wait for each daemon and for the node to become idle (default 60).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${1:-${SLURM_TEST_DIR:-/tmp/proganomaly-slurm}}
ACCOUNTING=${SLURM_TEST_ACCOUNTING:-none}
read -r -a PARTITIONS <<< "${SLURM_TEST_PARTITIONS:-debug}"
GPUS=${SLURM_TEST_GPUS:-0}
GPU_TYPE=${SLURM_TEST_GPU_TYPE:-}
CPUS=${SLURM_TEST_CPUS:-$(nproc)}
MEM_MB=${SLURM_TEST_MEM_MB:-$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)}
PORT=${SLURM_TEST_PORT:-6817}
DB_PORT=${SLURM_TEST_DB_PORT:-13306}
WAIT=${SLURM_TEST_WAIT:-60}
NODE=$(hostname -s 2>/dev/null || true)
[[ $NODE =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || NODE=localhost

log() { printf '[start_slurm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (the daemons run as root and /etc/slurm/slurm.conf is written)"
[[ $ACCOUNTING == none || $ACCOUNTING == slurmdbd ]] || die "SLURM_TEST_ACCOUNTING must be none or slurmdbd"
[[ $DIR == /* ]] || DIR=$PWD/$DIR
((${#DIR} <= 60)) || die "DIR '$DIR' is too long for the unix sockets inside it; use a short path under /tmp"
((${#PARTITIONS[@]})) || die "SLURM_TEST_PARTITIONS is empty"
[[ $GPU_TYPE =~ ^[A-Za-z0-9_.]*$ ]] || die "SLURM_TEST_GPU_TYPE must be alphanumeric"
t0=$SECONDS

# ------------------------------------------------------------------ packages, leftovers, fresh layout
bash "$HERE/install.sh" "$ACCOUNTING"
bash "$HERE/stop_slurm.sh" "$DIR" >/dev/null
# Ports held by anything else (another Slurm, a daemon leaked by a killed run in another DIR) would make the
# daemons fail with an unhelpful log line; say which port instead.
for p in "$PORT" $((PORT + 1)) $( [[ $ACCOUNTING == slurmdbd ]] && echo $((PORT + 2)) "$DB_PORT"); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "port $p on 127.0.0.1 is in use; stop what holds it or set SLURM_TEST_PORT / SLURM_TEST_DB_PORT"
  fi
done
rm -rf "$DIR"
mkdir -p "$DIR"/{state/ctld,state/d,log,run,munge}
# munged rejects group/world-writable directories; job users must be able to traverse socket and spool dirs.
chmod 755 "$DIR" "$DIR"/{state,state/d,log,run,munge}
chmod 700 "$DIR/state/ctld"
export SLURM_CONF=$DIR/slurm.conf

is_running() {  # is_running NAME PID: the process exists and really is NAME (pids get reused)
  [[ $2 =~ ^[0-9]+$ && "$(cat "/proc/$2/comm" 2>/dev/null)" == "$1" ]]
}
wait_until() {  # wait_until WHAT LOG CMD...: retry CMD until it succeeds or WAIT seconds pass (then show LOG)
  local what=$1 logfile=$2 end=$((SECONDS + WAIT)); shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then tail -20 "$logfile" 2>/dev/null || true; die "timed out after ${WAIT}s waiting for $what"; fi
    sleep 0.2
  done
}
pid_of() { [[ -s $DIR/run/$1.pid ]] && cat "$DIR/run/$1.pid"; }
daemon_up() { is_running "$1" "$(pid_of "$1")"; }
started() {  # started NAME LOG: wait for the daemon's pid file and live process, else show its log
  local end=$((SECONDS + WAIT))
  until daemon_up "$1"; do
    if ((SECONDS >= end)); then tail -20 "$2" 2>/dev/null || true; die "$1 did not start"; fi
    sleep 0.2
  done
  log "$1 running (pid $(pid_of "$1"))"
}

# ------------------------------------------------------------------ munge: private key, socket and daemon
MUNGE_SOCKET=$DIR/munge/munge.socket
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$DIR/munge/munge.key"
munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$DIR/run/munged.pid" \
  --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
  || { tail -20 "$DIR/log/munged.log"; die "munged failed"; }
started munged "$DIR/log/munged.log"
wait_until "a munge round trip" "$DIR/log/munged.log" bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"

# ------------------------------------------------------------------ configuration files
GRES_TYPES="" NODE_GRES=""
if ((GPUS > 0)); then
  # slurmd drops a gpu gres without File=, refuses duplicate File= names, and leaves CUDA_VISIBLE_DEVICES empty
  # for plain files; distinct symlinks to /dev/null (a character device) behave like real device files.
  mkdir -p "$DIR/fakegpu"
  GRES_TYPES="GresTypes=gpu"
  NODE_GRES=" Gres=gpu${GPU_TYPE:+:$GPU_TYPE}:$GPUS"
  for ((i = 0; i < GPUS; i++)); do
    ln -s /dev/null "$DIR/fakegpu/gpu$i"
    echo "NodeName=$NODE Name=gpu${GPU_TYPE:+ Type=$GPU_TYPE} File=$DIR/fakegpu/gpu$i"
  done > "$DIR/gres.conf"
fi
if [[ $ACCOUNTING == slurmdbd ]]; then
  # Clients reach slurmdbd through munge too; AccountingStoragePass names the private socket for that traffic.
  ACCOUNTING_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$MUNGE_SOCKET
AccountingStoreFlags=job_comment
${GRES_TYPES:+AccountingStorageTRES=gres/gpu}
JobAcctGatherType=jobacct_gather/linux"
else
  ACCOUNTING_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
PARTITION_LINES=""
for part in "${PARTITIONS[@]}"; do
  [[ $part =~ ^[A-Za-z0-9_-]+$ ]] || die "bad partition name '$part'"
  default=NO; [[ $part == "${PARTITIONS[0]}" ]] && default=YES
  PARTITION_LINES+="PartitionName=$part Nodes=$NODE Default=$default MaxTime=INFINITE State=UP"$'\n'
done

# MinJobAge keeps finished jobs in slurmctld (squeue, scontrol show job) for 10 min: the plugin only trusts squeue
# when MinJobAge >= 3 x its first-poll delay, and the test reads job records from slurmctld in this mode.
# linuxproc/task none: no cgroups here. config_overrides: the node may advertise more CPUs/memory than it has,
# so site-sized requests from the profile are accepted (nothing enforces them without cgroups).
# With slurmdbd, AccountingStorageTRES=gres/gpu puts a job's GPUs into its TRES (sacct AllocTRES); slurmctld refuses
# that line without slurmdbd, and then `scontrol -d show job` lists the allocated GPUs (GRES=gpu...(IDX:...)).
cat > "$DIR/slurm.conf" <<EOF
# written by tests/slurm/start_slurm.sh: a single-node cluster on localhost
ClusterName=proganomaly
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
DefMemPerCPU=1024
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$ACCOUNTING_LINES
$GRES_TYPES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB$NODE_GRES State=UNKNOWN
$PARTITION_LINES
EOF

mkdir -p /etc/slurm
if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
  # a real site config: keep it, stop_slurm.sh puts it back
  mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.proganomaly-backup
  log "moved /etc/slurm/slurm.conf aside to /etc/slurm/slurm.conf.proganomaly-backup"
fi
ln -sfn "$DIR/slurm.conf" /etc/slurm/slurm.conf

# ------------------------------------------------------------------ accounting: private MariaDB + slurmdbd
if [[ $ACCOUNTING == slurmdbd ]]; then
  DB_SOCKET=$DIR/run/mysqld.sock
  DB_PASS=slurmtest  # the database listens on 127.0.0.1 only and lives as long as the test cluster
  mariadb-install-db --no-defaults --user=root --datadir="$DIR/mariadb" --auth-root-authentication-method=socket \
    --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1 \
    || { tail -20 "$DIR/log/mariadb-install.log"; die "mariadb-install-db failed"; }
  # mariadbd does not daemonize itself: detach it from this shell (and from pytest's pipes).
  setsid mariadbd --no-defaults --user=root --datadir="$DIR/mariadb" --socket="$DB_SOCKET" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  wait_until mariadbd "$DIR/log/mariadbd.log" mariadb --no-defaults --socket="$DB_SOCKET" -u root -e 'select 1'
  started mariadbd "$DIR/log/mariadbd.log"
  mariadb --no-defaults --socket="$DB_SOCKET" -u root <<EOF
CREATE DATABASE slurm_acct_db;
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
  # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF and insists on mode 600.
  (umask 077 && cat > "$DIR/slurmdbd.conf") <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
DebugLevel=info
EOF
  slurmdbd || { tail -20 "$DIR/log/slurmdbd.log"; die "slurmdbd failed"; }
  started slurmdbd "$DIR/log/slurmdbd.log"
  wait_until "slurmdbd to answer sacctmgr" "$DIR/log/slurmdbd.log" timeout 10 sacctmgr -n list cluster
fi

# ------------------------------------------------------------------ controller and node daemon
slurmctld -f "$SLURM_CONF" || { tail -20 "$DIR/log/slurmctld.log"; die "slurmctld failed"; }
started slurmctld "$DIR/log/slurmctld.log"
wait_until "slurmctld to answer scontrol ping" "$DIR/log/slurmctld.log" timeout 10 scontrol ping
slurmd -f "$SLURM_CONF" -N "$NODE" || { tail -20 "$DIR/log/slurmd.log"; die "slurmd failed"; }
started slurmd "$DIR/log/slurmd.log"
node_ready() {
  case $(timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1) in
    idle | mixed | allocated) return 0 ;;
    *) return 1 ;;
  esac
}
end=$((SECONDS + WAIT))
until node_ready; do
  if ((SECONDS >= end)); then
    sinfo -N -l || true
    tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" || true
    die "node $NODE not idle after ${WAIT}s"
  fi
  sleep 0.2
done

printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" > "$DIR/env.sh"
log "cluster up in $((SECONDS - t0))s: node $NODE, $CPUS cpus, ${MEM_MB} MB, $GPUS gpu${GPU_TYPE:+ ($GPU_TYPE)}," \
  "partitions ${PARTITIONS[*]}, accounting $ACCOUNTING"
log "logs in $DIR/log; stop with: $HERE/stop_slurm.sh $DIR"
[[ $ACCOUNTING == slurmdbd ]] || log "no accounting: run snakemake with --slurm-status-command squeue"
