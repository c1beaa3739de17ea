"""End-to-end tests of the compatible surfaces (issue 8): the official
Postmark, SendGrid, Resend and Mailgun Node.js clients, unchanged and
configured only with mailgate's base URL and a mailgate key, send through
a real mailgate + Redis to the aiosmtpd relay (tests/relay.py).

For each client (scripts in tests/compat/send_*.js, pinned versions in
tests/compat/package-lock.json):
- a message with a Cc, a PDF attachment, an inline PNG (Content-ID), a
  custom header, tags and metadata: the client reports success; the relay
  receives the right MIME (parsed back with Python's email package); and
  GET /v1/messages/{id} shows it delivered with its tags and metadata;
- a bad key and an invalid address each make the client raise (or, for
  Resend, return) its own error type with a sensible message, and nothing
  is queued.
Plus each surface's extras (Postmark batch and templates, SendGrid
personalizations and sandbox mode, Resend batch and Idempotency-Key,
Mailgun urlencoded forms and o:deliverytime) over plain HTTP.

The npm packages are installed once with `npm ci` into tests/compat/
node_modules (see node_clients); later runs reuse them.
"""

import base64
import email.utils
import fcntl
import hashlib
import json
import shutil
import subprocess
import time

import pytest

from conftest import REPO, json_of, wait_until

COMPAT = REPO / "tests" / "compat"
NODE_TIMEOUT = 60

TO = "ann@example.com"
CC = "bob@example.org"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
       + bytes(range(256)))


# ---------------------------------------------------------------- node clients

def _lock_digest():
    return hashlib.sha256((COMPAT / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def node_clients():
    """The node binary, once tests/compat/node_modules matches the lock file.

    `npm ci` runs only when node_modules is missing or was installed from
    another package-lock.json (a stamp file records its digest), under a
    file lock so that concurrent test runs do not install over each other.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for the compatibility tests (scripts/deps.sh installs them)"
    stamp = COMPAT / "node_modules" / ".mailgate-lock-sha256"
    want = _lock_digest()
    with open(COMPAT / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not stamp.exists() or stamp.read_text().strip() != want:
                r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=str(COMPAT),
                                   capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
                assert r.returncode == 0, "npm ci failed (%d):\n%s\n%s" % (r.returncode, r.stdout, r.stderr)
                stamp.write_text(want + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return node


def run_client(node, provider, base, key, mode):
    """Run tests/compat/send_<provider>.js; return its JSON result line."""
    r = subprocess.run([node, "send_%s.js" % provider, base, key, mode], cwd=str(COMPAT),
                       capture_output=True, text=True, timeout=NODE_TIMEOUT, stdin=subprocess.DEVNULL)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert r.returncode == 0 and lines, "send_%s.js %s exited %d\nstdout: %s\nstderr: %s" % (
        provider, mode, r.returncode, r.stdout, r.stderr)
    return json.loads(lines[-1])


def client_ok(out):
    assert out["ok"], "the client reported an error: %r" % (out,)
    return out["result"]


def client_error(out):
    assert not out["ok"], "the client reported success where it should have failed: %r" % (out,)
    return out["error"]


# ---------------------------------------------------------------- checks

def relay_message(relay, subject):
    """The one message the relay received with this subject."""
    def find():
        got = [m for m in relay.messages() if m.msg["Subject"] == subject]
        return got[0] if got else None
    return wait_until(find, timeout=30, desc="a message %r at the relay" % subject)


def check_mime(m, reply_to=True):
    """The message every client sends (tests/compat/common.js), received intact."""
    msg = m.msg
    assert sorted(m.rcpt_tos) == sorted([TO, CC]), m.rcpt_tos
    assert msg["From"].addresses[0].addr_spec == "noreply@acme.example", msg["From"]
    assert [a.addr_spec for a in msg["To"].addresses] == [TO], msg["To"]
    cc = msg["Cc"].addresses
    assert [a.addr_spec for a in cc] == [CC] and cc[0].display_name == "Bob", msg["Cc"]
    assert msg["X-Campaign"] == "q4"
    if reply_to:
        assert msg["Reply-To"].addresses[0].addr_spec == "support@acme.example", msg["Reply-To"]
    assert msg.get_body(("plain",)).get_content().strip() == "Your receipt is attached."
    html = msg.get_body(("html",)).get_content()
    assert 'src="cid:logo.png"' in html, html
    parts = {p.get_filename(): p for p in msg.walk() if p.get_filename()}
    assert set(parts) == {"receipt.pdf", "logo.png"}, list(parts)
    pdf, png = parts["receipt.pdf"], parts["logo.png"]
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_payload(decode=True) == PDF
    assert png.get_content_type() == "image/png"
    assert png.get_content_disposition() == "inline"
    assert png["Content-ID"] == "<logo.png>", png["Content-ID"]
    assert png.get_payload(decode=True) == PNG
    # the inline image sits in multipart/related beside the html
    related = [p for p in msg.walk() if p.get_content_type() == "multipart/related"]
    assert related and png in related[0].get_payload()


def check_record(c, mid, tags, metadata):
    m = c.wait_message(mid, "delivered")
    assert m["tags"] == tags, m["tags"]
    assert m["metadata"] == metadata, m["metadata"]
    types = [e["type"] for e in m["events"]]
    assert "queued" in types and "delivered" in types, types
    for e in m["events"]:
        assert e["tags"] == tags and e["metadata"] == metadata, e
    return m


def assert_nothing_queued(c):
    r = c.get("/v1/messages")
    assert r.status_code == 200 and json_of(r)["data"] == [], r.text


# ---------------------------------------------------------------- Postmark

def test_postmark_client_sends(gateway, node_clients):
    res = client_ok(run_client(node_clients, "postmark", gateway.mg.url, gateway.key, "send"))
    assert res["ErrorCode"] == 0 and res["Message"] == "OK", res
    assert res["To"] == TO and res["SubmittedAt"], res
    check_mime(relay_message(gateway.relay, "Receipt via postmark"))
    check_record(gateway.client, res["MessageID"], ["receipt"], {"order": "42", "provider": "postmark"})


def test_postmark_client_errors(gateway, node_clients):
    err = client_error(run_client(node_clients, "postmark", gateway.mg.url, "mg_not_a_key", "bad-key"))
    assert err["class"] == "InvalidAPIKeyError" and err["status"] == 401 and err["code"] == 10, err
    assert "Server token" in err["message"], err
    err = client_error(run_client(node_clients, "postmark", gateway.mg.url, gateway.key, "bad-address"))
    assert err["class"] == "InvalidEmailRequestError" and err["status"] == 422 and err["code"] == 300, err
    assert "not a valid address" in err["message"], err
    assert_nothing_queued(gateway.client)


def test_postmark_batch_and_template(gateway, node_clients):
    c = gateway.client
    res = client_ok(run_client(node_clients, "postmark", gateway.mg.url, gateway.key, "batch"))
    assert [r["ErrorCode"] for r in res] == [0, 300], res
    assert res[0]["MessageID"] and "not a valid address" in res[1]["Message"], res
    c.wait_message(res[0]["MessageID"], "delivered")

    # TemplateAlias names a stored template; TemplateModel is its data.
    r = c.put("/v1/templates/receipt", json={"subject": "Hello {{name}}", "text": "Hi {{name}}, thanks."})
    assert r.status_code in (200, 201), r.text
    res = client_ok(run_client(node_clients, "postmark", gateway.mg.url, gateway.key, "template"))
    assert res["ErrorCode"] == 0, res
    m = relay_message(gateway.relay, "Hello Ann")
    assert m.msg.get_body(("plain",)).get_content().strip() == "Hi Ann, thanks."
    assert c.wait_message(res["MessageID"], "delivered")["tags"] == ["templated"]


def test_postmark_http_errors(gateway):
    url, key = gateway.mg.url, gateway.key
    s = gateway.mg.client()
    h = {"X-Postmark-Server-Token": key, "Accept": "application/json"}
    msg = {"From": "a@acme.example", "To": TO, "Subject": "s", "TextBody": "t"}
    r = s.post("/email", json=msg)  # no token at all
    assert r.status_code == 401 and json_of(r)["ErrorCode"] == 10, r.text
    r = s.post("/email", data="x", headers=dict(h, **{"Content-Type": "text/plain"}))
    assert r.status_code == 422 and json_of(r)["ErrorCode"] == 409, r.text
    r = s.post("/email", data="{", headers=dict(h, **{"Content-Type": "application/json"}))
    assert r.status_code == 422 and json_of(r)["ErrorCode"] == 402, r.text
    r = s.post("/email/batch", json=[msg] * 501, headers=h)
    assert r.status_code == 422 and json_of(r)["ErrorCode"] == 410, r.text
    r = s.post("/email/withTemplate", json=dict(msg, TemplateAlias="nope", TemplateModel={}), headers=h)
    assert r.status_code == 422 and json_of(r)["ErrorCode"] == 1101, r.text
    # every recipient suppressed: Postmark's 406 "inactive recipient"
    r = gateway.client.post("/v1/suppressions", json={"email": TO, "reason": "manual"})
    assert r.status_code in (200, 201, 204), r.text
    r = s.post("/email", json=msg, headers=h)
    body = json_of(r)
    assert r.status_code == 422 and body["ErrorCode"] == 406 and "Found inactive addresses: %s." % TO in body["Message"], \
        r.text
    assert url


# ---------------------------------------------------------------- SendGrid

def test_sendgrid_client_sends(gateway, node_clients):
    res = client_ok(run_client(node_clients, "sendgrid", gateway.mg.url, gateway.key, "send"))
    assert res["statusCode"] == 202 and res["body"] == "" and res["messageId"], res
    check_mime(relay_message(gateway.relay, "Receipt via sendgrid"))
    check_record(gateway.client, res["messageId"], ["receipt"], {"order": "42", "provider": "sendgrid"})


def test_sendgrid_client_errors(gateway, node_clients):
    err = client_error(run_client(node_clients, "sendgrid", gateway.mg.url, "mg_not_a_key", "bad-key"))
    assert err["class"] == "ResponseError" and err["code"] == 401, err
    assert "authorization grant is invalid" in err["body"]["errors"][0]["message"], err
    err = client_error(run_client(node_clients, "sendgrid", gateway.mg.url, gateway.key, "bad-address"))
    assert err["class"] == "ResponseError" and err["code"] == 400, err
    e = err["body"]["errors"][0]
    assert e["field"] == "personalizations.0.to.0" and "not a valid address" in e["message"], err
    assert_nothing_queued(gateway.client)


def test_sendgrid_sandbox_queues_nothing(gateway, node_clients):
    res = client_ok(run_client(node_clients, "sendgrid", gateway.mg.url, gateway.key, "sandbox"))
    assert res["statusCode"] == 200 and not res["messageId"], res
    assert_nothing_queued(gateway.client)


def test_sendgrid_personalizations(gateway):
    """Each personalization is a message of its own, with its own subject,
    headers, custom_args and send_at; one bad personalization queues none."""
    s = gateway.mg.client(gateway.key)
    body = {
        "personalizations": [
            {"to": [{"email": TO}], "custom_args": {"n": "1"}, "headers": {"X-P": "one"}},
            {"to": [{"email": CC, "name": "Bob"}], "subject": "Second", "custom_args": {"n": "2"},
             "send_at": int(time.time()) + 3600},
        ],
        "from": {"email": "noreply@acme.example", "name": "Acme"},
        "subject": "First",
        "content": [{"type": "text/plain", "value": "hello"}],
        "categories": ["digest"],
        "custom_args": {"campaign": "q4"},
        "ip_pool_name": "ignored",
    }
    bad = json.loads(json.dumps(body))
    bad["personalizations"][1]["to"] = [{"email": "nope"}]
    r = s.post("/v3/mail/send", json=bad)
    assert r.status_code == 400, r.text
    assert json_of(r)["errors"][0]["field"] == "personalizations.1.to.0", r.text
    assert_nothing_queued(gateway.client)

    r = s.post("/v3/mail/send", json=body)
    assert r.status_code == 202 and r.content == b"" and r.headers["X-Message-Id"], r.text
    first = gateway.client.wait_message(r.headers["X-Message-Id"], "delivered")
    assert first["subject"] == "First" and first["metadata"] == {"campaign": "q4", "n": "1"}, first
    assert first["tags"] == ["digest"]
    m = relay_message(gateway.relay, "First")
    assert m.rcpt_tos == [TO] and m.msg["X-P"] == "one"
    msgs = json_of(gateway.client.get("/v1/messages"))["data"]
    second = [x for x in msgs if x["subject"] == "Second"]
    assert len(msgs) == 2 and second and second[0]["status"] == "scheduled", msgs

    r = gateway.mg.client("mg_not_a_key").post("/v3/mail/send", json=body)
    assert r.status_code == 401 and json_of(r)["errors"][0]["field"] is None, r.text


# ---------------------------------------------------------------- Resend

def test_resend_client_sends(gateway, node_clients):
    res = client_ok(run_client(node_clients, "resend", gateway.mg.url, gateway.key, "send"))
    mid = res["id"]
    assert res["email"]["id"] == mid and res["email"]["object"] == "email", res
    assert res["email"]["subject"] == "Receipt via resend", res
    check_mime(relay_message(gateway.relay, "Receipt via resend"))
    check_record(gateway.client, mid, ["category:receipt", "order:42"], {"category": "receipt", "order": "42"})
    # GET /emails/{id} (as the client reads it) once delivered
    r = gateway.mg.client(gateway.key).get("/emails/" + mid)
    got = json_of(r)
    assert r.status_code == 200 and got["last_event"] == "delivered", r.text
    assert sorted(got["to"]) == sorted([TO, CC])
    assert got["tags"] == [{"name": "category", "value": "receipt"}, {"name": "order", "value": "42"}]


def test_resend_client_errors(gateway, node_clients):
    err = client_error(run_client(node_clients, "resend", gateway.mg.url, "mg_not_a_key", "bad-key"))
    assert err["name"] == "invalid_api_key" and err["status"] == 403, err
    err = client_error(run_client(node_clients, "resend", gateway.mg.url, gateway.key, "bad-address"))
    assert err["name"] == "validation_error" and err["status"] == 422, err
    assert "not a valid address" in err["message"], err
    assert_nothing_queued(gateway.client)


def test_resend_batch_and_idempotency(gateway, node_clients):
    res = client_ok(run_client(node_clients, "resend", gateway.mg.url, gateway.key, "batch"))
    ids = [d["id"] for d in res["data"]]
    assert len(ids) == 2, res
    for mid in ids:
        gateway.client.wait_message(mid, "delivered")

    s = gateway.mg.client(gateway.key)
    email_ = {"from": "noreply@acme.example", "to": TO, "subject": "once", "text": "t", "topic_id": "ignored"}
    r1 = s.post("/emails", json=email_, headers={"Idempotency-Key": "k-1"})
    r2 = s.post("/emails", json=email_, headers={"Idempotency-Key": "k-1"})
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    assert json_of(r1)["id"] == json_of(r2)["id"] and r2.headers.get("Idempotent-Replayed") == "true"
    r3 = s.post("/emails", json=dict(email_, subject="other"), headers={"Idempotency-Key": "k-1"})
    assert r3.status_code == 409 and json_of(r3)["name"] == "invalid_idempotent_request", r3.text

    # strict batch: one bad email queues none; permissive sends the good one
    before = len(json_of(gateway.client.get("/v1/messages"))["data"])
    bad = [email_, dict(email_, to="nope")]
    r = s.post("/emails/batch", json=bad)
    assert r.status_code == 422 and json_of(r)["name"] == "validation_error", r.text
    assert len(json_of(gateway.client.get("/v1/messages"))["data"]) == before
    r = s.post("/emails/batch", json=bad, headers={"x-batch-validation": "permissive"})
    body = json_of(r)
    assert r.status_code == 200 and len(body["data"]) == 1 and body["errors"][0]["index"] == 1, r.text

    r = s.get("/emails/0123456789abcdef")
    assert r.status_code == 404 and json_of(r)["name"] == "not_found", r.text
    r = gateway.mg.client().post("/emails", json=email_)
    assert r.status_code == 401 and json_of(r)["name"] == "missing_api_key", r.text


# ---------------------------------------------------------------- Mailgun

def test_mailgun_client_sends(gateway, node_clients):
    res = client_ok(run_client(node_clients, "mailgun", gateway.mg.url, gateway.key, "send"))
    assert res["status"] == 200 and res["message"] == "Queued. Thank you.", res
    assert res["id"].startswith("<") and res["id"].endswith("@mailgate.test>"), res
    mid = res["id"][1:].split("@")[0]
    m = relay_message(gateway.relay, "Receipt via mailgun")
    check_mime(m)
    assert m.msg["Message-ID"] == res["id"]
    check_record(gateway.client, mid, ["receipt"], {"order": "42", "provider": "mailgun"})


def test_mailgun_client_errors(gateway, node_clients):
    err = client_error(run_client(node_clients, "mailgun", gateway.mg.url, "mg_not_a_key", "bad-key"))
    assert err["type"] == "MailgunAPIError" and err["status"] == 401 and err["details"] == "Forbidden", err
    err = client_error(run_client(node_clients, "mailgun", gateway.mg.url, gateway.key, "bad-address"))
    assert err["type"] == "MailgunAPIError" and err["status"] == 400, err
    assert "not a valid address" in err["details"], err
    assert_nothing_queued(gateway.client)


def test_mailgun_urlencoded_and_deliverytime(gateway):
    s = gateway.mg.client()
    auth = ("api", gateway.key)
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    form = [("from", "Acme <noreply@acme.example>"), ("to", TO), ("to", "Bob <%s>" % CC),
            ("subject", "Later"), ("text", "hello"), ("o:tag", "a"), ("o:tag", "b"),
            ("o:deliverytime", when), ("h:X-Mailgun-Variables", '{"user": "7"}'), ("o:dkim", "yes")]
    r = s.post("/v3/acme.example/messages", data=form, auth=auth)
    assert r.status_code == 200, r.text
    mid = json_of(r)["id"][1:].split("@")[0]
    m = gateway.client.message(mid)
    assert m["status"] == "scheduled" and m["tags"] == ["a", "b"] and m["metadata"] == {"user": "7"}, m
    assert sorted(x["email"] for x in m["recipients"]) == sorted([TO, CC])

    r = s.post("/v3/acme.example/messages", data=form, auth=("api", "mg_not_a_key"))
    assert r.status_code == 401 and r.text == "Forbidden", r.text
    r = s.post("/v3/acme.example/messages", data=form, auth=("someone", gateway.key))
    assert r.status_code == 401, r.text
    r = s.post("/v3/acme.example/messages", data=[f for f in form if f[0] != "from"], auth=auth)
    assert r.status_code == 400 and "from" in json_of(r)["message"], r.text
    r = s.post("/v3/acme.example/messages", data=form + [("o:testmode", "yes")], auth=auth)
    assert r.status_code == 200, r.text
    assert len(json_of(gateway.client.get("/v1/messages"))["data"]) == 1  # test mode queued nothing


def test_v1_keeps_its_rules(gateway):
    """The per-route auth and body types of the compatible surfaces leave
    /v1 as it was: Bearer only, JSON only, mailgate's error shape."""
    s = gateway.mg.client()
    r = s.post("/v1/messages", data="from=a", headers={"Authorization": "Bearer " + gateway.key,
                                                       "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and json_of(r)["error"]["type"] == "unsupported_media_type", r.text
    r = s.post("/v1/messages", json={}, headers={"X-Postmark-Server-Token": gateway.key})
    assert r.status_code == 401 and json_of(r)["error"]["type"] == "unauthorized", r.text
    r = s.post("/v1/messages", json={}, auth=("api", gateway.key))
    assert r.status_code == 401 and json_of(r)["error"]["type"] == "unauthorized", r.text
