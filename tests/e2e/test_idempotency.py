"""End-to-end tests of the Idempotency-Key header (contract "Send"):
replay with the same bytes, 409 with other bytes, 409
idempotency_in_progress while the first is running, scoping per tenant,
and a race of concurrent requests with one key queuing exactly one message."""

import json
import threading

from conftest import json_of, wait_until

BODY = {"from": "Acme <noreply@acme.example>", "to": ["ann@example.com"], "subject": "Once", "text": "only once"}


def post(c, body, key, raw=None):
    data = raw if raw is not None else json.dumps(body)
    return c.post("/v1/messages", data=data, headers={"Idempotency-Key": key, "Content-Type": "application/json"})


def test_replay_and_conflict(gateway, api_key, redis):
    c = gateway.client
    first = post(c, BODY, "order-42")
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = post(c, BODY, "order-42")
    assert again.status_code == 202
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert json_of(again) == json_of(first)
    other = post(c, dict(BODY, subject="Different"), "order-42")
    assert other.status_code == 409, other.text
    assert json_of(other)["error"]["type"] != "idempotency_in_progress"
    # Same key for another tenant is another key.
    c2 = gateway.mg.client(api_key("other"))
    r2 = post(c2, BODY, "order-42")
    assert r2.status_code == 202 and "Idempotent-Replayed" not in r2.headers
    assert json_of(r2)["id"] != json_of(first)["id"]
    gateway.relay.wait_messages(2)
    # Exactly one message for the first tenant was queued.
    lst = json_of(c.get("/v1/messages"))["data"]
    assert [m["id"] for m in lst] == [json_of(first)["id"]]


def test_errors_are_not_kept(gateway):
    c = gateway.client
    bad = post(c, None, "k-bad", raw='{"from": "x"}')
    assert bad.status_code == 422
    good = post(c, None, "k-bad", raw='{"from": "x"}')
    assert good.status_code == 422 and "Idempotent-Replayed" not in good.headers
    too_long = post(c, BODY, "k" * 257)
    assert too_long.status_code == 422


def test_in_progress_and_race(gateway, redis):
    c = gateway.client
    # A claim left by a request that is still running answers 409 in progress.
    ok = post(c, BODY, "warm")
    assert ok.status_code == 202
    keys = redis.command("KEYS", "mg:idem:acme:*")
    assert len(keys) == 1
    redis.command("HSET", keys[0], "state", "inflight")
    r = post(c, BODY, "warm")
    assert r.status_code == 409 and json_of(r)["error"]["type"] == "idempotency_in_progress"

    results = []
    body = dict(BODY, subject="race")

    def go():
        results.append(post(gateway.mg.client(gateway.key), body, "race-key"))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes.count(202) >= 1 and set(codes) <= {202, 409}, codes
    fresh = [r for r in results if r.status_code == 202 and "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1, [(r.status_code, dict(r.headers)) for r in results]
    ids = {json_of(r)["id"] for r in results if r.status_code == 202}
    assert len(ids) == 1
    wait_until(lambda: len([m for m in gateway.relay.messages() if m.msg["Subject"] == "race"]) >= 1,
               desc="the raced message is delivered")
    races = json_of(c.get("/v1/messages", params={"limit": 100}))["data"]
    assert len([m for m in races if m["subject"] == "race"]) == 1
