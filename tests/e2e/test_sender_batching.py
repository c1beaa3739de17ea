"""End-to-end tests of the sender's batches (smtp_deliver.c run_batch,
queue_jobs.c queue_jobs_finish): the jobs of one read are loaded in one
Redis round trip, and their outcomes are recorded in one more, one
MULTI/EXEC per job, each written as soon as the job is done, and the
replies are read in one wait at the end, with the next read queued last.

  - a backlog drained through one connection (pool=1) into smtp-sink: every
    message is delivered exactly once and recorded "delivered", with far
    fewer Redis round trips than the three per message (read, load,
    record) a sender made without batches: the worker thread's blocking
    waits are counted (its voluntary context switches);
  - outcomes that differ within one batch (delivered, bounced with and
    without suppression, deferred and then retried) are each recorded for
    its own job;
  - the jobs of one message with personal copies, queued while no sender
    runs and so read together: each copy is sent once, and the bodies go
    and the message leaves mg:open when the last recipient is done (a later
    job of the message in a batch sees the outcomes of the earlier ones
    before they are recorded).

The sender runs alone (`serve --role sender`), started once its jobs are
queued."""

import json
from pathlib import Path

import requests

from conftest import MAILGATE_BIN, Proc, base_env, free_port, json_of, wait_until
from preload import preload
from test_scale import message_ids_in, start_sink


def redis_stats(redis):
    """Redis's read events (about one per client round trip) and the calls
    of each command so far."""
    out = {}
    for line in redis.command("INFO", "all").decode().splitlines():
        k, sep, v = line.partition(":")
        if not sep:
            continue
        if k in ("total_reads_processed", "total_commands_processed"):
            out[k] = int(v)
        elif k.startswith("cmdstat_"):
            out[k[len("cmdstat_"):]] = int(v.split(",")[0].split("=")[1])
    return out


def start_role(redis, tmp_path, role, relays, name, extra=None):
    """mailgate serve --role ROLE; for the API, wait for /readyz."""
    env = dict(base_env(redis.url), MAILGATE_RELAYS=relays, MAILGATE_HELO_NAME="mailgate.test",
               MAILGATE_LOG_LEVEL="info", MAILGATE_RETRY_SCHEDULE="1s,2s")
    port = None
    if role == "api":
        port = free_port()
        env["MAILGATE_LISTEN"] = "127.0.0.1:%d" % port
    env.update(extra or {})
    p = Proc([MAILGATE_BIN, "serve", "--role", role], tmp_path / ("%s.log" % name), env=env)
    if port:
        def ready():
            assert p.alive(), "mailgate %s exited" % name
            try:
                return requests.get("http://127.0.0.1:%d/readyz" % port, timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_until(ready, timeout=20, desc="mailgate %s ready" % name)
    return p, port


def rcpt_state(redis, mid, rcpt):
    raw = redis.command("HGET", "mg:msg:%s:rcpt" % mid, rcpt)
    return json.loads(raw) if raw else None


def event_types(redis, mid):
    """Types of the message's events, oldest first (the list holds each
    event's JSON, or its id with the JSON in mg:event:{id})."""
    out = []
    for e in redis.command("LRANGE", "mg:msg:%s:events" % mid, 0, -1):
        try:
            ev = json.loads(e)
        except ValueError:
            ev = None
        if not isinstance(ev, dict):
            ev = json.loads(redis.command("GET", b"mg:event:" + e))
        out.append(ev["type"])
    return out


def message_ids(relay):
    return [str(m.msg["Message-ID"]).strip("<>").split("@", 1)[0] for m in relay.messages()]


def open_count(redis):
    return int(redis.command("ZCARD", "mg:open"))


def sender_waits(pid):
    """Times the sender's worker threads (named mg-send-N) blocked so far:
    voluntary context switches, one per wait for a Redis or SMTP reply
    that had not arrived yet."""
    total, threads = 0, 0
    for task in Path("/proc/%d/task" % pid).iterdir():
        try:
            if not (task / "comm").read_text().startswith("mg-send-"):
                continue
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
                    threads += 1
        except OSError:
            continue
    assert threads, "no mg-send-* thread in process %d" % pid
    return total


def test_backlog_is_delivered_once_with_few_round_trips(redis, tmp_path):
    # smtp-sink answers in microseconds, so batches are as large as they go
    n = 200
    sink, sport, sdir = start_sink(tmp_path)
    ids = preload(redis.port, "acme", n)
    before = redis_stats(redis)
    sender, _ = start_role(redis, tmp_path, "sender", "smtp://127.0.0.1:%d?tls=none&pool=1&name=sink" % sport,
                           "sender")
    try:
        wait_until(lambda: open_count(redis) == 0, timeout=60, interval=0.1, desc="every message is done")
        waits = sender_waits(sender.pid)
        after = redis_stats(redis)
    finally:
        assert sender.stop() == 0
        sink.stop()
    got = message_ids_in(sdir)
    assert sorted(got) == sorted(ids), "not every message exactly once: %d sent, %d distinct, %d expected" % (
        len(got), len(set(got)), n)
    for i, mid in enumerate(ids):
        st = rcpt_state(redis, mid, "user%d@example.com" % i)
        assert st and st["status"] == "delivered" and st["attempts"] == 1, (mid, st)
        assert event_types(redis, mid) == ["delivered"], mid
    assert int(redis.command("XLEN", "mg:jobs:acme")) == 0
    assert redis.command("XPENDING", "mg:jobs:acme", "senders")[0] == 0
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # one MULTI/EXEC per job, as before: a job's outcome is its own transaction
    assert d.get("exec", 0) == n and d.get("hgetall", 0) == n, d
    # Without batches the worker waited 5 times per message: 3 Redis round
    # trips (read, load, record) and 2 SMTP ones (MAIL/RCPT/DATA, the body).
    # Batched, the outcomes are written without a wait and the worker waits
    # on Redis twice per batch (load; replies + next read): about 2 + 2/16.
    assert waits < 3 * n, "the worker blocked %d times for %d messages" % (waits, n)


def test_outcomes_that_differ_within_a_batch_are_each_recorded(relay, redis, tmp_path):
    # A sender's first read takes 4 jobs: user0..user3 share the first batch
    # (delivered, bounced, bounced, deferred), user5 a later one.
    rules = [{"cmd": "RCPT", "match": "user1@example.com", "reply": "550 5.1.1 No such user"},
             {"cmd": "RCPT", "match": "user2@example.com", "reply": "550 5.7.1 Policy says no"},
             {"cmd": "RCPT", "match": "user3@example.com", "reply": "451 4.2.0 Try again", "times": 1},
             {"cmd": "RCPT", "match": "user5@example.com", "reply": "550 5.1.1 No such user"}]
    r = relay(name="relay1", params={"pool": "1"}, rules=rules)
    n = 16
    ids = preload(redis.port, "acme", n)
    sender, _ = start_role(redis, tmp_path, "sender", r.url, "sender")
    try:
        # user3 is retried after the 1 s of MAILGATE_RETRY_SCHEDULE
        wait_until(lambda: open_count(redis) == 0, timeout=30, interval=0.1, desc="every message is done")
    finally:
        assert sender.stop() == 0
    want = {1: ("bounced", 1, ["bounced"]), 2: ("bounced", 1, ["bounced"]),
            3: ("delivered", 2, ["deferred", "delivered"]), 5: ("bounced", 1, ["bounced"])}
    for i, mid in enumerate(ids):
        status, attempts, evs = want.get(i, ("delivered", 1, ["delivered"]))
        st = rcpt_state(redis, mid, "user%d@example.com" % i)
        assert st and (st["status"], st["attempts"]) == (status, attempts), (i, st)
        assert event_types(redis, mid) == evs, i
        assert redis.command("EXISTS", "mg:msg:%s:body" % mid) == 0, i
    assert "550 5.1.1" in rcpt_state(redis, ids[1], "user1@example.com")["last_reply"]
    # a bad mailbox (5.1.x) is suppressed, a policy block (5.7.x) is not
    supp = redis.command("HKEYS", "mg:supp:acme")
    assert sorted(k.decode() for k in supp) == ["user1@example.com", "user5@example.com"]
    got = message_ids(r)
    assert sorted(got) == sorted(ids[i] for i in range(n) if i not in (1, 2, 5))
    assert int(redis.command("ZCARD", "mg:delayed")) == 0
    assert redis.command("XPENDING", "mg:jobs:acme", "senders")[0] == 0


def test_personal_copies_read_together_remove_every_body(relay, redis, tmp_path, api_key):
    rcpts = ["r%d@example.org" % i for i in range(6)]
    r = relay(name="relay1", params={"pool": "1"},
              rules=[{"cmd": "RCPT", "match": "r2@example.org", "reply": "550 5.1.1 No such user"}])
    api, port = start_role(redis, tmp_path, "api", r.url, "api")
    sender = None
    try:
        key = api_key("acme")
        resp = requests.post("http://127.0.0.1:%d/v1/messages" % port, headers={"Authorization": "Bearer " + key},
                             json={"from": "news@acme.example", "to": rcpts, "subject": "copies",
                                   "html": "<p><a href=\"https://x.example/r\">r</a></p>", "track_clicks": True},
                             timeout=20)
        assert resp.status_code == 202, resp.text
        mid = json_of(resp)["id"]
        bodies = sorted(k.decode() for k in redis.command("KEYS", "mg:msg:%s:body*" % mid))
        assert bodies == sorted("mg:msg:%s:body:%d" % (mid, i) for i in range(1, 7))
        sender, _ = start_role(redis, tmp_path, "sender", r.url, "sender")
        wait_until(lambda: all((rcpt_state(redis, mid, a) or {}).get("status") in ("delivered", "bounced")
                               for a in rcpts), timeout=30, desc="every recipient is done")
        wait_until(lambda: redis.command("KEYS", "mg:msg:%s:body*" % mid) == [], timeout=5,
                   desc="every body is removed")
        assert redis.command("ZSCORE", "mg:open", mid) is None
        for a in rcpts:
            st = rcpt_state(redis, mid, a)
            assert (st["status"], st["attempts"]) == ("bounced" if a == "r2@example.org" else "delivered", 1), (a, st)
        got = sorted(m.rcpt_tos[0] for m in r.messages())
        assert got == sorted(a for a in rcpts if a != "r2@example.org")
        m = requests.get("http://127.0.0.1:%d/v1/messages/%s" % (port, mid),
                         headers={"Authorization": "Bearer " + key}, timeout=20).json()
        assert m["status"] == "partially_delivered", m
    finally:
        if sender:
            assert sender.stop() == 0
        api.stop()
