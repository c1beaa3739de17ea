"""End-to-end tests of queue semantics at scale (issue 6 points 1, 2, 5):
per-tenant fairness under a 20,000-message backlog, and crash recovery when
one of two senders is killed with SIGKILL mid-burst (XAUTOCLAIM takes over
its entries; nothing is lost; duplicates are bounded by what it had in
flight). The relays are Postfix's smtp-sink (fast) and aiosmtpd."""

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import MAILGATE_BIN, Proc, base_env, free_port, json_of, wait_until
from preload import preload


def start_sink(tmp_path, delay_ms=0):
    """smtp-sink on a free port, dumping every message into a directory."""
    port = free_port()
    d = tmp_path / "sink"
    d.mkdir(exist_ok=True)
    argv = ["/usr/sbin/smtp-sink", "-u", "root", "-R", str(d), "-d", "%M%S.", "127.0.0.1:%d" % port, "256"]
    if delay_ms:
        argv[1:1] = ["-w", str(max(1, delay_ms // 1000))]
    p = Proc(argv, tmp_path / "sink.log")
    wait_until(lambda: _accepts(port), desc="smtp-sink accepts")
    return p, port, d


def _accepts(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def start_mailgate(redis, tmp_path, relays, name, extra=None):
    port = free_port()
    env = dict(base_env(redis.url), MAILGATE_LISTEN="127.0.0.1:%d" % port, MAILGATE_RELAYS=relays,
               MAILGATE_HELO_NAME="mailgate.test", MAILGATE_LOG_LEVEL="warn", MAILGATE_RETRY_SCHEDULE="1s,2s")
    env.update(extra or {})
    p = Proc([MAILGATE_BIN, "serve"], tmp_path / ("%s.log" % name), env=env)
    import requests
    wait_until(lambda: _ready(requests, port), timeout=20, desc="mailgate %s ready" % name)
    return p, port


def _ready(requests, port):
    try:
        return requests.get("http://127.0.0.1:%d/readyz" % port, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def message_ids_in(d):
    """Message-IDs of every message smtp-sink dumped (one file each)."""
    ids = []
    for f in Path(d).iterdir():
        if not f.is_file():
            continue
        for line in f.read_bytes().split(b"\n")[:40]:
            if line.lower().startswith(b"message-id:"):
                ids.append(line.split(b"<", 1)[1].split(b"@", 1)[0].decode())
                break
    return ids


def test_fairness_one_tenant_backlog_does_not_hold_up_another(relay, redis, tmp_path, api_key):
    # A slow relay keeps tenant A's 20,000-message backlog in the queue.
    r = relay(rules=[{"cmd": "EOD", "match": "user", "reply": "250 2.0.0 OK", "delay_ms": 20}])
    preload(redis.port, "bulk", 20000)
    mg, port = start_mailgate(redis, tmp_path, r.url, "fair")
    try:
        key = api_key("small")
        import requests
        wait_until(lambda: len(r.messages()) >= 20, desc="the backlog is draining")
        t0 = time.monotonic()
        resp = requests.post("http://127.0.0.1:%d/v1/messages" % port, headers={"Authorization": "Bearer " + key},
                             json={"from": "s@small.example", "to": ["vip@example.org"], "subject": "now", "text": "x"})
        assert resp.status_code == 202, resp.text
        mid = json_of(resp)["id"]

        def delivered():
            m = requests.get("http://127.0.0.1:%d/v1/messages/%s" % (port, mid),
                             headers={"Authorization": "Bearer " + key}).json()
            return m["status"] == "delivered"
        wait_until(delivered, timeout=10, interval=0.02, desc="the small tenant's message is delivered")
        took = time.monotonic() - t0
        backlog = int(redis.command("XLEN", "mg:jobs:bulk"))
        assert backlog > 15000, "the backlog drained too fast for the test to mean anything"
        assert took < 2.0, "took %.2fs behind a backlog of %d" % (took, backlog)
    finally:
        mg.stop()


def test_sigkill_one_of_two_senders_loses_nothing(redis, tmp_path):
    n = 5000
    sink, sport, sdir = start_sink(tmp_path)
    relays = "smtp://127.0.0.1:%d?tls=none&pool=4&name=sink" % sport
    extra = {"MAILGATE_CLAIM_TIMEOUT": "2s"}
    ids = set(preload(redis.port, "acme", n))
    a, _ = start_mailgate(redis, tmp_path, relays, "a", dict(extra))
    b, _ = start_mailgate(redis, tmp_path, relays, "b", dict(extra))
    try:
        wait_until(lambda: len(list(sdir.iterdir())) >= n // 5, timeout=60, desc="a fifth delivered")
        os.kill(a.pid, signal.SIGKILL)
        a.popen.wait(timeout=10)

        def all_done():
            return int(redis.command("ZCARD", "mg:open")) == 0
        wait_until(all_done, timeout=120, interval=0.2, desc="every message reaches a terminal state")
        got = message_ids_in(sdir)
        missing = ids - set(got)
        assert not missing, "%d messages never reached the relay" % len(missing)
        dups = len(got) - len(set(got))
        # At most the killed sender's in-flight transactions: pool=4 workers.
        assert dups <= 4, "%d duplicates" % dups
        statuses = redis.command("HGET", "mg:msg:%s:rcpt" % sorted(ids)[0], "user0@example.com")
        assert statuses is None or b"delivered" in statuses
    finally:
        b.stop()
        a.stop()
        sink.stop()


def test_poison_job_is_dead_lettered(redis, tmp_path, relay):
    """A job taken over from dead senders too often (here: its claim count
    says 3 already, and a 'ghost' consumer holds it) goes to mg:dead, its
    recipient bounces soft with reason internal_error, and /metrics counts
    it — instead of killing sender after sender."""
    [mid] = preload(redis.port, "acme", 1)
    redis.command("XGROUP", "CREATE", "mg:jobs:acme", "senders", "0", "MKSTREAM")
    got = redis.command("XREADGROUP", "GROUP", "senders", "ghost", "COUNT", "1", "STREAMS", "mg:jobs:acme", ">")
    entry = got[0][1][0][0]
    entry = entry.decode() if isinstance(entry, bytes) else entry
    redis.command("HSET", "mg:claims", "acme " + entry, "3")
    r = relay()
    mg, port = start_mailgate(redis, tmp_path, r.url, "poison", {"MAILGATE_CLAIM_TIMEOUT": "1s"})
    try:
        wait_until(lambda: int(redis.command("XLEN", "mg:dead")) == 1, timeout=30, desc="the job is dead-lettered")
        state = redis.command("HGET", "mg:msg:%s:rcpt" % mid, "user0@example.com")
        state = state.decode() if isinstance(state, bytes) else state
        assert '"bounced"' in state and "internal_error" in state, state
        import requests
        # the message's list holds event ids; each JSON is mg:event:{id}
        events = [redis.command("GET", b"mg:event:" + (e if isinstance(e, bytes) else e.encode()))
                  for e in redis.command("LRANGE", "mg:msg:%s:events" % mid, "0", "-1")]
        assert any(b"internal_error" in (e if isinstance(e, bytes) else e.encode()) for e in events), events
        text = requests.get("http://127.0.0.1:%d/metrics" % port, timeout=10).text
        assert "mailgate_queue_dead 1" in text
        assert int(redis.command("XLEN", "mg:jobs:acme")) == 0
        assert r.messages() == []
    finally:
        mg.stop()
