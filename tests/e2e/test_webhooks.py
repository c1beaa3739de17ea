"""End-to-end tests of webhooks (issue 5 point 6, and point 7's webhook
tests): the API (create, list, delete, deliveries, validation, tenant
isolation), the SSRF guard at creation and at connect time, and delivery
to a real HTTP receiver on loopback (tests/e2e/hook_receiver.py) that
checks every signature: a delivered, bounced and deferred lifecycle seen
the same way in the API and at the webhook, and a receiver that fails
three times before it succeeds."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from conftest import PYTHON, REPO, Proc, START_TIMEOUT, _attach_log, json_of, tail, wait_until

RECEIVER_PY = REPO / "tests" / "e2e" / "hook_receiver.py"
ALL_TYPES = ["queued", "delivered", "deferred", "bounced", "suppressed", "cancelled", "opened",
             "clicked", "unsubscribed"]
HOOK_ENV = {"MAILGATE_WEBHOOK_ALLOW_PRIVATE": "true",
            "MAILGATE_WEBHOOK_RETRY_SCHEDULE": "200ms,400ms,800ms"}
FROM = "Acme <noreply@acme.example>"


# ---------------------------------------------------------------- receiver

class Receiver:
    def __init__(self, proc, port, outdir):
        self.proc = proc
        self.port = port
        self.outdir = outdir
        self.url = "http://127.0.0.1:%d" % port

    def requests(self):
        """Recorded requests, oldest first; each with .headers (dict, lower-case
        names) and .body (raw bytes)."""
        out = []
        for p in sorted(self.outdir.glob("[0-9]*.json")):
            rec = json.loads(p.read_text(encoding="utf-8"))
            rec["body"] = base64.b64decode(rec["body_b64"])
            rec["hdrs"] = {k.lower(): v for k, v in rec["headers"]}
            out.append(rec)
        return out

    def wait_requests(self, n, path=None, timeout=30):
        def enough():
            got = [r for r in self.requests() if path is None or r["path"] == path]
            return len(got) >= n and got
        return wait_until(enough, timeout=timeout, desc="%d request(s) at the receiver%s"
                          % (n, " for " + path if path else ""))


@pytest.fixture
def receiver(tmp_path, request):
    started = []

    def start(fail_first=0):
        n = len(started) + 1
        base = tmp_path / ("receiver-%d" % n)
        outdir = base / "out"
        outdir.mkdir(parents=True)
        port_file = base / "port"
        proc = Proc([PYTHON, str(RECEIVER_PY), "--port-file", str(port_file), "--outdir", str(outdir),
                     "--fail-first", str(fail_first)], base / "receiver.stderr")
        started.append(proc)
        _attach_log(request, "hook receiver %d stderr" % n, base / "receiver.stderr")

        def ready():
            if not proc.alive():
                raise AssertionError("receiver exited: " + tail(base / "receiver.stderr"))
            return port_file.exists() and int(port_file.read_text().strip())

        port = wait_until(ready, timeout=START_TIMEOUT, desc="hook receiver to listen")
        return Receiver(proc, port, outdir)

    try:
        yield start
    finally:
        for p in started:
            p.stop()


# ---------------------------------------------------------------- helpers

def verify_signature(header, body, secret, tolerance=300):
    """What the README tells a receiver to do: recompute HMAC-SHA256 over
    "<t>.<raw body>" with the secret, compare in constant time, and refuse
    a t outside the replay window. Returns t."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    t = int(parts["t"])
    expected = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, parts["v1"]), "signature does not verify: %r" % header
    assert abs(time.time() - t) <= tolerance, "signature time %d outside the window" % t
    return t


def create_hook(c, url, events, status=201):
    r = c.post("/v1/webhooks", json={"url": url, "events": events})
    assert r.status_code == status, "create webhook: %d %s" % (r.status_code, r.text)
    return json_of(r)


def settled(redis):
    """Every feed entry fanned out and no delivery due, waiting or in flight."""
    return redis.command("XLEN", "mg:feed") == 0 and redis.command("ZCARD", "mg:wh:due") == 0


def api_events(c, mid):
    evs = c.events(message_id=mid, limit=1000)["data"]
    return {e["id"]: e for e in evs}


# ---------------------------------------------------------------- API

def test_create_list_delete_and_validation(relay, mailgate, api_key):
    mg = mailgate(relay(), env=HOOK_ENV)
    c = mg.client(api_key("acme"))
    h = create_hook(c, "http://127.0.0.1:9/hooks?x=1", ["delivered", "bounced", "delivered"])
    assert set(h) == {"id", "url", "events", "secret", "created_at"}, h
    assert h["id"].startswith("wh_") and h["url"] == "http://127.0.0.1:9/hooks?x=1"
    assert h["events"] == ["delivered", "bounced"]  # repeats dropped
    assert h["secret"].startswith("whsec_") and len(h["secret"]) == 6 + 64
    h2 = create_hook(c, "https://hooks.example/x", ALL_TYPES)
    assert h2["secret"] != h["secret"]

    listed = json_of(c.get("/v1/webhooks"))["data"]
    assert [x["id"] for x in listed] == [h["id"], h2["id"]]
    for x in listed:
        assert "secret" not in x and set(x) == {"id", "url", "events", "created_at"}
    # the secret is never written to the log
    assert h["secret"] not in mg.log_path.read_text()

    d = c.get("/v1/webhooks/%s/deliveries" % h["id"])
    assert d.status_code == 200 and json_of(d) == {"data": []}

    bad = [
        ({"events": ["delivered"]}, "url"),
        ({"url": 42, "events": ["delivered"]}, "url"),
        ({"url": "ftp://example.com/x", "events": ["delivered"]}, "url"),
        ({"url": "http://example.com/x\r\nX-Evil: 1", "events": ["delivered"]}, "url"),
        ({"url": "http://example.com/a b", "events": ["delivered"]}, "url"),
        ({"url": "http://example.com/" + "a" * 2048, "events": ["delivered"]}, "url"),
        ({"url": "http:///nohost", "events": ["delivered"]}, "url"),
        ({"url": "http://127.0.0.1/x"}, "events"),
        ({"url": "http://127.0.0.1/x", "events": []}, "events"),
        ({"url": "http://127.0.0.1/x", "events": "delivered"}, "events"),
        ({"url": "http://127.0.0.1/x", "events": ["delivered", "sent"]}, "events[1]"),
        ({"url": "http://127.0.0.1/x", "events": ["*"]}, "events[0]"),
        ({"url": "http://127.0.0.1/x", "events": ["delivered"], "secret": "mine"}, "secret"),
    ]
    for body, field in bad:
        r = c.post("/v1/webhooks", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert json_of(r)["error"]["field"] == field, (body, r.text)
    r = c.post("/v1/webhooks", data="{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text

    assert c.delete("/v1/webhooks/" + h["id"]).status_code == 204
    assert c.delete("/v1/webhooks/" + h["id"]).status_code == 404
    assert c.delete("/v1/webhooks/wh_nothing").status_code == 404
    assert c.get("/v1/webhooks/%s/deliveries" % h["id"]).status_code == 404
    assert [x["id"] for x in json_of(c.get("/v1/webhooks"))["data"]] == [h2["id"]]

    # the "webhooks" scope is required
    narrow = mg.client(api_key("acme", "--scopes", "send,read"))
    assert narrow.get("/v1/webhooks").status_code == 403
    assert narrow.post("/v1/webhooks", json={"url": "http://127.0.0.1/", "events": ["queued"]}).status_code == 403


def test_tenant_isolation(relay, mailgate, api_key):
    mg = mailgate(relay(), env=HOOK_ENV)
    a = mg.client(api_key("acme"))
    b = mg.client(api_key("globex"))
    h = create_hook(a, "http://127.0.0.1:9/a", ["delivered"])
    assert json_of(b.get("/v1/webhooks")) == {"data": []}
    assert b.delete("/v1/webhooks/" + h["id"]).status_code == 404
    assert b.get("/v1/webhooks/%s/deliveries" % h["id"]).status_code == 404
    assert [x["id"] for x in json_of(a.get("/v1/webhooks"))["data"]] == [h["id"]]
    assert a.get("/v1/webhooks/%s/deliveries" % h["id"]).status_code == 200


def test_ssrf_guard_refuses_private_urls(relay, mailgate, api_key):
    mg = mailgate(relay())  # MAILGATE_WEBHOOK_ALLOW_PRIVATE unset: guard on
    c = mg.client(api_key("acme"))
    for url in ["http://127.0.0.1/x", "http://127.0.0.1:8080/hook", "http://localhost/x", "http://[::1]/x",
                "http://10.1.2.3/x", "http://172.16.0.1/x", "http://192.168.1.1/x", "http://100.64.0.1/x",
                "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/x", "http://[fe80::1]/x",
                "http://[fc00::1]/x", "http://[::ffff:127.0.0.1]/x", "http://224.0.0.1/x",
                "https://2130706433/x"]:
        r = c.post("/v1/webhooks", json={"url": url, "events": ["delivered"]})
        assert r.status_code == 422, (url, r.status_code, r.text)
        assert json_of(r)["error"]["field"] == "url", (url, r.text)
    assert json_of(c.get("/v1/webhooks")) == {"data": []}


def test_ssrf_guard_at_connect_time(relay, mailgate, api_key, receiver, redis):
    """A webhook whose host later resolves to a private address (DNS
    rebinding) is not reached: the dispatcher vets the address it connects
    to. Simulated by storing a loopback webhook behind the API's back."""
    rcv = receiver()
    mg = mailgate(relay())  # guard on
    c = mg.client(api_key("acme"))
    hid = "wh_" + "ab" * 16
    rec = {"id": hid, "url": rcv.url + "/rebound", "events": ["queued"],
           "created_at": "2026-01-01T00:00:00.000Z", "secret": "whsec_" + "00" * 32}
    redis.command("HSET", "mg:wh:acme", hid, json.dumps(rec))
    c.send_ok({"from": FROM, "to": ["ann@example.com"], "subject": "x", "text": "x"})

    def refused():
        d = json_of(c.get("/v1/webhooks/%s/deliveries" % hid))["data"]
        return d and d
    d = wait_until(refused, timeout=20, desc="a refused attempt in the deliveries log")
    assert d[0]["status_code"] is None and "refused" in d[0]["error"] and "127.0.0.1" in d[0]["error"], d
    assert d[0]["attempt"] == 1 and d[0]["event_type"] == "queued"
    assert rcv.requests() == []


# ---------------------------------------------------------------- delivery

def test_lifecycle_seen_the_same_in_api_and_webhook(relay, mailgate, api_key, receiver, redis):
    rcv = receiver()
    r = relay(rules=[
        {"cmd": "RCPT", "match": "bad@example.com", "reply": "550 5.1.1 No such user"},
        {"cmd": "RCPT", "match": "slow@example.com", "reply": "451 4.3.0 Try again later", "times": 1}])
    mg = mailgate(r, env=dict(HOOK_ENV, MAILGATE_RETRY_SCHEDULE="1s,2s"))
    c = mg.client(api_key("acme"))
    all_hook = create_hook(c, rcv.url + "/all", ALL_TYPES)
    delivered_hook = create_hook(c, rcv.url + "/delivered", ["delivered"])
    bounced_hook = create_hook(c, rcv.url + "/bounced", ["bounced", "opened"])

    # another tenant's events never reach acme's webhooks
    other = mg.client(api_key("globex"))
    other.send_ok({"from": FROM, "to": ["zed@example.com"], "subject": "other", "text": "x"})

    mid = c.send_ok({"from": FROM, "to": ["ok@example.com", "bad@example.com", "slow@example.com"],
                     "subject": "Lifecycle", "text": "hello", "tags": ["t1"], "metadata": {"k": "v"}})["id"]
    m = c.wait_message(mid)
    assert m["status"] == "partially_delivered", m
    st = {x["email"]: x["status"] for x in m["recipients"]}
    assert st == {"ok@example.com": "delivered", "bad@example.com": "bounced", "slow@example.com": "delivered"}

    events = api_events(c, mid)
    types = sorted(e["type"] for e in events.values())
    assert types == sorted(["queued"] * 3 + ["delivered", "bounced", "deferred", "delivered"]), types
    wait_until(lambda: settled(redis) and len(rcv.requests()) >= len(events) + 2 + 1,
               timeout=30, desc="every webhook delivery done")
    reqs = rcv.requests()

    def check(path, secret, want_ids):
        got = [q for q in reqs if q["path"] == path]
        ids = [json.loads(q["body"])["id"] for q in got]
        assert sorted(ids) == sorted(want_ids), (path, ids, want_ids)  # exactly once each
        for q in got:
            assert q["method"] == "POST"
            assert q["hdrs"]["content-type"] == "application/json"
            assert q["hdrs"]["user-agent"] == "mailgate-webhooks"
            verify_signature(q["hdrs"]["mailgate-signature"], q["body"], secret)
            ev = json.loads(q["body"])
            assert ev == events[ev["id"]], "webhook body differs from the API's event"
            assert q["hdrs"]["mailgate-event-id"] == ev["id"]
        return got

    check("/all", all_hook["secret"], list(events))
    check("/delivered", delivered_hook["secret"],
          [i for i, e in events.items() if e["type"] == "delivered"])
    got = check("/bounced", bounced_hook["secret"], [i for i, e in events.items() if e["type"] == "bounced"])
    assert json.loads(got[0]["body"])["recipient"] == "bad@example.com"
    # a signature made with another webhook's secret does not verify
    with pytest.raises(AssertionError):
        verify_signature(got[0]["hdrs"]["mailgate-signature"], got[0]["body"], all_hook["secret"])
    # nor does one over a changed body
    with pytest.raises(AssertionError):
        verify_signature(got[0]["hdrs"]["mailgate-signature"], got[0]["body"] + b" ", bounced_hook["secret"])

    log = json_of(c.get("/v1/webhooks/%s/deliveries" % all_hook["id"]))["data"]
    assert sorted(x["event_id"] for x in log) == sorted(events)
    for x in log:
        assert x["attempt"] == 1 and x["status_code"] == 200 and x["error"] is None, x
        assert x["event_type"] == events[x["event_id"]]["type"]
        assert isinstance(x["duration_ms"], int) and x["created_at"]
    stamps = [x["created_at"] for x in log]
    assert stamps == sorted(stamps, reverse=True), "deliveries not newest first"


def test_receiver_fails_three_times_then_succeeds(relay, mailgate, api_key, receiver, redis):
    rcv = receiver(fail_first=3)
    mg = mailgate(relay(), env=HOOK_ENV)
    c = mg.client(api_key("acme"))
    hook = create_hook(c, rcv.url + "/flaky", ["queued"])  # not "delivered": the filter holds
    mid = c.send_ok({"from": FROM, "to": ["ann@example.com"], "subject": "x", "text": "x"})["id"]
    c.wait_message(mid)
    reqs = rcv.wait_requests(4)
    wait_until(lambda: settled(redis), timeout=20, desc="the delivery to finish")
    reqs = rcv.requests()
    assert len(reqs) == 4, [q["status"] for q in reqs]
    assert [q["status"] for q in reqs] == [500, 500, 500, 200]
    assert [q["hdrs"]["mailgate-attempt"] for q in reqs] == ["1", "2", "3", "4"]
    bodies = {q["body"] for q in reqs}
    assert len(bodies) == 1, "the body changed between attempts"
    ev = json.loads(reqs[0]["body"])
    assert ev["type"] == "queued" and ev["message_id"] == mid
    assert ev == api_events(c, mid)[ev["id"]]
    for q in reqs:
        verify_signature(q["hdrs"]["mailgate-signature"], q["body"], hook["secret"])
    # back-off grows (200ms, 400ms, 800ms, each -20% at worst)
    gaps = [b["received_at"] - a["received_at"] for a, b in zip(reqs, reqs[1:])]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3 and gaps[2] >= 0.6, gaps

    log = json_of(c.get("/v1/webhooks/%s/deliveries" % hook["id"]))["data"]
    assert [x["attempt"] for x in log] == [4, 3, 2, 1]
    assert [x["status_code"] for x in log] == [200, 500, 500, 500]
    assert {x["event_id"] for x in log} == {ev["id"]}
    assert log[0]["error"] is None and log[0]["next_attempt_at"] is None
    assert all(x["error"] == "HTTP 500" and x["next_attempt_at"] for x in log[1:]), log
    assert log[1]["response_body"] == "failing on purpose"


def test_two_dispatcher_processes_deliver_each_event_once(relay, mailgate, api_key, receiver, redis):
    """Two mailgate processes share the feed (one consumer group) and the
    due set (leased claims): every event arrives exactly once."""
    rcv = receiver()
    r = relay()
    mg1 = mailgate(r, env=HOOK_ENV)
    mg2 = mailgate(r, env=HOOK_ENV)
    key = api_key("acme")
    c1, c2 = mg1.client(key), mg2.client(key)
    hook = create_hook(c1, rcv.url + "/both", ["queued", "delivered"])
    mids = [(c1 if i % 2 else c2).send_ok({"from": FROM, "to": ["u%d@example.com" % i], "subject": "n",
                                           "text": "x"})["id"] for i in range(20)]
    for mid in mids:
        c1.wait_message(mid)
    rcv.wait_requests(40)
    wait_until(lambda: settled(redis), timeout=20, desc="every delivery done")
    ids = [json.loads(q["body"])["id"] for q in rcv.requests()]
    assert len(ids) == 40 and len(set(ids)) == 40, "duplicates or losses: %d requests, %d ids" % (
        len(ids), len(set(ids)))
    for q in rcv.requests():
        verify_signature(q["hdrs"]["mailgate-signature"], q["body"], hook["secret"])
