"""End-to-end tests of POST /v1/messages/batch and of scheduling
(send_at) with DELETE /v1/messages/{id} (issue 6 point 6)."""

from datetime import datetime, timedelta, timezone

from conftest import json_of, wait_until

FROM = "Acme <noreply@acme.example>"


def msg(to, **kw):
    m = {"from": FROM, "to": [to], "subject": "Batch", "text": "hi"}
    m.update(kw)
    return m


def rfc3339(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_batch_results_in_order_and_bad_items_fail_alone(gateway):
    c = gateway.client
    items = [msg("a@example.com"), msg("not an address"), msg("b@example.com"), {"from": FROM}]
    r = c.post("/v1/messages/batch", json={"messages": items})
    assert r.status_code == 202, r.text
    res = json_of(r)["results"]
    assert len(res) == 4
    assert res[0]["status"] == "queued" and res[0]["id"]
    assert "error" in res[1] and res[1]["error"]["field"].startswith("messages[1].to")
    assert res[2]["status"] == "queued"
    assert "error" in res[3]
    got = gateway.relay.wait_messages(2)
    assert sorted(m.rcpt_tos[0] for m in got) == ["a@example.com", "b@example.com"]
    for item in (res[0], res[2]):
        assert c.wait_message(item["id"])["status"] == "delivered"


def test_batch_all_bad_is_422_and_limits(gateway):
    c = gateway.client
    r = c.post("/v1/messages/batch", json={"messages": [msg("bad"), {"x": 1}]})
    assert r.status_code == 422
    assert all("error" in x for x in json_of(r)["results"])
    r = c.post("/v1/messages/batch", json={"messages": [msg("a@example.com")] * 501})
    assert r.status_code in (413, 422) and json_of(r)["error"]["field"] == "messages"
    assert c.post("/v1/messages/batch", json={"messages": []}).status_code == 422
    assert c.post("/v1/messages/batch", json={"messages": [], "x": 1}).status_code == 422
    assert c.post("/v1/messages/batch", data="[", headers={"Content-Type": "application/json"}).status_code == 400
    assert gateway.relay.messages() == []


def test_scheduled_message_is_sent_at_its_time(gateway):
    c = gateway.client
    at = datetime.now(timezone.utc) + timedelta(seconds=3)
    r = c.send(msg("later@example.com", send_at=rfc3339(at)))
    assert r.status_code == 202, r.text
    body = json_of(r)
    assert body["status"] == "scheduled"
    assert body["recipients"] == [{"email": "later@example.com", "status": "scheduled"}]
    m = json_of(c.get("/v1/messages/" + body["id"]))
    assert m["status"] == "scheduled"
    got = gateway.relay.wait_messages(1, timeout=30)
    assert datetime.now(timezone.utc) >= at - timedelta(milliseconds=300), "sent before its time"
    assert got[0].rcpt_tos == ["later@example.com"]
    assert c.wait_message(body["id"])["status"] == "delivered"


def test_cancel_while_scheduled_then_409(gateway):
    c = gateway.client
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    mid = json_of(c.send(msg("never@example.com", send_at=rfc3339(at))))["id"]
    r = c.delete("/v1/messages/" + mid)
    assert r.status_code == 204, r.text
    m = json_of(c.get("/v1/messages/" + mid))
    assert m["status"] == "cancelled"
    assert m["recipients"][0]["status"] == "cancelled"
    assert [e["type"] for e in m["events"]] == ["queued", "cancelled"]
    assert c.delete("/v1/messages/" + mid).status_code == 409
    # A message that is already being sent cannot be cancelled.
    now_id = json_of(c.send(msg("now@example.com")))["id"]
    c.wait_message(now_id)
    assert c.delete("/v1/messages/" + now_id).status_code == 409
    assert c.delete("/v1/messages/000000000000000000000000000000ff").status_code == 404


def test_send_at_validation(gateway):
    c = gateway.client
    for bad in ["tomorrow", "2026-13-01T00:00:00Z", rfc3339(datetime.now(timezone.utc) + timedelta(days=31))]:
        r = c.send(msg("x@example.com", send_at=bad))
        assert r.status_code == 422 and json_of(r)["error"]["field"] == "send_at", (bad, r.text)
    # past the horizon, the answer says what the horizon is (default 30 days)
    assert "at most 30 days ahead" in json_of(r)["error"]["message"], r.text


def test_send_at_horizon_is_stated_in_its_own_unit(relay, mailgate, api_key):
    """A horizon that is not a whole number of hours is not rounded to
    "0 hours" in the 422."""
    mg = mailgate(relay(name="relay1"), env={"MAILGATE_SEND_AT_HORIZON": "2m"})
    c = mg.client(api_key("acme"))
    r = c.send(msg("x@example.com", send_at=rfc3339(datetime.now(timezone.utc) + timedelta(minutes=5))))
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "send_at", r.text
    assert "at most 2 minutes ahead" in json_of(r)["error"]["message"], r.text
    ok = c.send(msg("x@example.com", send_at=rfc3339(datetime.now(timezone.utc) + timedelta(seconds=60))))
    assert ok.status_code == 202, ok.text
