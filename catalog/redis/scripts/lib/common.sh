# shellcheck shell=bash
# Shared helpers for the /osb/<operation> scripts. Sourced, never executed.
#
# Conventions:
#   * inputs come only from environment variables (never argv);
#   * redis-cli talks to the unix socket; passwords reach it only through
#     REDISCLI_AUTH, and password hashes for ACL SETUSER through stdin (-x):
#     no secret is ever on a command line;
#   * redis-cli exits 0 even on an error reply, so every answer is compared
#     with the one expected;
#   * on failure: non-zero exit and a short message on stderr.

export LC_ALL=C.UTF-8
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
OSB_OP="${0##*/}"
OSB_SOCKET=/run/redis/redis.sock
OSB_VOLUME=/var/lib/redis
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_SETTINGS="$OSB_VOLUME/osb.conf"
OSB_LOCAL_USER=osb-local
OSB_LOCAL_SECRET=/run/redis/local.secret
# Where the broker puts ca.pem, cert.pem and key.pem (service.json tls.dir),
# and the port serving TLS with them (lib/start).
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_TLS_DIR=/etc/osb-tls
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_TLS_PORT=6380

# What a binding may do: every key, every channel, every command except
#   @admin      server administration: CONFIG, ACL (but WHOAMI/CAT/GENPASS),
#               SHUTDOWN, DEBUG, MODULE, MONITOR, SLOWLOG, LATENCY, SAVE,
#               BGSAVE, BGREWRITEAOF, REPLICAOF, FAILOVER, CLUSTER, CLIENT
#               LIST/KILL/PAUSE/NO-EVICT, ...
#   @dangerous  the above plus FLUSHDB FLUSHALL INFO KEYS SORT SORT_RO SWAPDB
#               MIGRATE RESTORE RESTORE-ASKING,
# then those of @dangerous that only touch the instance's own data (which
# every binding may read and delete key by key anyway) or are needed by
# common clients are given back: FLUSHDB FLUSHALL KEYS SORT SORT_RO SWAPDB
# INFO (ioredis' ready check, job queues' version checks). MIGRATE (opens
# connections to other servers) and RESTORE (parses raw serialized payloads)
# stay denied. Transactions, pub/sub and Lua/functions are plain @all
# members; scripts run with the caller's permissions.
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_BINDING_RULES=(reset on '~*' '&*' '+@all' '-@admin' '-@dangerous'
  +flushdb +flushall +keys +sort +sort_ro +swapdb +info)
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_ADMIN_RULES=(reset on '~*' '&*' '+@all')
# What "default" is while password_only_clients is off: it can never log in.
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_DEFAULT_OFF_RULES='reset off resetpass resetkeys resetchannels -@all'

die() {
  printf '%s: %s\n' "$OSB_OP" "$*" >&2
  exit 1
}

# Started as root (docker exec without -u)? Switch if allowed; the broker's
# containers drop all capabilities, so usually it is not.
if [[ "$(id -u)" == 0 ]]; then
  setpriv --reuid=redis --regid=redis --init-groups true 2>/dev/null \
    || die "must run as the redis OS user (docker exec -u redis)"
  exec setpriv --reuid=redis --regid=redis --init-groups env HOME=/var/lib/redis "$0"
fi
[[ "$(id -un)" == redis ]] || die "must run as the redis OS user"

# Ignore redis-cli settings from the caller.
unset REDISCLI_AUTH REDISCLI_HISTFILE REDISCLI_RCFILE REDISCLI_CLUSTER_YES

# require_env NAME... : every variable must be set and non-empty.
require_env() {
  local n
  for n in "$@"; do
    [[ -n "${!n:-}" ]] || die "environment variable $n is required"
  done
}

# check_user_name NAME : the value of env var NAME is an ACL user name we may
# create or manage.
check_user_name() {
  local v="${!1}"
  [[ "$v" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] \
    || die "$1 must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-'"
  case "$v" in
    default | "$OSB_LOCAL_USER") die "$1 may not be '$v' (reserved)";;
  esac
}

# password_hash NAME : SHA-256 (hex) of the value of env var NAME, the form in
# which ACL SETUSER takes a password ("#<hash>"). printf is a builtin, so the
# password is on no command line.
password_hash() {
  local h
  h="$(printf '%s' "${!1}" | sha256sum)" || die "sha256sum failed"
  printf '%s' "${h%% *}"
}

# as_local ARGS... / as_admin ARGS... : redis-cli over the socket as the
# bootstrap user / the admin; stdout is the raw reply.
as_local() {
  local secret
  secret="$(< "$OSB_LOCAL_SECRET")" || die "cannot read $OSB_LOCAL_SECRET"
  REDISCLI_AUTH="$secret" redis-cli -s "$OSB_SOCKET" --user "$OSB_LOCAL_USER" "$@" 2>/dev/null
}
as_admin() {
  require_env ADMIN_USERNAME ADMIN_PASSWORD
  REDISCLI_AUTH="$ADMIN_PASSWORD" redis-cli -s "$OSB_SOCKET" --user "$ADMIN_USERNAME" "$@" 2>/dev/null
}

# expect WANT WHAT COMMAND... : run COMMAND; die with WHAT unless it printed WANT.
expect() {
  local want="$1" what="$2" out
  shift 2
  out="$("$@")" || true
  [[ "$out" == "$want" ]] || die "$what: ${out:-no answer}"
}

# set_user VIA NAME HASH RULES... : ACL SETUSER NAME RULES... #HASH through
# VIA (as_local or as_admin); the hash is the last argument, read from stdin.
set_user() {
  local via="$1" name="$2" hash="$3"
  shift 3
  printf '#%s' "$hash" | "$via" -x ACL SETUSER "$name" "$@"
}

# is_privileged NAME : true if user NAME exists and may run CONFIG GET.
is_privileged() {
  [[ "$(as_admin ACL DRYRUN "$1" CONFIG GET maxmemory)" == OK ]]
}

# tls_enabled : true when the server serves TLS (lib/start found the broker's
# files and gave it a tls-port).
tls_enabled() {
  local out
  out="$(as_admin CONFIG GET tls-port)" || true
  [[ "$out" == $'tls-port\n'* && "${out#*$'\n'}" != 0 ]]
}

# ---- password-only clients (parameter password_only_clients) ----------------
# Clients that send a password without a user name (redis-cli -a, ioredis or
# node-redis given host, port and password, Spring Cloud Connectors, java-cfenv
# before 3.5.2 / 4.0.1) log in as "default". With the parameter on, "default"
# gets the rules of a binding and the password of every binding user as one of
# its passwords (an ACL user may have several), so each binding's own password
# logs in either way and an unbind still revokes only that binding's password.
# What is lost: the server sees those sessions as "default", so it cannot end
# one binding's sessions alone; an unbind ends every password-only session
# (clients reconnect with their passwords, which still work).

# binding_password_hashes : the password hashes of every enabled binding user
# (every ACL user but default, osb-local and the admin), one a line.
binding_password_hashes() {
  local out line word
  local -a words
  out="$(as_admin ACL LIST)" || true
  [[ "$out" == "user "* ]] || die "could not list the ACL users: ${out:-no answer}"
  while IFS= read -r line; do
    read -r -a words <<<"${line%$'\r'}"
    [[ "${words[0]:-}" == user && " ${words[*]:2} " == *" on "* ]] || continue
    case "${words[1]:-}" in default | "$OSB_LOCAL_USER" | "$ADMIN_USERNAME") continue;; esac
    for word in "${words[@]:2}"; do
      if [[ "$word" =~ ^#[0-9a-f]{64}$ ]]; then printf '%s\n' "${word#\#}"; fi
    done
  done <<<"$out"
}

# sync_default_user : makes "default" match PARAM_PASSWORD_ONLY_CLIENTS: on,
# with a binding's rules and every binding's password hash, or off. The
# command goes to redis-cli on stdin, so no hash is on a command line.
sync_default_user() {
  local command hash
  if [[ "${PARAM_PASSWORD_ONLY_CLIENTS:-false}" == true ]]; then
    command="ACL SETUSER default ${OSB_BINDING_RULES[*]}"
    while IFS= read -r hash; do
      if [[ -n "$hash" ]]; then command+=" #$hash"; fi
    done < <(binding_password_hashes)
  else
    command="ACL SETUSER default $OSB_DEFAULT_OFF_RULES"
  fi
  expect OK "could not set the default user" as_admin_stdin "$command"
}

# end_password_only_sessions : closes every connection logged in as
# "default" (Redis keeps sessions open when a password is taken away).
end_password_only_sessions() {
  local out
  out="$(as_admin CLIENT KILL USER default)" || true
  [[ "$out" =~ ^[0-9]+$ ]] || die "could not close the password-only sessions: ${out:-no answer}"
}

# as_admin_stdin COMMAND : one command line given to redis-cli on stdin.
as_admin_stdin() {
  printf '%s\n' "$1" | as_admin
}

# check_rdb FILE : succeeds when FILE is a complete, valid RDB file
# (redis-check-rdb); otherwise sets OSB_RDB_PROBLEM to what it found.
OSB_RDB_PROBLEM=""
check_rdb() {
  local out
  if out="$(redis-check-rdb "$1" 2>&1)"; then return 0; fi
  # The line after "--- RDB ERROR DETECTED ---" says what and where.
  OSB_RDB_PROBLEM="$(grep -m 1 -A 1 -e '^--- RDB ERROR DETECTED ---' <<<"$out" | tail -n 1 || true)"
  OSB_RDB_PROBLEM="${OSB_RDB_PROBLEM:-$(tail -n 1 <<<"$out")}"
  return 1
}
