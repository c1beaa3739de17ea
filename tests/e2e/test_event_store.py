"""End-to-end tests of how events are stored (queue/queue_events.c): each
event's JSON once, in mg:event:{id}, with the message's list and the webhook
feed holding ids; every read path (GET /v1/messages/{id}, GET /v1/events,
webhooks) showing the same JSON; data written by the previous version (lists
and feed entries holding the JSON itself) still read; Lua scripts called by
SHA1, surviving an operator's SCRIPT FLUSH without losing or half-writing
anything; and the transient message statuses (queued, scheduled, sending)
answered without an index of their own."""

import json
import time
from datetime import datetime, timedelta, timezone

from conftest import wait_until
from test_events import msg, page_all, wait_terminal
from test_webhooks import ALL_TYPES, HOOK_ENV, create_hook, receiver, settled  # noqa: F401 (receiver: fixture)


def text(v):
    return v.decode() if isinstance(v, bytes) else v


def holders(redis, needle):
    """Every key whose value contains the bytes needle, whatever its type."""
    found = []
    for key in redis.command("KEYS", "*"):
        key = text(key)
        kind = text(redis.command("TYPE", key))
        if kind == "string":
            vals = [redis.command("GET", key)]
        elif kind == "list":
            vals = redis.command("LRANGE", key, 0, -1)
        elif kind == "hash":
            vals = redis.command("HGETALL", key)
        elif kind == "set":
            vals = redis.command("SMEMBERS", key)
        elif kind == "zset":
            vals = redis.command("ZRANGE", key, 0, -1)
        elif kind == "stream":
            vals = [json.dumps(redis.command("XRANGE", key, "-", "+"), default=text).encode()]
        else:
            vals = []
        if any(needle in (v if isinstance(v, bytes) else str(v).encode()) for v in vals):
            found.append(key)
    return found


def test_event_json_stored_once_and_read_the_same_everywhere(relay, mailgate, api_key, redis, receiver):  # noqa: F811
    rcv = receiver()
    mg = mailgate(relay(name="relay1"), env=HOOK_ENV)
    c = mg.client(api_key("acme"))
    create_hook(c, rcv.url + "/hooks", ALL_TYPES)
    mid = c.send_ok(msg(["one@example.com", "two@example.com"], tags=["t"], metadata={"k": "v"}))["id"]
    wait_terminal(c, [mid])
    detail = c.message(mid)["events"]
    assert sorted(e["type"] for e in detail) == ["delivered", "delivered", "queued", "queued"]
    ids = [e["id"] for e in detail]

    # the message's list holds the ids, in order; the JSON is in mg:event:{id}
    assert [text(x) for x in redis.command("LRANGE", "mg:msg:%s:events" % mid, 0, -1)] == ids
    stored = {i: redis.command("GET", "mg:event:" + i) for i in ids}
    assert all(stored.values())

    # every read path shows that JSON, and the webhook gets its exact bytes
    want = {e["id"]: e for e in detail}
    assert {i: json.loads(b) for i, b in stored.items()} == want
    assert {e["id"]: e for e in c.events(message_id=mid)["data"]} == want
    log = {e["id"]: e for e in c.events(limit=1000)["data"]}
    assert {i: log[i] for i in ids} == want
    for typ in ("queued", "delivered"):
        assert {e["id"]: e for e in c.events(type=typ)["data"]} == {i: e for i, e in want.items() if e["type"] == typ}
    reqs = rcv.wait_requests(4)
    assert {r["hdrs"]["mailgate-event-id"]: r["body"] for r in reqs} == stored
    wait_until(lambda: settled(redis), timeout=30, desc="the feed drained")

    # stored once: no other key holds an event's JSON (nor did the feed:
    # its entries are gone, and what it carried was the id)
    for i, body in stored.items():
        assert holders(redis, body) == ["mg:event:" + i]


def test_events_of_a_tenant_without_webhooks_skip_the_feed(relay, mailgate, api_key, redis):
    mg = mailgate(relay(name="relay1"))
    c = mg.client(api_key("acme"))
    mid = c.send_ok(msg(["nohook@example.com"]))["id"]
    wait_terminal(c, [mid])
    assert redis.command("XLEN", "mg:feed") == 0
    assert len(c.message(mid)["events"]) == 2


def test_data_written_by_the_previous_version_is_read(relay, mailgate, api_key, redis, receiver):  # noqa: F811
    rcv = receiver()
    mg = mailgate(relay(name="relay1"), env=HOOK_ENV)
    c = mg.client(api_key("acme"))
    create_hook(c, rcv.url + "/hooks", ["queued", "delivered"])

    # a message as the previous version stored it: its list holds the JSON
    now = int(time.time() * 1000)
    mid = "%012x%020x" % (now - 5000, 0xabc)
    evs = []
    for n, typ in enumerate(("queued", "delivered", "opened")):
        ms = now - 5000 + n
        ev_id = "ev_%012x%020x" % (ms, 0xabc + n)
        ts = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        evs.append(json.dumps({"id": ev_id, "type": typ, "created_at": ts, "message_id": mid,
                               "recipient": "old@example.com", "tags": [], "metadata": {}},
                              separators=(",", ":")))
    redis.command("HSET", "mg:msg:" + mid, "tenant", "acme", "created_at", str(now - 5000),
                  "from", "Acme <noreply@acme.example>", "subject", "old", "tags", "[]", "metadata", "{}",
                  "mail_from", "noreply@acme.example", "rcpts", '["old@example.com"]', "st", "delivered")
    redis.command("HSET", "mg:msg:%s:rcpt" % mid, "old@example.com",
                  '{"status":"delivered","attempts":1,"last_reply":"250 ok"}')
    redis.command("RPUSH", "mg:msg:%s:events" % mid, evs[0], evs[1])
    for e in evs:
        ev = json.loads(e)
        redis.command("SET", "mg:event:" + ev["id"], e)
        for key in ("mg:evi:acme", "mg:evi:acme:type:" + ev["type"], "mg:evi:acme:rcpt:old@example.com"):
            redis.command("ZADD", key, 0, ev["id"])
    redis.command("ZADD", "mg:tenant:acme:messages", 0, mid)
    # ... and an event this version appended to that list: an id
    redis.command("RPUSH", "mg:msg:%s:events" % mid, json.loads(evs[2])["id"])

    want = [json.loads(e) for e in evs]
    assert c.message(mid)["events"] == want
    assert c.events(message_id=mid)["data"] == want[::-1]
    got = json.loads(json.dumps(c.get("/v1/messages", params={"limit": 10}).json()["data"]))
    assert mid in [m["id"] for m in got]

    # feed entries: one holding the JSON (previous version) is delivered
    # with exactly those bytes; one naming an event whose body is gone
    # (retention) is only acknowledged
    gone = "ev_%012x%020x" % (now, 0xdead)
    redis.command("XADD", "mg:feed", "*", "t", "acme", "e", evs[1])
    redis.command("XADD", "mg:feed", "*", "t", "acme", "e", gone)
    reqs = rcv.wait_requests(1)
    wait_until(lambda: settled(redis), timeout=30, desc="both feed entries handled")
    time.sleep(0.5)
    reqs = rcv.requests()
    assert [(r["hdrs"]["mailgate-event-id"], r["body"]) for r in reqs] == [(want[1]["id"], evs[1].encode())]
    assert not [x for x in mg.logs() if x.get("event") == "feed_entry_malformed"]


def test_script_flush_loses_nothing(relay, mailgate, api_key, redis):
    """After an operator's SCRIPT FLUSH the scripts are loaded again; a
    send or a delivery caught in between still records everything: every
    accepted message has its queued and delivered events, its status and
    its stats."""
    mg = mailgate(relay(name="relay1"))
    c = mg.client(api_key("acme"))
    c.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["delivered"]})  # a script too
    ids = []
    for rnd in range(6):
        assert text(redis.command("SCRIPT", "FLUSH")) == "OK"
        ids += [c.send_ok(msg(["f%d-%d@example.com" % (rnd, i)], tags=["flush"]))["id"] for i in range(3)]
        time.sleep(0.2)  # let some deliveries meet the flush of the next round
    wait_terminal(c, ids)
    for mid in ids:
        m = c.message(mid)
        assert m["status"] == "delivered", m
        assert [e["type"] for e in m["events"]] == ["queued", "delivered"], (mid, m["events"])
    got, _ = page_all(c, "/v1/events", {"type": "queued"}, 1000)
    assert {e["message_id"] for e in got} == set(ids) and len(got) == len(ids)
    got, _ = page_all(c, "/v1/messages", {"status": "delivered", "tag": "flush"}, 1000)
    assert {m["id"] for m in got} == set(ids)
    counts = c.get("/v1/stats", params={"tag": "flush"}).json()["totals"]["counts"]
    assert counts["queued"] == len(ids) and counts["delivered"] == len(ids), counts
    # the flush was met inside transactions, and repaired there
    assert [x for x in mg.logs() if x.get("event") == "redis_noscript" and "run again" in x.get("action", "")]


def test_transient_statuses_are_answered_without_their_own_index(relay, mailgate, api_key, redis):
    r = relay(name="relay1", rules=[{"cmd": "RCPT", "match": "later@example.com",
                                     "reply": "451 4.7.1 Try again later"}])
    mg = mailgate(r, env={"MAILGATE_RETRY_SCHEDULE": "1h"})
    c = mg.client(api_key("acme"))
    due = (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sched, delivered = [], []
    for i in range(4):
        sched.append(c.send_ok(msg(["s%d@example.com" % i], send_at=due, tags=["x"]))["id"])
        delivered.append(c.send_ok(msg(["d%d@example.com" % i], tags=["x"]))["id"])
    sending = c.send_ok(msg(["later@example.com", "ok@example.com"], tags=["x"]))["id"]
    wait_terminal(c, delivered)
    wait_until(lambda: c.message(sending)["status"] == "sending", timeout=30, desc="one recipient deferred")

    for status, want in (("scheduled", sched), ("sending", [sending]), ("queued", []),
                         ("delivered", delivered)):
        for q in ({"status": status}, {"status": status, "tag": "x"}):
            got, _ = page_all(c, "/v1/messages", q, 1)
            assert [m["id"] for m in got] == sorted(want, reverse=True), q
            assert all(m["status"] == status for m in got)
    got, _ = page_all(c, "/v1/messages", {"status": "scheduled", "recipient": "S2@example.com"}, 5)
    assert [m["id"] for m in got] == [sched[2]]
    since = datetime.fromtimestamp(int(sched[2][:12], 16) / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    got, _ = page_all(c, "/v1/messages", {"status": "scheduled", "since": since[:-3] + "Z"}, 1)
    assert [m["id"] for m in got] == sorted(sched[2:], reverse=True)

    # no index, and no "st" field, for a transient status
    for s in ("queued", "scheduled", "sending"):
        assert redis.command("EXISTS", "mg:msgi:acme:status:" + s) == 0, s
    assert redis.command("HGET", "mg:msg:" + sched[0], "st") is None
    assert text(redis.command("HGET", "mg:msg:" + delivered[0], "st")) == "delivered"
    # an entry the previous version left in a transient index is not read
    redis.command("ZADD", "mg:msgi:acme:status:queued", 0, delivered[0])
    assert page_all(c, "/v1/messages", {"status": "queued"}, 10)[0] == []
    # leaving a transient status for a final one indexes it
    assert c.delete("/v1/messages/" + sched[0]).status_code == 204
    got, _ = page_all(c, "/v1/messages", {"status": "cancelled"}, 10)
    assert [m["id"] for m in got] == [sched[0]]
    got, _ = page_all(c, "/v1/messages", {"status": "scheduled"}, 10)
    assert [m["id"] for m in got] == sorted(sched[1:], reverse=True)
