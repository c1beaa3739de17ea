"""End-to-end tests of the event store and the log queries (issue 5 points
1 and 2, and point 7's "pagination across 2,500 events with no duplicates
and no gaps" and "a tenant that cannot see another tenant's events").

Events come through the real pipeline (the API, the job stream, a sender,
a real SMTP relay); Redis is read directly only to check what the API
cannot show: TTLs, trimmed index entries, and that replaying the
recording of an event changes nothing. Expected sets are built from
GET /v1/messages/{id} (each message's own event list, a structure apart
from the tenant's indexes), so the paging is checked against a second
source, not against itself.
"""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import DELIVERY_TIMEOUT, json_of, redis_monitor, wait_until

FROM = "Acme <noreply@acme.example>"
# Each address bounces (550 5.1.1) and is then suppressed; separate
# addresses keep one message's bounce from suppressing another's recipient.
BOUNCES = ["nobody%d@bounce.example" % i for i in range(8)]
BOUNCE = BOUNCES[0]
BOUNCE_RULES = [{"cmd": "RCPT", "match": b, "reply": "550 5.1.1 No such user"} for b in BOUNCES]


# ---------------------------------------------------------------- helpers

def rfc3339(ms):
    """ms since the epoch as RFC 3339 UTC, exact to the ms (no float rounding)."""
    whole = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return whole.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def id_ms(ev_id):
    """The creation time inside an event id ("ev_" + 12 hex ms + random)."""
    return int(ev_id[3:15], 16)


def msg(to, **kw):
    m = {"from": FROM, "to": to, "subject": "events test", "text": "hello"}
    m.update(kw)
    return m


def send_batch(c, messages):
    ids = []
    for i in range(0, len(messages), 500):
        r = c.post("/v1/messages/batch", json={"messages": messages[i:i + 500]})
        assert r.status_code == 202, "batch: %d %s" % (r.status_code, r.text[:500])
        res = json_of(r)["results"]
        assert all("id" in x for x in res), res[:3]
        ids += [x["id"] for x in res]
    return ids


def wait_terminal(c, ids, timeout=120):
    """Wait until every message in ids is terminal (one list query a poll)."""
    want = set(ids)

    def done():
        seen = set()
        for status in ("delivered", "partially_delivered", "bounced", "suppressed", "cancelled"):
            seen |= {m["id"] for m in page_all(c, "/v1/messages", {"status": status}, 1000)[0]}
        return want <= seen
    wait_until(done, timeout=timeout, desc="%d messages to be terminal" % len(want))


def page_all(c, path, params, limit, between=None, max_pages=10000):
    """Follow next_cursor to the end; returns (items, pages). between(n) is
    called after page n (to make new events arrive while paging)."""
    items, pages, cursor = [], 0, None
    while True:
        q = dict(params, limit=limit)
        if cursor:
            q["cursor"] = cursor
        r = c.get(path, params=q)
        assert r.status_code == 200, "GET %s %r: %d %s" % (path, q, r.status_code, r.text[:500])
        body = json_of(r)
        assert len(body["data"]) <= limit
        items += body["data"]
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            return items, pages
        assert pages < max_pages, "paging does not end"
        if between:
            between(pages)


def events_of(c, mids):
    """Every event of these messages, from GET /v1/messages/{id}: {id: event}."""
    out = {}
    for mid in mids:
        for ev in c.message(mid)["events"]:
            assert ev["id"] not in out, "event %s twice on its message" % ev["id"]
            out[ev["id"]] = ev
    return out


def assert_newest_first(items):
    ids = [x["id"] for x in items]
    assert ids == sorted(ids, reverse=True), "not newest first"
    assert len(ids) == len(set(ids)), "duplicates"


@pytest.fixture
def acme(relay, mailgate, api_key):
    r = relay(name="relay1", rules=BOUNCE_RULES)
    mg = mailgate(r)
    return mg.client(api_key("acme"))


# ---------------------------------------------------------------- paging

def test_pagination_2500_events_no_duplicates_no_gaps(acme):
    """2,500 events (250 messages to 5 recipients: 5 queued + 5 delivered
    each), paged with limit 100, 37 and 1000 while new mail keeps arriving
    between pages: every event that existed at the first page comes back
    exactly once, newest first, and none of the newer ones slips in."""
    c = acme
    rcpts = ["r%d@example.com" % k for k in range(5)]
    mids = send_batch(c, [msg(rcpts, tags=["bulk"]) for _ in range(250)])
    wait_terminal(c, mids)
    expected = events_of(c, mids)
    assert len(expected) == 2500
    extra = []

    def more(n):
        # a new message (5 events at once) and its deliveries arrive while paging
        extra.append(c.send_ok(msg(rcpts[:2] + ["late%d@example.com" % n]))["id"])

    for limit in (100, 37, 1000):
        got, pages = page_all(c, "/v1/events", {}, limit, between=more)
        assert_newest_first(got)
        ids = [e["id"] for e in got]
        missing = set(expected) - set(ids)
        unexpected = set(ids) - set(expected)
        assert not missing, "gaps (limit %d): %d events missing" % (limit, len(missing))
        assert not unexpected, "events newer than the first page slipped in (limit %d)" % limit
        assert len(ids) == len(expected)
        assert pages == -(-len(expected) // limit) or pages == -(-len(expected) // limit) + 1
        times = [e["created_at"] for e in got]
        assert times == sorted(times, reverse=True)
        # the next run must also see what arrived during this one
        wait_terminal(c, extra)
        expected = events_of(c, mids + extra)


def test_event_filters(acme):
    c = acme
    a = c.send_ok(msg(["Ann@Example.com", "bob@example.com"], tags=["t1"]))["id"]
    b = c.send_ok(msg(["ann@example.com", BOUNCE]))["id"]
    wait_terminal(c, [a, b])
    time.sleep(0.05)
    cut_ms = int(time.time() * 1000)
    time.sleep(0.05)
    d = c.send_ok(msg(["carol@example.com"]))["id"]
    wait_terminal(c, [d])
    every = events_of(c, [a, b, d])

    # type
    for t in ("queued", "delivered", "bounced"):
        got, _ = page_all(c, "/v1/events", {"type": t}, 2)
        assert_newest_first(got)
        assert {e["id"] for e in got} == {i for i, e in every.items() if e["type"] == t}, t
    assert c.events(type="cancelled")["data"] == []

    # recipient: case-insensitive, across messages
    got, _ = page_all(c, "/v1/events", {"recipient": "ANN@example.COM"}, 1)
    assert_newest_first(got)
    assert {e["id"] for e in got} == {i for i, e in every.items() if e["recipient"].lower() == "ann@example.com"}
    assert len(got) == 4

    # recipient and type together
    got = c.events(recipient="ann@example.com", type="delivered")["data"]
    assert len(got) == 2 and all(e["type"] == "delivered" for e in got)

    # message_id (paged one at a time), alone and with a type
    got, pages = page_all(c, "/v1/events", {"message_id": a}, 1)
    assert_newest_first(got)
    assert {e["id"] for e in got} == {i for i, e in every.items() if e["message_id"] == a}
    assert pages >= 4
    got = c.events(message_id=b, type="bounced")["data"]
    assert [e["recipient"] for e in got] == [BOUNCE]
    assert got[0]["bounce_type"] == "hard"

    # since / until split at a moment between the two rounds
    later = c.events(since=rfc3339(cut_ms), limit=1000)["data"]
    earlier = c.events(until=rfc3339(cut_ms), limit=1000)["data"]
    assert {e["id"] for e in later} == {i for i, e in every.items() if e["message_id"] == d}
    assert {e["id"] for e in earlier} == {i for i, e in every.items() if e["message_id"] != d}
    got, _ = page_all(c, "/v1/events", {"since": rfc3339(cut_ms), "type": "queued"}, 1)
    assert [e["message_id"] for e in got] == [d]
    assert c.events(since=rfc3339(cut_ms), until=rfc3339(cut_ms))["data"] == []

    # errors
    for q, field in (({"type": "exploded"}, "type"), ({"cursor": "garbage"}, "cursor"),
                     ({"cursor": "Zm9v"}, "cursor"), ({"limit": 1001}, "limit")):
        r = c.get("/v1/events", params=q)
        assert r.status_code == 422 and json_of(r)["error"]["field"] == field, (q, r.text)
    # a messages cursor is not an events cursor
    mc = json_of(c.get("/v1/messages", params={"limit": 1}))["next_cursor"]
    r = c.get("/v1/events", params={"cursor": mc})
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "cursor"


# ---------------------------------------------------------------- messages

def test_message_filters_status_tag_recipient(acme, redis):
    c = acme
    delivered = [c.send_ok(msg(["d%d@example.com" % i], tags=["a"]))["id"] for i in range(3)]
    bounced = c.send_ok(msg([BOUNCE], tags=["b"]))["id"]
    partial = c.send_ok(msg(["ok@example.com", BOUNCES[1]], tags=["a", "b"]))["id"]
    wait_terminal(c, delivered + [bounced, partial])
    # the bounce suppressed BOUNCE (5.1.1): the next send to it is suppressed
    suppressed = c.send_ok(msg([BOUNCE]))["id"]
    later = (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    scheduled = c.send_ok(msg(["Sched@Example.com"], send_at=later, tags=["a"]))["id"]
    cancelled = c.send_ok(msg(["cx@example.com"], send_at=later))["id"]
    assert c.delete("/v1/messages/" + cancelled).status_code == 204

    want = {
        "delivered": set(delivered), "bounced": {bounced}, "partially_delivered": {partial},
        "suppressed": {suppressed}, "scheduled": {scheduled}, "cancelled": {cancelled},
        "queued": set(), "sending": set(),
    }
    for status, ids in want.items():
        got, _ = page_all(c, "/v1/messages", {"status": status}, 2)
        assert_newest_first(got)
        assert {m["id"] for m in got} == ids, status
        assert all(m["status"] == status for m in got)
        assert all("events" not in m for m in got)

    everything = delivered + [bounced, partial, suppressed, scheduled, cancelled]
    got, pages = page_all(c, "/v1/messages", {}, 3)
    assert_newest_first(got)
    assert [m["id"] for m in got] == sorted(everything, reverse=True)
    assert pages >= 3

    got, _ = page_all(c, "/v1/messages", {"tag": "a"}, 1)
    assert {m["id"] for m in got} == set(delivered) | {partial, scheduled}
    got, _ = page_all(c, "/v1/messages", {"tag": "b"}, 1)
    assert {m["id"] for m in got} == {bounced, partial}
    got = json_of(c.get("/v1/messages", params={"tag": "a", "status": "delivered"}))["data"]
    assert {m["id"] for m in got} == set(delivered)
    got = json_of(c.get("/v1/messages", params={"tag": "b", "status": "partially_delivered"}))["data"]
    assert [m["id"] for m in got] == [partial]

    got, _ = page_all(c, "/v1/messages", {"recipient": BOUNCE.upper()}, 1)
    assert {m["id"] for m in got} == {bounced, suppressed}
    got = json_of(c.get("/v1/messages", params={"recipient": "sched@example.com"}))["data"]
    assert [m["id"] for m in got] == [scheduled]
    got = json_of(c.get("/v1/messages", params={"recipient": BOUNCE, "status": "bounced"}))["data"]
    assert [m["id"] for m in got] == [bounced]

    # since / until are on the creation time
    split = int(suppressed[:12], 16)  # message ids begin with their creation ms
    got = json_of(c.get("/v1/messages", params={"since": rfc3339(split), "limit": 100}))["data"]
    assert {m["id"] for m in got} == {suppressed, scheduled, cancelled}
    got = json_of(c.get("/v1/messages", params={"until": rfc3339(split)}))["data"]
    assert {m["id"] for m in got} == set(delivered) | {bounced, partial}

    # a status change moves a message between indexes: cancel the scheduled one
    assert c.delete("/v1/messages/" + scheduled).status_code == 204
    got = json_of(c.get("/v1/messages", params={"status": "scheduled"}))["data"]
    assert got == []
    got = json_of(c.get("/v1/messages", params={"status": "cancelled"}))["data"]
    assert {m["id"] for m in got} == {cancelled, scheduled}

    for q, field in (({"status": "weird"}, "status"), ({"cursor": "%%%"}, "cursor"),
                     ({"tag": "x" * 1100}, "tag")):
        r = c.get("/v1/messages", params=q)
        assert r.status_code == 422 and json_of(r)["error"]["field"] == field, (q, r.text)


# ---------------------------------------------------------------- stats

def test_stats_match_events(acme):
    c = acme
    ids = send_batch(c, [msg(["s%d@example.com" % i], tags=["promo"]) for i in range(6)] +
                     [msg(["s%d@example.com" % i, BOUNCES[i]]) for i in range(3)] +
                     [msg([BOUNCES[3]], tags=["promo"])])
    wait_terminal(c, ids)
    evs, _ = page_all(c, "/v1/events", {}, 1000)
    by_msg_tags = {m: json_of(c.get("/v1/messages/" + m))["tags"] for m in ids}

    def expect(step_ms, tag=None):
        out = {}
        for e in evs:
            if tag and tag not in by_msg_tags[e["message_id"]]:
                continue
            start = id_ms(e["id"]) // step_ms * step_ms
            out.setdefault(start, {}).setdefault(e["type"], 0)
            out[start][e["type"]] += 1
        return out

    now = int(time.time() * 1000)
    for interval, step in (("hour", 3600000), ("day", 86400000)):
        for tag in (None, "promo"):
            q = {"interval": interval, "since": rfc3339(now - 2 * step), "until": rfc3339(now + 1000)}
            if tag:
                q["tag"] = tag
            r = c.get("/v1/stats", params=q)
            assert r.status_code == 200, r.text
            body = json_of(r)
            assert body["interval"] == interval
            starts = [b["start"] for b in body["data"]]
            assert starts == sorted(starts) and len(starts) in (3, 4)
            want = expect(step, tag)
            for b in body["data"]:
                t = int(datetime.strptime(b["start"], "%Y-%m-%dT%H:%M:%S.%fZ")
                        .replace(tzinfo=timezone.utc).timestamp() * 1000)
                w = want.get(t, {})
                for typ in ("queued", "delivered", "bounced", "suppressed"):
                    assert b["counts"][typ] == w.get(typ, 0), (interval, tag, b["start"], typ, b["counts"], w)
                d, bo = b["counts"]["delivered"], b["counts"]["bounced"]
                assert abs(b["rates"]["delivery"] - (d / (d + bo) if d + bo else 0)) <= 0.0001
                assert abs(b["rates"]["bounce"] - (bo / (d + bo) if d + bo else 0)) <= 0.0001
                assert set(b["rates"]) == {"delivery", "bounce", "open", "click", "click_to_open"}
            tot = body["totals"]["counts"]
            assert tot["delivered"] == sum(w.get("delivered", 0) for w in want.values())
            assert tot["bounced"] == sum(w.get("bounced", 0) for w in want.values())
    # whole tenant: 6 + 3 delivered, 3 + 1 bounced
    body = json_of(c.get("/v1/stats"))
    assert body["interval"] == "day" and len(body["data"]) == 8  # the last 7 days, whole days
    assert body["totals"]["counts"]["delivered"] == 9
    assert body["totals"]["counts"]["bounced"] == 4
    assert abs(body["totals"]["rates"]["delivery"] - 9 / 13) <= 0.0001
    body = json_of(c.get("/v1/stats", params={"tag": "promo", "interval": "hour"}))
    assert body["totals"]["counts"]["delivered"] == 6 and body["totals"]["counts"]["bounced"] == 1
    assert json_of(c.get("/v1/stats", params={"tag": "nothing"}))["totals"]["counts"]["delivered"] == 0

    for q, field in (({"interval": "week"}, "interval"), ({"since": "yesterday"}, "since"),
                     ({"since": rfc3339(now - 40 * 86400000), "interval": "hour"}, "since"),
                     ({"since": rfc3339(now), "until": rfc3339(now - 1000)}, "until")):
        r = c.get("/v1/stats", params=q)
        assert r.status_code == 422 and json_of(r)["error"]["field"] == field, (q, r.text)


# ---------------------------------------------------------------- tenants

def test_tenant_cannot_see_another_tenants_events(relay, mailgate, api_key):
    r = relay(name="relay1")
    mg = mailgate(r)
    acme, beta = mg.client(api_key("acme")), mg.client(api_key("beta"))
    a_ids = [acme.send_ok(msg(["shared@example.com"], tags=["same"]))["id"] for _ in range(3)]
    b_id = beta.send_ok(msg(["shared@example.com"], tags=["same"]))["id"]
    wait_terminal(acme, a_ids)
    wait_terminal(beta, [b_id])

    b_events = beta.events(limit=1000)["data"]
    assert b_events and all(e["message_id"] == b_id for e in b_events)
    assert beta.events(message_id=a_ids[0])["data"] == []
    for q in ({"recipient": "shared@example.com"}, {"type": "delivered"}, {"type": "queued"}):
        got = beta.events(**q)["data"]
        assert got and all(e["message_id"] == b_id for e in got), q
    for q in ({}, {"tag": "same"}, {"recipient": "shared@example.com"}, {"status": "delivered"}):
        got = json_of(beta.get("/v1/messages", params=q))["data"]
        assert [m["id"] for m in got] == [b_id], q
    assert beta.get("/v1/messages/" + a_ids[0]).status_code == 404
    # acme's cursor only names a position: in beta's hands it shows beta's data
    cur = acme.events(limit=1)["next_cursor"]
    got = beta.events(cursor=cur, limit=1000)["data"]
    assert all(e["message_id"] == b_id for e in got)
    # stats are per tenant
    assert json_of(beta.get("/v1/stats"))["totals"]["counts"]["delivered"] == 1
    assert json_of(beta.get("/v1/stats", params={"tag": "same"}))["totals"]["counts"]["delivered"] == 1
    assert json_of(acme.get("/v1/stats"))["totals"]["counts"]["delivered"] == 3
    # a read key of beta sees nothing more either
    ro = mg.client(api_key("beta", "--scopes", "read"))
    assert {e["id"] for e in ro.events(limit=1000)["data"]} == {e["id"] for e in b_events}


# ---------------------------------------------------------------- store

def _monitor_args(line):
    """Arguments of a MONITOR line: '<ts> [db addr] "ARG" "ARG" ...' with
    Redis's escaping (\\", \\\\, \\n, \\r, \\t, \\a, \\b, \\xHH)."""
    s = line[line.index(b"] ") + 2:]
    args, i = [], 0
    esc = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b",
           ord('"'): b'"', ord("\\"): b"\\"}
    while i < len(s):
        assert s[i:i + 1] == b'"', s[i:i + 40]
        i += 1
        cur = bytearray()
        while s[i:i + 1] != b'"':
            if s[i:i + 1] == b"\\":
                nxt = s[i + 1]
                if nxt == ord("x"):
                    cur += bytes([int(s[i + 2:i + 4], 16)])
                    i += 4
                    continue
                cur += esc[nxt]
                i += 2
                continue
            cur += s[i:i + 1]
            i += 1
        args.append(bytes(cur))
        i += 2  # closing quote and the space
    return args


def test_event_recorded_once_when_replayed(relay, mailgate, api_key, redis):
    """A worker that replays a transaction re-runs the event's recording:
    the second run must change nothing (no second copy on the message, in
    the indexes, in the stats or in the webhook feed)."""
    mg = mailgate(relay(name="relay1"))
    c = mg.client(api_key("acme"))
    stop, lines = threading.Event(), []
    t = threading.Thread(target=redis_monitor, args=(redis.port, stop, lines), daemon=True)
    t.start()
    time.sleep(0.3)
    mid = c.send_ok(msg(["once@example.com"], tags=["x"]))["id"]
    wait_terminal(c, [mid])
    time.sleep(0.3)
    stop.set()
    # the event script, called by SHA1: EVALSHA sha 0 tenant message-id event-id ...
    evals = [a for a in (_monitor_args(l) for l in list(lines) if b'"EVALSHA"' in l or b'"evalsha"' in l)
             if a[0].upper() == b"EVALSHA" and len(a) > 5 and a[4] == mid.encode() and a[5].startswith(b"ev_")]
    assert len(evals) == 2, "expected the queued and delivered recordings, got %d" % len(evals)

    def snapshot():
        day = [k for k in redis.command("KEYS", "mg:stats:acme:*")]
        return (redis.command("LRANGE", "mg:msg:%s:events" % mid, 0, -1),
                redis.command("ZRANGE", "mg:evi:acme", 0, -1),
                redis.command("ZRANGE", "mg:evi:acme:type:delivered", 0, -1),
                redis.command("ZRANGE", "mg:evi:acme:rcpt:once@example.com", 0, -1),
                redis.command("XLEN", "mg:feed"),
                sorted((k, tuple(redis.command("HGETALL", k))) for k in day))
    before = snapshot()
    assert len(before[0]) == 2 and len(before[1]) == 2
    for a in evals:
        assert redis.command(*a) == 0  # a replay: nothing recorded
    assert snapshot() == before
    assert len(c.events(message_id=mid)["data"]) == 2
    assert len(c.message(mid)["events"]) == 2


def test_retention_ttls_and_trim_on_write(relay, mailgate, api_key, redis):
    day = 86400000
    mg = mailgate(relay(name="relay1"), env={"MAILGATE_RETENTION_DAYS": "1"})
    c = mg.client(api_key("acme"))
    mid = c.send_ok(msg(["Keep@Example.com"], tags=["r"]))["id"]
    wait_terminal(c, [mid])
    ev_ids = [e["id"] for e in c.message(mid)["events"]]
    for key in ("mg:msg:%s" % mid, "mg:msg:%s:rcpt" % mid, "mg:msg:%s:events" % mid,
                "mg:event:%s" % ev_ids[0], "mg:evi:acme", "mg:evi:acme:type:delivered",
                "mg:evi:acme:rcpt:keep@example.com", "mg:tenant:acme:messages",
                "mg:msgi:acme:tag:r", "mg:msgi:acme:rcpt:keep@example.com", "mg:msgi:acme:status:delivered"):
        ttl = redis.command("PTTL", key)
        assert 0 < ttl <= day, (key, ttl)
    stats = redis.command("KEYS", "mg:stats:acme:*")
    assert stats and all(0 < redis.command("PTTL", k) <= 2 * day for k in stats)
    assert redis.command("EXISTS", "mg:msg:%s:body" % mid) == 0  # terminal: the body is gone

    # old entries put straight into the indexes (2 days old, past the 1-day retention)
    old_ms = int(time.time() * 1000) - 2 * day
    old_ev = "ev_%012x%020x" % (old_ms, 7)
    old_msg = "%012x%020x" % (old_ms, 7)
    old_body = '{"id":"%s","type":"delivered","created_at":"%s","message_id":"%s","recipient":"keep@example.com",' \
               '"tags":[],"metadata":{}}' % (old_ev, rfc3339(old_ms), old_msg)
    redis.command("SET", "mg:event:" + old_ev, old_body)
    for key in ("mg:evi:acme", "mg:evi:acme:type:delivered", "mg:evi:acme:rcpt:keep@example.com"):
        redis.command("ZADD", key, 0, old_ev)
    for key in ("mg:tenant:acme:messages", "mg:msgi:acme:rcpt:keep@example.com",
                "mg:msgi:acme:status:delivered"):
        redis.command("ZADD", key, 0, old_msg)
    # not shown even before it is trimmed: queries never read below the retention
    assert old_ev not in {e["id"] for e in c.events(limit=1000)["data"]}
    assert old_ev not in {e["id"] for e in c.events(type="delivered", since=rfc3339(old_ms - 1000))["data"]}
    # the next write trims it (a process trims an index at most once a second)
    time.sleep(1.1)
    mid2 = c.send_ok(msg(["keep@example.com"]))["id"]
    wait_terminal(c, [mid2])
    for key in ("mg:evi:acme", "mg:evi:acme:type:delivered", "mg:evi:acme:rcpt:keep@example.com"):
        assert redis.command("ZSCORE", key, old_ev) is None, key
    for key in ("mg:tenant:acme:messages", "mg:msgi:acme:rcpt:keep@example.com",
                "mg:msgi:acme:status:delivered"):
        assert redis.command("ZSCORE", key, old_msg) is None, key
    assert redis.command("ZSCORE", "mg:evi:acme", ev_ids[-1]) is not None

    # a scheduled message outlives its wait: its keys last until the retention after it is due
    due = datetime.now(timezone.utc) + timedelta(days=3)
    sid = c.send_ok(msg(["later@example.com"], send_at=due.strftime("%Y-%m-%dT%H:%M:%SZ")))["id"]
    ttl = redis.command("PTTL", "mg:msg:%s" % sid)
    assert 3 * day < ttl <= 4 * day + 60000, ttl
    assert 3 * day < redis.command("PTTL", "mg:msg:%s:rcpt" % sid) <= 4 * day + 60000
