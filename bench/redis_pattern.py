#!/usr/bin/python3
"""redis_pattern.py - what the sender's Redis traffic costs Redis, with one
job per round trip (what smtp/smtp_deliver.c does today) and with B jobs per
round trip (XREADGROUP COUNT B, one pipelined load, one MULTI for B outcomes).
No SMTP: only the Redis side of the drain, to size the batching suggestion
in docs/BENCHMARKS.md.

  bench/redis_pattern.py PORT COUNT WORKERS BATCH

Expects COUNT messages preloaded by `mgbench.py preload` on 127.0.0.1:PORT.
Prints wall seconds, redis-server CPU seconds (from /proc) and both per job.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mgbench import Redis, resp  # noqa: E402

RCPT = "rcpt@example.org"


def pipeline(r, cmds):
    r.s.sendall(b"".join(resp(*[str(a) for a in c]) for c in cmds))
    return [r._read() for _ in cmds]


def worker(port, idx, batch):
    r = Redis(port)
    consumer = "pattern-%d" % idx
    while True:
        rep = r.call("XREADGROUP", "GROUP", "senders", consumer, "COUNT", batch, "BLOCK", 200,
                     "STREAMS", "mg:jobs:bench", ">")
        if not rep:
            return
        entries = rep[0][1]
        jobs = [(e[0], e[1][1]) for e in entries]  # (entry id, message id)
        load = []
        for _, mid in jobs:
            load += [("GET", "mg:msg:%s:body" % mid),
                     ("HMGET", "mg:msg:" + mid, "tenant", "mail_from", "tags", "metadata", "rcpts",
                      "created_at"),
                     ("HGETALL", "mg:msg:%s:rcpt" % mid)]
        pipeline(r, load)
        rec = [("MULTI",)]
        for eid, mid in jobs:
            ev = '{"id":"ev_x","type":"delivered","message_id":"%s","recipient":"%s","tags":[],' \
                 '"metadata":{},"smtp":{"code":250,"enhanced_code":"2.0.0","reply":"Ok","relay":"sink"},' \
                 '"attempt":1}' % (mid, RCPT)
            rec += [("HSET", "mg:msg:%s:rcpt" % mid, RCPT,
                     '{"status":"delivered","attempts":1,"last_reply":"250 2.0.0 Ok"}'),
                    ("RPUSH", "mg:msg:%s:events" % mid, ev),
                    ("XADD", "mg:events:bench", "*", "e", ev),
                    ("DEL", "mg:msg:%s:body" % mid),
                    ("XACK", "mg:jobs:bench", "senders", eid),
                    ("XDEL", "mg:jobs:bench", eid)]
        rec.append(("EXEC",))
        pipeline(r, rec)


def redis_cpu(port):
    pid = int(Redis(port).call("INFO", "server").split("process_id:")[1].split()[0])
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    port, count, workers, batch = (int(a) for a in sys.argv[1:5])
    c0, t0 = redis_cpu(port), time.time()
    kids = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            worker(port, i, batch)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    t1, c1 = time.time(), redis_cpu(port)
    left = Redis(port).call("XLEN", "mg:jobs:bench")
    done = count - left
    print("batch=%d workers=%d: %d jobs in %.2f s; redis cpu %.2f s = %.0f us/job" %
          (batch, workers, done, t1 - t0 - 0.2, c1 - c0, (c1 - c0) * 1e6 / max(done, 1)))


if __name__ == "__main__":
    main()
