#!/bin/bash
# healthcheck.sh - the image's HEALTHCHECK: GET /healthz, healthy on 200.
#
#   mailgate-healthcheck [HOST:PORT]
#
# HOST:PORT defaults to MAILGATE_LISTEN (as mailgate reads it); a wildcard
# host (0.0.0.0, [::]) is asked on loopback. The sender role has no API
# listener: pass its MAILGATE_ADMIN_LISTEN address (docker/compose.yml does).
# Uses only bash's /dev/tcp, so the runtime image needs no curl or wget.
# Exit 0 healthy, 1 not (Docker's convention).
set -u
addr=${1:-${MAILGATE_LISTEN:-127.0.0.1:8080}}
host=${addr%:*}
port=${addr##*:}
case "$host" in
    0.0.0.0 | "" | localhost) host=127.0.0.1 ;;
    "[::]") host=::1 ;;
    \[*\]) host=${host#[}; host=${host%]} ;;
esac
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
# Only the status line matters: "HTTP/1.x 200 ...".
IFS= read -r -t 2 status <&3 || exit 1
exec 3<&-
case "$status" in
    HTTP/1.[01]\ 200\ * | HTTP/1.[01]\ 200$'\r') exit 0 ;;
esac
echo "unhealthy: ${status%$'\r'}" >&2
exit 1
