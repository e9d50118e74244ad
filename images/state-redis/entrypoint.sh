#!/usr/bin/env bash
# Writes the Redis configuration and execs redis-server (PID 1, user redis).
#
# The password (requirepass) comes from a file the broker writes into the
# container before it starts ($REDIS_PASSWORD_FILE, default
# /run/redis/password, readable by the redis user only), so it is in no
# environment, command line or label. Without the file, Redis has no password.
#
# Runs with very few privileges: the broker starts this container with all
# capabilities dropped except SETUID, SETGID and CHOWN (and no-new-privileges).
# So as root this script only fixes /data ownership and drops to the redis
# user; everything else happens as redis.
set -euo pipefail

CONF_DIR=/run/redis
CONF="$CONF_DIR/redis.conf"
PASSWORD_FILE="${REDIS_PASSWORD_FILE:-/run/redis/password}"

if [[ "$(id -u)" == 0 ]]; then
  # A volume from elsewhere (e.g. a bind mount) may not belong to redis yet.
  if [[ "$(stat -c %u /data)" != "$(id -u redis)" ]]; then
    chown -R redis:redis /data
  fi
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

# Quote a value for redis.conf (double quotes; \ " and control chars escaped).
redis_quote() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\r'/\\r}"
  s="${s//$'\t'/\\t}"
  printf '"%s"' "$s"
}

# A password file that cannot be read stops the start: never a Redis without its password by mistake.
password=''
if [[ -e "$PASSWORD_FILE" ]]; then
  password="$(<"$PASSWORD_FILE")"
  if [[ -z "$password" ]]; then
    echo "osb-redis-entrypoint: $PASSWORD_FILE is empty" >&2
    exit 1
  fi
fi

umask 077
[[ -d "$CONF_DIR" && -w "$CONF_DIR" ]] || CONF_DIR="$(mktemp -d)" CONF="$CONF_DIR/redis.conf"
tmp="$(mktemp "$CONF_DIR/redis.conf.XXXXXX")"
{
  echo 'bind 0.0.0.0'
  echo 'port 6379'
  echo 'protected-mode no'
  echo 'daemonize no'
  echo 'supervised no'
  echo 'logfile ""'
  echo 'dir /data'
  echo 'appendonly yes'
  echo 'appendfsync everysec'
  if [[ -n "$password" ]]; then
    printf 'requirepass %s\n' "$(redis_quote "$password")"
  fi
} > "$tmp"
mv -f "$tmp" "$CONF"
unset password

exec redis-server "$CONF" "$@"
