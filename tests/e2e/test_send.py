"""End-to-end tests of sending (issue 2): POST /v1/messages through real Redis
to a real SMTP relay (tests/relay.py), checked both at the relay (what arrived
on the wire, parsed with Python's email package) and through the read-back
API (GET /v1/messages/{id}, GET /v1/events)."""

import email.header
import email.utils
import re
import select
import socket
from datetime import datetime, timedelta, timezone

import requests

from conftest import free_port, json_of, wait_until

FROM = "Acme <noreply@acme.example>"
FROM_ADDR = "noreply@acme.example"


def payload(**kw):
    p = {"from": FROM, "to": ["ann@example.com"], "subject": "Hello", "text": "Hi there"}
    p.update(kw)
    return {k: v for k, v in p.items() if v is not None}


def assert_request_id(r):
    rid = r.headers.get("X-Request-Id")
    assert rid and rid.strip(), "no X-Request-Id on %s %s -> %d" % (
        r.request.method, r.request.url, r.status_code)


def assert_error(r, status, field=None):
    """r is an error answer with the contract's shape; returns the error object."""
    assert r.status_code == status, "expected %d, got %d: %s" % (status, r.status_code, r.text)
    assert_request_id(r)
    body = json_of(r)
    err = body.get("error")
    assert isinstance(err, dict), "no error object in %r" % body
    assert isinstance(err.get("type"), str) and err["type"], err
    assert isinstance(err.get("message"), str) and err["message"], err
    if field is not None:
        assert isinstance(err.get("field"), str), "no error.field in %r" % err
        assert field(err["field"]) if callable(field) else err["field"] == field, \
            "error.field %r does not name the field at fault" % err["field"]
    return err


def parse_time(s):
    assert isinstance(s, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]00:00)$", s), \
        "not an RFC 3339 UTC time: %r" % (s,)
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def recipient(msg, addr):
    found = [r for r in msg["recipients"] if r["email"].lower() == addr.lower()]
    assert len(found) == 1, "recipient %s not exactly once in %r" % (addr, msg["recipients"])
    return found[0]


def events_of(msg, addr=None, type_=None):
    evs = msg["events"]
    if addr:
        evs = [e for e in evs if (e.get("recipient") or "").lower() == addr.lower()]
    if type_:
        evs = [e for e in evs if e["type"] == type_]
    return evs


def text_of(part):
    """Decoded text of a MIME part with line ends normalised to \\n."""
    return part.get_content().replace("\r\n", "\n")


def assert_same_body(got, want):
    # A generator may end the body with one line break the JSON did not have.
    assert got == want or got == want + "\n", "body differs:\n got %r\nwant %r" % (got, want)


def sent_and_delivered(gw, p, n=1, statuses="delivered"):
    """Send p, wait until the message is terminal and n messages reached the relay."""
    resp = gw.client.send_ok(p)
    msg = gw.client.wait_message(resp["id"])
    assert msg["status"] in ({statuses} if isinstance(statuses, str) else statuses), msg
    got = gw.relay.wait_messages(n)
    return resp, msg, got


# ---------------------------------------------------------------- happy path

def test_happy_path(gateway):
    gw = gateway
    p = payload(to=["ann@example.com"], subject="Your receipt", text="Hello Ann,\nthanks.",
                headers={"X-Campaign": "q4"}, tags=["receipt"], metadata={"order": "42"})
    r = gw.client.send(p)
    assert r.status_code == 202, r.text
    assert_request_id(r)
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = json_of(r)
    assert isinstance(body.get("id"), str) and body["id"]
    assert body["status"] == "queued"
    assert body["recipients"] == [{"email": "ann@example.com", "status": "queued"}]
    mid = body["id"]

    # What the relay received.
    [m] = gw.relay.wait_messages(1)
    assert m.mail_from == FROM_ADDR
    assert m.rcpt_tos == ["ann@example.com"]
    assert str(m.msg["Subject"]) == "Your receipt"
    assert m.msg["From"].addresses[0].addr_spec == FROM_ADDR
    assert m.msg["From"].addresses[0].display_name == "Acme"
    assert [a.addr_spec for a in m.msg["To"].addresses] == ["ann@example.com"]
    assert str(m.msg["X-Campaign"]) == "q4"
    assert_same_body(text_of(m.msg.get_body(preferencelist=("plain",))), "Hello Ann,\nthanks.")
    ehlos = gw.relay.client_lines("EHLO")
    assert ehlos and all(e["line"].split()[1:] == ["mailgate.test"] for e in ehlos), ehlos

    # What the API reports.
    msg = gw.client.wait_message(mid)
    assert msg["status"] == "delivered", msg
    assert msg["id"] == mid
    assert msg["subject"] == "Your receipt"
    assert "noreply@acme.example" in msg["from"]
    assert msg["tags"] == ["receipt"]
    assert msg["metadata"] == {"order": "42"}
    parse_time(msg["created_at"])
    rc = recipient(msg, "ann@example.com")
    assert rc["status"] == "delivered"
    assert isinstance(rc["attempts"], int) and rc["attempts"] >= 1, rc
    assert "250" in (rc["last_reply"] or ""), rc

    types = [e["type"] for e in msg["events"]]
    assert "queued" in types and "delivered" in types, types
    assert types.index("queued") < types.index("delivered"), "events not oldest first: %s" % types
    times = [parse_time(e["created_at"]) for e in msg["events"]]
    assert times == sorted(times), "message events not oldest first: %r" % msg["events"]

    r = gw.client.get("/v1/events", params={"message_id": mid})
    assert r.status_code == 200, r.text
    assert_request_id(r)
    evs = json_of(r)["data"]
    assert all(e["message_id"] == mid for e in evs), evs
    times = [parse_time(e["created_at"]) for e in evs]
    assert times == sorted(times, reverse=True), "GET /v1/events not newest first: %r" % evs
    delivered = [e for e in evs if e["type"] == "delivered"]
    assert len(delivered) == 1, evs
    d = delivered[0]
    assert d["id"] and d["recipient"] == "ann@example.com"
    assert d["tags"] == ["receipt"] and d["metadata"] == {"order": "42"}, d
    smtp = d["smtp"]
    assert smtp["code"] == 250, d
    assert smtp["enhanced_code"] == "2.0.0", d
    assert "queued as" in smtp["reply"], d
    assert smtp["relay"] == "relay1", d
    assert d["attempt"] == 1, d
    assert [e["type"] for e in evs].count("queued") == 1, evs


def test_request_id_on_every_response(gateway):
    gw = gateway
    for r in (requests.get(gw.mg.url + "/healthz", timeout=10),
              requests.get(gw.mg.url + "/readyz", timeout=10),
              gw.client.get("/v1/messages/nope"),
              gw.mg.client("bad").get("/v1/messages")):
        assert_request_id(r)
    ids = {gw.client.get("/v1/messages/nope").headers["X-Request-Id"] for _ in range(3)}
    assert len(ids) == 3, "X-Request-Id should differ per request: %s" % ids


# ---------------------------------------------------------------- partial acceptance

def test_one_recipient_rejected_other_delivered(relay, mailgate, api_key):
    rl = relay(name="relay1", rules=[
        {"cmd": "RCPT", "match": "nobody@example.com", "reply": "550 5.1.1 No such user"}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    resp = c.send_ok(payload(to=["ann@example.com", "nobody@example.com"]))
    assert {r["email"] for r in resp["recipients"]} == {"ann@example.com", "nobody@example.com"}

    msg = c.wait_message(resp["id"])
    assert msg["status"] == "partially_delivered", msg
    assert recipient(msg, "ann@example.com")["status"] == "delivered"
    bad = recipient(msg, "nobody@example.com")
    assert bad["status"] == "bounced", bad
    assert "550" in (bad["last_reply"] or ""), bad

    [b] = events_of(msg, "nobody@example.com", "bounced")
    assert b["bounce_type"] == "hard", b
    assert b["smtp"]["code"] == 550 and b["smtp"]["enhanced_code"] == "5.1.1", b
    assert b["smtp"]["relay"] == "relay1", b
    assert not events_of(msg, "nobody@example.com", "delivered")
    assert len(events_of(msg, "ann@example.com", "delivered")) == 1

    evs = c.events(message_id=resp["id"])["data"]
    assert {(e["type"], e["recipient"]) for e in evs} >= {
        ("delivered", "ann@example.com"), ("bounced", "nobody@example.com")}, evs

    msgs = rl.wait_messages(1)
    assert [m.rcpt_tos for m in msgs] == [["ann@example.com"]], msgs


# ---------------------------------------------------------------- header encoding

# 80 code points (Python characters), 220 octets of UTF-8; emoji outside the BMP.
SUBJECT_80 = ("Re: 你好世界 📧 日本語のテスト 🎉 한국어 메일 😀 中文标题测试 ✅ 多字节字符 "
              "🚀 絵文字と漢字 🌏 终于完成了 🍣🍜 寿司とラーメン 🐉 龙年快乐🎆")
ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[QqBb]\?[^?\s]*\?=")


def test_subject_emoji_and_cjk_80_chars(gateway):
    assert len(SUBJECT_80) == 80 and not SUBJECT_80.endswith(" ")
    gw = gateway
    resp, msg, [m] = sent_and_delivered(gw, payload(subject=SUBJECT_80))
    assert msg["subject"] == SUBJECT_80

    assert str(m.msg["Subject"]) == SUBJECT_80
    lines = m.header_lines()
    for line in lines:
        assert len(line) <= 998, line
    # The Subject's physical lines (first line plus continuation lines).
    i = next(i for i, l in enumerate(lines) if l.lower().startswith(b"subject:"))
    subj = [lines[i]] + [l for l in _continuations(lines, i)]
    for line in subj:
        assert len(line) <= 78, "Subject line of %d chars: %r" % (len(line), line)
        assert all(b < 0x80 for b in line), "raw 8-bit in Subject: %r" % line
    words = ENCODED_WORD.findall(b"\r\n".join(subj))
    assert words, subj
    for w in words:
        assert len(w) <= 75, "encoded-word of %d chars: %r" % (len(w), w)
        # RFC 2047 5: each encoded-word holds whole characters.
        [(data, charset)] = email.header.decode_header(w.decode("ascii"))
        data.decode(charset or "ascii")
    # Every header line short enough where it can be folded.
    for line in lines:
        if len(line) > 78:
            assert b" " not in line.split(b":", 1)[-1].strip(), \
                "header line of %d chars could have been folded: %r" % (len(line), line)


def _continuations(lines, i):
    for l in lines[i + 1:]:
        if l[:1] in (b" ", b"\t"):
            yield l
        else:
            break


def test_display_name_with_comma_and_quotes(gateway):
    name = 'Doe, Jane "JJ"'
    resp, msg, [m] = sent_and_delivered(
        gateway, payload(to=[{"email": "jane@example.com", "name": name}]))
    assert m.rcpt_tos == ["jane@example.com"]
    addrs = m.msg["To"].addresses
    assert len(addrs) == 1, "To split into %r" % (addrs,)
    assert addrs[0].display_name == name, addrs
    assert addrs[0].addr_spec == "jane@example.com"
    assert recipient(msg, "jane@example.com")["status"] == "delivered"


# ---------------------------------------------------------------- body transparency

def test_body_lines_starting_with_dot(gateway):
    text = ".hidden\n..two\n.\nafter a lone dot\n."
    gw = gateway
    resp, msg, msgs = sent_and_delivered(gw, payload(text=text))
    assert len(msgs) == 1, msgs
    assert_same_body(text_of(msgs[0].msg.get_body(preferencelist=("plain",))), text)
    # A lone "." that was not stuffed would have ended DATA early and the
    # rest of the body would have reached the relay as commands.
    stray = [c["line"] for c in gw.relay.client_lines()
             if c["line"].lower().startswith(("after", ".", "..two"))]
    assert not stray, "body lines arrived as SMTP commands: %r" % stray


def long_html(n=5000):
    out, i = "<!doctype html><html><body><table>", 0
    while len(out) < n:
        out += '<tr><td class="c%d"><a href="https://shop.example/p/%d?ref=mail">Item %d – café ☕</a></td></tr>' % (i, i, i)
        i += 1
    tail = "</table></body></html>"
    return out[:n - len(tail)] + tail


def test_long_html_line_is_wrapped(gateway):
    html = long_html()
    assert len(html) == 5000 and "\n" not in html
    resp, msg, [m] = sent_and_delivered(gateway, payload(text=None, html=html))
    for line in m.raw.split(b"\r\n"):
        assert len(line) <= 998, "raw line of %d octets" % len(line)
    assert b"\n" not in m.raw.replace(b"\r\n", b""), "bare LF in the message"
    assert b"\r" not in m.raw.replace(b"\r\n", b""), "bare CR in the message"
    part = m.msg.get_body(preferencelist=("html",))
    assert part is not None and part.get_content_type() == "text/html"
    assert_same_body(text_of(part), html)


def test_text_and_html_multipart_alternative(gateway):
    text, html = "Plain version\nline 2", "<p>HTML <b>version</b></p>"
    resp, msg, [m] = sent_and_delivered(gateway, payload(text=text, html=html))
    assert m.msg.get_content_type() == "multipart/alternative", m.msg.get_content_type()
    parts = list(m.msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert_same_body(text_of(parts[0]), text)
    assert_same_body(text_of(parts[1]), html)
    assert str(m.msg["MIME-Version"]).strip() == "1.0"
    date = email.utils.parsedate_to_datetime(str(m.msg["Date"]))
    assert date.tzinfo is not None
    assert abs(date - datetime.now(timezone.utc)) < timedelta(hours=1), date
    assert re.match(r"^<[^<>@\s]+@[^<>@\s]+>$", str(m.msg["Message-ID"]).strip()), m.msg["Message-ID"]
    for h in ("Date", "Message-ID", "MIME-Version", "From", "To", "Subject"):
        assert len(m.msg.get_all(h) or []) == 1, "%s header count" % h


def test_bcc_in_envelope_not_in_headers(gateway):
    gw = gateway
    resp = gw.client.send_ok(payload(to=["ann@example.com"], cc=["carl@example.net"],
                                     bcc=["secret@hidden.example"]))
    msg = gw.client.wait_message(resp["id"])
    assert msg["status"] == "delivered", msg
    for a in ("ann@example.com", "carl@example.net", "secret@hidden.example"):
        assert recipient(msg, a)["status"] == "delivered"
    msgs = wait_until(lambda: (lambda ms: sum(len(m.rcpt_tos) for m in ms) >= 3 and ms)(
        gw.relay.messages()), timeout=30, desc="all three envelope recipients")
    assert sorted(a for m in msgs for a in m.rcpt_tos) == [
        "ann@example.com", "carl@example.net", "secret@hidden.example"]
    for m in msgs:
        assert b"secret@hidden.example" not in m.header_block().lower(), m.header_block()
        assert m.msg.get_all("Bcc") is None
        assert [a.addr_spec for a in m.msg["To"].addresses] == ["ann@example.com"]
        assert [a.addr_spec for a in m.msg["Cc"].addresses] == ["carl@example.net"]


# ---------------------------------------------------------------- authentication

def test_bad_or_missing_key_is_401(gateway):
    gw = gateway
    bad = gw.mg.client("mg_not_a_real_key_0123456789")
    assert_error(bad.send(payload()), 401)
    assert_error(bad.get("/v1/messages/whatever"), 401)
    none = gw.mg.client(None)
    assert_error(none.send(payload()), 401)
    assert_error(none.get("/v1/events"), 401)
    r = requests.post(gw.mg.url + "/v1/messages", json=payload(), timeout=20,
                      headers={"Authorization": "Basic " + gw.key})
    assert_error(r, 401)
    # None of that was queued: a later good send is the only delivery.
    resp, msg, msgs = sent_and_delivered(gw, payload(subject="the good one"))
    assert [str(m.msg["Subject"]) for m in msgs] == ["the good one"]


# ---------------------------------------------------------------- validation

def test_crlf_injection_rejected_and_nothing_queued(gateway):
    gw = gateway
    for bad in ("Hi\r\nBcc: victim@example.com", "Hi\nBcc: victim@example.com", "Hi\rthere"):
        assert_error(gw.client.send(payload(subject=bad)), 422, field="subject")
    assert_error(gw.client.send(payload(headers={"X-A": "a\r\nB: c"})), 422,
                 field=lambda f: "x-a" in f.lower())
    assert_error(gw.client.send(payload(headers={"X-A\r\nB": "c"})), 422,
                 field=lambda f: f.lower().startswith("headers"))
    resp, msg, msgs = sent_and_delivered(gw, payload(subject="after the bad ones"))
    assert [str(m.msg["Subject"]) for m in msgs] == ["after the bad ones"], msgs
    assert all("victim@example.com" not in m.rcpt_tos for m in msgs)


def test_rejected_requests_not_listed(gateway):
    gw = gateway
    assert_error(gw.client.send(payload(subject="x\r\ny")), 422, field="subject")
    assert_error(gw.client.send(payload(colour="red")), 422)
    good = gw.client.send_ok(payload(subject="listed"))
    r = gw.client.get("/v1/messages")
    assert r.status_code == 200, r.text
    assert [m["id"] for m in json_of(r)["data"]] == [good["id"]], json_of(r)


def test_unknown_field_is_422(gateway):
    assert_error(gateway.client.send(payload(colour="red")), 422,
                 field=lambda f: "colour" in f)


def test_not_json_is_400_and_wrong_type_415(gateway):
    c = gateway.client
    assert_error(c.post("/v1/messages", data=b'{"from": "a@b.example", ',
                        headers={"Content-Type": "application/json"}), 400)
    assert_error(c.post("/v1/messages", data=b"not json at all",
                        headers={"Content-Type": "application/json"}), 400)
    assert_error(c.post("/v1/messages", data=b"from=a@b.example",
                        headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)


def test_too_many_recipients(gateway):
    to = ["r%d@example.com" % i for i in range(51)]
    r = gateway.client.send(payload(to=to))
    assert r.status_code in (413, 422), r.text
    assert_error(r, r.status_code, field=lambda f: f.startswith("to"))


def post_oversized(url, key, size):
    """POST a valid send request of `size` bytes; return (status, response or None).

    The server may answer 413 before reading the body and close; a connection
    reset is tolerated only if a status line was received first.
    """
    head_json = b'{"from": "a@acme.example", "to": ["b@example.com"], "subject": "big", "text": "'
    body = head_json + b"a" * (size - len(head_json) - 2) + b'"}'
    assert len(body) == size
    try:
        r = requests.post(url + "/v1/messages", data=body, timeout=120,
                          headers={"Authorization": "Bearer " + key,
                                   "Content-Type": "application/json"})
        return r.status_code, r
    except requests.ConnectionError:
        pass
    host, port = url.split("//")[1].split(":")
    head = ("POST /v1/messages HTTP/1.1\r\nHost: %s:%s\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (host, port, key, len(body))).encode()
    received = b""
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head)
        s.setblocking(False)
        sent = 0
        while b"\r\n" not in received:
            want_w = [s] if sent < len(body) else []
            rd, wr, _ = select.select([s], want_w, [], 60)
            if not rd and not wr:
                break
            if rd:
                try:
                    chunk = s.recv(65536)
                except ConnectionError:
                    break
                if not chunk:
                    break
                received += chunk
            elif wr:
                try:
                    sent += s.send(body[sent:sent + 65536])
                except (BlockingIOError, InterruptedError):
                    pass
                except ConnectionError:
                    sent = len(body)
    assert received.startswith(b"HTTP/1."), \
        "no HTTP status line before the connection ended: %r" % received[:200]
    return int(received.split(b" ", 2)[1]), None


def test_body_over_35mb_is_413(gateway):
    gw = gateway
    # 38,000,000 bytes is over the limit whether "35 MB" means 35,000,000
    # or 35 MiB (36,700,160); the request is otherwise valid.
    status, r = post_oversized(gw.mg.url, gw.key, 38_000_000)
    assert status == 413, "expected 413 for a 38 MB body, got %s: %s" % (
        status, r.text[:300] if r is not None else "")
    if r is not None:
        assert_error(r, 413)
    # The server is still healthy and nothing was queued.
    resp, msg, msgs = sent_and_delivered(gw, payload(subject="after the big one"))
    assert [str(m.msg["Subject"]) for m in msgs] == ["after the big one"]


# ---------------------------------------------------------------- SMTP dialogue

def _session_of_transaction(relay):
    mails = relay.client_lines("MAIL FROM")
    assert mails, "no MAIL FROM at the relay"
    s = mails[0]["session"]
    return [r for r in relay.commands() if r.get("session") == s and "dir" in r]


def lockstep_violations(records):
    """Client commands sent while an earlier reply was still outstanding."""
    bad, pending = [], False
    for r in records:
        if r["dir"] == "C":
            if pending:
                bad.append(r["line"])
            pending = True
        elif r["line"][3:4] != "-":
            pending = False
    return bad


def test_relay_without_pipelining_gets_lockstep(relay, mailgate, api_key):
    # The relay holds its MAIL reply back; a client that pipelined anyway
    # would send RCPT before that reply.
    rl = relay(name="relay1", pipelining=False, rules=[{"cmd": "MAIL", "delay_ms": 400}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    resp = c.send_ok(payload(to=["ann@example.com", "bob@example.org"]))
    msg = c.wait_message(resp["id"])
    assert msg["status"] == "delivered", msg
    [m] = rl.wait_messages(1)
    assert sorted(m.rcpt_tos) == ["ann@example.com", "bob@example.org"]
    recs = _session_of_transaction(rl)
    assert not lockstep_violations(recs), "commands sent before the previous reply: %r" % (
        lockstep_violations(recs),)


def test_pipelining_used_when_advertised(relay, mailgate, api_key):
    rl = relay(name="relay1", rules=[{"cmd": "MAIL", "delay_ms": 500}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    resp = c.send_ok(payload(to=["ann@example.com", "bob@example.org"]))
    msg = c.wait_message(resp["id"])
    assert msg["status"] == "delivered", msg
    [m] = rl.wait_messages(1)
    recs = _session_of_transaction(rl)
    i_mail = next(i for i, r in enumerate(recs) if r["dir"] == "C" and r["line"].upper().startswith("MAIL"))
    i_reply = next(i for i, r in enumerate(recs) if i > i_mail and r["dir"] == "S")
    early = [r["line"] for r in recs[i_mail + 1:i_reply] if r["dir"] == "C"]
    assert [l.split(":")[0].upper() for l in early][:2] == ["RCPT TO", "RCPT TO"], \
        "with PIPELINING, RCPT should follow MAIL without waiting; before the MAIL reply the relay got %r" % early


def test_451_on_rcpt_is_retried(relay, mailgate, api_key):
    rl = relay(name="relay1", rules=[
        {"cmd": "RCPT", "match": "slow@example.com", "reply": "451 4.3.0 Try again later", "times": 1}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    resp = c.send_ok(payload(to=["slow@example.com"]))
    msg = c.wait_message(resp["id"])
    assert msg["status"] == "delivered", msg
    rc = recipient(msg, "slow@example.com")
    assert rc["status"] == "delivered" and rc["attempts"] == 2, rc

    types = [e["type"] for e in events_of(msg, "slow@example.com")]
    assert [t for t in types if t in ("queued", "deferred", "delivered")] == \
        ["queued", "deferred", "delivered"], types
    [d] = events_of(msg, "slow@example.com", "deferred")
    assert d["smtp"]["code"] == 451 and d["smtp"]["enhanced_code"] == "4.3.0", d
    assert d["smtp"]["relay"] == "relay1" and d["attempt"] == 1, d
    [ok] = events_of(msg, "slow@example.com", "delivered")
    assert ok["attempt"] == 2 and ok["smtp"]["code"] == 250, ok
    assert parse_time(ok["created_at"]) >= parse_time(d["created_at"])

    evs = c.events(message_id=resp["id"])["data"]
    assert [e["type"] for e in evs if e["type"] in ("deferred", "delivered")] == ["delivered", "deferred"], evs

    msgs = rl.wait_messages(1)
    assert [m.rcpt_tos for m in msgs] == [["slow@example.com"]]
    assert len(rl.client_lines("RCPT TO:<slow@example.com>")) == 2


def test_end_of_data_rejection_bounces(relay, mailgate, api_key):
    rl = relay(name="relay1", rules=[{"cmd": "EOD", "reply": "554 5.6.0 Message content rejected"}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    resp = c.send_ok(payload(to=["ann@example.com"]))
    msg = c.wait_message(resp["id"])
    assert msg["status"] == "bounced", msg
    [b] = events_of(msg, "ann@example.com", "bounced")
    assert b["smtp"]["code"] == 554 and b["smtp"]["enhanced_code"] == "5.6.0", b
    assert b["bounce_type"] in ("hard", "soft"), b
    assert rl.messages() == []
    assert len(rl.client_lines("<end of data>")) == 1


def test_failover_to_second_relay(relay, mailgate, api_key):
    dead = "smtp://127.0.0.1:%d?tls=none&name=dead" % free_port()
    rl = relay(name="relay2")
    mg = mailgate(relay_urls=[dead, rl.url])
    c = mg.client(api_key("acme"))
    resp = c.send_ok(payload())
    msg = c.wait_message(resp["id"])
    assert msg["status"] == "delivered", msg
    [d] = events_of(msg, "ann@example.com", "delivered")
    assert d["smtp"]["relay"] == "relay2", d
    assert len(rl.wait_messages(1)) == 1


# ---------------------------------------------------------------- tenants

def test_tenant_isolation(gateway, api_key):
    gw = gateway
    resp, msg, _ = sent_and_delivered(gw, payload())
    mid = resp["id"]
    other = gw.mg.client(api_key("globex"))
    assert_error(other.get("/v1/messages/" + mid), 404)
    r = other.get("/v1/events", params={"message_id": mid})
    if r.status_code == 200:
        assert json_of(r)["data"] == [], json_of(r)
    else:
        assert_error(r, 404)
    r = other.get("/v1/messages")
    assert r.status_code == 200 and json_of(r)["data"] == [], r.text
    assert_error(gw.client.get("/v1/messages/doesnotexist"), 404)
    altered = mid[:-1] + ("0" if mid[-1] != "0" else "1")
    assert_error(gw.client.get("/v1/messages/" + altered), 404)


# ---------------------------------------------------------------- connection pool

def _ehlos_and_sessions(rl):
    ehlos = rl.client_lines("EHLO") + rl.client_lines("HELO")
    sessions = {r["session"] for r in rl.commands() if r.get("event") == "connect"}
    return ehlos, sessions


def test_connections_are_reused(gateway):
    # Default pool (4): six messages one after another need at most four
    # connections, so at least some were reused.
    gw = gateway
    for i in range(6):
        resp = gw.client.send_ok(payload(subject="n%d" % i))
        assert gw.client.wait_message(resp["id"])["status"] == "delivered"
    msgs = gw.relay.wait_messages(6)
    assert sorted(str(m.msg["Subject"]) for m in msgs) == ["n%d" % i for i in range(6)]
    ehlos, sessions = _ehlos_and_sessions(gw.relay)
    assert len(ehlos) <= 4, "%d EHLOs for 6 sequential messages with pool=4" % len(ehlos)
    assert len(sessions) <= 4, "%d connections for 6 sequential messages with pool=4" % len(sessions)


def test_single_connection_pool_reuses_it(relay, mailgate, api_key):
    rl = relay(name="relay1", params={"pool": 1})
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    for i in range(3):
        resp = c.send_ok(payload(subject="s%d" % i))
        assert c.wait_message(resp["id"])["status"] == "delivered"
    assert len(rl.wait_messages(3)) == 3
    ehlos, sessions = _ehlos_and_sessions(rl)
    assert len(ehlos) == 1 and len(sessions) == 1, \
        "pool=1, 3 sequential messages: %d EHLOs over %d connections" % (len(ehlos), len(sessions))


def test_pool_size_bounds_concurrent_connections(relay, mailgate, api_key):
    rl = relay(name="relay1", params={"pool": 2}, rules=[{"cmd": "EOD", "delay_ms": 200}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    ids = [c.send_ok(payload(to=["u%d@example.com" % i], subject="b%d" % i))["id"] for i in range(8)]
    for mid in ids:
        assert c.wait_message(mid)["status"] == "delivered"
    assert len(rl.wait_messages(8)) == 8
    live, peak = 0, 0
    for r in rl.commands():
        if r.get("event") == "connect":
            live += 1
            peak = max(peak, live)
        elif r.get("event") == "disconnect":
            live -= 1
    assert 1 <= peak <= 2, "%d concurrent connections with pool=2" % peak
