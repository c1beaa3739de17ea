#!/usr/bin/python3
"""suite.py - helpers for bench/suite.sh and bench/soak.sh. Standard
library only (the system python3 has no redis module; RESP is spoken raw,
see mgbench.py).

  suite.py json SIZE FILE               write a JSON message of exactly SIZE
                                        bytes (the body wrk POSTs)
  suite.py sinkcount FILE               messages smtp-sink -c has counted so far
  suite.py waitsink FILE TARGET TIMEOUT poll (2 ms) until smtp-sink has counted
                                        TARGET messages; print the wall clock
  suite.py verify RPORT COUNT           every recipient of tenant "bench" is
                                        delivered, no job pending or delayed
  suite.py paced HTTPPORT KEY BODY RATE SECONDS CONNS OUT
                                        open-loop paced sender (see paced())
  suite.py latency RPORT IDS            queued -> delivered latency per message
                                        from its own events; JSON on stdout
  suite.py memory RPORT BEFORE COUNT    Redis memory per queued message with a
                                        per-key breakdown; JSON on stdout
  suite.py status PID FIELD             a field (kB) of /proc/PID/status
  suite.py stat FILE KEY                median/min/max of lines "KEY value"
"""
import asyncio
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mgbench import Redis, VERIFY_LUA, resp  # noqa: E402

# The body text is English prose, not a repeated phrase: mailgate stores
# bodies compressed (common/zbody.c), and a repeated line would shrink
# 18-fold where real mail shrinks 2- to 4-fold. Debian's copy of the GPL
# is on every Debian system (package base-files); DEFLATE level 1 makes
# 2,100 bytes of it about 1,050.
PROSE = "/usr/share/common-licenses/GPL-3"
try:
    with open(PROSE, encoding="utf-8") as f:
        TEXT = f.read()[4000:40000]
except OSError:
    sys.exit("suite.py: %s not found (Debian package base-files)" % PROSE)


def make_json(size):
    """A send as an application makes it: from, to, subject, text; the
    text is padded so that the whole body is exactly size bytes."""
    base = {"from": "Bench <bench@example.com>", "to": ["rcpt@example.org"],
            "subject": "Benchmark message", "text": ""}
    empty = len(json.dumps(base, separators=(",", ":")))
    n = size - empty
    text = TEXT if len(TEXT) > n + 2 else TEXT * (n // len(TEXT) + 2)
    # json escapes "\n" as two bytes: trim until the encoded length fits
    out = ""
    while True:
        base["text"] = text[:n]
        out = json.dumps(base, separators=(",", ":"))
        if len(out) <= size:
            break
        n -= len(out) - size
    out = out[:-2] + "x" * (size - len(out)) + out[-2:] if len(out) < size else out
    assert len(out) == size, len(out)
    json.loads(out)
    return out.encode()


def sink_count(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            end = f.tell()
            f.seek(max(0, end - 200))
            tail = f.read()
    except FileNotFoundError:
        return 0
    m = re.findall(rb"mesg=(\d+)", tail)
    return int(m[-1]) if m else 0


def cmd_waitsink(path, target, timeout):
    deadline = time.time() + timeout
    last = time.time()
    while True:
        n = sink_count(path)
        now = time.time()
        if n >= target:
            print("%.6f" % now)
            return 0
        if now > deadline:
            print("waitsink: timeout, sink has %d of %d" % (n, target), file=sys.stderr)
            return 1
        if now - last >= 10:
            print("  ... sink has %d of %d" % (n, target), file=sys.stderr)
            last = now
        time.sleep(0.002)


def cmd_verify(port, count):
    r = Redis(port)
    res = r.call("EVAL", VERIFY_LUA, 1, "mg:tenant:bench:messages")
    d = dict(zip(res[0::2], res[1::2]))
    jobs = r.call("XLEN", "mg:jobs:bench")
    d["jobs_left"] = jobs
    print("  outcomes: " + ", ".join("%s=%s" % kv for kv in sorted(d.items())))
    ok = d.get("delivered") == count and d.get("delayed") == 0 and jobs == 0
    return 0 if ok else 1


# ---- (c) open-loop paced sender -----------------------------------------

async def paced(port, key, body, rate, seconds, conns, out):
    """Offer RATE POSTs per second for SECONDS, open loop: request i is due
    at t0 + i/RATE whatever happened to earlier requests. CONNS keep-alive
    connections take the due requests in order; a request can start late
    only when all CONNS connections are waiting for answers, and that
    lateness is recorded (it is reported, never hidden)."""
    req = (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (key.encode(), len(body))) + body
    total = int(rate * seconds)
    t0 = time.monotonic() + 0.2
    nxt = [0]
    res = []

    async def worker():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        while True:
            i = nxt[0]
            if i >= total:
                break
            nxt[0] += 1
            due = t0 + i / rate
            d = due - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
            start = time.monotonic()
            wall = time.time()
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            data = await r.readexactly(int(m.group(1))) if m else b""
            end = time.monotonic()
            status = int(head.split(b" ", 2)[1])
            mid = None
            if status == 202:
                mid = json.loads(data)["id"]
            res.append((i, start - due, end - start, status, mid, wall))
        w.close()

    await asyncio.gather(*[worker() for _ in range(conns)])
    lag = sorted(x[1] for x in res)
    rt = sorted(x[2] for x in res)
    ok = ["%s %d" % (x[4], int(x[5] * 1000)) for x in sorted(res) if x[3] == 202]
    with open(out, "w") as f:  # "id post_ms" per accepted message, in offer order
        f.write("\n".join(ok) + "\n")
    pct = lambda a, p: a[min(len(a) - 1, int(p / 100 * len(a)))] * 1000  # noqa: E731
    print(json.dumps({"offered": total, "accepted": len(ok), "rejected": len(res) - len(ok),
                      "elapsed_s": round(time.monotonic() - t0, 3),
                      "start_lag_ms_p50": round(pct(lag, 50), 2), "start_lag_ms_p99": round(pct(lag, 99), 2),
                      "start_lag_ms_max": round(lag[-1] * 1000, 2),
                      "http_ms_p50": round(pct(rt, 50), 2), "http_ms_p99": round(pct(rt, 99), 2),
                      "http_ms_max": round(rt[-1] * 1000, 2)}))


def iso_ms(s):
    # 2026-11-30T10:13:03.598Z
    t = time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    import calendar
    return calendar.timegm(t) * 1000 + int(s[20:23])


def cmd_latency(port, idsfile):
    rows = [x.split() for x in open(idsfile) if x.strip()]
    ids = [x[0] for x in rows]
    post = {x[0]: int(x[1]) for x in rows if len(x) > 1}
    r = Redis(port)
    lat = []
    e2e = []
    missing = 0
    for k in range(0, len(ids), 500):
        chunk = ids[k:k + 500]
        r.s.sendall(b"".join(resp("LRANGE", "mg:msg:%s:events" % i, "0", "-1") for i in chunk))
        lists = [r._read() for _ in chunk]
        # a message's list holds event ids, each JSON being mg:event:{id}
        # (an older version's list holds the JSON: it begins with '{')
        r.s.sendall(b"".join(resp("MGET", "mg:event:-", *["mg:event:" + e for e in lst if e[:1] != "{"])
                             for lst in lists))
        bodies = [r._read()[1:] for _ in chunk]
        for mid, lst, got in zip(chunk, lists, bodies):
            got = iter(got)
            evs = [json.loads(e if e[:1] == "{" else next(got) or "{}") for e in lst]
            evs = [e for e in evs if e]
            q = [e["created_at"] for e in evs if e["type"] == "queued"]
            d = [e["created_at"] for e in evs if e["type"] == "delivered"]
            if not q or not d:
                missing += 1
                continue
            lat.append(iso_ms(d[0]) - iso_ms(q[0]))
            if mid in post:
                e2e.append(iso_ms(d[0]) - post[mid])
    lat.sort()
    e2e.sort()
    pct = lambda a, p: a[min(len(a) - 1, int(p / 100 * len(a)))] if a else -1  # noqa: E731
    print(json.dumps({"messages": len(lat), "missing": missing, "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
                      "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else -1,
                      "post_p50_ms": pct(e2e, 50), "post_p99_ms": pct(e2e, 99), "post_max_ms": e2e[-1] if e2e else -1}))


# ---- (d) Redis memory per queued message ---------------------------------

MSG_KEY = re.compile(r"^mg:msg:([0-9a-f]{32})(:.*)?$")


def cmd_memory(port, before, count):
    r = Redis(port)
    info = r.call("INFO", "memory")
    used = int(re.search(r"used_memory:(\d+)", info).group(1))
    per_msg = (used - before) / count
    # every key, grouped: a message's own keys by suffix, events, shared
    cursor, keys = "0", []
    while True:
        cursor, batch = r.call("SCAN", cursor, "COUNT", "5000")
        keys += batch
        if cursor == "0":
            break
    groups = {}
    sample = None
    for k in keys:
        m = MSG_KEY.match(k)
        if m:
            name = "mg:msg:{id}" + (m.group(2) or "")
            sample = sample or m.group(1)
        elif k.startswith("mg:event:"):
            name = "mg:event:{ev id}"
        else:
            name = k
        groups.setdefault(name, []).append(k)
    rows = []
    for name, ks in groups.items():
        if name.startswith("mg:key:") or name.startswith("mg:tenant:bench:keys") or name == "mg:tenants":
            continue
        # one sampled key per per-message group (they are all alike), the
        # whole structure for shared keys (SAMPLES 0: every element)
        if name.startswith("mg:msg:{id}") or name.startswith("mg:event:"):
            b = r.call("MEMORY", "USAGE", ks[0], "SAMPLES", "0") or 0
            rows.append((name, len(ks), b * len(ks) / count))
        else:
            b = r.call("MEMORY", "USAGE", ks[0], "SAMPLES", "0") or 0
            rows.append((name, 1, b / count))
    rows.sort(key=lambda x: -x[2])
    body = r.call("STRLEN", "mg:msg:%s:body" % sample) if sample else 0
    print(json.dumps({"count": count, "used_delta_per_msg": round(per_msg), "body_bytes": body,
                      "keys": [{"key": n, "instances": c, "bytes_per_msg": round(b)} for n, c, b in rows],
                      "sum_per_msg": round(sum(x[2] for x in rows))}))


def cmd_status(pid, field):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                print(line.split()[1])
                return 0
    print(0)
    return 1


def cmd_stat(path, key):
    vals = []
    for line in open(path):
        p = line.split()
        if len(p) == 2 and p[0] == key:
            vals.append(float(p[1]))
    if not vals:
        print("nan nan nan")
        return 1
    print("%g %g %g" % (statistics.median(vals), min(vals), max(vals)))
    return 0


def main(a):
    if len(a) == 4 and a[1] == "json":
        with open(a[3], "wb") as f:
            f.write(make_json(int(a[2])))
        return 0
    if len(a) == 3 and a[1] == "sinkcount":
        print(sink_count(a[2]))
        return 0
    if len(a) == 5 and a[1] == "waitsink":
        return cmd_waitsink(a[2], int(a[3]), float(a[4]))
    if len(a) == 4 and a[1] == "verify":
        return cmd_verify(int(a[2]), int(a[3]))
    if len(a) == 9 and a[1] == "paced":
        with open(a[4], "rb") as f:
            body = f.read()
        asyncio.run(paced(int(a[2]), a[3], body, float(a[5]), float(a[6]), int(a[7]), a[8]))
        return 0
    if len(a) == 4 and a[1] == "latency":
        cmd_latency(int(a[2]), a[3])
        return 0
    if len(a) == 5 and a[1] == "memory":
        cmd_memory(int(a[2]), int(a[3]), int(a[4]))
        return 0
    if len(a) == 4 and a[1] == "status":
        return cmd_status(a[2], a[3])
    if len(a) == 4 and a[1] == "stat":
        return cmd_stat(a[2], a[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
