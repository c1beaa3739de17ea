#!/usr/bin/env bash
# bench/suite.sh - the whole mailgate benchmark (issue 7, point 5) in one
# run, printing each figure next to its ceiling or peer and the ratio.
#
#   bench/suite.sh                    every phase: a d b e c
#   PHASES="a b" bench/suite.sh       only some (a b c d e, any order)
#
# Phases (see docs/BENCHMARKS.md for what each measures and why):
#   a  POST /v1/messages accepted/s (wrk, mailgate --role api) vs the
#      ceiling bench/ceiling/ceiling.c (parse + XADD + 202), built here
#   d  mailgate peak RSS, and Redis used_memory per queued 2 KB message
#      (--role api: nothing drains, so the messages stay queued)
#   b  end to end msg/s, POST -> smtp-sink (mailgate serve, all roles),
#      vs a private Postfix relay fed by smtp-source into the same sink;
#      DKIM off and on; Redis without persistence
#   e  the same with Redis appendonly yes, appendfsync always (the headline)
#   c  POST -> delivered latency (p50/p99, from each message's own queued
#      and delivered events) at LAT_RATE msg/s offered open loop
#
# Environment (defaults):
#   RUNS=3          repetitions of every measurement (medians are reported)
#   B_SECONDS=10    wrk POSTs for this long in one mailgate run of b/e; the
#                   run ends when the sink has every message accepted
#   D_SECONDS=5     wrk POSTs for this long in one run of d
#   PF_N=5000       messages per Postfix run
#   CONC=32         wrk connections = smtp-source sessions
#   POOL=8          mailgate SMTP sessions to the sink
#   A_SECONDS=10    length of one phase-a wrk run
#   LAT_RATE=1000   LAT_SECONDS=20   LAT_WARMUP=2 (seconds left out of c)
#   LAT_CONNS=64    connections of the paced sender
#   SIZE=2048       bytes of the JSON body (smtp-source -l uses the same)
#   MAILGATE_BIN    mailgate to test (default: `make`, then bin/mailgate);
#                   copied into the work directory first
#   PERF_DIR=DIR    perf record mailgate and redis during the first b run
#   MG_LOG_LEVEL=info   KEEP=1 keeps the work directory (logs)
# Needs: wrk, redis-server, redis-cli, postfix (smtp-sink, smtp-source,
# postfix, postconf), cc + libmicrohttpd/jansson/hiredis headers, openssl,
# /usr/bin/python3. Must run as root (Postfix). Loopback only.
set -euo pipefail

RUNS=${RUNS:-3}
B_SECONDS=${B_SECONDS:-10}
D_SECONDS=${D_SECONDS:-5}
PF_N=${PF_N:-5000}
CONC=${CONC:-32}
POOL=${POOL:-8}
A_SECONDS=${A_SECONDS:-10}
LAT_RATE=${LAT_RATE:-1000}
LAT_SECONDS=${LAT_SECONDS:-20}
LAT_WARMUP=${LAT_WARMUP:-2}
LAT_CONNS=${LAT_CONNS:-64}
SIZE=${SIZE:-2048}
TIMEOUT=${TIMEOUT:-600}
PHASES=${PHASES:-a d b e c}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/mailgate-suite.XXXXXX)
source "$HERE/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in wrk redis-server redis-cli cc openssl postfix postconf /usr/sbin/smtp-sink /usr/sbin/smtp-source; do
    command -v "$t" >/dev/null || { echo "suite.sh: $t not found (wrk: apt-get install wrk)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "suite.sh: run as root (the private Postfix instance needs it)" >&2; exit 1; }
if [ -z "${MAILGATE_BIN:-}" ]; then
    make -s -C "$REPO" all >/dev/null || { echo "suite.sh: make failed" >&2; exit 1; }
    MAILGATE_BIN="$REPO/bin/mailgate"
fi
# a private copy: others may rebuild bin/mailgate while this runs
MG_BIN="$WORK/mailgate"
cp "$MAILGATE_BIN" "$MG_BIN"

RES="$WORK/results.txt"
: >"$RES"
record() { echo "$1 $2" >>"$RES"; }
say() { echo "$*"; }
median() { $PY "$HELPER" stat "$RES" "$1" | cut -d' ' -f1; }
range() { $PY "$HELPER" stat "$RES" "$1" | awk '{ printf "[%s-%s]", $2, $3 }'; }

say "mailgate suite: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)," \
    "load $(loadavg), runs=$RUNS, B_SECONDS=$B_SECONDS, PF_N=$PF_N, CONC=$CONC, POOL=$POOL, size=$SIZE"
say "mailgate: $MAILGATE_BIN ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo ?)$(cd "$REPO" && git diff --quiet 2>/dev/null || echo '+uncommitted'))"

# ---- build the ceiling, the body, the DKIM key ---------------------------
cc -O2 -o "$WORK/ceiling" "$HERE/ceiling/ceiling.c" \
    $(pkg-config --cflags --libs libmicrohttpd jansson hiredis) -pthread
$PY "$HELPER" json "$SIZE" "$WORK/body.json"
openssl genrsa -out "$WORK/dkim.pem" 2048 2>/dev/null
start_sink
say "smtp-sink on 127.0.0.1:$SPORT"
HWM_MAX=0
note_hwm() {
    record "hwm_$1" "$MG_HWM"
    [ "$MG_HWM" -gt "$HWM_MAX" ] && HWM_MAX=$MG_HWM
    return 0
}

# ---- (a) accepted/s vs the ceiling ---------------------------------------
phase_a() {
    say ""
    say "== (a) POST /v1/messages accepted/s: wrk -t1 -c$CONC -d${A_SECONDS}s, $SIZE-byte JSON  [load $(loadavg)]"
    start_redis volatile
    local run rate
    for run in $(seq "$RUNS"); do
        new_key
        start_mg api
        wrk_post "$CONC" "$A_SECONDS" "$HPORT"
        stop_mg; note_hwm a
        rate=$(div "$(jget "$WRK" accepted)" "$(awk -v d="$(jget "$WRK" duration_us)" 'BEGIN { print d / 1e6 }')")
        record a_mg "$rate"
        say "  mailgate  run $run: $rate accepted/s (p50 $(jget "$WRK" lat_p50_us) us, p99 $(jget "$WRK" lat_p99_us) us, other statuses $(jget "$WRK" other)), cpu ${MG_CPU}s, VmHWM ${MG_HWM} kB"
        "${RCLI[@]}" FLUSHALL >/dev/null
        local cport; cport=$(freeport)
        "$WORK/ceiling" "$cport" "$RPORT" 2>>"$WORK/ceiling.log" &
        local cpid=$!
        PIDS+=("$cpid")
        wait_port "$cport"
        wrk_post "$CONC" "$A_SECONDS" "$cport"
        local ccpu; ccpu=$(cpu "$cpid")
        stop "$cpid"
        rate=$(div "$(jget "$WRK" accepted)" "$(awk -v d="$(jget "$WRK" duration_us)" 'BEGIN { print d / 1e6 }')")
        record a_ceil "$rate"
        say "  ceiling   run $run: $rate accepted/s (p50 $(jget "$WRK" lat_p50_us) us, p99 $(jget "$WRK" lat_p99_us) us), cpu ${ccpu}s"
    done
    stop_redis
    local m c
    m=$(median a_mg); c=$(median a_ceil)
    record ratio_a "$(div "$m" "$c")"
    say "(a) mailgate $m/s $(range a_mg) vs ceiling $c/s $(range a_ceil): ratio $(div "$m" "$c") (target >= 0.5)"
}

# ---- (d) memory ----------------------------------------------------------
phase_d() {
    say ""
    say "== (d) memory: ${D_SECONDS}s of POSTs queued through --role api (nothing drains)  [load $(loadavg)]"
    start_redis volatile
    local run
    for run in $(seq "$RUNS"); do
        new_key
        start_mg api
        sleep 0.2
        local before
        before=$("${RCLI[@]}" INFO memory | awk -F: '/^used_memory:/ { sub(/\r/, "", $2); print $2 }')
        wrk_post "$CONC" "$D_SECONDS" "$HPORT"
        sleep 0.3
        local acc; acc=$("${RCLI[@]}" ZCARD mg:tenant:bench:messages)
        local queued; queued=$("${RCLI[@]}" XLEN mg:jobs:bench)
        stop_mg; note_hwm d
        [ "$queued" = "$acc" ] || { echo "suite.sh: $acc accepted but $queued jobs queued" >&2; exit 1; }
        $PY "$HELPER" memory "$RPORT" "$before" "$acc" >"$WORK/memory.$run.json"
        local per; per=$(jget "$(cat "$WORK/memory.$run.json")" used_delta_per_msg)
        record d_redis "$per"
        say "  run $run: $acc queued, Redis used_memory +$per bytes per message, mailgate VmHWM ${MG_HWM} kB"
    done
    say "  per-message Redis keys (run 1; MEMORY USAGE, shared structures divided by the count):"
    $PY -c '
import json, sys
d = json.load(open(sys.argv[1]))
for k in d["keys"]:
    if k["bytes_per_msg"] >= 8:
        print("    %-40s %6d B/msg" % (k["key"], k["bytes_per_msg"]))
print("    %-40s %6d B/msg  (used_memory delta: %d; body as stored: %d bytes)" % ("sum", d["sum_per_msg"], d["used_delta_per_msg"], d["body_bytes"]))
' "$WORK/memory.1.json"
    stop_redis
    say "(d) Redis $(median d_redis) B per queued message $(range d_redis) (target <= 4096);" \
        "mailgate api VmHWM $(median hwm_d) kB"
}

# ---- (b)/(e) end to end vs Postfix ---------------------------------------
e2e_mg() {   # LABEL: one mailgate run of N messages, POST -> sink
    new_key
    start_mg all
    local perf=()
    if [ -n "${PERF_DIR:-}" ] && [ ! -e "$PERF_DIR/mailgate.data" ]; then
        mkdir -p "$PERF_DIR"
        perf record -q -e cpu-clock -g -p "$MG_PID" -o "$PERF_DIR/mailgate.data" 2>"$WORK/perf-mg.log" &
        perf+=($!); PIDS+=($!)
        perf record -q -e cpu-clock -g -p "$REDIS_PID" -o "$PERF_DIR/redis.data" 2>"$WORK/perf-redis.log" &
        perf+=($!); PIDS+=($!)
        sleep 0.5
    fi
    local base; base=$(sinkcount)
    local r0; r0=$(cpu "$REDIS_PID")
    local t0; t0=$(now)
    wrk_post "$CONC" "$B_SECONDS" "$HPORT"
    local t_api; t_api=$(now)
    [ "$(jget "$WRK" other)" = 0 ] || { echo "suite.sh: some POSTs were refused" >&2; exit 1; }
    sleep 0.2
    local N; N=$("${RCLI[@]}" ZCARD mg:tenant:bench:messages)
    local t1
    t1=$($PY "$HELPER" waitsink "$WORK/sink.out" $((base + N)) "$TIMEOUT") || { tail -5 "$WORK/mailgate.log" >&2; exit 1; }
    local rcpu; rcpu=$(sub "$(cpu "$REDIS_PID")" "$r0")
    local p
    for p in "${perf[@]}"; do kill -INT "$p"; wait "$p" 2>/dev/null || true; forget "$p"; done
    # the outcome is recorded just after the sink's 250: give it a moment
    local ok=1
    for _ in $(seq 50); do
        $PY "$HELPER" verify "$RPORT" "$N" >"$WORK/verify.out" && { ok=0; break; }
        sleep 0.2
    done
    stop_mg; note_hwm "$1"
    [ $ok = 0 ] || { echo "suite.sh: not every recipient delivered:" >&2; cat "$WORK/verify.out" >&2; exit 1; }
    local s; s=$(sub "$t1" "$t0")
    local rate; rate=$(div "$N" "$s")
    record "${1}_mg" "$rate"
    say "  mailgate $1 run: $N in ${s}s = $rate msg/s (POSTs done after $(sub "$t_api" "$t0")s; cpu: mailgate ${MG_CPU}s redis ${rcpu}s; VmHWM ${MG_HWM} kB)$(sed 's/^ */; /' "$WORK/verify.out")"
}
e2e_pf() {   # LABEL: one Postfix run of PF_N messages, smtp-source -> sink
    local base; base=$(sinkcount)
    local t0; t0=$(now)
    timeout "$TIMEOUT" /usr/sbin/smtp-source -d -s "$CONC" -m "$PF_N" -l "$SIZE" \
        -f bench@example.com -t rcpt@example.org "127.0.0.1:$PFPORT" >"$WORK/source.log" 2>&1 ||
        { echo "suite.sh: smtp-source failed:" >&2; tail -5 "$WORK/source.log" >&2; exit 1; }
    local t_src; t_src=$(now)
    local t1
    t1=$($PY "$HELPER" waitsink "$WORK/sink.out" $((base + PF_N)) "$TIMEOUT") || { tail -5 "$PF_DIR/postfix.log" >&2; exit 1; }
    local s; s=$(sub "$t1" "$t0")
    local rate; rate=$(div "$PF_N" "$s")
    record "${1}_pf" "$rate"
    say "  postfix  $1 run: $PF_N in ${s}s = $rate msg/s (smtp-source done after $(sub "$t_src" "$t0")s)"
}
phase_e2e() {   # b|e
    local label=$1 mode=volatile
    [ "$label" = e ] && mode=always
    say ""
    say "== ($label) end to end, POST -> smtp-sink, Redis $([ $mode = always ] && echo 'appendonly yes, appendfsync always' || echo 'no persistence'); Postfix relay with its own fsync  [load $(loadavg)]"
    [ -n "$PF_DIR" ] || setup_postfix
    start_redis "$mode"
    local run
    for run in $(seq "$RUNS"); do
        DKIM=0 e2e_mg "${label}_nodkim"
        e2e_pf "$label"
        DKIM=1 e2e_mg "${label}_dkim"
    done
    stop_redis
    local pf m0 m1
    pf=$(median "${label}_pf"); m0=$(median "${label}_nodkim_mg"); m1=$(median "${label}_dkim_mg")
    record "ratio_${label}_nodkim" "$(div "$m0" "$pf")"
    record "ratio_${label}_dkim" "$(div "$m1" "$pf")"
    say "($label) Postfix $pf msg/s $(range "${label}_pf");" \
        "mailgate DKIM off $m0 msg/s $(range "${label}_nodkim_mg") = $(div "$m0" "$pf")x;" \
        "DKIM on $m1 msg/s $(range "${label}_dkim_mg") = $(div "$m1" "$pf")x (target >= 10x)"
}

# ---- (c) latency at a paced rate -------------------------------------------
phase_c() {
    say ""
    say "== (c) latency, $LAT_RATE msg/s offered open loop for ${LAT_SECONDS}s (first ${LAT_WARMUP}s left out)  [load $(loadavg)]"
    start_redis volatile
    local run
    for run in $(seq "$RUNS"); do
        new_key
        start_mg all
        local base; base=$(sinkcount)
        $PY "$HELPER" paced "$HPORT" "$KEY" "$WORK/body.json" "$LAT_RATE" "$LAT_SECONDS" "$LAT_CONNS" "$WORK/ids.txt" >"$WORK/paced.json"
        local acc; acc=$(jget "$(cat "$WORK/paced.json")" accepted)
        $PY "$HELPER" waitsink "$WORK/sink.out" $((base + acc)) "$TIMEOUT" >/dev/null
        sleep 0.5
        # leave out the warm-up: the first LAT_WARMUP*LAT_RATE messages
        tail -n +$((LAT_WARMUP * LAT_RATE + 1)) "$WORK/ids.txt" >"$WORK/ids.steady"
        $PY "$HELPER" latency "$RPORT" "$WORK/ids.steady" >"$WORK/lat.json"
        $PY "$HELPER" latency "$RPORT" "$WORK/ids.txt" >"$WORK/lat.all.json"
        stop_mg; note_hwm c
        local L; L=$(cat "$WORK/lat.json")
        record c_p50 "$(jget "$L" p50_ms)"; record c_p99 "$(jget "$L" p99_ms)"
        record c_p99_all "$(jget "$(cat "$WORK/lat.all.json")" p99_ms)"
        record c_post_p50 "$(jget "$L" post_p50_ms)"; record c_post_p99 "$(jget "$L" post_p99_ms)"
        say "  run $run: queued->delivered p50 $(jget "$L" p50_ms) ms, p90 $(jget "$L" p90_ms) ms, p99 $(jget "$L" p99_ms) ms, max $(jget "$L" max_ms) ms over $(jget "$L" messages) (missing $(jget "$L" missing)); with warm-up p99 $(jget "$(cat "$WORK/lat.all.json")" p99_ms) ms"
        say "         POST sent->delivered (client clock, same host): p50 $(jget "$L" post_p50_ms) ms, p99 $(jget "$L" post_p99_ms) ms, max $(jget "$L" post_max_ms) ms"
        say "         sender: $(cat "$WORK/paced.json")"
    done
    stop_redis
    say "(c) queued->delivered p50 $(median c_p50) ms $(range c_p50), p99 $(median c_p99) ms $(range c_p99) (target p99 <= 50 ms); p99 with warm-up $(median c_p99_all) ms;" \
        "POST sent->delivered p50 $(median c_post_p50) ms, p99 $(median c_post_p99) ms $(range c_post_p99)"
}

for ph in $PHASES; do
    case $ph in
        a) phase_a ;;
        d) phase_d ;;
        b) phase_e2e b ;;
        e) phase_e2e e ;;
        c) phase_c ;;
        *) echo "suite.sh: unknown phase $ph" >&2; exit 2 ;;
    esac
done

say ""
say "== summary  [load $(loadavg)]"
grep -q '^a_mg ' "$RES" && say "(a) accepted/s: mailgate $(median a_mg), ceiling $(median a_ceil), ratio $(median ratio_a) (target >= 0.5)"
grep -q '^b_pf ' "$RES" && say "(b) e2e msg/s: Postfix $(median b_pf); mailgate $(median b_nodkim_mg) = $(median ratio_b_nodkim)x, with DKIM $(median b_dkim_mg) = $(median ratio_b_dkim)x (target >= 10x)"
grep -q '^c_p99 ' "$RES" && say "(c) latency at $LAT_RATE/s: queued->delivered p50 $(median c_p50) ms, p99 $(median c_p99) ms (target <= 50); POST sent->delivered p50 $(median c_post_p50) ms, p99 $(median c_post_p99) ms"
grep -q '^d_redis ' "$RES" && say "(d) Redis $(median d_redis) B/queued message (target <= 4096)"
say "(d) mailgate peak RSS over the whole suite: $((HWM_MAX / 1024)) MB (VmHWM $HWM_MAX kB; target <= 64 MB)"
grep -q '^e_pf ' "$RES" && say "(e) e2e msg/s, appendfsync always: Postfix $(median e_pf); mailgate $(median e_nodkim_mg) = $(median ratio_e_nodkim)x, with DKIM $(median e_dkim_mg) = $(median ratio_e_dkim)x (target >= 10x)"
cp "$RES" "${RESULTS_OUT:-/dev/null}" 2>/dev/null || true
