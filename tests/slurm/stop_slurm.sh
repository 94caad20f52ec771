#!/usr/bin/env bash
# stop_slurm.sh [DIR] [--purge] -- stop the cluster that start_slurm.sh started in DIR, leaving no daemons behind.
#
# Cancels remaining jobs, then stops each daemon by the pid in DIR/run/<name>.pid, after checking that the pid
# still belongs to a process of that name (never by process name: other Slurm or MariaDB instances may run).
# Removes the /etc/slurm/slurm.conf symlink if it points into DIR and restores a config that start_slurm.sh
# moved aside. --purge also deletes DIR. Exit status 1 if some daemon or job step could not be stopped.
set -uo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/proganomaly-slurm}
PURGE=0
for arg in "$@"; do
  case $arg in
    --purge) PURGE=1 ;;
    *) DIR=$arg ;;
  esac
done
[[ $DIR == /* ]] || DIR=$PWD/$DIR
log() { printf '[stop_slurm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
export SLURM_CONF=$DIR/slurm.conf

is_running() { [[ $2 =~ ^[0-9]+$ && "$(cat "/proc/$2/comm" 2>/dev/null)" == "$1" ]]; }
pid_of() { [[ -s $DIR/run/$1.pid ]] && cat "$DIR/run/$1.pid"; }
failed=0
stop_daemon() {  # stop_daemon NAME: SIGTERM, wait up to 30 s for the process itself, then SIGKILL
  local pid
  pid=$(pid_of "$1") || return 0
  if is_running "$1" "$pid"; then
    log "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null
    # Wait on the process, not the pid file: daemons delete the file early in their shutdown.
    for _ in $(seq 150); do is_running "$1" "$pid" || break; sleep 0.2; done
    if is_running "$1" "$pid"; then
      log "$1 (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
      kill -9 "$pid" 2>/dev/null
      sleep 0.5
      is_running "$1" "$pid" && { log "ERROR: $1 (pid $pid) is still alive"; failed=1; }
    fi
  fi
  rm -f "$DIR/run/$1.pid"
}
stepds() {  # slurmstepd processes whose parent chain leads to our slurmd (job steps of this cluster)
  local p
  for p in /proc/[0-9]*; do
    [[ "$(cat "$p/comm" 2>/dev/null)" == slurmstepd ]] || continue
    grep -qs -- "$DIR" "$p/cmdline" "$p/environ" && echo "${p#/proc/}"
  done
}

if [[ -d $DIR/run ]]; then
  if is_running slurmctld "$(pid_of slurmctld)"; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086  # one argument per job id
      timeout 10 scancel $jobs 2>/dev/null
      for _ in $(seq 50); do [[ -z $(timeout 5 squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.2; done
    fi
  fi
  for daemon in slurmd slurmctld slurmdbd mariadbd munged; do stop_daemon "$daemon"; done
  left=$(stepds | tr '\n' ' ')
  if [[ -n ${left// /} ]]; then
    # job steps of this cluster only (they carry DIR in their environment), by pid
    log "stopping leftover job steps: $left"
    # shellcheck disable=SC2086
    kill $left 2>/dev/null
    sleep 1
    left=$(stepds | tr '\n' ' ')
    [[ -n ${left// /} ]] && { log "ERROR: slurmstepd still alive: $left"; failed=1; }
  fi
else
  log "nothing running ($DIR/run does not exist)"
fi

if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$DIR/slurm.conf" ]]; then
  rm -f /etc/slurm/slurm.conf
  if [[ -e /etc/slurm/slurm.conf.proganomaly-backup ]]; then
    mv /etc/slurm/slurm.conf.proganomaly-backup /etc/slurm/slurm.conf
    log "restored the original /etc/slurm/slurm.conf"
  fi
fi
if ((PURGE)); then rm -rf "$DIR" && log "removed $DIR"; fi
exit $failed
