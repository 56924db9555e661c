#!/bin/sh
# meshd container entrypoint: turns APP_MODE (and a few MESH_* variables) into a twistd command line and execs
# it, so twistd gets the container's signals directly (it handles SIGTERM/SIGINT itself; `--init` is still
# recommended so an init reaps zombies and PID 1 is not Python).
#
#   APP_MODE=console (default)  client: API on :9337, console on :3131, both on 0.0.0.0
#   APP_MODE=api                client: API on :9337 only (no console), with meshd's request limits
#   APP_MODE=<anything else>    twistd -n --pidfile= meshd "$@"   (the container's arguments as is)
#
# A first argument "console" or "api" selects the mode instead of APP_MODE. In the console and api modes the
# remaining arguments are appended to the mode's command line.
#
# Environment (all optional):
#   MESH_HEADLESS      1/true/yes/on: console mode without UI pages (adds --headless)
#   MESH_NOSTR_RELAYS  space-separated relay URLs, each becomes --nostr-relay URL (replaces meshd's defaults)
#   MESH_API_LIMITS    api mode: meshd's limit flags (default below; set it to "" for none)
#   MESH_TRUST_PROXY   api mode, 1/true/yes/on: add --trust-proxy (client address from the proxy's header;
#                      set it only behind a proxy that overwrites that header, as Fly's does)
#   MESH_STATE_DIR     state folder (default /data, the image's volume)
#   MESH_ARGS          extra flags for the console and api modes (split on spaces), handy where a platform
#                      sets environment variables more easily than arguments
set -eu
set -f # the MESH_* lists are split on spaces, never globbed

DEFAULT_API_LIMITS="--max-inflight 5 --queue-timeout 2 --rate-limit-rpm 60 --rate-limit-streams 2"

truthy() {
    case "$1" in
    1 | [Tt][Rr][Uu][Ee] | [Yy][Ee][Ss] | [Oo][Nn]) return 0 ;;
    *) return 1 ;;
    esac
}

mode=${APP_MODE:-console}
case "${1:-}" in
console | api)
    mode=$1
    shift
    ;;
esac

state_dir=${MESH_STATE_DIR:-/data}
relays=""
for relay in ${MESH_NOSTR_RELAYS:-}; do
    relays="$relays --nostr-relay $relay"
done

case "$mode" in
console)
    headless=""
    if truthy "${MESH_HEADLESS:-}"; then
        headless="--headless"
    fi
    # shellcheck disable=SC2086 # word splitting of the optional flag lists is intended
    set -- --client --auto --port 9337 --console 3131 --listen-all --state-dir "$state_dir" \
        $headless $relays ${MESH_ARGS:-} "$@"
    ;;
api)
    trust=""
    if truthy "${MESH_TRUST_PROXY:-}"; then
        trust="--trust-proxy"
    fi
    # shellcheck disable=SC2086
    set -- --client --auto --port 9337 --listen-all --no-console --state-dir "$state_dir" \
        ${MESH_API_LIMITS-$DEFAULT_API_LIMITS} $trust $relays ${MESH_ARGS:-} "$@"
    ;;
esac

# Open files: the soft limit up to the hard one (a runtime may start us at 1,024; meshd sizes its HTTP
# ports' connection limits from it and raises it itself too). Run with e.g. --ulimit nofile=65536:65536.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec twistd -n --pidfile= meshd "$@"
