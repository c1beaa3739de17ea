"""End-to-end tests of the per-relay pool parameters (issue 3 point 6):
`rate=N/s` paces messages to a relay, `idle=N` closes an unused pooled
connection with QUIT, `max_msgs=N` recycles a connection after N
transactions. Real aiosmtpd relay (tests/relay.py) and real Redis."""

from conftest import json_of, wait_until

BODY = {"from": "a@acme.example", "subject": "pool", "text": "x"}


def send_n(c, n):
    ids = []
    for i in range(n):
        r = c.send(dict(BODY, to=["r%d@example.com" % i]))
        assert r.status_code == 202, r.text
        ids.append(json_of(r)["id"])
    return ids


def test_rate_paces_deliveries(relay, mailgate, api_key):
    r = relay(params={"rate": "2/s", "pool": "4"})
    mg = mailgate(r)
    c = mg.client(api_key("acme"))
    send_n(c, 7)
    msgs = r.wait_messages(7, timeout=60)
    eods = sorted(x["t"] for x in r.commands() if x.get("line") == "<end of data>")
    assert len(eods) == 7
    # A bucket of 2 starts full: 7 messages need at least (7 - 2) / 2 s.
    spread = eods[-1] - eods[0]
    assert spread >= 2.2, "7 messages at rate=2/s arrived within %.2fs" % spread
    assert len(msgs) == 7


def test_idle_connection_is_closed_with_quit(relay, mailgate, api_key):
    r = relay(params={"idle": "1", "pool": "1"})
    mg = mailgate(r)
    c = mg.client(api_key("acme"))
    [mid] = send_n(c, 1)
    c.wait_message(mid)
    wait_until(lambda: r.client_lines("QUIT"), timeout=15, desc="the idle connection is closed with QUIT")
    # The next message opens a new connection.
    [mid2] = send_n(c, 1)
    assert c.wait_message(mid2)["status"] == "delivered"
    assert len(r.client_lines("EHLO")) == 2


def test_max_msgs_recycles_the_connection(relay, mailgate, api_key):
    r = relay(params={"max_msgs": "2", "pool": "1"})
    mg = mailgate(r)
    c = mg.client(api_key("acme"))
    ids = send_n(c, 5)
    for mid in ids:
        assert c.wait_message(mid)["status"] == "delivered"
    ehlos = len(r.client_lines("EHLO"))
    assert ehlos == 3, "5 messages with max_msgs=2 used %d connections" % ehlos
    assert len(r.client_lines("QUIT")) >= 2
