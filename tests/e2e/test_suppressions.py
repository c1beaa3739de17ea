"""End-to-end tests of the suppression list (issue 5, point 5): the
tenant-scoped API, a send to a suppressed address, and automatic
suppression after a 5.1.x hard bounce but not after a 5.7.x policy block."""

from conftest import json_of, wait_until

FROM = "Acme <noreply@acme.example>"


def send(c, to, **kw):
    p = {"from": FROM, "to": to, "subject": "Hi", "text": "Hello"}
    p.update(kw)
    r = c.send(p)
    assert r.status_code == 202, r.text
    return json_of(r)


def listed(c):
    r = c.get("/v1/suppressions", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {s["email"].lower(): s for s in json_of(r)["data"]}


def test_api_is_tenant_scoped_and_validates(gateway, api_key):
    c = gateway.client
    r = c.post("/v1/suppressions", json={"email": "gone@example.com", "reason": "complained"})
    assert r.status_code == 201, r.text
    assert json_of(r)["email"] == "gone@example.com"
    assert "gone@example.com" in listed(c)
    assert listed(c)["gone@example.com"]["reason"] == "complained"

    other = gateway.mg.client(api_key("other"))
    assert "gone@example.com" not in listed(other)
    assert other.delete("/v1/suppressions/gone@example.com").status_code == 404

    for bad, field in [({"email": "not an address"}, "email"), ({"email": "a@b.example", "x": 1}, "x"),
                       ({"email": "a@b.example", "reason": "a\r\nb"}, "reason")]:
        r = c.post("/v1/suppressions", json=bad)
        assert r.status_code == 422, r.text
        assert json_of(r)["error"]["field"] == field

    assert c.delete("/v1/suppressions/gone@example.com").status_code == 204
    assert "gone@example.com" not in listed(c)
    assert c.delete("/v1/suppressions/gone@example.com").status_code == 404

    # A key without the scope is refused.
    readonly = gateway.mg.client(api_key("acme", "--scopes", "read"))
    assert readonly.get("/v1/suppressions").status_code == 403


def test_send_to_suppressed_records_suppressed_and_delivers_others(gateway):
    c = gateway.client
    assert c.post("/v1/suppressions", json={"email": "Blocked@Example.com"}).status_code == 201
    body = send(c, ["ok@example.com", "blocked@example.com"])
    statuses = {r["email"]: r["status"] for r in body["recipients"]}
    assert statuses == {"ok@example.com": "queued", "blocked@example.com": "suppressed"}
    msg = c.wait_message(body["id"])
    by = {r["email"]: r["status"] for r in msg["recipients"]}
    assert by == {"ok@example.com": "delivered", "blocked@example.com": "suppressed"}
    # delivered to everyone it was sent to; the suppressed one was never sent
    assert msg["status"] == "partially_delivered", msg["status"]
    sup = [e for e in msg["events"] if e["type"] == "suppressed"]
    assert len(sup) == 1 and sup[0]["recipient"] == "blocked@example.com" and sup[0]["reason"] == "suppressed"
    got = gateway.relay.wait_messages(1)
    assert got[0].rcpt_tos == ["ok@example.com"]


def test_hard_bounce_5_1_x_suppresses_but_policy_block_does_not(relay, mailgate, api_key):
    r = relay(rules=[
        {"cmd": "RCPT", "match": "nobody@example.com", "reply": "550 5.1.1 No such user"},
        {"cmd": "RCPT", "match": "blocked@example.com", "reply": "550 5.7.1 Rejected by policy"},
    ])
    mg = mailgate(r)
    c = mg.client(api_key("acme"))
    body = send(c, ["nobody@example.com", "blocked@example.com"])
    msg = c.wait_message(body["id"])
    assert {x["status"] for x in msg["recipients"]} == {"bounced"}
    sup = listed(c)
    assert "nobody@example.com" in sup and sup["nobody@example.com"]["reason"] == "hard_bounce"
    assert "blocked@example.com" not in sup
    # The next send to the bad mailbox is suppressed at once, never sent.
    body2 = send(c, ["nobody@example.com"])
    assert body2["recipients"] == [{"email": "nobody@example.com", "status": "suppressed"}]
    msg2 = c.wait_message(body2["id"])
    assert msg2["status"] == "suppressed"
    rcpts = [x for m in r.messages() for x in m.rcpt_tos]
    assert "nobody@example.com" not in rcpts
