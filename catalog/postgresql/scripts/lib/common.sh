# shellcheck shell=bash
# Shared helpers for the /osb/<operation> scripts. Sourced, never executed.
#
# Conventions:
#   * inputs come only from environment variables (never argv);
#   * secrets are never printed and never put on a command line: values reach
#     psql through its \getenv command and are quoted by psql (:'v' / :"v");
#   * on failure: non-zero exit and a short message on stderr.

PG_BIN=/usr/lib/postgresql/15/bin
# Where the broker puts ca.pem, cert.pem and key.pem (service.json tls.dir).
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_TLS_DIR=/etc/osb-tls
export LC_ALL=C.UTF-8   # character-wise string handling, UTF-8 messages
export PATH="$PG_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OSB_OP="${0##*/}"

die() {
  printf '%s: %s\n' "$OSB_OP" "$*" >&2
  exit 1
}

# Peer authentication maps the OS user to the database user "postgres".
# Started as root (docker exec without -u)? Switch if allowed; the broker's
# containers drop all capabilities, so usually it is not.
if [[ "$(id -u)" == 0 ]]; then
  setpriv --reuid=postgres --regid=postgres --init-groups true 2>/dev/null \
    || die "must run as the postgres OS user (docker exec -u postgres)"
  exec setpriv --reuid=postgres --regid=postgres --init-groups \
    env HOME=/var/lib/postgresql "$0"
fi
[[ "$(id -un)" == postgres ]] || die "must run as the postgres OS user"

# Ignore any libpq settings (PGHOST, PGOPTIONS, PGSERVICE, ...) from the caller.
while IFS= read -r _v; do
  unset "$_v"
done < <(compgen -e | grep '^PG' || true)
unset _v

# require_env NAME... : every variable must be set and non-empty.
require_env() {
  local n
  for n in "$@"; do
    [[ -n "${!n:-}" ]] || die "environment variable $n is required"
  done
}

byte_length() { local LC_ALL=C; printf '%s' "${#1}"; }

# check_role_name NAME : the value of env var NAME must be usable as a role
# we create or manage (any characters are fine; quoting is done by psql).
check_role_name() {
  local v="${!1}"
  (( $(byte_length "$v") <= 63 )) || die "$1 is longer than 63 bytes"
  case "$v" in
    postgres | pg_* | public | none | current_user | session_user | current_role)
      die "$1 may not be '$v' (reserved)";;
  esac
}

# check_database_name : PARAM_DATABASE is a usable instance database name.
# Also derives the group role that owns the database and everything in it:
#   OSB_OWNER_ROLE = "<database>_owner", the database name cut to its first
#   57 bytes (whole characters) if needed so that the role name fits in 63.
check_database_name() {
  local v="${PARAM_DATABASE}" base
  case "$v" in
    postgres | template0 | template1) die "PARAM_DATABASE may not be '$v' (reserved)";;
  esac
  (( $(byte_length "$v") <= 63 )) || die "PARAM_DATABASE is longer than 63 bytes"
  base="$v"
  while (( $(byte_length "$base") > 57 )); do
    base="${base%?}"
  done
  export OSB_OWNER_ROLE="${base}_owner"
}

# psql_local DBNAME [psql options...] : run psql as superuser "postgres" over
# the local unix socket (peer auth), reading SQL from stdin. DBNAME goes via
# PGDATABASE, so it is never parsed as a connection string.
# Statement logging is switched off for these sessions (they carry passwords)
# unless OSB_SESSION_OPTIONS overrides the session options.
OSB_QUIET_SESSION='-c log_statement=none -c log_min_duration_statement=-1 -c log_min_error_statement=panic -c client_min_messages=warning'
psql_local() {
  local db="$1"
  shift
  PGHOST=/var/run/postgresql PGPORT=5432 PGUSER=postgres PGDATABASE="$db" \
  PGAPPNAME="osb-$OSB_OP" PGCONNECT_TIMEOUT=10 PGPASSFILE=/nonexistent/pgpass \
  PGOPTIONS="${OSB_SESSION_OPTIONS-$OSB_QUIET_SESSION}" \
    psql --no-psqlrc --quiet --no-password \
      -v ON_ERROR_STOP=1 -v VERBOSITY=terse -v SHOW_CONTEXT=never "$@"
}

# pg_local DBNAME COMMAND [options...] : run a libpq client (pg_dump,
# pg_restore) as superuser "postgres" over the local unix socket, like
# psql_local; DBNAME goes via PGDATABASE.
pg_local() {
  local db="$1" tool="$2"
  shift 2
  PGHOST=/var/run/postgresql PGPORT=5432 PGUSER=postgres PGDATABASE="$db" \
  PGAPPNAME="osb-$OSB_OP" PGCONNECT_TIMEOUT=10 PGPASSFILE=/nonexistent/pgpass \
  PGOPTIONS="$OSB_QUIET_SESSION" \
    "$tool" --no-password "$@"
}
