#!/usr/bin/env bash
# Makes sure a Docker engine answers and the local test images exist (no registry can be reached, so
# images are built from Debian packages and imported). Idempotent: images are built only when missing.
#
#   oz-test/busybox:latest      a bare busybox (no git, no CA certificates, no package manager)
#   oz-test/debian-git:latest   Debian bookworm (minbase) with git and CA certificates, via debootstrap
set -euo pipefail

log() { printf '[prepare-docker] %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers; starting one"
  if command -v service >/dev/null && service docker start >/dev/null 2>&1; then :; else
    (dockerd >/tmp/dockerd.log 2>&1 &)
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if ! docker info >/dev/null 2>&1; then
  log "the Docker engine did not come up (see /tmp/dockerd.log)"
  exit 1
fi
log "engine: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

if ! docker image inspect oz-test/busybox:latest >/dev/null 2>&1; then
  log "building oz-test/busybox:latest from Debian's busybox-static"
  if ! command -v busybox >/dev/null || ! busybox --list >/dev/null 2>&1 || ! ldd "$(command -v busybox)" 2>&1 | grep -q 'not a dynamic'; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq busybox-static >/dev/null
  fi
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/workspace"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $("$rootfs/bin/busybox" --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> "$rootfs/etc/passwd"
  chmod 1777 "$rootfs/tmp"
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - oz-test/busybox:latest >/dev/null
  rm -rf "$rootfs"
fi
if ! docker image inspect oz-test/debian-git:latest >/dev/null 2>&1; then
  log "building oz-test/debian-git:latest with debootstrap (a few minutes, once)"
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq debootstrap >/dev/null
  fi
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=git,ca-certificates bookworm "$rootfs" http://deb.debian.org/debian >/tmp/debootstrap.log 2>&1 \
    || { log "debootstrap failed (see /tmp/debootstrap.log)"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  mkdir -p "$rootfs/workspace"
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - oz-test/debian-git:latest >/dev/null
  rm -rf "$rootfs"
fi
log "images: $(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^oz-test/' | tr '\n' ' ')"
