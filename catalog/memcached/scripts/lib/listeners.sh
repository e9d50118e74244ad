# shellcheck shell=bash
# The listeners memcached runs with. Memcached opens listeners and reads its certificate only when it starts (its
# refresh_certs command is ASCII protocol, which SASL turns off), so /osb/lib/start decides them before every start of
# memcached and /osb/configure and /osb/reload-tls have memcached restarted inside the container when they change.
# Sourced by the entry point and the scripts; needs only bash.
#   11211  binary protocol with SASL, plain: every address; under require_tls loopback only (for the /osb scripts),
#          so the published port refuses connections;
#   11212  the same over TLS (1.2 and up, no client certificate asked for) with the broker's files in /etc/osb-tls,
#          when they are there (not on Swarm).

OSB_TLS_DIR=/etc/osb-tls
OSB_TLS_PORT=11212
# require_tls as /osb/configure last applied it (on the volume: it holds across restarts and new containers).
OSB_REQUIRE_TLS=/var/lib/memcached/require-tls
# Written by the entry point at every start of memcached: its options for listeners and TLS, and its process id.
# shellcheck disable=SC2034 # used by the entry point and the scripts that source this file
OSB_RUNNING_LISTENERS=/tmp/osb-memcached-listeners
# shellcheck disable=SC2034 # used by the entry point and the scripts that source this file
OSB_RUNNING_PID=/tmp/osb-memcached-pid

tls_files_present() {
  [[ -r "$OSB_TLS_DIR/cert.pem" && -r "$OSB_TLS_DIR/key.pem" && -r "$OSB_TLS_DIR/ca.pem" ]]
}

require_tls_recorded() {
  [[ "$(cat "$OSB_REQUIRE_TLS" 2>/dev/null)" == true ]]
}

# listener_options : memcached's listener and TLS options for the current files and require_tls, one a line.
listener_options() {
  if ! tls_files_present; then
    printf '%s\n' -l 0.0.0.0 -p 11211
    return 0
  fi
  local plain=0.0.0.0
  if require_tls_recorded; then plain=127.0.0.1; fi
  printf '%s\n' -Z -o "ssl_chain_cert=$OSB_TLS_DIR/cert.pem,ssl_key=$OSB_TLS_DIR/key.pem,ssl_min_version=2" \
    -l "notls:$plain:11211" -l "0.0.0.0:$OSB_TLS_PORT"
}

# serving_tls : the running memcached was started with TLS.
serving_tls() {
  [[ "$(head -n 1 "$OSB_RUNNING_LISTENERS" 2>/dev/null)" == -Z ]]
}
