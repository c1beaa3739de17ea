#!/usr/bin/env bash
# bench/drain.sh - how fast does mailgate drain its Redis queue into an SMTP
# relay, compared with the fastest a plain SMTP client gets from that relay?
#
#   bench/drain.sh [POOL [COUNT]]        POOL default 4, COUNT default 50000
#
# Environment: SIZE (message bytes, default 2048), TIMEOUT (seconds per
# phase, default 600), MAILGATE_BIN (default bin/mailgate, built with make),
# KEEP=1 keeps the work directory (logs) instead of removing it.
# REDIS_UNIX=1 has mailgate reach Redis over a unix socket instead of TCP.
# PERF_DIR=DIR records CPU profiles of mailgate and redis-server during the
# drain (perf record -e cpu-clock -g) into DIR/mailgate.data, DIR/redis.data.
#
# One run:
#   1. starts its own redis-server and Postfix smtp-sink on free loopback ports;
#   2. preloads COUNT messages of SIZE bytes straight into Redis, in exactly
#      the layout queue_message_enqueue() writes (bench/mgbench.py, piped
#      through redis-cli --pipe); not timed;
#   3. drain: starts `mailgate serve --role sender` with
#      MAILGATE_RELAYS=smtp://127.0.0.1:SINK?tls=none&pool=POOL and times from
#      its start until mg:jobs:bench is empty and nothing is pending, i.e. every
#      outcome is recorded; then checks that all COUNT recipients are
#      "delivered";
#   4. ceiling: Postfix smtp-source with POOL persistent sessions (-d -s POOL),
#      COUNT messages of the same bytes (-F), against the same smtp-sink,
#      once just before and once just after the drain (pooled: 2*COUNT over
#      the sum of both times);
#   5. prints both rates, the ratio (target >= 0.5) and the CPU seconds each
#      process used in each phase.
# Everything it starts is stopped by PID on exit. Only 127.0.0.1 is used.
set -euo pipefail

POOL=${1:-4}
COUNT=${2:-50000}
SIZE=${SIZE:-2048}
TIMEOUT=${TIMEOUT:-600}
case $POOL$COUNT$SIZE$TIMEOUT in *[!0-9]*) echo "usage: $0 [POOL [COUNT]]" >&2; exit 2 ;; esac

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3
HELPER="$HERE/mgbench.py"
for t in redis-server redis-cli /usr/sbin/smtp-sink /usr/sbin/smtp-source; do
    command -v "$t" >/dev/null || { echo "drain.sh: $t not found" >&2; exit 1; }
done
if [ -z "${MAILGATE_BIN:-}" ]; then
    make -s -C "$REPO" all >/dev/null || { echo "drain.sh: make failed" >&2; exit 1; }
    MAILGATE_BIN="$REPO/bin/mailgate"
fi

WORK=$(mktemp -d /tmp/mailgate-bench.XXXXXX)
# process handling (PIDS, cleanup, forget, stop), now/cpu/sub, wait_port:
# shared with suite.sh and soak.sh
source "$HERE/lib.sh"
HELPER="$HERE/mgbench.py"   # lib.sh names suite.py; this script uses mgbench.py
trap cleanup EXIT
trap 'exit 130' INT TERM

# ccpu - CPU seconds used by this shell's waited-for children so far
ccpu() { awk -v t="$(getconf CLK_TCK)" '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[14] + f[15]) / t }' "/proc/$$/stat"; }

# ceiling LABEL - smtp-source, POOL persistent sessions, COUNT messages of
# the same bytes, against the same sink; sets ceil_s (seconds)
ceiling() {
    local s_cpu0 c_cpu0 t0 t1 src_rc=0 src_pid
    s_cpu0=$(cpu "$SINK_PID"); c_cpu0=$(ccpu)
    t0=$(now)
    timeout "$TIMEOUT" /usr/sbin/smtp-source -d -s "$POOL" -m "$COUNT" -F "$WORK/message.txt" \
        -f bench@example.com -t rcpt@example.org "127.0.0.1:$SPORT" >"$WORK/source.log" 2>&1 &
    src_pid=$!
    PIDS+=("$src_pid")
    # smtp-source exits 0 once the sink has accepted every message
    wait "$src_pid" || src_rc=$?
    forget "$src_pid"
    t1=$(now)
    [ $src_rc -eq 0 ] || { echo "drain.sh: smtp-source failed ($src_rc):" >&2; tail -5 "$WORK/source.log" >&2; exit 1; }
    ceil_s=$(sub "$t1" "$t0")
    printf 'ceiling (%s): %d messages in %.2f s = %.0f msg/s  (cpu s: smtp-source %s, smtp-sink %s)\n' \
        "$1" "$COUNT" "$ceil_s" "$(awk -v n="$COUNT" -v s="$ceil_s" 'BEGIN { print n / s }')" \
        "$(sub "$(ccpu)" "$c_cpu0")" "$(sub "$(cpu "$SINK_PID")" "$s_cpu0")"
}

# ---- 1. redis-server and smtp-sink --------------------------------------
RPORT=$($PY "$HELPER" port)
redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no \
    --unixsocket "$WORK/redis.sock" --unixsocketperm 700 --dir "$WORK" --logfile "$WORK/redis.log" --maxmemory-policy noeviction &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$RPORT"
RCLI=(redis-cli -h 127.0.0.1 -p "$RPORT")

SPORT=$($PY "$HELPER" port)
# smtp-sink accepts and discards everything; it advertises PIPELINING by
# default. -u is required when running as root; -m caps simultaneous sessions.
/usr/sbin/smtp-sink -u "$(id -un)" -m 512 "127.0.0.1:$SPORT" 1000 >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_port "$SPORT"

# ---- 2. preload ---------------------------------------------------------
t0=$(now)
$PY "$HELPER" preload "$COUNT" "$SIZE" | "${RCLI[@]}" --pipe >"$WORK/preload.log" 2>&1
t1=$(now)
grep -q 'errors: 0' "$WORK/preload.log" || { echo "drain.sh: preload failed:" >&2; cat "$WORK/preload.log" >&2; exit 1; }
jobs_in=$("${RCLI[@]}" XLEN mg:jobs:bench)
[ "$jobs_in" = "$COUNT" ] || { echo "drain.sh: preload left $jobs_in jobs, expected $COUNT" >&2; exit 1; }
mem=$("${RCLI[@]}" INFO memory | awk -F: '/^used_memory_human/ { sub(/\r/, "", $2); print $2 }')
printf 'preloaded %d messages of %d bytes in %.1f s (redis %s)\n' "$COUNT" "$SIZE" "$(sub "$t1" "$t0")" "$mem"

# ---- 3. ceiling, drain, ceiling ----------------------------------------
# The ceiling is measured just before and just after the drain, and the two
# are pooled, so that load that comes and goes on the machine during the run
# weighs on both sides of the ratio alike.
$PY "$HELPER" message "$SIZE" "$WORK/message.txt"
ceiling before
ceil_s1=$ceil_s

MG_REDIS_URL="redis://127.0.0.1:$RPORT/0"
[ "${REDIS_UNIX:-0}" = 1 ] && MG_REDIS_URL="unix://$WORK/redis.sock"
r_cpu0=$(cpu "$REDIS_PID"); s_cpu0=$(cpu "$SINK_PID")
t0=$(now)
env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
    MAILGATE_REDIS_URL="$MG_REDIS_URL" \
    MAILGATE_RELAYS="smtp://127.0.0.1:$SPORT?tls=none&pool=$POOL&name=sink" \
    MAILGATE_HELO_NAME=bench.invalid \
    MAILGATE_LOG_LEVEL=warn \
    "$MAILGATE_BIN" serve --role sender 2>"$WORK/mailgate.log" &
MG_PID=$!
PIDS+=("$MG_PID")
PERF_PIDS=()
if [ -n "${PERF_DIR:-}" ]; then
    mkdir -p "$PERF_DIR"
    perf record -q -e cpu-clock -g -p "$MG_PID" -o "$PERF_DIR/mailgate.data" 2>"$WORK/perf-mg.log" &
    PERF_PIDS+=($!); PIDS+=($!)
    perf record -q -e cpu-clock -g -p "$REDIS_PID" -o "$PERF_DIR/redis.data" 2>"$WORK/perf-redis.log" &
    PERF_PIDS+=($!); PIDS+=($!)
fi
if ! t1=$($PY "$HELPER" wait "$RPORT" "$COUNT" "$TIMEOUT"); then
    echo "drain.sh: drain did not finish; mailgate log tail:" >&2
    tail -20 "$WORK/mailgate.log" >&2
    exit 1
fi
m_cpu=$(cpu "$MG_PID"); r_cpu=$(sub "$(cpu "$REDIS_PID")" "$r_cpu0"); s_cpu=$(sub "$(cpu "$SINK_PID")" "$s_cpu0")
drain_s=$(sub "$t1" "$t0")
for p in "${PERF_PIDS[@]}"; do kill -INT "$p"; wait "$p" 2>/dev/null || true; forget "$p"; done
kill "$MG_PID"
for _ in $(seq 100); do kill -0 "$MG_PID" 2>/dev/null || break; sleep 0.1; done
wait "$MG_PID" 2>/dev/null || true
forget "$MG_PID"
if ! $PY "$HELPER" verify "$RPORT" "$COUNT"; then
    echo "drain.sh: not every message was delivered; mailgate log tail:" >&2
    tail -20 "$WORK/mailgate.log" >&2
    exit 1
fi
drain_rate=$(awk -v n="$COUNT" -v s="$drain_s" 'BEGIN { printf "%.0f", n / s }')
printf 'drain:            %d messages in %.2f s = %s msg/s  (cpu s: mailgate %s, redis %s, smtp-sink %s)\n' \
    "$COUNT" "$drain_s" "$drain_rate" "$m_cpu" "$r_cpu" "$s_cpu"

ceiling after
ceil_s2=$ceil_s

# ---- 4. result ----------------------------------------------------------
ceil_rate=$(awk -v n="$COUNT" -v a="$ceil_s1" -v b="$ceil_s2" 'BEGIN { printf "%.0f", 2 * n / (a + b) }')
ratio=$(awk -v a="$drain_rate" -v b="$ceil_rate" 'BEGIN { printf "%.2f", a / b }')
echo "mailgate drain: $drain_rate msg/s; smtp-source ceiling: $ceil_rate msg/s; ratio: $ratio (target >= 0.5)" \
    "[pool=$POOL count=$COUNT size=$SIZE redis=$([ "${REDIS_UNIX:-0}" = 1 ] && echo unix || echo tcp) nproc=$(nproc)]"
