#!/usr/bin/env bash
# A private Docker engine for this checkout: own socket, state and pid file under .local-docker
# (not under .local: the local stack counts every process working under its home as its own, and
# `make down` would stop the containers' shims with it).
# It never talks to another daemon. Usage: dockerd.sh start|stop|env
set -euo pipefail
ROOT=${ELT_DOCKER_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/.local-docker}
SOCK=$ROOT/docker.sock
PIDFILE=$ROOT/dockerd.pid
export DOCKER_HOST=unix://$SOCK

# Containers go under a cgroup of their own whose CPU weight is that of several host processes:
# under Docker's default (/docker, weight 1024) all containers together weigh as much as ONE
# process, and starve on a machine busy with other work.
CGROUP=elt-docker-$(echo "$ROOT" | cksum | cut -d' ' -f1)
CPU_SHARES=${ELT_DOCKER_CPU_SHARES:-8192}

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case ${1:-} in
start)
  if running; then echo "dockerd: already running (pid $(cat "$PIDFILE"))"; exit 0; fi
  command -v dockerd >/dev/null || { echo "dockerd: not installed (apt-get install docker.io)" >&2; exit 1; }
  mkdir -p "$ROOT"/{data,exec}
  rm -f "$SOCK"
  # overlay2 where the kernel allows it, else vfs (slow, but works everywhere).
  driver=${ELT_DOCKER_STORAGE:-}
  if [[ -z $driver ]]; then
    probe=$(mktemp -d "$ROOT/probe.XXXX"); mkdir -p "$probe"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
      umount "$probe/m"; driver=overlay2; else driver=vfs; fi
    rm -rf "$probe"
  fi
  if [[ -d /sys/fs/cgroup/cpu ]]; then  # cgroup v1
    mkdir -p "/sys/fs/cgroup/cpu/$CGROUP" 2>/dev/null && echo "$CPU_SHARES" >"/sys/fs/cgroup/cpu/$CGROUP/cpu.shares" || true
  elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then  # cgroup v2
    mkdir -p "/sys/fs/cgroup/$CGROUP" 2>/dev/null && echo $((CPU_SHARES * 100 / 1024)) >"/sys/fs/cgroup/$CGROUP/cpu.weight" || true
  fi
  # --bridge=none/--iptables=false: containers use host networking only; nothing touches the host's firewall.
  nohup dockerd -H "$DOCKER_HOST" --data-root "$ROOT/data" --exec-root "$ROOT/exec" \
    --pidfile "$PIDFILE" --storage-driver "$driver" --bridge=none --iptables=false --ip6tables=false \
    --ip-forward=false --ip-masq=false --cgroup-parent "/$CGROUP" \
    >"$ROOT/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 120); do
    if docker version >/dev/null 2>&1; then echo "dockerd: up ($driver) at $DOCKER_HOST"; exit 0; fi
    kill -0 $! 2>/dev/null || break
    sleep 0.5
  done
  echo "dockerd: did not start; last lines of $ROOT/dockerd.log:" >&2; tail -20 "$ROOT/dockerd.log" >&2; exit 1
  ;;
stop)
  running || { rm -f "$PIDFILE"; exit 0; }
  pid=$(cat "$PIDFILE")
  # Containers first (their shims are children of containerd, a child of this dockerd).
  ids=$(docker ps -q 2>/dev/null || true)
  [[ -n $ids ]] && docker kill $ids >/dev/null 2>&1 || true
  kill "$pid"
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  # Leftover containerd shims of this engine (they carry our exec root in their command line).
  for p in $(pgrep -f "containerd-shim.*$ROOT" || true); do kill -9 "$p" 2>/dev/null || true; done
  rm -f "$PIDFILE" "$SOCK"
  # Mounts the engine left under its directories (e.g. the default network namespace).
  awk -v root="$ROOT/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for dir in /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP"; do [[ -d $dir ]] && rmdir "$dir" 2>/dev/null || true; done
  echo "dockerd: stopped"
  ;;
env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
*) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
