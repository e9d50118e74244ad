# shellcheck shell=bash
# Shared helpers for the /osb/<operation> scripts. Sourced, never executed.
#
# Conventions:
#   * inputs come only from environment variables (never argv);
#   * the scripts log in as "mysql"@"localhost" through the unix socket
#     (unix_socket authentication: the OS user must be mysql), so they need
#     no password;
#   * secrets are never printed and never put on a command line: SQL carrying
#     a password reaches the client through a pipe (printf is a bash builtin),
#     and those sessions are kept out of the general and slow query logs;
#   * on failure: non-zero exit and a short message on stderr.

export LC_ALL=C.UTF-8
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
OSB_OP="${0##*/}"
OSB_SOCKET=/run/mysqld/mysqld.sock
OSB_VOLUME=/var/lib/mysql
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_SETTINGS="$OSB_VOLUME/osb.cnf"
# Where the broker puts ca.pem, cert.pem and key.pem (service.json tls.dir).
# shellcheck disable=SC2034 # used by the scripts that source this file
OSB_TLS_DIR=/etc/osb-tls
# The definer /osb/restore gives restored views, routines, triggers and events.
OSB_DEFINER=osb_definer

die() {
  printf '%s: %s\n' "$OSB_OP" "$*" >&2
  exit 1
}

# unix_socket authentication maps the OS user to the database account "mysql".
# Started as root (docker exec without -u)? Switch if allowed; the broker's
# containers drop all capabilities, so usually it is not.
if [[ "$(id -u)" == 0 ]]; then
  setpriv --reuid=mysql --regid=mysql --init-groups true 2>/dev/null \
    || die "must run as the mysql OS user (docker exec -u mysql)"
  exec setpriv --reuid=mysql --regid=mysql --init-groups env HOME=/nonexistent "$0"
fi
[[ "$(id -un)" == mysql ]] || die "must run as the mysql OS user"

# Ignore client settings (MYSQL_HOST, MYSQL_PWD, MYSQL_UNIX_PORT, ...) from the caller.
while IFS= read -r _v; do
  unset "$_v"
done < <(compgen -e | grep -E '^(MYSQL|MARIADB)_' || true)
unset _v

# require_env NAME... : every variable must be set and non-empty.
require_env() {
  local n
  for n in "$@"; do
    [[ -n "${!n:-}" ]] || die "environment variable $n is required"
  done
}

byte_length() { local LC_ALL=C; printf '%s' "${#1}"; }

# sql_str VALUE : VALUE as an SQL string literal (the session never has
# NO_BACKSLASH_ESCAPES, see OSB_SESSION_SQL).
sql_str() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\'/\\\'}"
  printf "'%s'" "$s"
}

# sql_ident VALUE : VALUE as a quoted identifier.
# shellcheck disable=SC2016 # the backquotes are MariaDB identifier quotes, not a command substitution
sql_ident() { printf '`%s`' "${1//\`/\`\`}"; }

# check_user_name NAME : the value of env var NAME is an account name we may
# create or manage (quoting is done by sql_str).
check_user_name() {
  local v="${!1}"
  (( $(byte_length "$v") <= 80 )) || die "$1 is longer than 80 bytes"
  case "$v" in
    root | mysql | mariadb.sys | PUBLIC | public | "$OSB_DEFINER") die "$1 may not be '$v' (reserved)";;
  esac
}

# check_database_name : PARAM_DATABASE is a usable instance database name.
check_database_name() {
  local v="$PARAM_DATABASE"
  [[ "$v" =~ ^[a-z_][a-z0-9_]{0,63}$ ]] \
    || die "PARAM_DATABASE must be lowercase a-z, 0-9 and _ (at most 64, not starting with a digit)"
  case "$v" in
    mysql | information_schema | performance_schema | sys) die "PARAM_DATABASE may not be '$v' (reserved)";;
  esac
}

# Every script session: no statement of it reaches the general or slow query
# log (they carry passwords), errors abort, backslash escapes are on.
OSB_SESSION_SQL="SET SESSION sql_log_off = ON, SESSION slow_query_log = OFF, SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';"

# run_sql SQL [client options...] : run SQL as "mysql"@"localhost" over the
# unix socket; prints the result rows tab-separated without column names.
run_sql() {
  local sql="$1"
  shift
  printf '%s\n%s\n' "$OSB_SESSION_SQL" "$sql" \
    | mariadb --no-defaults --protocol=socket --socket="$OSB_SOCKET" --user=mysql \
        --batch --skip-column-names --silent --connect-timeout=10 "$@"
}

# account_state NAME : 'none' when no account NAME exists, 'plain' when only
# NAME@'%' exists without any global privilege, else 'privileged'.
account_state() {
  run_sql "SELECT CASE
      WHEN COUNT(*) = 0 THEN 'none'
      WHEN SUM(Host <> '%' OR IFNULL(JSON_VALUE(Priv, '\$.access'), 0) <> 0
               OR IFNULL(JSON_VALUE(Priv, '\$.is_role'), 'false') = 'true') = 0 THEN 'plain'
      ELSE 'privileged' END
    FROM mysql.global_priv WHERE User = $(sql_str "$1");"
}
