#!/bin/sh
# run.sh - `make run`: a complete local mailgate in the foreground.
#
# Starts, under var/: a redis-server (unix socket, AOF on), a capture SMTP
# server (Debian's python3-aiosmtpd, writing every message to the maildir
# var/mail/), creates a dev API key, prints a ready curl command, and runs
# `bin/mailgate serve` in the foreground. Ctrl-C stops everything it
# started (by PID).
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VAR="$ROOT/var"
# aiosmtpd makes the maildir itself only when the folder is missing.
mkdir -p "$VAR/mail/tmp" "$VAR/mail/new" "$VAR/mail/cur" "$VAR/redis"

LISTEN="${MAILGATE_LISTEN:-127.0.0.1:8080}"
SMTP_PORT="${MAILGATE_DEV_SMTP_PORT:-2525}"
SOCK="$VAR/redis/redis.sock"

pids=""
cleanup() {
    trap - INT TERM EXIT
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    echo "make run: stopped" >&2
}
trap cleanup INT TERM EXIT

redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 --dir "$VAR/redis" \
    --appendonly yes --appendfsync everysec --save '' --maxmemory-policy noeviction \
    --logfile "$VAR/redis/redis.log" &
pids="$pids $!"

/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" -c aiosmtpd.handlers.Mailbox "$VAR/mail" \
    >"$VAR/smtp.log" 2>&1 &
pids="$pids $!"

export MAILGATE_REDIS_URL="unix://$SOCK"
export MAILGATE_LISTEN="$LISTEN"
export MAILGATE_RELAYS="${MAILGATE_RELAYS:-smtp://127.0.0.1:$SMTP_PORT?tls=none&name=capture}"

# Wait for both servers (bounded), by polling.
i=0
until [ -S "$SOCK" ] && redis-cli -s "$SOCK" ping >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "make run: redis did not start; see var/redis/redis.log" >&2; exit 1; }
    sleep 0.1
done
i=0
until /usr/bin/python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $SMTP_PORT), 1).close()" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "make run: capture SMTP did not start; see var/smtp.log" >&2; exit 1; }
    sleep 0.1
done

KEY=$(bin/mailgate key create --tenant dev)

bin/mailgate serve &
mg=$!
pids="$mg $pids"
# The banner comes once the gateway answers, so the printed curl works.
i=0
until /usr/bin/python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$LISTEN/healthz', timeout=1)" 2>/dev/null; do
    if ! kill -0 "$mg" 2>/dev/null; then
        wait "$mg"; rc=$?
        echo "make run: mailgate exited ($rc) before it was ready; see the log above" >&2
        exit "$rc"
    fi
    i=$((i + 1)); [ $i -gt 100 ] && { echo "make run: mailgate did not answer on http://$LISTEN" >&2; exit 1; }
    sleep 0.1
done
cat <<MSG

mailgate is running on http://$LISTEN
  Redis:          $MAILGATE_REDIS_URL
                  (the CLI needs it too: export MAILGATE_REDIS_URL=$MAILGATE_REDIS_URL)
  capture SMTP:   127.0.0.1:$SMTP_PORT  (messages land in var/mail/new/)
  dev API key:    $KEY

Send a message:

  curl -sS http://$LISTEN/v1/messages \\
    -H 'Authorization: Bearer $KEY' -H 'Content-Type: application/json' \\
    -d '{"from":"Dev <dev@example.com>","to":["you@example.org"],"subject":"Hello from mailgate","text":"It works."}'

Then read it back (use the id the first command printed):

  curl -sS http://$LISTEN/v1/messages/ID -H 'Authorization: Bearer $KEY'

Ctrl-C stops everything.
MSG

rc=0
wait "$mg" || rc=$?
exit "$rc"
