#!/usr/bin/env bash
# install.sh [accounting] -- apt-install the Debian packages the local test cluster needs, only when missing.
#
#   install.sh            slurm-wlm + munge (controller, node daemon, clients, munged)
#   install.sh slurmdbd   also slurmdbd and a MariaDB server/client (for `sacct`)
#
# Needs root. Debian's maintainer scripts would try to start munge/slurm services; a temporary
# /usr/sbin/policy-rc.d (exit 101) stops that, since start_slurm.sh runs private daemons instead.
set -euo pipefail
ACCOUNTING=${1:-none}
log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

pkgs=()
for bin in slurmctld slurmd sbatch squeue scontrol munged munge; do
  have "$bin" || { pkgs+=(slurm-wlm munge); break; }
done
if [[ $ACCOUNTING == slurmdbd ]]; then
  have slurmdbd || pkgs+=(slurmdbd)
  # server-core/client-core carry mariadbd, mariadb-install-db and the client; the full mariadb-server
  # package adds perl, galera and a postinst that wants to start a system service.
  { have mariadbd && have mariadb-install-db; } || pkgs+=(mariadb-server-core)
  have mariadb || pkgs+=(mariadb-client-core)
elif [[ $ACCOUNTING != none ]]; then
  log "unknown accounting mode '$ACCOUNTING' (use: none | slurmdbd)"; exit 2
fi
((${#pkgs[@]})) || { log "nothing to install"; exit 0; }

[[ $(id -u) -eq 0 ]] || { log "missing packages (${pkgs[*]}) and not root: install them as root"; exit 1; }
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
t0=$SECONDS
log "installing ${pkgs[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
log "installed in $((SECONDS - t0))s"
