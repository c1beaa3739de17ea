"""Preload messages straight into Redis, in mailgate's own schema (see the
key list at the top of queue/queue.h), through `redis-cli --pipe`, so that
a test can start with a backlog of thousands of jobs in a second.

Only for tests and benchmarks: the API is the way in for real traffic."""

import json
import os
import subprocess
import time


def _resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def message_id(i, now_ms=None):
    """A time-ordered id like mailgate's: 12 hex ms + 20 hex."""
    now_ms = now_ms or int(time.time() * 1000)
    return "%012x%020x" % (now_ms, 0xB0000000 + i)


def body_for(mid, rcpt, size=2048):
    head = ("From: Load <load@bench.example>\r\nTo: %s\r\nSubject: load %s\r\n"
            "Message-ID: <%s@bench.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=UTF-8\r\n\r\n" % (rcpt, mid, mid))
    line = "x" * 70 + "\r\n"
    body = head
    while len(body) < size:
        body += line
    return body


def preload(redis_port, tenant, n, rcpt_fmt="user{i}@example.com", size=2048, start=0):
    """Queue n single-recipient messages for tenant; returns their ids."""
    now = int(time.time() * 1000)
    ids = []
    chunks = []
    for k in range(start, start + n):
        mid = message_id(k, now)
        rcpt = rcpt_fmt.format(i=k)
        ids.append(mid)
        chunks.append(_resp("HSET", "mg:msg:" + mid, "tenant", tenant, "created_at", str(now),
                            "from", "Load <load@bench.example>", "subject", "load " + mid, "tags", "[]",
                            "metadata", "{}", "mail_from", "load@bench.example", "rcpts", json.dumps([rcpt])))
        chunks.append(_resp("HSET", "mg:msg:%s:rcpt" % mid, rcpt,
                            json.dumps({"status": "queued", "attempts": 0, "last_reply": None})))
        chunks.append(_resp("SET", "mg:msg:%s:body" % mid, body_for(mid, rcpt, size)))
        chunks.append(_resp("ZADD", "mg:tenant:%s:messages" % tenant, "0", mid))
        chunks.append(_resp("ZADD", "mg:open", str(now), mid))
        chunks.append(_resp("XADD", "mg:jobs:" + tenant, "*", "m", mid, "r", json.dumps([rcpt]), "a", "1"))
    chunks.append(_resp("SADD", "mg:jobtenants", tenant))
    p = subprocess.run(["redis-cli", "-p", str(redis_port), "--pipe"], input=b"".join(chunks),
                       capture_output=True, timeout=300)
    assert p.returncode == 0 and b"errors: 0" in p.stdout, p.stdout + p.stderr
    return ids
