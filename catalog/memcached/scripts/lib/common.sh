# shellcheck shell=bash
# Shared helpers for the /osb/<operation> scripts. Sourced, never executed.
#
# Conventions:
#   * inputs come only from environment variables (never argv);
#   * secrets are never printed and never put on a command line: passwords
#     reach saslpasswd2 on stdin and memcached through bash's builtin printf
#     writing to a /dev/tcp socket (builtins start no process);
#   * on failure: non-zero exit and a short message on stderr.

export LC_ALL=C          # byte-wise lengths for the binary protocol
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 077                # the sasldb holds passwords: files are mode 600

OSB_OP="${0##*/}"
DATA_DIR=/var/lib/memcached
SASLDB="$DATA_DIR/sasldb2"
# shellcheck disable=SC2034 # used by the scripts that source this file
SETTINGS="$DATA_DIR/settings"
LOCK_FILE="$DATA_DIR/.osb.lock"
LOCK_WAIT_SECONDS=30
# shellcheck disable=SC2034 # used by the scripts that source this file
WAITING=/tmp/osb-memcached-waiting-for-settings
SASL_APP=memcached
MC_PORT=11211
# shellcheck source=SCRIPTDIR/listeners.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/listeners.sh"

die() {
  printf '%s: %s\n' "$OSB_OP" "$*" >&2
  exit 1
}

[[ "$(id -un)" == memcache ]] || die "must run as the memcache OS user (docker exec -u memcache)"

# require_env NAME... : every variable must be set and non-empty.
require_env() {
  local n
  for n in "$@"; do
    [[ -n "${!n:-}" ]] || die "environment variable $n is required"
  done
}

# check_user NAME : the value of env var NAME is a usable SASL user name
# (no "@", ":", blanks or control characters; not starting with "-").
check_user() {
  [[ "${!1}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$ ]] \
    || die "$1 must be 1-64 characters of A-Z a-z 0-9 _ . - (not starting with . or -)"
}

# check_password NAME : printable ASCII without blanks, at most 200 bytes.
check_password() {
  [[ "${!1}" =~ ^[[:graph:]]{1,200}$ ]] \
    || die "$1 must be 1-200 printable ASCII characters without blanks"
}

# The SASL realm memcached looks users up in is the container's host name
# (memcached passes gethostname() to Cyrus). Docker gives every container its
# own host name, so users must be moved when the container is replaced.
realm() {
  local r
  r="$(</proc/sys/kernel/hostname)"
  [[ "$r" =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || die "unexpected host name '$r'"
  printf '%s' "$r"
}

# with_lock : serialises every change of the sasldb (BDB has no writer locking
# of its own here). Waits at most LOCK_WAIT_SECONDS; holds the lock until the
# script exits.
with_lock() {
  exec 9>"$LOCK_FILE"
  flock -w "$LOCK_WAIT_SECONDS" 9 || die "timed out waiting for another script"
}

# sasl_load_entries : fills SASL_ENTRIES with the "user@realm" of every user
# (none without a database). Output is parsed rather than piped into grep -q,
# which could end the writer early and fail the pipeline.
sasl_load_entries() {
  SASL_ENTRIES=()
  [[ -s "$SASLDB" ]] || return 0
  local out line
  out="$(sasldblistusers2 -f "$SASLDB" 2>&1)" || die "cannot read the SASL database"
  # sasldblistusers2 exits 0 even when it fails, so look at what it printed.
  [[ "$out" != *"listusers failed"* ]] || die "cannot read the SASL database"
  while IFS= read -r line; do
    if [[ "$line" =~ ^(.+@[^@:]+):\ userPassword$ ]]; then
      SASL_ENTRIES+=("${BASH_REMATCH[1]}")
    fi
  done <<<"$out"
}

# sasl_set_password USER PASSWORD_VAR : creates the user in the current realm or
# sets its password. The password goes to saslpasswd2 on stdin.
sasl_set_password() {
  local user="$1" var="$2" r entry
  r="$(realm)"
  printf '%s' "${!var}" | saslpasswd2 -p -c -a "$SASL_APP" -f "$SASLDB" -u "$r" -- "$user" \
    || die "saslpasswd2 could not set the password of $user"
  sasl_load_entries
  for entry in "${SASL_ENTRIES[@]}"; do
    [[ "$entry" != "$user@$r" ]] || return 0
  done
  die "the SASL database has no entry for $user after saslpasswd2"
}

# sasl_delete USER : removes the user from every realm; a missing user is fine.
sasl_delete() {
  local user="$1" entry
  sasl_load_entries
  for entry in "${SASL_ENTRIES[@]}"; do
    [[ "${entry%@*}" == "$user" ]] || continue
    saslpasswd2 -d -a "$SASL_APP" -f "$SASLDB" -u "${entry##*@}" -- "$user" >/dev/null 2>&1 || true
  done
  sasl_load_entries
  for entry in "${SASL_ENTRIES[@]}"; do
    [[ "${entry%@*}" != "$user" ]] || die "could not remove $user from the SASL database"
  done
}

# sasl_others_in_realm REALM : succeeds when some user is in another realm.
sasl_others_in_realm() {
  local entry
  sasl_load_entries
  for entry in "${SASL_ENTRIES[@]}"; do
    [[ "${entry##*@}" == "$1" ]] || return 0
  done
  return 1
}

# sasl_move_to_current_realm : after the container was replaced (upgrade), moves
# every user to the realm of the new host name, passwords unchanged. The dump
# goes from db5.3_dump through sed into db5.3_load and is never printed.
sasl_move_to_current_realm() {
  local r
  r="$(realm)"
  sasl_others_in_realm "$r" || return 0
  rm -f "$SASLDB.new"
  db5.3_dump -p "$SASLDB" \
    | sed -E 's/^( [A-Za-z0-9_.-]+)\\00[A-Za-z0-9.-]*\\00([A-Za-z0-9_-]+)$/\1\\00'"$r"'\\00\2/' \
    | db5.3_load "$SASLDB.new" \
    || { rm -f "$SASLDB.new"; die "could not move the SASL users to realm $r"; }
  mv -f "$SASLDB.new" "$SASLDB"
  ! sasl_others_in_realm "$r" || die "some SASL users are still in another realm"
}

# ---- memcached binary protocol over bash's /dev/tcp or openssl s_client -----

# mc_connect : opens the connection to the local memcached, written on fd 3 and
# read on fd 4; fails at once if nothing listens. Plain on 127.0.0.1:$MC_PORT;
# with MC_TLS=1 over TLS on $OSB_TLS_PORT through openssl s_client, which
# checks the chain against the broker's CA (not the name: the certificate
# names the advertised host, not 127.0.0.1).
mc_connect() {
  if [[ "${MC_TLS:-}" == 1 ]]; then
    coproc MC_TLS_CLIENT { exec openssl s_client -quiet -no_ign_eof -verify_return_error \
      -CAfile "$OSB_TLS_DIR/ca.pem" -connect "127.0.0.1:$OSB_TLS_PORT" 2>/dev/null; }
    exec 3>&"${MC_TLS_CLIENT[1]}" 4<&"${MC_TLS_CLIENT[0]}"
    # A refused handshake ends openssl: writing to it then fails instead of killing the script.
    trap '' PIPE
  else
    exec 3<>"/dev/tcp/127.0.0.1/$MC_PORT" && exec 4<&3
  fi
}

mc_close() {
  exec 3>&- 4<&-
  if [[ -n "${MC_TLS_CLIENT_PID:-}" ]]; then
    eval "exec ${MC_TLS_CLIENT[1]}>&- ${MC_TLS_CLIENT[0]}<&-" 2>/dev/null || true
    wait "$MC_TLS_CLIENT_PID" 2>/dev/null || true
  fi
  trap - PIPE
}

# mc_header OPCODE KEYLEN BODYLEN : writes a 24-byte request header to fd 3.
mc_header() {
  local fmt
  printf -v fmt '\\x80\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00' \
    "$1" $(( ($2 >> 8) & 255 )) $(( $2 & 255 )) \
    $(( ($3 >> 24) & 255 )) $(( ($3 >> 16) & 255 )) $(( ($3 >> 8) & 255 )) $(( $3 & 255 ))
  # shellcheck disable=SC2059
  printf "$fmt" >&3
}

# mc_read : reads one response from fd 4 into MC_STATUS and MC_BODY (NULs dropped).
mc_read() {
  local header len
  local -a b
  header="$(timeout 5 head -c 24 <&4 | od -An -v -tu1)" || return 1
  read -r -a b <<<"$(printf '%s' "$header" | tr '\n' ' ')"
  (( ${#b[@]} == 24 && b[0] == 0x81 )) || return 1
  MC_STATUS=$(( b[6] * 256 + b[7] ))
  len=$(( (b[8] << 24) + (b[9] << 16) + (b[10] << 8) + b[11] ))
  MC_BODY=""
  if (( len > 0 )); then
    MC_BODY="$(timeout 5 head -c "$len" <&4 | tr -d '\000')" || return 1
  fi
}

# mc_mechanisms : succeeds when memcached answers the SASL mechanism list with PLAIN
# (allowed before login).
mc_mechanisms() {
  mc_connect 2>/dev/null || return 1
  mc_header 0x20 0 0 || { mc_close; return 1; }
  mc_read || { mc_close; return 1; }
  mc_close
  [[ "$MC_STATUS" == 0 && " $MC_BODY " == *" PLAIN "* ]]
}

# mc_login USER_VAR PASSWORD_VAR : SASL PLAIN login, then a NOOP that only an
# authenticated connection may run. Succeeds when both answer "no error".
mc_login() {
  local user="${!1}" password="${!2}"
  mc_connect 2>/dev/null || return 1
  # key "PLAIN", value "\0user\0password" (empty authorisation identity)
  mc_header 0x21 5 $(( 5 + 2 + ${#user} + ${#password} )) || { mc_close; return 1; }
  printf 'PLAIN\0%s\0%s' "$user" "$password" >&3 || { mc_close; return 1; }
  mc_read || { mc_close; return 1; }
  if [[ "$MC_STATUS" != 0 ]]; then mc_close; return 2; fi
  mc_header 0x0a 0 0 || { mc_close; return 1; }
  mc_read || { mc_close; return 1; }
  mc_close
  [[ "$MC_STATUS" == 0 ]] || return 2
}

# ---- restarts of memcached inside the container (lib/start is PID 1) --------

# restart_memcached : has the entry point restart memcached (new listeners or
# certificate; the cache empties) and returns once the new process answers.
restart_memcached() {
  local before
  [[ "$(tr '\0' ' ' </proc/1/cmdline 2>/dev/null)" == *"/osb/lib/start"* ]] \
    || die "memcached runs as PID 1 in this container (an older image): restart or upgrade the instance instead"
  before="$(cat "$OSB_RUNNING_PID" 2>/dev/null)"
  kill -USR2 1 || die "could not signal the entry point"
  for _ in $(seq 1 300); do
    if [[ "$(cat "$OSB_RUNNING_PID" 2>/dev/null)" != "$before" ]] && mc_mechanisms; then return 0; fi
    sleep 0.05
  done
  die "memcached did not come back within 15 s; see the container's logs"
}

# apply_require_tls : records PARAM_REQUIRE_TLS (true: the plain port on
# loopback only; TLS on $OSB_TLS_PORT) and restarts memcached when that
# changes its listeners. Refused where there are no TLS files (Swarm).
apply_require_tls() {
  local want="${PARAM_REQUIRE_TLS:-false}"
  case "$want" in
    true) tls_files_present || die "require_tls needs TLS, and this container has no certificate from the broker";;
    false) ;;
    *) die "PARAM_REQUIRE_TLS must be true or false";;
  esac
  printf '%s\n' "$want" > "$OSB_REQUIRE_TLS.new"
  mv -f "$OSB_REQUIRE_TLS.new" "$OSB_REQUIRE_TLS"
  [[ -s "$OSB_RUNNING_LISTENERS" ]] || return 0   # memcached has not started yet: it starts with them
  [[ "$(listener_options)" != "$(cat "$OSB_RUNNING_LISTENERS")" ]] || return 0
  restart_memcached
}
