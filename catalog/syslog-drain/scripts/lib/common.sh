# shellcheck shell=bash
# Shared helpers for the /osb/<operation> scripts and the rotation hook that
# rsyslog runs. Sourced, never executed.
#
# Conventions: inputs only from environment variables; nothing secret exists
# for this offering, but nothing is passed on a command line either; on
# failure a non-zero exit and a short message on stderr.

export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 027

OSB_OP="${0##*/}"
DATA_DIR=/var/lib/syslog-drain
LOG_DIR="$DATA_DIR/logs"
# shellcheck disable=SC2034 # used by the scripts that source this file
CURRENT="$LOG_DIR/drain.log"
SETTING="$DATA_DIR/max_file_mb"
LOCK_FILE="$DATA_DIR/.osb.lock"
# rsyslog waits for the rotation hook, which takes the same lock: keep waits short.
LOCK_WAIT_SECONDS=10
PORT=1514
DEFAULT_MAX_FILE_MB=10
# rsyslog hands the current file over at SEGMENT_BYTES (rotation.sizeLimit in
# rsyslog.conf); it may be one write larger by then (a message of at most
# 8 KiB plus a 4 KiB buffer): room kept free for the current file.
SEGMENT_BYTES=262144
CURRENT_MAX_BYTES=$(( SEGMENT_BYTES + 65536 ))

die() {
  printf '%s: %s\n' "$OSB_OP" "$*" >&2
  exit 1
}

[[ "$(id -un)" == syslog ]] || die "must run as the syslog OS user (docker exec -u syslog)"

# with_lock : serialises rotation and pruning. Waits at most
# LOCK_WAIT_SECONDS; holds the lock until the script exits.
with_lock() {
  exec 9>"$LOCK_FILE"
  flock -w "$LOCK_WAIT_SECONDS" 9 || die "timed out waiting for another script"
}

# max_file_mb : the cap in effect (the setting file, else the default).
max_file_mb() {
  local v=""
  [[ -r "$SETTING" ]] && v="$(<"$SETTING")"
  if [[ "$v" =~ ^[0-9]{1,4}$ ]] && (( 10#$v >= 1 && 10#$v <= 1024 )); then
    printf '%d' "$((10#$v))"
  else
    printf '%d' "$DEFAULT_MAX_FILE_MB"
  fi
}

# prune : deletes the oldest rotated files until they, together with room for
# the current file, fit in max_file_mb. Rotated files are drain.log.<ns since
# the epoch>, 19 digits, so name order is age order.
prune() {
  local budget total=0 i
  local -a files sizes
  budget=$(( $(max_file_mb) * 1048576 - CURRENT_MAX_BYTES ))
  shopt -s nullglob
  files=("$LOG_DIR"/drain.log.[0-9]*)
  shopt -u nullglob
  (( ${#files[@]} > 0 )) || return 0
  mapfile -t sizes < <(stat -c %s -- "${files[@]}")
  for (( i = ${#files[@]} - 1; i >= 0; i-- )); do
    total=$(( total + ${sizes[i]:-0} ))
    if (( total > budget )); then
      rm -f -- "${files[@]:0:i+1}"
      return 0
    fi
  done
}

# tcp_open : opens fd 3 to rsyslog's TCP input; fails at once if nothing listens.
tcp_open() {
  exec 3<>"/dev/tcp/127.0.0.1/$PORT"
}

# pack DIR [NAME...] : writes a tar archive of the files NAME... of DIR to
# stdout, with their SHA-256 checksums as its last member, SHA256SUMS. A dump
# that lacks it, or whose files do not match it, is incomplete (see unpack).
pack() {
  local dir="$1"
  shift
  if (( $# > 0 )); then
    (cd "$dir" && sha256sum -- "$@" > SHA256SUMS) || return 1
  else
    : > "$dir/SHA256SUMS" || return 1
  fi
  tar -C "$dir" --format=posix --owner=0 --group=0 --numeric-owner -cf - -- "$@" SHA256SUMS
}

# unpack DIR PATTERN : reads an archive made by pack from stdin into the empty
# directory DIR, keeping it at DIR/.archive while it is checked. Succeeds only
# if the archive is complete (readable to its end, SHA256SUMS its last member,
# every checksum right) and every other member is a regular file whose name
# matches the extended regular expression PATTERN and is listed in SHA256SUMS.
# Otherwise fails, with OSB_UNPACK_PROBLEM saying what is wrong with the dump
# ("is empty", ...).
OSB_UNPACK_PROBLEM=""
# shellcheck disable=SC2034 # OSB_UNPACK_PROBLEM is read by the scripts that source this file
unpack() {
  local dir="$1" pattern="$2" archive="$1/.archive" listing names name last="" count=0 out
  OSB_UNPACK_PROBLEM="could not be read from stdin"
  cat > "$archive" || return 1
  OSB_UNPACK_PROBLEM="is empty"
  [[ -s "$archive" ]] || return 1
  if ! listing="$(tar -tvf "$archive" 2>&1)"; then
    OSB_UNPACK_PROBLEM="is not a complete tar archive ($(grep -m 1 '^tar: ' <<<"$listing" || true))"
    return 1
  fi
  names="$(tar -tf "$archive")" || return 1
  while IFS= read -r name; do
    if [[ -n "$name" && "$name" != -* ]]; then
      OSB_UNPACK_PROBLEM="has a member that is not a regular file: ${name:0:100}"
      return 1
    fi
  done <<<"$listing"
  while IFS= read -r name; do
    [[ -n "$name" ]] || continue
    if [[ "$name" != SHA256SUMS && ! "$name" =~ $pattern ]]; then
      OSB_UNPACK_PROBLEM="has an unexpected member '${name:0:100}' (a dump of another offering?)"
      return 1
    fi
    [[ "$name" == SHA256SUMS ]] || count=$(( count + 1 ))
    last="$name"
  done <<<"$names"
  OSB_UNPACK_PROBLEM="is incomplete (SHA256SUMS is not its last member)"
  [[ "$last" == SHA256SUMS ]] || return 1
  if ! out="$(tar -C "$dir" --no-same-owner --no-same-permissions -xf "$archive" 2>&1)"; then
    OSB_UNPACK_PROBLEM="could not be unpacked ($(grep -m 1 '^tar: ' <<<"$out" || true))"
    return 1
  fi
  rm -f "$archive"
  OSB_UNPACK_PROBLEM="is damaged (a file does not match its checksum in SHA256SUMS)"
  (cd "$dir" && sha256sum --check --strict --quiet SHA256SUMS >/dev/null 2>&1) || return 1
  OSB_UNPACK_PROBLEM="is damaged (SHA256SUMS does not list every file)"
  [[ "$(wc -l < "$dir/SHA256SUMS")" == "$count" ]] || return 1
  rm -f "$dir/SHA256SUMS"
  OSB_UNPACK_PROBLEM=""
}
