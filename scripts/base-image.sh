#!/usr/bin/env bash
# Prints (on stdout, exactly one line) the name of a Debian bookworm image
# usable as the BASE_IMAGE build argument. All progress goes to stderr.
#
# Order of preference:
#   1. $BASE_IMAGE, if set
#   2. debian:bookworm-slim, if present locally or pullable
#   3. osb-base/debian:bookworm, if present locally
#   4. build osb-base/debian:bookworm with debootstrap and `docker import`
#
# Safe to run concurrently: a lock in /tmp serialises the slow path, and a
# second caller reuses the image built by the first.
set -euo pipefail

UPSTREAM_IMAGE="debian:bookworm-slim"
LOCAL_IMAGE="osb-base/debian:bookworm"
SUITE="bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
LOCK_FILE="${OSB_BASE_IMAGE_LOCK:-/tmp/osb-base-image.lock}"

log() { printf 'base-image: %s\n' "$*" >&2; }

if [[ -n "${BASE_IMAGE:-}" ]]; then
  printf '%s\n' "$BASE_IMAGE"
  exit 0
fi

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if have_image "$UPSTREAM_IMAGE"; then
  printf '%s\n' "$UPSTREAM_IMAGE"
  exit 0
fi

# Serialise everything below: pulls, checks and the debootstrap build.
exec 9>"$LOCK_FILE"
if ! flock -n 9; then
  log "another process holds $LOCK_FILE; waiting"
  flock 9
fi

# Re-check after acquiring the lock: the other process may have finished.
if have_image "$UPSTREAM_IMAGE"; then
  printf '%s\n' "$UPSTREAM_IMAGE"
  exit 0
fi

log "trying docker pull $UPSTREAM_IMAGE"
if docker pull -q "$UPSTREAM_IMAGE" >/dev/null 2>&1; then
  log "pulled $UPSTREAM_IMAGE"
  printf '%s\n' "$UPSTREAM_IMAGE"
  exit 0
fi
log "pull failed (offline?)"

if have_image "$LOCAL_IMAGE"; then
  log "using existing $LOCAL_IMAGE"
  printf '%s\n' "$LOCAL_IMAGE"
  exit 0
fi

SUDO=()
if [[ $EUID -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    log "building $LOCAL_IMAGE requires root (or sudo)"
    exit 1
  fi
fi

if ! command -v debootstrap >/dev/null 2>&1 && [[ ! -x /usr/sbin/debootstrap ]]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    log "debootstrap is missing and apt-get is unavailable to install it"
    exit 1
  fi
  log "installing debootstrap"
  "${SUDO[@]}" apt-get update >&2
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends debootstrap >&2
fi
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"

tmpdir="$(mktemp -d /tmp/osb-debootstrap.XXXXXX)"
cleanup() { "${SUDO[@]}" rm -rf --one-file-system "$tmpdir"; }
trap cleanup EXIT

log "debootstrap --variant=minbase $SUITE from $MIRROR (this takes a minute)"
start=$SECONDS
"${SUDO[@]}" "$DEBOOTSTRAP" --variant=minbase "$SUITE" "$tmpdir" "$MIRROR" >&2
# Make the result behave like the official -slim image: security and point
# release updates enabled, no docs/man pages installed by later apt runs, no
# apt caches left behind.
"${SUDO[@]}" tee "$tmpdir/etc/apt/sources.list" >/dev/null <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
"${SUDO[@]}" tee "$tmpdir/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
DPKG
"${SUDO[@]}" tee "$tmpdir/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
APT
"${SUDO[@]}" tee "$tmpdir/etc/apt/apt.conf.d/docker-no-recommends" >/dev/null <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT
"${SUDO[@]}" rm -rf "$tmpdir"/var/lib/apt/lists/* "$tmpdir"/var/cache/apt/archives/*.deb \
  "$tmpdir"/var/cache/apt/*.bin "$tmpdir"/var/log/*.log \
  "$tmpdir"/usr/share/doc/*/changelog* "$tmpdir"/usr/share/man/* "$tmpdir"/usr/share/info/* 2>/dev/null || true

log "importing as $LOCAL_IMAGE"
"${SUDO[@]}" tar --numeric-owner -C "$tmpdir" -c . \
  | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$LOCAL_IMAGE" >/dev/null
log "built $LOCAL_IMAGE in $((SECONDS - start)) s"

printf '%s\n' "$LOCAL_IMAGE"
