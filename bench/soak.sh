#!/usr/bin/env bash
# bench/soak.sh - soak test (issue 6, point 9): COUNT messages (100,000 by
# default) through the whole pipeline, POST /v1/messages -> Redis ->
# sender -> smtp-sink, checking that none is lost and sampling mailgate's
# RSS over time.
#
#   bench/soak.sh [COUNT]
#
# Environment: RATE=1000 (messages per second offered, open loop, by the
# paced sender of bench/suite.py: COUNT/RATE seconds of sending), SAMPLE=5
# (seconds between RSS samples), POOL=8, SIZE=2048, TIMEOUT=900,
# MAILGATE_BIN (default: make, then bin/mailgate), REDIS_AOF=1 (Redis with
# appendonly yes, appendfsync everysec), KEEP=1 (keep the work directory).
#
# Passes (exit 0) only when
#   - every POST was answered 202,
#   - smtp-sink counted exactly as many messages as were accepted
#     (fewer: lost; more: duplicated),
#   - mailgate itself shows every recipient "delivered", no job left in the
#     stream or pending, nothing in mg:delayed, and every body deleted.
# Prints the RSS series (VmRSS every SAMPLE s) and its start, peak (VmHWM)
# and end, and Redis used_memory at the start and the end.
set -euo pipefail

COUNT=${1:-100000}
RATE=${RATE:-1000}
SAMPLE=${SAMPLE:-5}
POOL=${POOL:-8}
SIZE=${SIZE:-2048}
TIMEOUT=${TIMEOUT:-900}
case $COUNT$RATE$SAMPLE$POOL in *[!0-9]*) echo "usage: $0 [COUNT]" >&2; exit 2 ;; esac

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/mailgate-soak.XXXXXX)
source "$HERE/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in redis-server redis-cli /usr/sbin/smtp-sink; do
    command -v "$t" >/dev/null || { echo "soak.sh: $t not found" >&2; exit 1; }
done
if [ -z "${MAILGATE_BIN:-}" ]; then
    make -s -C "$REPO" all >/dev/null || { echo "soak.sh: make failed" >&2; exit 1; }
    MAILGATE_BIN="$REPO/bin/mailgate"
fi
MG_BIN="$WORK/mailgate"
cp "$MAILGATE_BIN" "$MG_BIN"
SECONDS_SEND=$(awk -v n="$COUNT" -v r="$RATE" 'BEGIN { printf "%.3f", n / r }')

echo "soak: $COUNT messages of $SIZE bytes at $RATE/s offered (${SECONDS_SEND}s), pool $POOL;" \
    "$(nproc) cores, load $(loadavg)"
$PY "$HELPER" json "$SIZE" "$WORK/body.json"
start_sink
start_redis volatile
if [ "${REDIS_AOF:-0}" = 1 ]; then
    "${RCLI[@]}" CONFIG SET appendonly yes >/dev/null
    "${RCLI[@]}" CONFIG SET appendfsync everysec >/dev/null
fi
new_key
MG_LOG_LEVEL=${MG_LOG_LEVEL:-info}
start_mg all
mem0=$("${RCLI[@]}" INFO memory | awk -F: '/^used_memory_human:/ { sub(/\r/, "", $2); print $2 }')
base=$(sinkcount)

t0=$(now)
$PY "$HELPER" paced "$HPORT" "$KEY" "$WORK/body.json" "$RATE" "$SECONDS_SEND" 32 "$WORK/ids.txt" >"$WORK/paced.json" &
SEND_PID=$!
PIDS+=("$SEND_PID")

# RSS samples while sending and until the sink has everything
: >"$WORK/rss.txt"
sample() {
    local t rss q
    t=$(sub "$(now)" "$t0")
    rss=$($PY "$HELPER" status "$MG_PID" VmRSS)
    q=$("${RCLI[@]}" XLEN mg:jobs:bench 2>/dev/null || echo ?)
    echo "$t $rss $q $(sinkcount)" >>"$WORK/rss.txt"
    printf '  t=%6.1fs  VmRSS %6d kB  queued %6s  at sink %7d\n' "$t" "$rss" "$q" "$(($(sinkcount) - base))"
}
deadline=$(( $(date +%s) + TIMEOUT ))
sample
while kill -0 "$SEND_PID" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "soak.sh: sender did not finish in ${TIMEOUT}s" >&2; exit 1; }
    sleep "$SAMPLE"
    sample
done
wait "$SEND_PID" || { echo "soak.sh: paced sender failed" >&2; exit 1; }
forget "$SEND_PID"
t_sent=$(now)
acc=$(jget "$(cat "$WORK/paced.json")" accepted)
rej=$(jget "$(cat "$WORK/paced.json")" rejected)
echo "  sender: $(cat "$WORK/paced.json")"
while [ $(($(sinkcount) - base)) -lt "$acc" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "soak.sh: only $(($(sinkcount) - base)) of $acc at the sink after ${TIMEOUT}s" >&2; exit 1; }
    sleep 1
    sample
done
t_done=$(now)
sleep 2   # a late duplicate would show up now
sample
at_sink=$(($(sinkcount) - base))
ok=1
for _ in $(seq 25); do
    $PY "$HELPER" verify "$RPORT" "$acc" >"$WORK/verify.out" && { ok=0; break; }
    sleep 0.2
done
hwm=$($PY "$HELPER" status "$MG_PID" VmHWM)
mem1=$("${RCLI[@]}" INFO memory | awk -F: '/^used_memory_human:/ { sub(/\r/, "", $2); print $2 }')
stop_mg

echo "  $(cat "$WORK/verify.out")"
awk -v hwm="$hwm" '
    { t[NR] = $1; r[NR] = $2; if ($2 > peak) { peak = $2; pt = $1 } }
    END {
        top = hwm > peak ? hwm : peak
        printf "RSS (VmRSS, kB): start %d, peak %d (%.1f MB; highest sample %d at t=%.0fs, VmHWM %d), end %d; %d samples\n",
            r[1], top, top / 1024, peak, pt, hwm, r[NR], NR
        line = "RSS series (t s:kB):"
        for (i = 1; i <= NR; i++) line = line sprintf(" %.0f:%d", t[i], r[i])
        print line
    }' "$WORK/rss.txt"
echo "Redis used_memory: $mem0 at start, $mem1 at the end (bodies deleted; events and indexes stay for the retention)"
rate=$(div "$acc" "$(sub "$t_done" "$t0")")
echo "soak: offered $COUNT, accepted $acc, rejected $rej, at the sink $at_sink, sending took $(sub "$t_sent" "$t0")s, all delivered after $(sub "$t_done" "$t0")s ($rate msg/s)"
if [ "$rej" != 0 ] || [ "$at_sink" != "$acc" ] || [ $ok != 0 ]; then
    echo "soak: FAILED (lost $((acc > at_sink ? acc - at_sink : 0)), duplicated $((at_sink > acc ? at_sink - acc : 0)), rejected $rej)"
    exit 1
fi
echo "soak: PASSED - none lost, none duplicated"
