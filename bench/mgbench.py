#!/usr/bin/python3
"""mgbench.py - helpers for bench/drain.sh. Standard library only (the
system python3 has no redis module): Redis is spoken as raw RESP.

  mgbench.py port                       print a free loopback TCP port
  mgbench.py message SIZE FILE          write the benchmark message with LF
                                        line ends (for smtp-source -F, which
                                        appends CRLF to every line)
  mgbench.py preload COUNT SIZE         RESP for `redis-cli --pipe` on stdout:
                                        COUNT messages stored exactly as
                                        queue_message_enqueue() stores them
  mgbench.py wait PORT COUNT TIMEOUT_S  poll until mg:jobs:bench is empty and every
                                        message has an outcome; print the
                                        wall clock (s since epoch) when done
  mgbench.py verify PORT COUNT          count recipient statuses; exit 1 unless
                                        all COUNT are "delivered"

Schema (queue/queue.h, queue/queue_msg.c): per message
  HSET   mg:msg:{id} tenant created_at from subject tags metadata mail_from rcpts
  HSET   mg:msg:{id}:rcpt {email} {"status":"queued","attempts":0,"last_reply":null}
  RPUSH  mg:msg:{id}:events {queued event}
  XADD   mg:events:{tenant} * e {queued event}
  SET    mg:msg:{id}:body {rendered RFC 5322 message, CRLF}
  ZADD   mg:tenant:{tenant}:messages 0 {id}
  XADD   mg:jobs:bench * m {id} r ["{email}"] a 1
and once: XGROUP CREATE mg:jobs:bench senders 0 MKSTREAM; SADD mg:jobtenants bench.
"""
import json
import os
import socket
import sys
import time

TENANT = "bench"
FROM = "Bench <bench@example.com>"
MAIL_FROM = "bench@example.com"
RCPT = "rcpt@example.org"
SUBJECT = "Benchmark message"


def render(msg_id, size, date):
    """The message as templates/mime_build.c renders a text/plain send
    (same headers, quoted-printable lines of 76), padded to exactly size
    bytes with CRLF line ends. msg_id is 32 hex, so every message of a run
    has the same length."""
    head = ("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@bench.invalid>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n" % (FROM, RCPT, SUBJECT, date, msg_id))
    words = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
    lines = []
    left = size - len(head)
    i = 0
    while left > 0:
        n = min(75, left - 2) if left > 2 else 0
        if n <= 0:  # fewer than 3 bytes left: lengthen the previous line
            lines[-1] = lines[-1][:-2] + "x" * left + "\r\n"
            break
        s = (words * 3)[i % len(words):][:n]
        if s.endswith(" "):  # QP: no trailing white space
            s = s[:-1] + "_"
        lines.append(s + "\r\n")
        left -= n + 2
        i += n
    body = head + "".join(lines)
    assert len(body) == size, (len(body), size)
    return body.encode()


def rfc2822_now():
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(b"\r\n")
    return b"".join(out)


def rfc3339(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".%03dZ" % (ms % 1000)


def new_id(ms, n):
    # util_new_id: 12 hex of the ms timestamp, then 20 hex of randomness.
    return "%012x" % (ms & 0xFFFFFFFFFFFF) + os.urandom(10).hex()


def cmd_preload(count, size):
    out = sys.stdout.buffer
    out.write(resp("XGROUP", "CREATE", "mg:jobs:" + TENANT, "senders", "0", "MKSTREAM"))
    out.write(resp("SADD", "mg:jobtenants", TENANT))
    date = rfc2822_now()
    rcpts = json.dumps([RCPT], separators=(",", ":"))
    state = json.dumps({"status": "queued", "attempts": 0, "last_reply": None}, separators=(",", ":"))
    chunk = []
    for n in range(count):
        ms = int(time.time() * 1000)
        mid = new_id(ms, n)
        ev = json.dumps({"id": "ev_" + new_id(ms, n), "type": "queued", "created_at": rfc3339(ms),
                         "message_id": mid, "recipient": RCPT, "tags": [], "metadata": {}},
                        separators=(",", ":"))
        chunk.append(resp("HSET", "mg:msg:" + mid, "tenant", TENANT, "created_at", str(ms), "from", FROM,
                          "subject", SUBJECT, "tags", "[]", "metadata", "{}", "mail_from", MAIL_FROM,
                          "rcpts", rcpts))
        chunk.append(resp("HSET", "mg:msg:%s:rcpt" % mid, RCPT, state))
        chunk.append(resp("RPUSH", "mg:msg:%s:events" % mid, ev))
        chunk.append(resp("XADD", "mg:events:" + TENANT, "*", "e", ev))
        chunk.append(resp("SET", "mg:msg:%s:body" % mid, render(mid, size, date)))
        chunk.append(resp("ZADD", "mg:tenant:%s:messages" % TENANT, "0", mid))
        chunk.append(resp("XADD", "mg:jobs:" + TENANT, "*", "m", mid, "r", rcpts, "a", "1"))
        if len(chunk) >= 7000:
            out.write(b"".join(chunk))
            chunk = []
    out.write(b"".join(chunk))
    out.flush()


class Redis:
    """A minimal blocking RESP client: enough for XLEN, XPENDING and EVAL."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.s.makefile("rb")

    def call(self, *args):
        self.s.sendall(resp(*[str(a) for a in args]))
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2].decode()
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError("bad RESP type %r" % t)


def cmd_wait(port, count, timeout):
    r = Redis(port)
    deadline = time.time() + timeout
    last_report = time.time()
    while True:
        # The outcome is recorded in the same MULTI as XACK + XDEL, so an
        # empty stream means every job's outcome is recorded.
        xlen = r.call("XLEN", "mg:jobs:" + TENANT)
        now = time.time()
        if xlen == 0:
            pend = r.call("XPENDING", "mg:jobs:" + TENANT, "senders")[0]
            if pend == 0:
                print("%.6f" % now)
                return 0
        if now > deadline:
            print("timeout: %d jobs left after %ds" % (xlen, timeout), file=sys.stderr)
            return 1
        if now - last_report >= 5:
            print("  ... %d of %d jobs left" % (xlen, count), file=sys.stderr)
            last_report = now
        time.sleep(0.005)


VERIFY_LUA = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local counts = {}
for _, id in ipairs(ids) do
  local vals = redis.call('HVALS', 'mg:msg:' .. id .. ':rcpt')
  for _, v in ipairs(vals) do
    local st = cjson.decode(v).status
    counts[st] = (counts[st] or 0) + 1
  end
end
local out = {}
for k, v in pairs(counts) do out[#out + 1] = k; out[#out + 1] = v end
out[#out + 1] = 'delayed'; out[#out + 1] = redis.call('ZCARD', 'mg:delayed')
out[#out + 1] = 'bodies_left'; out[#out + 1] = #redis.call('KEYS', 'mg:msg:*:body')
return out
"""


def cmd_verify(port, count):
    r = Redis(port)
    res = r.call("EVAL", VERIFY_LUA, 1, "mg:tenant:%s:messages" % TENANT)
    d = dict(zip(res[0::2], res[1::2]))
    print("  outcomes: " + ", ".join("%s=%s" % kv for kv in sorted(d.items())))
    ok = d.get("delivered") == count and d.get("delayed") == 0 and d.get("bodies_left") == 0
    return 0 if ok else 1


def main(argv):
    if len(argv) >= 2 and argv[1] == "port":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
        return 0
    if len(argv) == 4 and argv[1] == "message":
        data = render("0" * 32, int(argv[2]), rfc2822_now()).replace(b"\r\n", b"\n")
        with open(argv[3], "wb") as f:
            f.write(data)
        return 0
    if len(argv) == 4 and argv[1] == "preload":
        cmd_preload(int(argv[2]), int(argv[3]))
        return 0
    if len(argv) == 5 and argv[1] == "wait":
        return cmd_wait(int(argv[2]), int(argv[3]), float(argv[4]))
    if len(argv) == 4 and argv[1] == "verify":
        return cmd_verify(int(argv[2]), int(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
