# shellcheck shell=bash
# The AMQP listeners of the node, as lines of rabbitmq.conf: the entrypoint adds them to the configuration before
# the node starts; /osb/configure changes the plain one on the running node when require_tls changes (and records
# require_tls, so the next start agrees). Sourced by both; needs only bash.
#   5672  AMQP, plain: on every address; under require_tls on loopback only (the /osb scripts' ready check), so the
#         published port refuses connections;
#   5671  AMQP over TLS (1.2 and 1.3) with the broker's files in /etc/osb-tls, when they are there (not on Swarm);
#   15671 the management API over HTTPS, with the same files, next to plain HTTP on 15672 (which stays open on every
#         address, also under require_tls: cowboy's listener cannot be moved on the running node).

OSB_TLS_DIR=/etc/osb-tls
# require_tls as /osb/configure last applied it (on the volume: it holds across restarts and new containers).
OSB_REQUIRE_TLS=/var/lib/rabbitmq/osb-require-tls

tls_files_present() {
  [[ -r "$OSB_TLS_DIR/cert.pem" && -r "$OSB_TLS_DIR/key.pem" && -r "$OSB_TLS_DIR/ca.pem" ]]
}

# plain_listener_address : where the plain AMQP listener belongs now: "all" or "loopback".
plain_listener_address() {
  if tls_files_present && [[ "$(cat "$OSB_REQUIRE_TLS" 2>/dev/null)" == true ]]; then
    printf 'loopback'
  else
    printf 'all'
  fi
}

# listeners_conf : prints the listener lines of rabbitmq.conf for the current TLS files and require_tls.
listeners_conf() {
  printf '\n# Written by the entrypoint before the node starts (TLS files, require_tls); do not edit.\n'
  if [[ "$(plain_listener_address)" == loopback ]]; then
    printf 'listeners.tcp.1 = 127.0.0.1:5672\n'
  else
    printf 'listeners.tcp.default = 5672\n'
  fi
  if tls_files_present; then
    # verify_none: clients are not asked for certificates (they log in with a password); they verify the server.
    printf '%s\n' 'listeners.ssl.default = 5671' \
      "ssl_options.cacertfile = $OSB_TLS_DIR/ca.pem" \
      "ssl_options.certfile = $OSB_TLS_DIR/cert.pem" \
      "ssl_options.keyfile = $OSB_TLS_DIR/key.pem" \
      'ssl_options.verify = verify_none' \
      'ssl_options.fail_if_no_peer_cert = false' \
      'ssl_options.versions.1 = tlsv1.3' \
      'ssl_options.versions.2 = tlsv1.2' \
      'management.ssl.port = 15671' \
      "management.ssl.cacertfile = $OSB_TLS_DIR/ca.pem" \
      "management.ssl.certfile = $OSB_TLS_DIR/cert.pem" \
      "management.ssl.keyfile = $OSB_TLS_DIR/key.pem" \
      'management.ssl.versions.1 = tlsv1.3' \
      'management.ssl.versions.2 = tlsv1.2'
  fi
}
