# bench/lib.sh - shared shell helpers of bench/suite.sh and bench/soak.sh
# (sourced, not run). Everything started is recorded in PIDS and stopped by
# PID on exit; the private Postfix instance (if any) is stopped with
# `postfix -c DIR stop`. Only 127.0.0.1 is used.

PY=/usr/bin/python3
HELPER="$HERE/suite.py"
PIDS=()
PF_DIR=""

cleanup() {
    local rc=$?
    local i
    if [ -n "$PF_DIR" ] && [ -f "$PF_DIR/conf/main.cf" ]; then
        postfix -c "$PF_DIR/conf" stop >/dev/null 2>&1 || true
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        # bounded: SIGKILL whatever has not gone after 5 s
        for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
        kill -9 "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}

# forget PID - drop a reaped process from PIDS
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# stop PID - SIGTERM, wait (10 s at most), then SIGKILL; reap and forget
stop() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }'; }
cpu() { awk -v t="$(getconf CLK_TCK)" '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[12] + f[13]) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
freeport() { $PY "$HERE/mgbench.py" port; }

wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "bench: nothing listening on port $1" >&2
    return 1
}

# start_sink - one smtp-sink for the whole run; -c prints running counters
# ("mesg=N") that suite.py waitsink reads. It advertises PIPELINING.
start_sink() {
    SPORT=$(freeport)
    /usr/sbin/smtp-sink -c -u "$(id -un)" -m 512 "127.0.0.1:$SPORT" 1000 >"$WORK/sink.out" 2>"$WORK/sink.err" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_port "$SPORT"
}
sinkcount() { $PY "$HELPER" sinkcount "$WORK/sink.out"; }

# start_redis volatile|always - a fresh redis-server; sets RPORT, REDIS_PID
start_redis() {
    RPORT=$(freeport)
    local d="$WORK/redis-$RPORT"
    mkdir -p "$d"
    local dur=(--appendonly no)
    [ "$1" = always ] && dur=(--appendonly yes --appendfsync always)
    redis-server --bind 127.0.0.1 --port "$RPORT" --save '' "${dur[@]}" --dir "$d" \
        --logfile "$d/redis.log" --maxmemory-policy noeviction &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$RPORT"
    RCLI=(redis-cli -h 127.0.0.1 -p "$RPORT")
}
stop_redis() { stop "$REDIS_PID"; }

# new_key - FLUSHALL, then an API key for tenant "bench" in KEY; with DKIM=1
# the tenant may send from example.com (mailgate signs only then)
new_key() {
    "${RCLI[@]}" FLUSHALL >/dev/null
    KEY=$(MAILGATE_REDIS_URL="redis://127.0.0.1:$RPORT/0" "$MG_BIN" key create --tenant bench --scopes send,read 2>/dev/null | tail -1)
    case $KEY in mg_*) ;; *) echo "bench: key create failed: $KEY" >&2; exit 1 ;; esac
    if [ "${DKIM:-0}" = 1 ]; then
        MAILGATE_REDIS_URL="redis://127.0.0.1:$RPORT/0" "$MG_BIN" tenant set bench --allowed-from example.com >/dev/null
    fi
}

# start_mg ROLE - mailgate serve on a free port, relay = the sink; DKIM=1
# signs for example.com. Sets HPORT, MG_PID.
start_mg() {
    HPORT=$(freeport)
    local dk=()
    [ "${DKIM:-0}" = 1 ] && dk=(MAILGATE_DKIM_KEYS="example.com:bench:$WORK/dkim.pem")
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        MAILGATE_LISTEN="127.0.0.1:$HPORT" \
        MAILGATE_REDIS_URL="redis://127.0.0.1:$RPORT/0" \
        MAILGATE_RELAYS="smtp://127.0.0.1:$SPORT?tls=none&pool=$POOL&name=sink" \
        MAILGATE_HELO_NAME=bench.invalid \
        MAILGATE_LOG_LEVEL="${MG_LOG_LEVEL:-info}" \
        "${dk[@]}" \
        "$MG_BIN" serve --role "$1" 2>>"$WORK/mailgate.log" >/dev/null &
    MG_PID=$!
    PIDS+=("$MG_PID")
    wait_port "$HPORT"
}
# stop_mg - record the process's peak RSS (VmHWM, kB) in MG_HWM, then stop it
stop_mg() {
    MG_HWM=$($PY "$HELPER" status "$MG_PID" VmHWM)
    MG_CPU=$(cpu "$MG_PID")
    stop "$MG_PID"
}

# wrk_post CONNS SECONDS PORT - POST the body with wrk (one thread, CONNS
# keep-alive connections) for SECONDS. Sets WRK (the wrkjson object). wrk
# counts the answers it read; up to CONNS more requests may have been
# accepted as it stopped, so counts of queued messages come from Redis.
wrk_post() {
    MG_BODY="$WORK/body.json" MG_KEY="$KEY" \
        timeout $(($2 + 60)) wrk -t1 -c"$1" -d"$2"s -s "$HERE/post.lua" "http://127.0.0.1:$3" >"$WORK/wrk.out" 2>"$WORK/wrk.err" || {
        echo "bench: wrk failed:" >&2; cat "$WORK/wrk.err" "$WORK/wrk.out" >&2; exit 1; }
    WRK=$(sed -n 's/^wrkjson //p' "$WORK/wrk.out")
    [ -n "$WRK" ] || { echo "bench: no wrk result:" >&2; cat "$WORK/wrk.out" "$WORK/wrk.err" >&2; exit 1; }
}
jget() { $PY -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# setup_postfix - a private Postfix instance under $WORK/postfix: its own
# config, queue and data directories; smtpd on a free loopback port
# (PFPORT); everything relayed to [127.0.0.1]:SPORT (the same sink).
# Everything else is Postfix's default (concurrency, fsync of queue files).
setup_postfix() {
    PF_DIR="$WORK/postfix"
    PFPORT=$(freeport)
    mkdir -p "$PF_DIR/conf" "$PF_DIR/queue" "$PF_DIR/data"
    chmod 755 "$WORK" "$PF_DIR"
    chown postfix "$PF_DIR/data"
    cp /etc/postfix/master.cf "$PF_DIR/conf/master.cf"
    # smtpd on 127.0.0.1:PFPORT instead of *:25; no chroot (the private
    # queue directory has no copy of /etc files)
    sed -i -E "s/^smtp( +)inet( +)n( +)-( +)y/127.0.0.1:$PFPORT\1inet\2n\3-\4n/" "$PF_DIR/conf/master.cf"
    sed -i -E 's/^([a-z]+ +(unix|unix-dgram|inet|fifo|pass) +[-yn] +[-yn] +)y/\1n/' "$PF_DIR/conf/master.cf"
    cat >"$PF_DIR/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF_DIR/queue
data_directory = $PF_DIR/data
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = bench.invalid
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:$SPORT
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file_prefixes = $PF_DIR
maillog_file = $PF_DIR/postfix.log
EOF
    postfix -c "$PF_DIR/conf" check || { echo "bench: postfix check failed" >&2; exit 1; }
    postfix -c "$PF_DIR/conf" start >/dev/null 2>&1 || { echo "bench: postfix start failed:" >&2; tail -5 "$PF_DIR/postfix.log" >&2; exit 1; }
    wait_port "$PFPORT"
}
