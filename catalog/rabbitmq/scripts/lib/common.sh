# shellcheck shell=bash
# Shared helpers for the /osb/<operation> scripts of the RabbitMQ image.
# Sourced, never executed.
#
# Conventions:
#   * inputs come only from environment variables (never argv);
#   * secrets are never printed and never put on a command line: curl reads
#     the admin's credentials from a config on a file descriptor (argv only
#     shows /dev/fd/3), request bodies go through stdin, and JSON bodies are
#     built by jq from environment variables (env.NAME), not from arguments;
#   * the local management HTTP API is used instead of rabbitmqctl, which
#     starts an Erlang VM per call (1-2 s);
#   * on failure: non-zero exit and a short message on stderr.

export LC_ALL=C.UTF-8
export PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/var/lib/rabbitmq
unset CURL_HOME http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy NO_PROXY no_proxy
OSB_OP="${0##*/}"
MGMT_URL=http://127.0.0.1:15672/api
# shellcheck source=SCRIPTDIR/listeners.sh
. "$(dirname "${BASH_SOURCE[0]}")/listeners.sh"

die() {
  printf '%s: %s\n' "$OSB_OP" "$*" >&2
  exit 1
}

[[ "$(id -un)" == rabbitmq ]] || die "must run as the rabbitmq OS user (docker exec -u rabbitmq)"

# require_env NAME... : every variable must be set and non-empty.
require_env() {
  local n
  for n in "$@"; do
    [[ -n "${!n:-}" ]] || die "environment variable $n is required"
  done
}

# urlencode VALUE : percent-encodes every byte but the unreserved ones
# (RFC 3986), for use as one path segment of an API URL.
urlencode() {
  local LC_ALL=C s="$1" out="" c i
  for (( i = 0; i < ${#s}; i++ )); do
    c="${s:i:1}"
    case "$c" in
      [A-Za-z0-9._~-]) out+="$c" ;;
      *) printf -v c '%%%02X' "'$c"; out+="$c" ;;
    esac
  done
  printf '%s' "$out"
}

# check_vhost : PARAM_VHOST is a usable instance vhost name.
check_vhost() {
  require_env PARAM_VHOST
  [[ "$PARAM_VHOST" != "/" ]] || die "PARAM_VHOST may not be the default vhost '/'"
  (( ${#PARAM_VHOST} <= 255 )) || die "PARAM_VHOST is longer than 255 characters"
  [[ "$PARAM_VHOST" != *[[:cntrl:]]* ]] || die "PARAM_VHOST contains control characters"
  # shellcheck disable=SC2034 # used by the scripts that source this file
  VHOST_PATH="$(urlencode "$PARAM_VHOST")"
}

# check_user_name NAME : the value of env var NAME is a user we may manage.
check_user_name() {
  local v="${!1}"
  (( ${#v} <= 255 )) || die "$1 is longer than 255 characters"
  [[ "$v" != *[[:cntrl:]]* ]] || die "$1 contains control characters"
  [[ "$v" != guest ]] || die "$1 may not be 'guest'"
}

# The admin's credentials as a curl config ("user" option); quoted as curl's
# config syntax wants it. Printed only into a file descriptor of curl.
admin_curl_config() {
  local u="${ADMIN_USERNAME//\\/\\\\}" p="${ADMIN_PASSWORD//\\/\\\\}"
  u="${u//\"/\\\"}"
  p="${p//\"/\\\"}"
  printf 'user = "%s:%s"\n' "$u" "$p"
}

# api METHOD PATH [BODY] : one request to the management API as the admin.
# Sets API_STATUS (the HTTP status; 000 when nothing answered) and API_BODY.
api() {
  local method="$1" path="$2" body="${3-}" out
  local -a data=()
  (( $# >= 3 )) && data=(-H 'content-type: application/json' --data-binary @-)
  out="$(curl -q --silent --show-error --noproxy '*' --connect-timeout 5 --max-time 30 \
           --config /dev/fd/3 -X "$method" "${data[@]}" -w '\n%{http_code}' \
           "$MGMT_URL$path" 3<<<"$(admin_curl_config)" <<<"$body")" || true
  API_STATUS="${out##*$'\n'}"
  API_BODY="${out%$'\n'*}"
  [[ "$API_STATUS" =~ ^[0-9]{3}$ ]] || { API_STATUS=000; API_BODY=""; }
}

# api_expect WHAT STATUS... : dies unless the last API_STATUS is one of STATUS.
api_expect() {
  local what="$1" code reason
  shift
  for code in "$@"; do
    [[ "$API_STATUS" == "$code" ]] && return 0
  done
  reason="$(jq -r '.reason // .error // empty' 2>/dev/null <<<"$API_BODY" | head -c 200 || true)"
  die "$what failed (HTTP $API_STATUS${reason:+: $reason})"
}

# json FILTER : prints compact JSON built by jq from environment variables only.
json() {
  jq -nc "$1"
}

# user_tags : the tags of the user in API_BODY, one a line.
user_tags() {
  jq -r '.tags | if type == "array" then .[] else (split(",")[] | select(. != "")) end' <<<"$API_BODY"
}

# refuse_privileged_user NAME : dies if env var NAME names an existing user
# with any tag but "management" (never turn an operator account into a binding
# or delete it).
refuse_privileged_user() {
  local var="$1" tag
  api GET "/users/$(urlencode "${!var}")"
  api_expect "looking up the user" 200 404
  [[ "$API_STATUS" == 200 ]] || return 0
  while IFS= read -r tag; do
    [[ -z "$tag" || "$tag" == management ]] \
      || die "$var names an existing user with the '$tag' tag; refusing to modify it"
  done < <(user_tags)
}

# amqp_listeners : the node's AMQP listeners from the management API, one "protocol address port" a line (protocol
# amqp or amqp/ssl).
amqp_listeners() {
  api GET /overview
  api_expect "listing the listeners" 200
  jq -r '.listeners[] | select(.protocol | startswith("amqp")) | "\(.protocol) \(.ip_address) \(.port)"' <<<"$API_BODY"
}

# apply_require_tls : records PARAM_REQUIRE_TLS and moves the running node's plain AMQP listener (5672) where it
# belongs: every address, or under require_tls loopback only (for /osb/ready), so the published port refuses
# connections. The node opens listeners from its configuration only at start, hence rabbitmqctl eval here (one Erlang
# VM start, only when something changes); moving the listener closes the plain connections open on it. Refused where
# there are no TLS files (Swarm).
apply_require_tls() {
  local want current
  case "${PARAM_REQUIRE_TLS:-false}" in
    true | false) want="$PARAM_REQUIRE_TLS" ;;
    *) die "PARAM_REQUIRE_TLS must be true or false" ;;
  esac
  [[ "$want" == false ]] || tls_files_present \
    || die "require_tls needs TLS, and this container has no certificate from the broker"
  printf '%s\n' "$want" > "$OSB_REQUIRE_TLS.new"
  mv -f "$OSB_REQUIRE_TLS.new" "$OSB_REQUIRE_TLS"
  current=all
  [[ "$(amqp_listeners | awk '$1 == "amqp" && $3 == 5672 { print $2 }')" != 127.0.0.1 ]] || current=loopback
  [[ "$(plain_listener_address)" != "$current" ]] || return 0
  local acceptors='application:get_env(rabbit, num_tcp_acceptors, 10)' from to out
  if [[ "$current" == all ]]; then from=5672; to='{"127.0.0.1", 5672}'; else from='{"127.0.0.1", 5672}'; to=5672; fi
  # The stopped listener's socket may not be closed yet when the new one binds the same port (eaddrinuse): the start
  # is tried again for a few seconds rather than leaving the node without a plain listener.
  local start="fun Start(0) -> rabbit_networking:start_tcp_listener($to, $acceptors);
    Start(N) -> try rabbit_networking:start_tcp_listener($to, $acceptors) of ok -> ok; _ -> timer:sleep(250), Start(N - 1)
                catch _:_ -> timer:sleep(250), Start(N - 1) end end"
  out="$(rabbitmqctl -q eval "ok = rabbit_networking:stop_tcp_listener($from), ($start)(20)." 2>&1)" \
    || die "could not move the plain AMQP listener: ${out:0:200}"
  [[ "$out" == ok ]] || die "unexpected answer when moving the plain AMQP listener: ${out:0:200}"
}
