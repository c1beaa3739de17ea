"""End-to-end tests of the delivery side when relays misbehave (issue 3,
points 2, 3, 4, 5, 6 and 7): 535 and other relay configuration faults, 421
at every point of a session, SIZE, a relay that stops answering, and
failover from a dead relay to a live one and back.

tests/e2e/test_send.py already covers a 451 to RCPT, a 554 after the final
".", and failing over once to a second relay; these tests go further.
Relays are tests/relay.py on 127.0.0.1 (rules in its docstring); mailgate
runs with MAILGATE_RETRY_SCHEDULE=1s,2s (conftest)."""

import base64
import time

import pytest

from certs import make_pki, relay_url
from conftest import free_port, wait_until

FROM_ADDR = "noreply@acme.example"
TO = "ann@example.com"


def payload(**kw):
    p = {"from": "Acme <%s>" % FROM_ADDR, "to": [TO], "subject": "Hello", "text": "Hi there"}
    p.update(kw)
    return p


def events_of(msg, type_=None):
    return [e for e in msg["events"] if type_ is None or e["type"] == type_]


def the_recipient(msg, addr=TO):
    [r] = [r for r in msg["recipients"] if r["email"].lower() == addr.lower()]
    return r


def first_outcome(client, mid, timeout=30):
    """Poll until the message has an outcome event (deferred, delivered or
    bounced); return the message."""

    def check():
        m = client.message(mid)
        return m if [e for e in m["events"] if e["type"] in ("deferred", "delivered", "bounced")] else None
    return wait_until(check, timeout=timeout, desc="an outcome event on message %s" % mid)


def relay_events(rl, event):
    return [r for r in rl.commands() if r.get("event") == event]


def client_lines(rl, session=None):
    return [r["line"] for r in rl.commands()
            if r.get("dir") == "C" and (session is None or r["session"] == session)]


def log_lines(mg, event=None):
    return [r for r in mg.logs() if event is None or r.get("event") == event]


def observe(seconds, check):
    """Negative assertions need a window: call check() every 0.2 s for the
    given time (it raises on what must not happen)."""
    end = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= end:
            return
        time.sleep(0.2)


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def auth_relay(relay, pki, name, password="right-Pa55word"):
    return relay(name=name, extra_args=["--tls-cert", str(pki.good[0]), "--tls-key", str(pki.good[1]),
                                        "--auth", "mg-user:" + password])


def assert_password_absent(mg, password):
    forms = [password.encode(), base64.b64encode(password.encode()),
             base64.b64encode(b"\0mg-user\0" + password.encode())]
    data = open(mg.log_path, "rb").read()
    for f in forms:
        assert f not in data, "password (as %r) in mailgate's log %s" % (f, mg.log_path)


# ---------------------------------------------------------------- 535 / 530


def test_auth_535_defers_and_takes_relay_out_of_rotation(relay, mailgate, api_key, pki):
    """Wrong password -> 535 5.7.8: the recipient is deferred, never bounced;
    an error-level relay_config_fault and relay_out_of_rotation are logged;
    the relay sits out (no new AUTH while the retry schedule passes); the
    password is in no log line."""
    rl = auth_relay(relay, pki, "auth1")
    wrong = "wrong-Pa55word"
    mg = mailgate(relay_urls=[relay_url(rl, user="mg-user", password=wrong, ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = first_outcome(c, mid)
    assert events_of(msg, "deferred"), msg["events"]
    [ev] = events_of(msg, "deferred")
    assert ev.get("smtp", {}).get("code") == 535, ev
    assert ev["smtp"].get("enhanced_code") == "5.7.8", ev
    assert not events_of(msg, "bounced") and the_recipient(msg)["status"] == "deferred", msg

    [auth] = relay_events(rl, "auth")
    assert auth["success"] is False and auth["login"] == "mg-user", auth
    faults = [r for r in log_lines(mg, "relay_config_fault") if r.get("relay") == "auth1"]
    assert faults and faults[0]["level"] == "error" and faults[0].get("code") == "535", faults
    out = [r for r in log_lines(mg, "relay_out_of_rotation") if r.get("relay") == "auth1"]
    assert out and out[0]["level"] == "error" and int(out[0]["hold_ms"]) >= 30000, out

    def still_deferred():
        m = c.message(mid)
        assert not events_of(m, "bounced") and not events_of(m, "delivered"), m["events"]
        assert the_recipient(m)["status"] == "deferred", m
        assert len(relay_events(rl, "auth")) == 1, "relay retried while out of rotation"

    # The retry is due after 1 s; the relay is held far longer.
    observe(3.5, still_deferred)
    assert_password_absent(mg, wrong)
    assert rl.messages() == []


def test_auth_535_fails_over_and_relay_stays_out(relay, mailgate, api_key, pki):
    """535 on the first relay: the same attempt goes on to the second relay,
    and the first is not tried again for the next messages."""
    bad = auth_relay(relay, pki, "auth-bad")
    good = relay(name="good")
    mg = mailgate(relay_urls=[relay_url(bad, user="mg-user", password="wrong-Pa55word", ca=pki.ca),
                              good.url])
    c = mg.client(api_key("acme"))
    ids = [c.send_ok(payload())["id"]]
    msg = c.wait_message(ids[0])
    assert msg["status"] == "delivered", msg
    [ev] = events_of(msg, "delivered")
    assert ev["smtp"]["relay"] == "good" and ev["attempt"] == 1, ev
    assert not events_of(msg, "deferred") and not events_of(msg, "bounced"), msg["events"]
    ids += [c.send_ok(payload())["id"] for _ in range(3)]
    for mid in ids[1:]:
        m = c.wait_message(mid)
        assert m["status"] == "delivered" and events_of(m, "delivered")[0]["smtp"]["relay"] == "good", m
    assert len(good.wait_messages(4)) == 4
    assert len(relay_events(bad, "connect")) == 1, relay_events(bad, "connect")
    assert len(relay_events(bad, "auth")) == 1
    assert_password_absent(mg, "wrong-Pa55word")


def test_530_at_mail_from_is_a_relay_fault_not_a_bounce(relay, mailgate, api_key):
    """A relay that wants authentication answers MAIL FROM with 530 5.7.0:
    that is our configuration, not the recipient's -> deferred, never
    bounced, and an error-level relay_config_fault."""
    rl = relay(name="needauth", rules=[{"cmd": "MAIL", "reply": "530 5.7.0 Authentication required"}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = first_outcome(c, mid)
    assert events_of(msg, "deferred"), msg["events"]
    [ev] = events_of(msg, "deferred")
    assert ev["smtp"]["code"] == 530 and ev["smtp"]["enhanced_code"] == "5.7.0", ev
    assert not events_of(msg, "bounced"), msg["events"]
    assert the_recipient(msg)["status"] == "deferred", msg
    faults = [r for r in log_lines(mg, "relay_config_fault") if r.get("relay") == "needauth"]
    assert faults and faults[0]["level"] == "error", log_lines(mg, "relay_config_fault")
    out = [r for r in log_lines(mg, "relay_out_of_rotation") if r.get("relay") == "needauth"]
    assert out and out[0]["level"] == "error", out


# ---------------------------------------------------------------- 421


@pytest.mark.parametrize("cmd", ["CONNECT", "MAIL", "RCPT", "DATA", "EOD"])
def test_421_defers_closes_and_is_retried(relay, mailgate, api_key, cmd):
    """421 at the greeting, MAIL, RCPT, DATA or after the final ".": the
    connection is closed at once (nothing but QUIT after the 421), the
    recipient is deferred with the 421, and the next attempt, on a new
    connection, delivers. A 421 in a transaction leaves the relay in
    rotation."""
    rl = relay(name="r421", rules=[{"cmd": cmd, "reply": "421 4.3.2 Service shutting down", "times": 1}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    assert the_recipient(msg)["attempts"] == 2, msg
    [d] = events_of(msg, "deferred")
    assert d["smtp"]["code"] == 421 and d["smtp"]["enhanced_code"] == "4.3.2" and d["attempt"] == 1, d
    [ok] = events_of(msg, "delivered")
    assert ok["attempt"] == 2, ok

    recs = rl.commands()
    [i421] = [i for i, r in enumerate(recs) if r.get("dir") == "S" and r["line"].startswith("421")]
    s421 = recs[i421]["session"]
    later = [r["line"] for r in recs[i421 + 1:] if r["session"] == s421 and r.get("dir") == "C"]
    assert all(l.upper() == "QUIT" for l in later), "commands after the 421: %r" % later
    assert any(r.get("event") == "disconnect" and r["session"] == s421 for r in recs[i421:])
    [m] = rl.wait_messages(1)
    assert m.session != s421, "delivered over the connection that got 421"
    if cmd != "CONNECT":
        assert not log_lines(mg, "relay_out_of_rotation"), log_lines(mg, "relay_out_of_rotation")


def test_421_at_mail_on_reused_connection_is_retried_at_once(relay, mailgate, api_key):
    """A 421 to MAIL FROM on a pooled connection that already carried a
    message (typically the server's idle close racing us) is retried once,
    at once, on a fresh connection: delivered in the same attempt."""
    rl = relay(name="reuse", params={"pool": 1})
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    first = c.send_ok(payload())["id"]
    assert c.wait_message(first)["status"] == "delivered"
    [m1] = rl.wait_messages(1)
    rl.set_rules([{"cmd": "MAIL", "reply": "421 4.4.2 Idle timeout, closing", "times": 1}])
    second = c.send_ok(payload(subject="second"))["id"]
    msg = c.wait_message(second)
    assert msg["status"] == "delivered", msg
    assert not events_of(msg, "deferred"), msg["events"]
    [ok] = events_of(msg, "delivered")
    assert ok["attempt"] == 1, ok
    m1b, m2 = rl.wait_messages(2)
    assert m2.session != m1.session
    assert len(client_lines(rl, m1.session)) > 0
    mails_first = [l for l in client_lines(rl, m1.session) if l.upper().startswith("MAIL FROM")]
    assert len(mails_first) == 2, "second MAIL on the reused connection expected: %r" % mails_first


# ---------------------------------------------------------------- SIZE


def test_size_exceeded_bounces_without_mail(relay, mailgate, api_key):
    """The relay advertises SIZE 4000: a small message goes with SIZE= on
    MAIL; a 10 KB one bounces at once with size_exceeded / 5.3.4 and no
    MAIL FROM is sent for it."""
    rl = relay(name="small", extra_args=["--size-limit", "4000"])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    small = c.send_ok(payload())["id"]
    assert c.wait_message(small)["status"] == "delivered"
    [m] = rl.wait_messages(1)
    sizes = [o for o in m.rec["mail_options"] if o.upper().startswith("SIZE=")]
    assert len(sizes) == 1, m.rec["mail_options"]
    n = int(sizes[0].split("=", 1)[1])
    assert 0.9 * len(m.raw) <= n <= 1.1 * len(m.raw) + 10, (n, len(m.raw))

    big = c.send_ok(payload(subject="big", text="0123456789\n" * 1000))["id"]
    msg = c.wait_message(big)
    assert msg["status"] == "bounced", msg
    [b] = events_of(msg, "bounced")
    assert b.get("reason") == "size_exceeded" and b.get("enhanced_code") == "5.3.4", b
    assert the_recipient(msg)["status"] == "bounced" and the_recipient(msg)["attempts"] == 1, msg
    assert not events_of(msg, "deferred"), msg["events"]
    mails = [l for l in client_lines(rl) if l.upper().startswith("MAIL FROM")]
    assert len(mails) == 1, "MAIL sent for the oversized message: %r" % mails
    assert len(rl.messages()) == 1


@pytest.mark.parametrize("size_line", ["250-SIZE", "250-SIZE 0"])
def test_size_without_limit_is_no_limit(relay, mailgate, api_key, size_line):
    """SIZE with no value, or SIZE 0, means no limit (RFC 1870)."""
    rl = relay(name="nolimit", rules=[
        {"cmd": "EHLO", "reply": ["250-relay.test", size_line, "250-PIPELINING", "250 HELP"]}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload(text="0123456789\n" * 1000))["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [m] = rl.wait_messages(1)
    assert len(m.raw) > 10000


# ---------------------------------------------------------------- timeouts

TIMEOUTS = "dot=2s,data=2s,rcpt=2s,mail=2s,greeting=2s,ehlo=2s"


@pytest.mark.parametrize("cmd,reason", [("EOD", "timeout_after_data"), ("MAIL", "timeout"),
                                        ("DATA", "timeout")])
def test_relay_that_stops_answering(relay, mailgate, api_key, cmd, reason):
    """The relay holds its reply (to the final ".", to MAIL, to DATA) for
    longer than the timeout: the recipient is deferred with the timeout
    reason (after "." logged as "may have been delivered"), the connection
    is closed and not reused, and the next attempt delivers."""
    rl = relay(name="slow", rules=[{"cmd": cmd, "delay_ms": 6000, "times": 1}])
    mg = mailgate(rl, env={"MAILGATE_SMTP_TIMEOUTS": TIMEOUTS})
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [d] = events_of(msg, "deferred")
    assert d.get("reason") == reason and d["attempt"] == 1, d
    assert "smtp" not in d, d
    [ok] = events_of(msg, "delivered")
    assert ok["attempt"] == 2 and ok["smtp"]["code"] == 250, ok
    assert the_recipient(msg)["attempts"] == 2

    connects = relay_events(rl, "connect")
    assert len(connects) >= 2, connects
    first = connects[0]["session"]
    [disc] = [r for r in relay_events(rl, "disconnect") if r["session"] == first]
    # closed by mailgate after its 2 s timeout, well before the relay's 6 s
    assert disc["t"] - connects[0]["t"] < 5.5, (connects[0], disc)
    delivered = [m for m in rl.wait_messages(1) if m.rcpt_tos == [TO]]
    assert delivered[-1].session != first, "the timed-out connection was reused"
    if cmd == "EOD":
        notes = log_lines(mg, "smtp_timeout_after_dot")
        assert notes and "may have been delivered" in notes[0].get("note", ""), notes


# ---------------------------------------------------------------- failover


@pytest.mark.parametrize("dead", ["closed_port", "greeting_421", "greeting_554"])
def test_failover_and_return_to_first_relay(relay, mailgate, api_key, dead):
    """The first relay is down (nobody listens on its port, or it greets with
    421 / 554): mail goes to the second. Once the first is back (after its
    reconnect back-off) mail returns to it and stays there."""
    live = relay(name="second")
    if dead == "closed_port":
        port = free_port()
        first_url = "smtp://127.0.0.1:%d?tls=none&name=first" % port
        first = None
    else:
        reply = "421 4.3.2 Try later" if dead == "greeting_421" else "554 5.3.2 Not accepting mail"
        first = relay(name="first", rules=[{"cmd": "CONNECT", "reply": reply}])
        first_url = first.url
    mg = mailgate(relay_urls=[first_url, live.url])
    c = mg.client(api_key("acme"))

    mid = c.send_ok(payload(subject="while down"))["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [ev] = events_of(msg, "delivered")
    assert ev["smtp"]["relay"] == "second" and ev["attempt"] == 1, ev
    assert live.wait_messages(1)
    assert [r for r in log_lines(mg, "relay_out_of_rotation") if r.get("relay") == "first"]

    # The first relay comes back.
    if first is None:
        first = relay(name="first", extra_args=["--port", str(port)])
        assert first.port == port
    else:
        first.set_rules([])

    sent = []

    def back_on_first():
        sid = c.send_ok(payload(subject="probe %d" % len(sent)))["id"]
        sent.append(sid)
        m = c.wait_message(sid)
        assert m["status"] == "delivered", m
        return events_of(m, "delivered")[0]["smtp"]["relay"] == "first"

    wait_until(back_on_first, timeout=40, interval=0.3, desc="mail to return to the first relay")
    for i in range(3):
        sid = c.send_ok(payload(subject="after %d" % i))["id"]
        m = c.wait_message(sid)
        assert m["status"] == "delivered", m
        assert events_of(m, "delivered")[0]["smtp"]["relay"] == "first", m
    assert len(first.wait_messages(4)) >= 4
    assert [r for r in log_lines(mg, "relay_back_in_rotation") if r.get("relay") == "first"], \
        "no relay_back_in_rotation line"
