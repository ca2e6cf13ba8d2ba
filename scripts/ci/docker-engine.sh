#!/usr/bin/env bash
# A Docker engine for the `trdeploy build` tests (and render-k8s's end-to-end test), idempotent.
#
# Installs docker.io (engine 20.10 with BuildKit built in; its CLI drives BuildKit itself when
# DOCKER_BUILDKIT=1, so no buildx plugin is needed) and debootstrap, starts dockerd on a fixed socket
# unless one already answers there, and imports a minimal Debian rootfs with python3 as the local base
# image (no registry is reachable from CI). The data root persists, so the base is built once per machine.
#
#   bash scripts/ci/docker-engine.sh && export DOCKER_HOST=unix:///var/run/trdeploy-docker/docker.sock
#
# Tests default DOCKER_HOST to that socket (tests/deploy/conftest.py).
set -euo pipefail

STATE=/var/run/trdeploy-docker
SOCK="$STATE/docker.sock"
DATA_ROOT=/var/lib/trdeploy-docker
LOG=/var/log/trdeploy-dockerd.log
BASE_TAG=trdeploy-test/debian-python3:bookworm
export DOCKER_HOST="unix://$SOCK"
DOCKER=/usr/bin/docker  # the docker.io CLI (20.10): built-in BuildKit client

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x "$DOCKER" ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! "$DOCKER" info >/dev/null 2>&1; then
  mkdir -p "$STATE" "$DATA_ROOT"
  rm -f "$SOCK" "$STATE/dockerd.pid"
  # No bridge or iptables in this sandbox: builds and containers use --network host.
  setsid nohup dockerd \
    --host "unix://$SOCK" --data-root "$DATA_ROOT" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    --storage-driver=overlay2 --iptables=false --ip6tables=false --bridge=none \
    --exec-opt native.cgroupdriver=cgroupfs >"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 1
  done
  "$DOCKER" info >/dev/null 2>&1 || { echo "dockerd did not answer on $SOCK; last log lines:" >&2; tail -20 "$LOG" >&2; exit 1; }
fi

if ! "$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1; then
  # The mirror apt already uses on this machine (no host named here).
  mirror="$(grep -hoP '^URIs:\s*\K\S+/debian(?=\s*$)' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 || true)"
  [ -n "$mirror" ] || mirror="$(grep -hoP '^deb\s+\K\S+/debian(?=\s)' /etc/apt/sources.list 2>/dev/null | head -1)"
  rootfs="$(mktemp -d /var/tmp/trdeploy-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" >/var/log/trdeploy-debootstrap.log 2>&1 \
    || { tail -20 /var/log/trdeploy-debootstrap.log >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
fi
echo "docker engine ready: DOCKER_HOST=$DOCKER_HOST base=$BASE_TAG"
