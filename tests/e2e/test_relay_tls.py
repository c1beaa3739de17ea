"""End-to-end tests of the delivery side against relays that speak TLS and
AUTH (issue 3, points 1, 2 and 7): STARTTLS and implicit TLS with a CA and
certificates the test generates (tests/e2e/certs.py), certificate and host
name checks, the STARTTLS response-injection attack (RFC 3207 §6), tls=
policies, and AUTH PLAIN / LOGIN (RFC 4954).

Every relay is tests/relay.py (aiosmtpd) on 127.0.0.1; what it saw on the
wire is read from its commands.log, what mailgate decided from
GET /v1/messages/{id} and mailgate's own stderr log."""

import base64
import json

import pytest

from certs import make_pki, relay_url
from conftest import wait_until

FROM_ADDR = "noreply@acme.example"
TO = "ann@example.com"


def payload(**kw):
    p = {"from": "Acme <%s>" % FROM_ADDR, "to": [TO], "subject": "Hello over TLS",
         "text": "Hi there"}
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


def client_lines(rl):
    return [r["line"] for r in rl.commands() if r.get("dir") == "C"]


def session_records(rl, session):
    return [r for r in rl.commands() if r["session"] == session]


def log_lines(mg, event=None):
    return [r for r in mg.logs() if event is None or r.get("event") == event]


def assert_secret_absent(paths, secret):
    """secret appears in none of the files, neither as is nor base64-encoded
    (alone, or inside an AUTH PLAIN blob)."""
    forms = {secret.encode(), base64.b64encode(secret.encode()),
             base64.b64encode(b"\0" + b"mg-user" + b"\0" + secret.encode())}
    for p in paths:
        data = open(p, "rb").read()
        for f in forms:
            assert f not in data, "secret %r (as %r) found in %s" % (secret, f, p)


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def tls_args(cert):
    return ["--tls-cert", str(cert[0]), "--tls-key", str(cert[1])]


# ---------------------------------------------------------------- STARTTLS


@pytest.mark.parametrize("host,sni", [("127.0.0.1", None), ("localhost", "localhost")])
def test_starttls_verified_with_ca(relay, mailgate, api_key, pki, host, sni):
    """smtp:// with the default tls=opportunistic upgrades with STARTTLS, checks
    the certificate against ca= (an IP relay against the IP SAN, without SNI;
    a named relay against its DNS name, with SNI), sends EHLO again, and
    records the TLS version and cipher on the delivered event."""
    rl = relay(name="tls1", extra_args=tls_args(pki.good))
    mg = mailgate(relay_urls=[relay_url(rl, host=host, ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [ev] = events_of(msg, "delivered")
    assert ev["smtp"]["code"] == 250 and ev["smtp"]["relay"] == "tls1", ev

    [tls] = relay_events(rl, "tls")
    assert tls["implicit"] is False
    assert tls["sni"] == sni, "SNI sent: %r, expected %r" % (tls["sni"], sni)
    assert ev.get("tls") == {"version": tls["version"], "cipher": tls["cipher"]}, \
        "delivered event tls %r, relay negotiated %r" % (ev.get("tls"), tls)
    assert tls["version"] in ("TLSv1.2", "TLSv1.3"), tls

    # The wire: EHLO, STARTTLS, handshake, EHLO again, then the transaction.
    recs = session_records(rl, tls["session"])
    i_tls = recs.index(tls)
    before = [r["line"].split(" ")[0].upper() for r in recs[:i_tls] if r.get("dir") == "C"]
    after = [r["line"].split(":")[0].split(" ")[0].upper() for r in recs[i_tls:] if r.get("dir") == "C"]
    assert before == ["EHLO", "STARTTLS"], "before the handshake the client sent %r" % before
    assert after[:2] == ["EHLO", "MAIL"], "after the handshake the client sent %r" % after
    assert len(rl.wait_messages(1)) == 1

    [line] = [r for r in log_lines(mg, "delivery") if r.get("message_id") == mid]
    assert line.get("tls") == tls["version"], line


def test_smtps_with_auth_plain(relay, mailgate, api_key, pki):
    """smtps:// is TLS from the first byte (no STARTTLS); AUTH PLAIN with the
    URL's credentials, percent-decoded; the password never reaches a log."""
    password = "p@ss:w/rd%x+y"
    rl = relay(name="smtps1", extra_args=tls_args(pki.good) + [
        "--smtps", "--auth", "mg-user:" + password])
    mg = mailgate(relay_urls=[relay_url(rl, scheme="smtps", host="localhost", user="mg-user",
                                        password=password, ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [ev] = events_of(msg, "delivered")
    [tls] = relay_events(rl, "tls")
    assert tls["implicit"] is True and tls["sni"] == "localhost", tls
    assert ev.get("tls", {}).get("version") == tls["version"], ev

    [auth] = relay_events(rl, "auth")
    assert auth == {**auth, "mechanism": "PLAIN", "login": "mg-user", "success": True}, auth
    lines = client_lines(rl)
    assert not [l for l in lines if l.upper().startswith("STARTTLS")], lines
    i_auth = next(i for i, l in enumerate(lines) if l.upper().startswith("AUTH "))
    i_mail = next(i for i, l in enumerate(lines) if l.upper().startswith("MAIL FROM"))
    assert i_auth < i_mail, lines
    assert len(rl.wait_messages(1)) == 1
    assert_secret_absent([mg.log_path], password)


@pytest.mark.parametrize("form", ["AUTH", "AUTH="])
def test_auth_login_when_only_login_offered(relay, mailgate, api_key, pki, form):
    """Only LOGIN advertised (in "AUTH LOGIN" or the old "AUTH=LOGIN" form) ->
    AUTH LOGIN is used, after STARTTLS, never before."""
    args = tls_args(pki.good) + ["--auth", "mg-user:secret-login-pw", "--auth-mechanisms", "LOGIN"]
    if form == "AUTH=":
        args.append("--auth-eq")
    rl = relay(name="login1", extra_args=args)
    mg = mailgate(relay_urls=[relay_url(rl, user="mg-user", password="secret-login-pw", ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg

    advertised = [r["line"] for r in rl.commands() if r.get("dir") == "S" and "AUTH" in r["line"]]
    assert advertised == ["250-AUTH LOGIN" if form == "AUTH" else "250-AUTH=LOGIN"], advertised
    [auth] = relay_events(rl, "auth")
    assert auth["mechanism"] == "LOGIN" and auth["success"] is True, auth
    lines = client_lines(rl)
    auth_lines = [l for l in lines if l.upper().startswith("AUTH")]
    assert len(auth_lines) == 1 and auth_lines[0].upper().split()[:2] == ["AUTH", "LOGIN"], auth_lines
    assert lines.index(auth_lines[0]) > [l.upper() for l in lines].index("STARTTLS"), lines
    assert_secret_absent([mg.log_path], "secret-login-pw")


# ---------------------------------------------------------------- injection

INJECTED = ("250-relay.test\\r\\n250-SIZE 10\\r\\n250 PIPELINING\\r\\n"
            "250 2.1.0 injected\\r\\n250 2.1.5 injected\\r\\n354 injected\\r\\n"
            "250 2.0.0 injected\\r\\n")


@pytest.mark.parametrize("at", ["reply", "handshake"])
def test_starttls_response_injection_is_never_trusted(relay, mailgate, api_key, pki, at):
    """The relay answers STARTTLS with 220 and, before the handshake, plaintext
    that looks like an EHLO reply (SIZE 10) and the replies of a whole
    transaction. Those bytes must never be taken as replies: the message is
    either delivered over TLS with the relay's real reply, or the connection
    is dropped and the message deferred. at=reply: the bytes come in the same
    write as the 220 (mailgate discards them); at=handshake: they arrive
    after the 220, ahead of the server's handshake reply (the handshake
    cannot succeed)."""
    rl = relay(name="inject1", extra_args=tls_args(pki.good) + [
        "--starttls-inject", INJECTED, "--starttls-inject-at", at])
    mg = mailgate(relay_urls=[relay_url(rl, ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload(text="a body well over ten bytes " * 4))["id"]
    msg = first_outcome(c, mid)
    assert not events_of(msg, "bounced"), \
        "bounced: the injected 'SIZE 10' was trusted? %s" % json.dumps(msg["events"])
    assert relay_events(rl, "inject"), "the relay did not inject (test broken)"
    for ev in events_of(msg):
        assert "injected" not in json.dumps(ev), "an injected reply was used: %r" % ev

    delivered = events_of(msg, "delivered")
    if delivered:
        [ev] = delivered
        [m] = rl.wait_messages(1)
        assert ev["smtp"]["reply"].endswith("queued as %06d" % m.seq), ev
        assert ev.get("tls", {}).get("version"), ev
        recs = session_records(rl, m.session)
        i_tls = next(i for i, r in enumerate(recs) if r.get("event") == "tls")
        after = [r["line"].split(" ")[0].upper() for r in recs[i_tls:] if r.get("dir") == "C"]
        assert after[0] == "EHLO", "EHLO not sent again after the handshake: %r" % after
        if at == "reply":
            assert log_lines(mg, "smtp_tls_discard"), "no smtp_tls_discard log line"
    else:
        [ev] = events_of(msg, "deferred")
        assert ev.get("reason") in ("tls_failed", "connection_lost", "protocol_error"), ev
        assert the_recipient(msg)["status"] == "deferred", msg
        assert rl.messages() == []
        assert not [l for l in client_lines(rl) if l.upper().startswith("MAIL")], \
            "MAIL sent although the handshake failed: %r" % client_lines(rl)


# ---------------------------------------------------------------- certificates


@pytest.mark.parametrize("case", ["wrong_host_ip", "wrong_host_name", "dns_san_only_for_ip",
                                  "unknown_ca", "system_store"])
def test_bad_certificate_defers_and_faults_relay(relay, mailgate, api_key, pki, case):
    """A certificate that does not fit the relay (wrong host name, an IP
    relay whose certificate has the name only, a CA we were not told to
    trust) -> no MAIL is sent, the message is deferred (not delivered, not
    bounced) with a TLS reason, and a relay configuration fault is logged at
    error level with the relay taken out of rotation."""
    cert, host, ca = {
        "wrong_host_ip": (pki.wrong_host, "127.0.0.1", pki.ca),
        "wrong_host_name": (pki.wrong_host, "localhost", pki.ca),
        "dns_san_only_for_ip": (pki.dns_only, "127.0.0.1", pki.ca),
        "unknown_ca": (pki.good, "localhost", pki.other_ca),
        "system_store": (pki.good, "localhost", None),
    }[case]
    rl = relay(name="badcert", extra_args=tls_args(cert))
    mg = mailgate(relay_urls=[relay_url(rl, host=host, ca=ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = first_outcome(c, mid)
    assert events_of(msg, "deferred"), msg["events"]
    [ev] = events_of(msg, "deferred")
    assert ev.get("reason") == "tls_failed", ev
    assert not events_of(msg, "delivered") and not events_of(msg, "bounced"), msg["events"]
    assert the_recipient(msg)["status"] == "deferred", msg
    assert msg["status"] not in ("delivered", "bounced"), msg

    assert rl.messages() == []
    assert "STARTTLS" in [l.upper() for l in client_lines(rl)]
    assert not [l for l in client_lines(rl) if l.upper().startswith(("MAIL", "RCPT", "AUTH"))], \
        client_lines(rl)
    faults = [r for r in log_lines(mg, "relay_config_fault") if r.get("relay") == "badcert"]
    assert faults and all(r["level"] == "error" for r in faults), log_lines(mg, "relay_config_fault")
    out = [r for r in log_lines(mg, "relay_out_of_rotation") if r.get("relay") == "badcert"]
    assert out and out[0]["level"] == "error", out


def test_verify_false_accepts_wrong_host(relay, mailgate, api_key, pki):
    """verify=false is the explicit opt-out: the wrong-host certificate from an
    unknown CA is accepted and the mail still goes over TLS."""
    rl = relay(name="noverify", extra_args=tls_args(pki.wrong_host))
    mg = mailgate(relay_urls=[relay_url(rl, verify="false")])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [ev] = events_of(msg, "delivered")
    [tls] = relay_events(rl, "tls")
    assert ev.get("tls", {}).get("version") == tls["version"], ev
    assert len(rl.wait_messages(1)) == 1


def test_tls_failure_fails_over_to_next_relay(relay, mailgate, api_key, pki):
    """Failing TLS on the first relay sends the traffic to the next one, in
    the same attempt; the first is not retried while it is out of rotation."""
    bad = relay(name="badtls", extra_args=tls_args(pki.wrong_host))
    good = relay(name="good")
    mg = mailgate(relay_urls=[relay_url(bad, ca=pki.ca), good.url])
    c = mg.client(api_key("acme"))
    ids = [c.send_ok(payload())["id"]]
    msg = c.wait_message(ids[0])
    assert msg["status"] == "delivered", msg
    [ev] = events_of(msg, "delivered")
    assert ev["smtp"]["relay"] == "good" and ev["attempt"] == 1, ev
    assert not events_of(msg, "deferred"), msg["events"]
    for _ in range(3):
        ids.append(c.send_ok(payload())["id"])
    for mid in ids[1:]:
        m = c.wait_message(mid)
        assert m["status"] == "delivered" and events_of(m, "delivered")[0]["smtp"]["relay"] == "good", m
    assert len(good.wait_messages(4)) == 4
    assert bad.messages() == []
    connects = relay_events(bad, "connect")
    assert len(connects) == 1, "the faulty relay was tried again while out of rotation: %r" % connects


# ---------------------------------------------------------------- tls= policy


def test_tls_required_without_starttls_never_sends_mail(relay, mailgate, api_key):
    """tls=required against a relay that does not offer STARTTLS: deferred, no
    MAIL (nor anything of the message) in plaintext."""
    rl = relay(name="plain1")
    mg = mailgate(relay_urls=[relay_url(rl, tls="required")])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = first_outcome(c, mid)
    assert events_of(msg, "deferred"), msg["events"]
    [ev] = events_of(msg, "deferred")
    assert ev.get("reason") in ("tls_failed", "tls_required"), ev
    assert not events_of(msg, "delivered") and not events_of(msg, "bounced"), msg["events"]
    lines = [l.upper() for l in client_lines(rl)]
    assert any(l.startswith("EHLO") for l in lines), lines
    assert not [l for l in lines if l.startswith(("MAIL", "RCPT", "DATA"))], \
        "sent in plaintext despite tls=required: %r" % lines
    assert rl.messages() == []
    faults = [r for r in log_lines(mg, "relay_config_fault") if r.get("relay") == "plain1"]
    assert faults and faults[0]["level"] == "error", faults


def test_tls_required_starttls_refused(relay, mailgate, api_key, pki):
    """tls=required and the relay answers STARTTLS with 454: deferred, no MAIL."""
    rl = relay(name="refuse1", extra_args=tls_args(pki.good),
               rules=[{"cmd": "STARTTLS", "reply": "454 4.7.0 TLS not available due to temporary reason"}])
    mg = mailgate(relay_urls=[relay_url(rl, tls="required", ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = first_outcome(c, mid)
    assert events_of(msg, "deferred"), msg["events"]
    assert not events_of(msg, "delivered") and not events_of(msg, "bounced"), msg["events"]
    lines = [l.upper() for l in client_lines(rl)]
    assert "STARTTLS" in lines, lines
    assert not [l for l in lines if l.startswith(("MAIL", "RCPT", "DATA"))], lines
    assert rl.messages() == []


def test_opportunistic_starttls_refused_falls_back_to_plaintext(relay, mailgate, api_key, pki):
    """tls=opportunistic (the default) and STARTTLS refused with 454: the mail
    goes in plaintext, and the event carries no tls."""
    rl = relay(name="refuse2", extra_args=tls_args(pki.good),
               rules=[{"cmd": "STARTTLS", "reply": "454 4.7.0 TLS not available"}])
    mg = mailgate(relay_urls=[relay_url(rl, ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [ev] = events_of(msg, "delivered")
    assert "tls" not in ev, ev
    assert relay_events(rl, "tls") == []
    assert len(rl.wait_messages(1)) == 1


def test_capabilities_from_before_tls_are_forgotten(relay, mailgate, api_key, pki):
    """Before TLS the relay advertises SIZE 100; over TLS its real limit. A
    client that kept the plaintext capabilities would bounce this 2 KB
    message (RFC 3207 §4.2: discard what was learned before TLS)."""
    rl = relay(name="caps1", extra_args=tls_args(pki.good), rules=[
        {"cmd": "EHLO", "tls": False,
         "reply": ["250-relay.test", "250-SIZE 100", "250-STARTTLS", "250 HELP"]}])
    mg = mailgate(relay_urls=[relay_url(rl, ca=pki.ca)])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload(text="x" * 2000))["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [m] = rl.wait_messages(1)
    assert any(o.upper().startswith("SIZE=") and int(o.split("=")[1]) > 2000 for o in m.rec["mail_options"]), \
        m.rec["mail_options"]


# ---------------------------------------------------------------- AUTH policy


def test_credentials_never_sent_in_plaintext(relay, mailgate, api_key):
    """A relay without TLS that offers AUTH: with the default tls= the
    credentials are not sent (deferred, relay fault); the password is in no
    log."""
    rl = relay(name="plainauth", extra_args=["--auth", "mg-user:plain-secret", "--auth-plaintext"])
    mg = mailgate(relay_urls=[relay_url(rl, tls=None, user="mg-user", password="plain-secret")])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = first_outcome(c, mid)
    assert events_of(msg, "deferred"), msg["events"]
    assert not events_of(msg, "delivered") and not events_of(msg, "bounced"), msg["events"]
    lines = [l.upper() for l in client_lines(rl)]
    assert any(l.startswith("EHLO") for l in lines), lines
    assert not [l for l in lines if l.startswith(("AUTH", "MAIL"))], \
        "credentials or mail sent without TLS: %r" % lines
    assert relay_events(rl, "auth") == []
    faults = [r for r in log_lines(mg, "relay_config_fault") if r.get("relay") == "plainauth"]
    assert faults and faults[0]["level"] == "error", faults
    assert_secret_absent([mg.log_path, rl.outdir / "commands.log"], "plain-secret")


def test_credentials_in_plaintext_when_tls_none(relay, mailgate, api_key):
    """tls=none is the explicit opt-out: AUTH goes in plaintext and the mail
    is delivered."""
    rl = relay(name="plainauth2", extra_args=["--auth", "mg-user:plain-secret", "--auth-plaintext"])
    mg = mailgate(relay_urls=[relay_url(rl, tls="none", user="mg-user", password="plain-secret")])
    c = mg.client(api_key("acme"))
    mid = c.send_ok(payload())["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    [auth] = relay_events(rl, "auth")
    assert auth["success"] is True and auth["login"] == "mg-user", auth
    assert_secret_absent([mg.log_path], "plain-secret")
