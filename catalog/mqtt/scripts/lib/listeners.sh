# shellcheck shell=bash
# The listeners of mosquitto, as conf.d/10-listeners.conf: written by the entrypoint before every start of mosquitto
# (which opens and closes listeners only at start, not on SIGHUP) and compared by /osb/configure, which has mosquitto
# restarted when require_tls changed them. Sourced by both; needs only bash.
#   1883  MQTT, plain: on every address; under require_tls on loopback only, for the /osb scripts (ready, logins),
#         so the published port refuses connections;
#   8883  MQTT over TLS (1.2 and up) with the broker's files in /etc/osb-tls, when they are there (not on Swarm).
# Certificate and key are read again on SIGHUP: /osb/reload-tls needs no restart.

OSB_TLS_DIR=/etc/osb-tls
# shellcheck disable=SC2034 # used by the entrypoint and the scripts that source this file
OSB_LISTENERS=/var/lib/mosquitto/conf.d/10-listeners.conf
# require_tls as /osb/configure last applied it (on the volume: it holds across restarts and new containers).
OSB_REQUIRE_TLS=/var/lib/mosquitto/require-tls

tls_files_present() {
  [[ -r "$OSB_TLS_DIR/cert.pem" && -r "$OSB_TLS_DIR/key.pem" && -r "$OSB_TLS_DIR/ca.pem" ]]
}

# listeners_conf : prints the listener configuration for the current TLS files and require_tls.
listeners_conf() {
  local require=false
  [[ "$(cat "$OSB_REQUIRE_TLS" 2>/dev/null)" == true ]] && require=true
  printf '# Written before every start of mosquitto from the TLS files and require_tls; do not edit.\n'
  if tls_files_present && [[ "$require" == true ]]; then
    printf 'listener 1883 127.0.0.1\n'
  else
    printf 'listener 1883\n'
  fi
  if tls_files_present; then
    printf '%s\n' 'listener 8883' "cafile $OSB_TLS_DIR/ca.pem" "certfile $OSB_TLS_DIR/cert.pem" \
      "keyfile $OSB_TLS_DIR/key.pem" 'tls_version tlsv1.2'
  fi
}
