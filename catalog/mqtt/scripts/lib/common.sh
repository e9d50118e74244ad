# shellcheck shell=bash
# Shared helpers for the /osb/<operation> scripts of the Mosquitto image.
# Sourced, never executed.
#
# Conventions:
#   * inputs come only from environment variables (never argv);
#   * secrets are never printed and never put on a command line:
#       - a new password is written (mode 600, in a private directory on the
#         /dev/shm tmpfs) as a one-line plain "user:password" file, which
#         `mosquitto_passwd -U` hashes in place (PBKDF2-SHA512); only the hash
#         goes into the password file;
#       - test logins use mosquitto_sub, which reads "-u"/"-P" from its options
#         file $XDG_CONFIG_HOME/mosquitto_sub (mode 600, same private directory);
#   * the password file, the ACL file and conf.d/ are changed under a lock, by
#     writing a new file and renaming it, then mosquitto (PID 1, same user) is
#     sent SIGHUP and the scripts wait until the change is in effect;
#   * on failure: non-zero exit and a short message on stderr.

export LC_ALL=C.UTF-8
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck source=SCRIPTDIR/listeners.sh
. "$(dirname "${BASH_SOURCE[0]}")/listeners.sh"
export HOME=/var/lib/mosquitto
OSB_OP="${0##*/}"
DATA=/var/lib/mosquitto
PASSWD="$DATA/passwd"
ACL="$DATA/acl"
SETTINGS="$DATA/conf.d/50-settings.conf"
umask 077

die() {
  printf '%s: %s\n' "$OSB_OP" "$*" >&2
  exit 1
}

[[ "$(id -un)" == mosquitto ]] || die "must run as the mosquitto OS user (docker exec -u mosquitto)"

# Private scratch directory, removed on exit.
OSB_TMP=""
scratch() {
  if [[ -z "$OSB_TMP" ]]; then
    local base=/dev/shm
    [[ -d "$base" && -w "$base" ]] || base="$DATA"
    OSB_TMP="$(mktemp -d "$base/osb-$OSB_OP.XXXXXXXX")" || die "cannot create a scratch directory"
    trap 'rm -rf "$OSB_TMP"' EXIT
  fi
}

# require_env NAME... : every variable must be set and non-empty.
require_env() {
  local n
  for n in "$@"; do
    [[ -n "${!n:-}" ]] || die "environment variable $n is required"
  done
}

# check_user_name NAME : env var NAME can be a user of the password and ACL
# files (which are line- and ":"-separated and split at white space).
check_user_name() {
  local v="${!1}"
  (( ${#v} <= 256 )) || die "$1 is longer than 256 characters"
  [[ "$v" != *[[:space:][:cntrl:]:#]* ]] || die "$1 may not contain white space, control characters, ':' or '#'"
}

# check_password NAME : env var NAME can be a password of the password file.
check_password() {
  local v="${!1}"
  (( ${#v} <= 256 )) || die "$1 is longer than 256 characters"
  [[ "$v" != *[[:cntrl:]]* ]] || die "$1 may not contain control characters"
}

# lock : serialises changes of the password, ACL and settings files (held
# until the script exits).
lock() {
  exec 9>>"$DATA/.osb.lock"
  flock -w 30 9 || die "another operation holds the lock for too long"
}

# users : the user names in the password file, one a line.
users() {
  local line
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -n "$line" && "$line" != \#* ]] && printf '%s\n' "${line%%:*}"
  done < "$PASSWD"
}

has_user() {
  local u
  while IFS= read -r u; do
    [[ "$u" == "$1" ]] && return 0
  done < <(users)
  return 1
}

# passwd_without NAME > file : the password file without the line of NAME.
passwd_without() {
  local line
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -z "$line" || "${line%%:*}" == "$1" ]] || printf '%s\n' "$line"
  done < "$PASSWD"
}

# set_password USER_VAR PASSWORD_VAR : adds or replaces the user in the
# password file (hashed with PBKDF2-SHA512).
set_password() {
  local user="${!1}"
  scratch
  printf '%s:%s\n' "$user" "${!2}" > "$OSB_TMP/entry"
  mosquitto_passwd -U "$OSB_TMP/entry" > /dev/null 2>&1 || die "could not hash the password"
  local hashed
  hashed="$(< "$OSB_TMP/entry")"
  rm -f "$OSB_TMP/entry"
  [[ "$hashed" == "$user:\$7\$"* ]] || die "unexpected output of mosquitto_passwd"
  { passwd_without "$user"; printf '%s\n' "$hashed"; } > "$PASSWD.new"
  chmod 600 "$PASSWD.new"
  mv -f "$PASSWD.new" "$PASSWD"
}

# remove_user NAME : drops the user from the password file.
remove_user() {
  passwd_without "$1" > "$PASSWD.new"
  chmod 600 "$PASSWD.new"
  mv -f "$PASSWD.new" "$PASSWD"
}

# write_acl : rewrites the ACL file from the password file. Every user may
# publish and subscribe to every topic of the instance (the bindings share it);
# only the admin (ADMIN_USERNAME) may also read the $SYS/# status topics.
write_acl() {
  local u
  {
    printf '# Written by the /osb scripts from the password file; do not edit.\n'
    while IFS= read -r u; do
      printf '\nuser %s\ntopic readwrite #\n' "$u"
      # shellcheck disable=SC2016 # $SYS is a literal topic name
      [[ "$u" != "$ADMIN_USERNAME" ]] || printf 'topic read $SYS/#\n'
    done < <(users)
  } > "$ACL.new"
  chmod 600 "$ACL.new"
  mv -f "$ACL.new" "$ACL"
}

# reload : makes mosquitto re-read password file, ACL and settings: SIGHUP to
# PID 1, the image's entrypoint, which passes it on to mosquitto.
reload() {
  entrypoint_runs
  kill -HUP 1 || die "could not signal mosquitto"
}

# entrypoint_runs : dies unless PID 1 is the entrypoint that runs mosquitto
# (bash running osb-mosquitto-entrypoint).
entrypoint_runs() {
  local -a cmdline=()
  mapfile -d '' -t cmdline < /proc/1/cmdline 2>/dev/null || true
  [[ "${cmdline[1]:-}" == */osb-mosquitto-entrypoint ]] \
    || die "PID 1 is not the image's entrypoint (osb-mosquitto-entrypoint)"
}

# try_login USER_VAR PASSWORD_VAR : one MQTT login (CONNECT, SUBSCRIBE to a
# throw-away topic, DISCONNECT) with these credentials, clean session.
# Returns 0 when accepted, 5 when refused as not authorised, else another code.
# Without PASSWORD_VAR: no credentials at all (anonymous).
try_login() {
  scratch
  local dir="$OSB_TMP/login" rc=0
  rm -rf "$dir"
  mkdir -m 700 "$dir"
  if [[ -n "${1:-}" ]]; then
    printf -- '-u %s\n-P %s\n' "${!1}" "${!2}" > "$dir/mosquitto_sub"
  fi
  # OSB_LOGIN_TLS=1: over the TLS listener, the chain checked against the broker's CA (the certificate names the
  # advertised host, not 127.0.0.1: --insecure skips only the name).
  local -a where=(-p 1883)
  [[ -z "${OSB_LOGIN_TLS:-}" ]] || where=(-p 8883 --cafile "$OSB_TLS_DIR/ca.pem" --insecure)
  XDG_CONFIG_HOME="$dir" mosquitto_sub -h 127.0.0.1 "${where[@]}" -V mqttv311 \
    -i "osb-$OSB_OP-$$-$RANDOM" -t "osb-login-check/$$" -E -W 5 \
    > /dev/null 2> "$OSB_TMP/login.err" || rc=$?
  rm -rf "$dir"
  if (( rc != 0 && rc != 5 )) && grep -q 'not authorised' "$OSB_TMP/login.err"; then rc=5; fi
  return "$rc"
}

# wait_login USER_VAR PASSWORD_VAR accepted|refused : waits (up to 5 s) until
# a login with these credentials gets that answer.
wait_login() {
  local want="$3" rc
  for _ in $(seq 1 100); do
    rc=0
    try_login "$1" "$2" || rc=$?
    [[ "$want" == accepted && "$rc" == 0 ]] && return 0
    [[ "$want" == refused && "$rc" == 5 ]] && return 0
    sleep 0.05
  done
  die "a login of $1 was not $want after the reload (mosquitto_sub exit code $rc)"
}

# bool NAME DEFAULT : the value of env var NAME as true/false.
bool() {
  local v="${!1:-$2}"
  case "$v" in
    true | false) printf '%s' "$v" ;;
    *) die "$1 must be true or false" ;;
  esac
}

# write_settings : the updatable settings as conf.d/50-settings.conf. Only
# options that mosquitto re-reads on SIGHUP belong here.
#   PARAM_LOG_CONNECTIONS    log every client connect/disconnect (default true)
#   PARAM_LOG_SUBSCRIPTIONS  log every SUBSCRIBE/UNSUBSCRIBE (default false)
write_settings() {
  local connections subscriptions
  connections="$(bool PARAM_LOG_CONNECTIONS true)"
  subscriptions="$(bool PARAM_LOG_SUBSCRIPTIONS false)"
  {
    printf '# Written by /osb/configure from the instance parameters; do not edit.\n'
    printf 'connection_messages %s\n' "$connections"
    if [[ "$subscriptions" == true ]]; then
      printf 'log_type subscribe\nlog_type unsubscribe\n'
    fi
  } > "$SETTINGS.new"
  chmod 600 "$SETTINGS.new"
  mv -f "$SETTINGS.new" "$SETTINGS"
}

# apply_require_tls : records PARAM_REQUIRE_TLS (true: plain MQTT on loopback only, for these scripts; TLS on 8883)
# and, when that changes the listeners mosquitto runs with, has the entrypoint restart mosquitto: it opens and closes
# listeners only at start (clients are disconnected for about a second and reconnect; persistent sessions and
# retained messages stay). Returns once the admin logs in again. Refused where there are no TLS files (Swarm).
apply_require_tls() {
  local want
  want="$(bool PARAM_REQUIRE_TLS false)"
  [[ "$want" == false ]] || tls_files_present \
    || die "require_tls needs TLS, and this container has no certificate from the broker"
  printf '%s\n' "$want" > "$OSB_REQUIRE_TLS.new"
  mv -f "$OSB_REQUIRE_TLS.new" "$OSB_REQUIRE_TLS"
  [[ "$(listeners_conf)" != "$(cat "$OSB_LISTENERS" 2>/dev/null)" ]] || return 0
  entrypoint_runs
  kill -USR2 1 || die "could not signal the entrypoint"
  # The entrypoint writes the listeners only after the old mosquitto exited, right before it starts the new one.
  for _ in $(seq 1 300); do
    [[ "$(listeners_conf)" != "$(cat "$OSB_LISTENERS" 2>/dev/null)" ]] || break
    sleep 0.05
  done
  [[ "$(listeners_conf)" == "$(cat "$OSB_LISTENERS" 2>/dev/null)" ]] \
    || die "mosquitto was not restarted with the new listeners within 15 s"
  wait_login ADMIN_USERNAME ADMIN_PASSWORD accepted
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
