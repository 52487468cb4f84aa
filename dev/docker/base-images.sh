#!/usr/bin/env bash
# Local stand-ins for the official base images, built from Debian packages when no image
# registry is reachable: one Debian bookworm root filesystem (debootstrap) with Python 3.11,
# tini, PostgreSQL and Redis, imported under the three names the Dockerfiles and compose use.
# The rootfs tarball is cached in .local/docker-cache; images already present are kept.
# Needs DOCKER_HOST pointing at the engine to load them into (dev/docker/dockerd.sh).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=$REPO/.local/docker-cache
TAG=${ELT_BASE_TAG:-elt-local}
IMAGES=("$TAG/python:3.11-slim-bookworm" "$TAG/postgres:16" "$TAG/redis:7")
# Bump when the package list changes, so a stale cached rootfs is rebuilt.
PACKAGES=python3,python3-venv,tini,ca-certificates,postgresql,redis-server,procps
TARBALL=$CACHE/bookworm-$(echo "$PACKAGES" | md5sum | cut -c1-8).tar

missing=()
for image in "${IMAGES[@]}"; do docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image"); done
if [[ ${#missing[@]} -eq 0 ]]; then echo "base images: present (${IMAGES[*]})"; exit 0; fi

# The Debian mirror apt already uses on this machine (deb822 .sources or one-line sources.list).
mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
[[ -n $mirror ]] || mirror=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

if [[ ! -s $TARBALL ]]; then
  command -v debootstrap >/dev/null || { echo "base images: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  mkdir -p "$CACHE"
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXX")
  # debootstrap mounts /proc inside the rootfs: unmount whatever is mounted under it first (an
  # interrupted build left it mounted), and never let rm cross into another file system.
  trap 'awk -v root="$rootfs/" "index(\$2, root) == 1 {print \$2}" /proc/mounts | sort -r | xargs -r -n1 umount -l || true; rm -rf --one-file-system "$rootfs"' EXIT
  echo "base images: debootstrap bookworm from $mirror (about a minute)"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || { echo "debootstrap failed; last lines of $CACHE/debootstrap.log:" >&2; tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Like the official images: `python` on PATH, no apt lists, no postgres cluster baked in.
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  cp -r /etc/apt/sources.list.d/. "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/postgresql/15/main "$rootfs"/etc/postgresql/15/main
  tar -C "$rootfs" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
first=${IMAGES[0]}
docker image inspect "$first" >/dev/null 2>&1 || docker import \
  -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin' \
  -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' "$TARBALL" "$first" >/dev/null
docker tag "$first" "$TAG/redis:7"
# Postgres: an entrypoint with the official image's contract (POSTGRES_*, docker-entrypoint-initdb.d).
docker image inspect "$TAG/postgres:16" >/dev/null 2>&1 || printf '%s\n' "FROM $first" \
  'ENV PGDATA=/var/lib/postgresql/data' \
  'COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh' \
  'ENTRYPOINT ["tini", "--", "bash", "/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["postgres"]' \
  | docker build -q -t "$TAG/postgres:16" -f - "$REPO/dev/docker" >/dev/null
echo "base images: ${IMAGES[*]} (from $TARBALL)"
