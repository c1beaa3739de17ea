"""A corpus of malformed and hostile requests (issue 6, points 7 and 8).

Every case is its own test id (``test_hostile_request[<case>]``) and gets a
4xx of the kind the contract names (400 unparsable JSON, 401/403 auth, 404,
413 too large, 415 not JSON, 422 failed validation), a JSON error body
``{"error": {"type", "message", "field"?}}`` whose ``field`` names the field
at fault where one is, and an ``X-Request-Id``. One gateway (Redis, relay,
mailgate) serves the whole module, so that after the corpus, the slow-loris
probe and the oversized uploads, ``test_zz_after_the_corpus`` can check that
the server is still up and that nothing at all was queued: no message in
the API, none at the relay, no job, message, event or idempotency key in
Redis; and that a valid send still goes through.

Cases are data (CASES below): a request (method, path, raw body or JSON,
Content-Type, auth) and what must come back (statuses, field)."""

import json
import socket
import threading
import time

import pytest
import requests

from conftest import (MAILGATE_BIN, PYTHON, RELAY_PY, START_TIMEOUT, Proc, Redis, Relay,
                      base_env, free_port, json_of, run_cli, tail, wait_until)

BASE = {"from": "Acme <noreply@acme.example>", "to": ["ann@example.com"],
        "subject": "Hi", "text": "plain body"}

DROP = object()


def P(**kw):
    """BASE with changes; a value of DROP removes the key."""
    p = json.loads(json.dumps(BASE))
    for k, v in kw.items():
        if v is DROP:
            p.pop(k, None)
        else:
            p[k] = v
    return p


def raw_with(fragment):
    """BASE serialised, with a raw JSON fragment spliced in as one more member
    (so that the fragment may be anything, also invalid JSON)."""
    s = json.dumps(BASE)
    return (s[:-1] + ", " + fragment + "}").encode("utf-8") if isinstance(fragment, str) \
        else s[:-1].encode() + b", " + fragment + b"}"


def nested(depth, leaf="x"):
    """A JSON value nested `depth` levels deep (arrays and objects alternate)."""
    v = leaf
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


def deep_raw(depth):
    return b"[" * depth + b"]" * depth


def deep_obj_raw(depth):
    """depth nested objects {"k": {"k": ... "x" ...}} as JSON text (Python's
    own encoder would hit its recursion limit)."""
    return '{"k": ' * depth + '"x"' + "}" * depth


class Case:
    def __init__(self, cid, status, field=None, *, body=None, raw=None, method="POST",
                 path="/v1/messages", ctype="application/json", headers=None, auth="full",
                 check=None):
        self.id = cid
        self.status = {status} if isinstance(status, int) else set(status)
        self.field = field          # None: not checked; "ANY": must be present; str or tuple: prefix(es)
        self.body = body
        self.raw = raw
        self.method = method
        self.path = path
        self.ctype = ctype
        self.headers = headers or {}
        self.auth = auth
        self.check = check          # extra check(resp, body)

    def data(self):
        if self.raw is not None:
            return self.raw
        if self.body is not None:
            return json.dumps(self.body).encode("utf-8")
        return None


ANY = "ANY"
LOCAL65 = "a" * 65
DOMAIN256 = ".".join(["d" * 63, "e" * 63, "f" * 63, "g" * 61, "com"])  # 63*3+61+3+4 = 257 > 255
assert len(DOMAIN256) > 255
RCPTS = ["user%d@example.com" % i for i in range(51)]


def batch_all_invalid(resp, body):
    results = body.get("results")
    assert isinstance(results, list) and len(results) == 2, body
    for item in results:
        assert isinstance(item.get("error"), dict), body
        assert item["error"].get("type") and item["error"].get("message"), body


CASES = [
    # ---- unparsable JSON: 400
    Case("json-truncated", 400, raw=b'{"from": "noreply@acme.example", "to": ["ann@exa'),
    Case("json-trailing-garbage", 400, raw=json.dumps(BASE).encode() + b" garbage"),
    Case("json-two-objects", 400, raw=json.dumps(BASE).encode() * 2),
    Case("json-NaN", 400, raw=raw_with('"metadata": {"x": NaN}')),
    Case("json-Infinity", 400, raw=raw_with('"metadata": {"x": -Infinity}')),
    Case("json-block-comment", 400, raw=b"/* comment */ " + json.dumps(BASE).encode()),
    Case("json-line-comment", 400, raw=b"// comment\n" + json.dumps(BASE).encode()),
    Case("json-single-quotes", 400, raw=b"{'from': 'noreply@acme.example', 'to': ['ann@example.com']}"),
    Case("json-unquoted-keys", 400, raw=b'{from: "noreply@acme.example", to: ["ann@example.com"]}'),
    Case("json-trailing-comma", 400, raw=json.dumps(BASE).encode()[:-1] + b", }"),
    Case("json-invalid-escape", 400, raw=raw_with(r'"tags": ["\x41"]')),
    Case("json-raw-newline-in-string", 400, raw=raw_with('"tags": ["a\nb"]')),
    Case("json-leading-zero", 400, raw=raw_with('"track_opens": 01')),
    Case("json-empty-body", 400, raw=b""),
    Case("json-whitespace-only", 400, raw=b" \r\n\t "),
    # RFC 8259 lets a parser ignore a BOM; then {} fails validation instead.
    Case("json-bom-empty-object", (400, 422), raw=b"\xef\xbb\xbf{}"),
    Case("json-huge-exponent", (400, 422), raw=raw_with('"track_opens": 1e999999')),
    Case("json-unclosed-100000-deep", (400, 413, 422), raw=b"[" * 100000),
    # ---- invalid UTF-8 in the raw body (not JSON text) or lone surrogates
    Case("utf8-invalid-byte-subject", (400, 422), raw=json.dumps(P(subject="X")).encode().replace(b'"X"', b'"\xff\xfe"')),
    Case("utf8-overlong-in-address", (400, 422), raw=json.dumps(P(to=["annZ@example.com"])).encode().replace(b"Z", b"\xc0\xaf")),
    Case("utf8-surrogate-bytes", (400, 422), raw=json.dumps(P(subject="X")).encode().replace(b'"X"', b'"\xed\xa0\x80"')),
    Case("utf8-truncated-sequence", (400, 422), raw=json.dumps(P(subject="X")).encode().replace(b'"X"', b'"ab\xe2\x82"')),
    Case("utf8-lone-surrogate-escape", (400, 422), raw=json.dumps(P(subject="X")).encode().replace(b'"X"', b'"\\ud800"')),
    Case("utf8-invalid-in-header-name", (400, 422), raw=json.dumps(P(headers={"X-Z": "v"})).encode().replace(b"X-Z", b"X-\xff")),
    # ---- not an object, empty, missing members
    Case("top-level-array", 422, raw=b"[]"),
    Case("top-level-string", 422, raw=b'"hello"'),
    Case("empty-object", 422, ANY, body={}),
    Case("missing-from", 422, "from", body=P(**{"from": DROP})),
    Case("missing-to", 422, "to", body=P(to=DROP)),
    Case("no-content-at-all", 422, body=P(text=DROP)),
    # ---- wrong types
    Case("from-number", 422, "from", body=P(**{"from": 42})),
    Case("from-null", 422, "from", body=P(**{"from": None})),
    Case("from-true", 422, "from", body=P(**{"from": True})),
    Case("from-object-without-email", 422, "from", body=P(**{"from": {"name": "Acme"}})),
    Case("to-object-without-email", 422, "to", body=P(to={"name": "Bob"})),
    Case("to-list-object-without-email", 422, "to[0]", body=P(to=[{"name": "Bob"}])),
    Case("to-number", 422, "to", body=P(to=7)),
    Case("to-empty-list", 422, "to", body=P(to=[])),
    Case("to-list-of-number", 422, "to[0]", body=P(to=[7])),
    Case("to-nested-list", 422, "to[0]", body=P(to=[["ann@example.com"]])),
    Case("to-email-number", 422, "to[0]", body=P(to=[{"email": 42}])),
    Case("to-name-number", 422, "to[0]", body=P(to=[{"email": "bob@example.org", "name": 7}])),
    Case("cc-number", 422, "cc", body=P(cc=3)),
    Case("bcc-boolean", 422, "bcc", body=P(bcc=True)),
    Case("reply_to-number", 422, "reply_to", body=P(reply_to=5)),
    Case("subject-number", 422, "subject", body=P(subject=12)),
    Case("subject-list", 422, "subject", body=P(subject=["a", "b"])),
    Case("text-object", 422, "text", body=P(text={"a": "b"})),
    Case("html-number", 422, "html", body=P(html=1)),
    Case("tags-string", 422, "tags", body=P(tags="receipt")),
    Case("tags-number-item", 422, "tags", body=P(tags=["ok", 5])),
    Case("tags-object-item", 422, "tags", body=P(tags=[{"a": 1}])),
    Case("metadata-array", 422, "metadata", body=P(metadata=["a"])),
    Case("metadata-string", 422, "metadata", body=P(metadata="order=42")),
    Case("metadata-nested-object", 422, "metadata", body=P(metadata={"order": {"id": "42"}})),
    Case("metadata-list-value", 422, "metadata", body=P(metadata={"order": ["42"]})),
    Case("headers-array", 422, "headers", body=P(headers=["X-A: b"])),
    Case("headers-value-number", 422, "headers.X-Num", body=P(headers={"X-Num": 5})),
    Case("headers-value-null", 422, "headers.X-Null", body=P(headers={"X-Null": None})),
    Case("headers-value-object", 422, "headers.X-Obj", body=P(headers={"X-Obj": {"a": "b"}})),
    Case("track_opens-string", 422, "track_opens", body=P(track_opens="true")),
    Case("track_clicks-number", 422, "track_clicks", body=P(track_clicks=1)),
    Case("unsubscribe-string", 422, "unsubscribe", body=P(unsubscribe="yes")),
    Case("strict-string", 422, "strict", body=P(strict="false")),
    Case("template-number", 422, "template", body=P(template=3)),
    Case("template-unknown", 422, "template", body=P(template="no-such-template", text=DROP, subject=DROP)),
    Case("attachments-object", 422, "attachments", body=P(attachments={"filename": "a.txt"})),
    Case("attachments-item-string", 422, "attachments[0]", body=P(attachments=["a.txt"])),
    Case("attachments-missing-content", 422, "attachments[0]", body=P(attachments=[{"filename": "a.txt"}])),
    Case("attachments-bad-base64", 422, "attachments[0]", body=P(attachments=[{"filename": "a.txt", "content": "!!!not base64!!!"}])),
    Case("send_at-number", 422, "send_at", body=P(send_at=1767225600)),
    Case("send_at-garbage", 422, "send_at", body=P(send_at="tomorrow morning")),
    Case("send_at-impossible-date", 422, "send_at", body=P(send_at="2026-13-45T99:00:00Z")),
    Case("send_at-no-offset", 422, "send_at", body=P(send_at="2026-12-01 09:00:00")),
    Case("send_at-beyond-horizon", 422, "send_at", body=P(send_at="2031-01-01T00:00:00Z")),
    # ---- unknown and duplicate fields
    Case("unknown-top-level-field", 422, "foo", body=P(foo="bar")),
    Case("unknown-field-wrong-case", 422, "Subject", body=P(Subject="Hi")),
    Case("unknown-field-in-to-object", 422, "to[0]", body=P(to=[{"email": "bob@example.org", "nmae": "Bob"}])),
    Case("unknown-field-in-from-object", 422, "from", body=P(**{"from": {"email": "noreply@acme.example", "admin": True}})),
    Case("unknown-field-in-attachment", 422, "attachments[0]",
         body=P(attachments=[{"filename": "a.txt", "content": "aGk=", "path": "/etc/passwd"}])),
    # Two "from" members: a parser differential; must not be resolved silently.
    Case("duplicate-keys", (400, 422),
         raw=b'{"from": "Acme <noreply@acme.example>", "from": "Evil <ceo@evil.example>", '
             b'"to": ["ann@example.com"], "subject": "Hi", "text": "x"}'),
    # ---- NUL characters
    Case("nul-in-subject", 422, "subject", body=P(subject="a\u0000b")),
    Case("nul-in-from", 422, "from", body=P(**{"from": "noreply\u0000@acme.example"})),
    Case("nul-in-to-name", 422, "to[0]", body=P(to=[{"email": "bob@example.org", "name": "B\u0000ob"}])),
    Case("nul-in-header-value", 422, "headers.X-A", body=P(headers={"X-A": "a\u0000b"})),
    Case("nul-in-header-name", 422, "headers", body=P(headers={"X-\u0000A": "v"})),
    # ---- huge values and counts (contract limits)
    Case("subject-1001-chars", 422, "subject", body=P(subject="s" * 1001)),
    Case("subject-2000-chars", 422, "subject", body=P(subject="s" * 2000)),
    Case("51-recipients-in-to", (413, 422), "to", body=P(to=RCPTS)),
    Case("51-recipients-to-cc-bcc", (413, 422), ("to", "cc", "bcc"),
         body=P(to=RCPTS[:20], cc=RCPTS[20:40], bcc=RCPTS[40:])),
    Case("101-headers", (413, 422), "headers", body=P(headers={"X-H%d" % i: "v" for i in range(101)})),
    Case("101-tags", (413, 422), "tags", body=P(tags=["t%d" % i for i in range(101)])),
    Case("101-metadata-keys", (413, 422), "metadata", body=P(metadata={"k%d" % i: "v" for i in range(101)})),
    Case("header-value-1001-chars", (413, 422), "headers.X-Long", body=P(headers={"X-Long": "v" * 1001})),
    Case("header-value-70000-chars", (413, 422), "headers.X-Big", body=P(headers={"X-Big": "v" * 70000})),
    Case("header-name-200-chars", 422, "headers", body=P(headers={"X-" + "n" * 198: "v"})),
    Case("to-name-70000-chars", (413, 422), "to[0]", body=P(to=[{"email": "bob@example.org", "name": "n" * 70000}])),
    Case("rendered-message-over-25MB", 413, body=P(text="y" * (26 * 1024 * 1024))),
    Case("depth-33-in-data", (413, 422), "data", body=P(data=nested(33))),
    Case("depth-10000-in-metadata", (413, 422), "metadata", raw=raw_with('"metadata": {"deep": %s}' % deep_obj_raw(10000))),
    Case("depth-10000-top-level", (413, 422), raw=deep_raw(10000)),
    # ---- CR/LF injection into every header-bound field
    Case("crlf-subject", 422, "subject", body=P(subject="Hi\r\nBcc: victim@evil.example")),
    Case("lf-subject", 422, "subject", body=P(subject="Hi\nBcc: victim@evil.example")),
    Case("cr-subject", 422, "subject", body=P(subject="Hi\rBcc: victim@evil.example")),
    Case("crlf-from-name-string", 422, "from", body=P(**{"from": "Acme\r\nBcc: victim@evil.example <noreply@acme.example>"})),
    Case("crlf-from-object-name", 422, "from", body=P(**{"from": {"email": "noreply@acme.example", "name": "Acme\r\nBcc: v@evil.example"}})),
    Case("crlf-to-name-string", 422, "to[0]", body=P(to=["Bob\r\nBcc: victim@evil.example <bob@example.org>"])),
    Case("crlf-to-object-name", 422, "to[0]", body=P(to=[{"email": "bob@example.org", "name": "Bob\r\nX-Evil: 1"}])),
    Case("crlf-cc", 422, "cc[0]", body=P(cc=["carl@example.org\r\nBcc: victim@evil.example"])),
    Case("crlf-reply_to", 422, "reply_to", body=P(reply_to="support@acme.example\r\nBcc: victim@evil.example")),
    Case("crlf-header-name", 422, "headers", body=P(headers={"X-A\r\nBcc": "victim@evil.example"})),
    Case("colon-in-header-name", 422, "headers", body=P(headers={"X-A: b\r\nBcc": "v"})),
    Case("space-in-header-name", 422, "headers", body=P(headers={"X A": "v"})),
    Case("empty-header-name", 422, "headers", body=P(headers={"": "v"})),
    Case("crlf-header-value", 422, "headers.X-Inj", body=P(headers={"X-Inj": "a\r\nBcc: victim@evil.example"})),
    Case("lf-header-value", 422, "headers.X-Inj", body=P(headers={"X-Inj": "a\nBcc: victim@evil.example"})),
    Case("crlf-body-separator-in-header", 422, "headers.X-Inj", body=P(headers={"X-Inj": "a\r\n\r\n<html>phish</html>"})),
    Case("crlf-address-local-part", 422, "to[0]", body=P(to=["ann\r\nBcc: victim@evil.example@example.com"])),
    Case("crlf-smtp-command-in-address", 422, "to[0]", body=P(to=["ann@example.com>\r\nRCPT TO:<victim@evil.example"])),
    Case("crlf-from-address-smtp", 422, "from", body=P(**{"from": "noreply@acme.example>\r\nDATA\r\n"})),
    # ---- headers mailgate owns
    Case("owned-header-Bcc", 422, "headers", body=P(headers={"Bcc": "victim@evil.example"})),
    Case("owned-header-from-lowercase", 422, "headers", body=P(headers={"from": "ceo@evil.example"})),
    Case("owned-header-Content-Type", 422, "headers", body=P(headers={"Content-Type": "text/html"})),
    Case("owned-header-Content-Transfer-Encoding", 422, "headers", body=P(headers={"content-transfer-encoding": "8bit"})),
    Case("owned-header-List-Unsubscribe-Post", 422, "headers", body=P(headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})),
    Case("owned-header-DKIM-Signature", 422, "headers", body=P(headers={"DKIM-Signature": "v=1"})),
    Case("owned-header-Message-ID", 422, "headers", body=P(headers={"Message-ID": "<x@evil.example>"})),
    Case("owned-header-Return-Path", 422, "headers", body=P(headers={"RETURN-PATH": "<bounce@evil.example>"})),
    # ---- invalid addresses
    Case("addr-no-at", 422, "to[0]", body=P(to=["annexample.com"])),
    Case("addr-two-at", 422, "to[0]", body=P(to=["ann@b@example.com"])),
    Case("addr-space", 422, "to[0]", body=P(to=["ann smith@example.com"])),
    Case("addr-space-in-domain", 422, "to[0]", body=P(to=["ann@exa mple.com"])),
    Case("addr-local-part-65", 422, "to[0]", body=P(to=[LOCAL65 + "@example.com"])),
    Case("addr-domain-over-255", 422, "to[0]", body=P(to=["ann@" + DOMAIN256])),
    Case("addr-label-64", 422, "to[0]", body=P(to=["ann@" + "l" * 64 + ".com"])),
    Case("addr-trailing-dot", 422, "to[0]", body=P(to=["ann@example.com."])),
    Case("addr-empty", 422, "to[0]", body=P(to=[""])),
    Case("addr-no-local-part", 422, "to[0]", body=P(to=["@example.com"])),
    Case("addr-no-domain", 422, "to[0]", body=P(to=["ann@"])),
    Case("addr-double-dot", 422, "to[0]", body=P(to=["ann..smith@example.com"])),
    Case("addr-unbalanced-angle", 422, "to[0]", body=P(to=["Ann <ann@example.com"])),
    Case("addr-angle-in-domain", 422, "to[0]", body=P(to=["ann@exa<mple.com"])),
    Case("addr-second-of-two", 422, "to[1]", body=P(to=["ann@example.com", "bob"])),
    Case("addr-cc-second", 422, "cc[1]", body=P(cc=["carl@example.org", "carl@@example.org"])),
    Case("addr-object-email-invalid", 422, "to[0]", body=P(to=[{"email": "bob at example.org"}])),
    Case("addr-from-invalid", 422, "from", body=P(**{"from": "not-an-address"})),
    Case("addr-reply_to-invalid", 422, "reply_to", body=P(reply_to="support@")),
    # ---- Idempotency-Key too long
    Case("idempotency-key-257", (400, 422), body=P(), headers={"Idempotency-Key": "k" * 257}),
    # ---- Content-Type
    Case("ctype-text-plain", 415, body=P(), ctype="text/plain"),
    Case("ctype-form-urlencoded", 415, raw=b"from=noreply%40acme.example&to=ann%40example.com&subject=Hi&text=x",
         ctype="application/x-www-form-urlencoded"),
    Case("ctype-multipart", 415, raw=b'--b\r\nContent-Disposition: form-data; name="from"\r\n\r\nx\r\n--b--\r\n',
         ctype="multipart/form-data; boundary=b"),
    # No Content-Type at all: mailgate reads the body as JSON (a deliberate
    # leniency); the body here is invalid either way, so nothing is queued.
    Case("ctype-missing-invalid-body", (415, 422), body=P(to=["bob"]), ctype=None),
    Case("ctype-application-jsonx", 415, body=P(), ctype="application/jsonx"),
    Case("ctype-xml", 415, raw=b"<message><from>noreply@acme.example</from></message>", ctype="application/xml"),
    Case("missing-body-and-ctype", (400, 415), raw=None, ctype=None),
    # ---- authentication and scope
    Case("auth-missing", 401, body=P(), auth=None),
    Case("auth-empty-bearer", 401, body=P(), auth="Bearer "),
    Case("auth-basic-scheme", 401, body=P(), auth="Basic YWRtaW46YWRtaW4="),
    Case("auth-unknown-key", 401, body=P(), auth="Bearer mg_0123456789abcdef_" + "0" * 64),
    Case("auth-truncated-key", 401, body=P(), auth="truncated"),
    Case("auth-key-plus-garbage", 401, body=P(), auth="garbage"),
    Case("auth-redis-glob-key", 401, body=P(), auth="Bearer mg_*_*"),
    Case("auth-read-scope-cannot-send", 403, body=P(), auth="read"),
    # ---- batch
    Case("batch-messages-not-a-list", 422, "messages", path="/v1/messages/batch", body={"messages": "x"}),
    Case("batch-missing-messages", 422, "messages", path="/v1/messages/batch", body={}),
    Case("batch-empty", 422, "messages", path="/v1/messages/batch", body={"messages": []}),
    Case("batch-501", (413, 422), "messages", path="/v1/messages/batch", body={"messages": [P()] * 501}),
    Case("batch-bad-json", 400, path="/v1/messages/batch", raw=b'{"messages": [}'),
    Case("batch-text-plain", 415, path="/v1/messages/batch", body={"messages": [P()]}, ctype="text/plain"),
    Case("batch-all-items-invalid", 422, path="/v1/messages/batch",
         body={"messages": [P(to=["bob"]), P(subject="a\r\nBcc: v@evil.example")]}, check=batch_all_invalid),
    # ---- other routes: weird message ids
    Case("get-msg-dotdot", (400, 404), method="GET", path="/v1/messages/..%2F..%2Fetc%2Fpasswd"),
    Case("get-msg-nul", (400, 404), method="GET", path="/v1/messages/%00"),
    Case("get-msg-crlf", (400, 404), method="GET", path="/v1/messages/a%0D%0ASet-Cookie:%20x=1"),
    Case("get-msg-4000-chars", (400, 404, 414), method="GET", path="/v1/messages/" + "a" * 4000),
    Case("get-msg-redis-glob", (400, 404), method="GET", path="/v1/messages/*"),
    Case("get-msg-sql", (400, 404), method="GET", path="/v1/messages/1'%20OR%20'1'='1"),
    Case("get-msg-unicode", (400, 404), method="GET", path="/v1/messages/%E2%98%83"),
    Case("get-msg-without-auth", 401, method="GET", path="/v1/messages/0123", auth=None),
    Case("delete-msg-unknown", 404, method="DELETE", path="/v1/messages/0000000000000000000000000000000f"),
    Case("patch-messages", (404, 405), method="PATCH", path="/v1/messages", body=P()),
    # ---- other routes: bad query parameters
    Case("events-bad-since", (400, 422), "since", method="GET", path="/v1/events?since=yesterday"),
    Case("events-bad-until", (400, 422), "until", method="GET", path="/v1/events?until=2026-02-30T25:00:00Z"),
    Case("events-limit-0", (400, 422), "limit", method="GET", path="/v1/events?limit=0"),
    Case("events-limit-negative", (400, 422), "limit", method="GET", path="/v1/events?limit=-5"),
    Case("events-limit-1001", (400, 422), "limit", method="GET", path="/v1/events?limit=1001"),
    Case("events-limit-not-a-number", (400, 422), "limit", method="GET", path="/v1/events?limit=ten"),
    Case("events-limit-overflow", (400, 422), "limit", method="GET", path="/v1/events?limit=99999999999999999999999"),
    Case("events-bad-cursor", (400, 422), "cursor", method="GET", path="/v1/events?cursor=garbage%00%FF"),
    Case("events-long-cursor", (400, 422), "cursor", method="GET", path="/v1/events?cursor=" + "Z" * 3000),
    Case("events-bad-type", (400, 422), "type", method="GET", path="/v1/events?type=exploded"),
    Case("messages-bad-status", (400, 422), "status", method="GET", path="/v1/messages?status=weird"),
    Case("messages-bad-since", (400, 422), "since", method="GET", path="/v1/messages?since=1e99"),
    Case("messages-bad-cursor", (400, 422), "cursor", method="GET", path="/v1/messages?cursor=%2F%2F%2F"),
    Case("messages-limit-1001", (400, 422), "limit", method="GET", path="/v1/messages?limit=1001"),
    # ---- suppressions
    Case("supp-post-bad-email", 422, "email", path="/v1/suppressions", body={"email": "not an email", "reason": "manual"}),
    Case("supp-post-missing-email", 422, "email", path="/v1/suppressions", body={"reason": "manual"}),
    Case("supp-post-email-number", 422, "email", path="/v1/suppressions", body={"email": 5}),
    Case("supp-post-crlf-email", 422, "email", path="/v1/suppressions", body={"email": "a@example.com\r\nx"}),
    Case("supp-post-reason-number", 422, "reason", path="/v1/suppressions", body={"email": "a@example.com", "reason": 7}),
    Case("supp-post-unknown-field", 422, "who", path="/v1/suppressions", body={"email": "a@example.com", "who": 1}),
    Case("supp-post-text-plain", 415, path="/v1/suppressions", body={"email": "a@example.com"}, ctype="text/plain"),
    Case("supp-post-bad-json", 400, path="/v1/suppressions", raw=b'{"email": '),
    Case("supp-post-array", 422, path="/v1/suppressions", raw=b'["a@example.com"]'),
    Case("supp-delete-absent", 404, method="DELETE", path="/v1/suppressions/nobody@example.com"),
    # ---- templates
    Case("tmpl-put-subject-number", 422, "subject", method="PUT", path="/v1/templates/t1", body={"subject": 5, "text": "x"}),
    Case("tmpl-put-unclosed-section", 422, "text", method="PUT", path="/v1/templates/t1", body={"subject": "s", "text": "{{#items}}x"}),
    Case("tmpl-put-unknown-field", 422, "body", method="PUT", path="/v1/templates/t1", body={"subject": "s", "body": "x"}),
    Case("tmpl-put-text-plain", 415, method="PUT", path="/v1/templates/t1", body={"subject": "s", "text": "x"}, ctype="text/plain"),
    Case("tmpl-put-bad-json", 400, method="PUT", path="/v1/templates/t1", raw=b'{"subject": "s",'),
    Case("tmpl-put-name-300-chars", (400, 404, 422), method="PUT", path="/v1/templates/" + "n" * 300,
         body={"subject": "s", "text": "x"}),
    Case("tmpl-put-name-slash", (400, 404, 422), method="PUT", path="/v1/templates/a%2Fb", body={"subject": "s", "text": "x"}),
    Case("tmpl-put-name-dotdot", (400, 404, 422), method="PUT", path="/v1/templates/..%2F..%2Fx", body={"subject": "s", "text": "x"}),
    Case("tmpl-put-name-glob", (400, 404, 422), method="PUT", path="/v1/templates/%2A", body={"subject": "s", "text": "x"}),
    Case("tmpl-put-depth-10000", (400, 413, 422), method="PUT", path="/v1/templates/t1", raw=deep_raw(10000)),
    Case("tmpl-get-missing", 404, method="GET", path="/v1/templates/nope"),
    Case("tmpl-render-missing", 404, path="/v1/templates/nope/render", body={"data": {}}),
]

assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
assert sum(1 for c in CASES if c.path.startswith("/v1/messages") and c.method == "POST") >= 60


# ---------------------------------------------------------------- one gateway for the module

class GW:
    pass


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    procs = []
    g = GW()
    g.logs = []
    try:
        # Redis
        rport = free_port()
        rdir = base / "redis"
        rdir.mkdir()
        rp = Proc(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(rdir), "--daemonize", "no", "--logfile", ""],
                  rdir / "redis.log")
        procs.append(rp)
        g.redis = Redis(rport, rp)
        wait_until(lambda: g.redis.command("PING") == "PONG", timeout=START_TIMEOUT, desc="redis PING")
        # Relay
        rel = base / "relay"
        (rel / "out").mkdir(parents=True)
        (rel / "rules.json").write_text('{"rules": []}')
        pp = Proc([PYTHON, str(RELAY_PY), "--port", "0", "--port-file", str(rel / "port"),
                   "--outdir", str(rel / "out"), "--rules", str(rel / "rules.json")], rel / "relay.stderr")
        procs.append(pp)
        port = wait_until(lambda: (rel / "port").exists() and int((rel / "port").read_text()),
                          timeout=START_TIMEOUT, desc="relay listening")
        g.relay = Relay(rel / "out", "relay1", None, pp, port, rel / "rules.json")
        g.logs.append(("relay commands.log", rel / "out" / "commands.log"))
        # Keys
        g.key = run_cli(g.redis.url, "key", "create", "--tenant", "acme").stdout.strip()
        g.read_key = run_cli(g.redis.url, "key", "create", "--tenant", "acme", "--scopes", "read").stdout.strip()
        assert g.key.startswith("mg_") and g.read_key.startswith("mg_"), (g.key, g.read_key)
        # mailgate
        mport = free_port()
        env = base_env(g.redis.url)
        env.update({"MAILGATE_LISTEN": "127.0.0.1:%d" % mport, "MAILGATE_RELAYS": g.relay.url,
                    "MAILGATE_HELO_NAME": "mailgate.test", "MAILGATE_RETRY_SCHEDULE": "1s,2s",
                    "MAILGATE_LOG_LEVEL": "info"})
        g.log_path = base / "mailgate.stderr"
        g.logs.append(("mailgate stderr", g.log_path))
        mp = Proc([MAILGATE_BIN, "serve"], g.log_path, env=env, cwd=str(base))
        procs.append(mp)
        g.mg = mp
        g.port = mport
        g.url = "http://127.0.0.1:%d" % mport

        def ready():
            assert mp.alive(), "mailgate exited:\n" + tail(g.log_path)
            return requests.get(g.url + "/readyz", timeout=2).status_code == 200
        wait_until(ready, timeout=START_TIMEOUT, desc="mailgate /readyz")
        g.request_ids = []
        yield g
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(autouse=True)
def _attach(request, gw):
    for title, path in gw.logs:
        request.node.__dict__.setdefault("e2e_logs", []).append((title, str(path)))


def auth_header(gw, auth):
    if auth is None:
        return None
    if auth == "full":
        return "Bearer " + gw.key
    if auth == "read":
        return "Bearer " + gw.read_key
    if auth == "truncated":
        return "Bearer " + gw.key[:-1]
    if auth == "garbage":
        return "Bearer " + gw.key + "x"
    return auth


def check_error(resp, case_id, statuses, field=None):
    """The common shape of every error answer; returns the parsed body."""
    ctx = "%s: %s %s -> %d %r" % (case_id, resp.request.method, resp.request.url[:200],
                                  resp.status_code, resp.text[:600])
    assert resp.status_code in statuses, "expected %s; " % sorted(statuses) + ctx
    rid = resp.headers.get("X-Request-Id")
    assert rid, "no X-Request-Id; " + ctx
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.split(";")[0].strip().lower() == "application/json", "Content-Type %r; %s" % (ctype, ctx)
    body = json_of(resp)
    assert isinstance(body, dict), ctx
    return body, rid, ctx


def check_error_object(err, ctx, field):
    assert isinstance(err, dict), "no error object; " + ctx
    assert isinstance(err.get("type"), str) and err["type"], "error.type missing; " + ctx
    assert isinstance(err.get("message"), str) and err["message"], "error.message missing; " + ctx
    if field is None:
        if "field" in err:
            assert err["field"] is None or isinstance(err["field"], str), ctx
        return
    got = err.get("field")
    assert isinstance(got, str) and got, "error.field missing (expected %r); %s" % (field, ctx)
    if field == ANY:
        return
    wanted = field if isinstance(field, tuple) else (field,)
    ok = any(got == w or got.startswith(w + "[") or got.startswith(w + ".") for w in wanted)
    assert ok, "error.field %r does not name %r; %s" % (got, wanted, ctx)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(gw, case):
    headers = dict(case.headers)
    a = auth_header(gw, case.auth)
    if a is not None:
        headers["Authorization"] = a
    data = case.data()
    if case.ctype is not None and (data is not None or case.method in ("POST", "PUT")):
        headers["Content-Type"] = case.ctype
    # requests adds no Content-Type of its own for bytes bodies.
    resp = requests.request(case.method, gw.url + case.path, data=data, headers=headers, timeout=60)
    body, rid, ctx = check_error(resp, case.id, case.status, case.field)
    gw.request_ids.append(rid)
    if case.check is not None:
        case.check(resp, body)
        return
    check_error_object(body.get("error"), ctx, case.field)
    if resp.status_code in (429, 503):
        assert resp.headers.get("Retry-After"), ctx
    assert gw.mg.alive(), "mailgate died on case %s:\n%s" % (case.id, tail(gw.log_path))


# ---------------------------------------------------------------- raw-socket abuse

def raw_request_head(gw, path="/v1/messages", extra=(), content_length=None, chunked=False):
    lines = ["POST %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % gw.port,
             "Authorization: Bearer " + gw.key, "Content-Type: application/json"]
    if content_length is not None:
        lines.append("Content-Length: %d" % content_length)
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock, deadline):
    """Read an HTTP response (status line, headers, body by Content-Length)
    from sock until deadline; returns (status, headers dict, body bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if time.monotonic() > deadline:
            break
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines and lines[0].startswith(b"HTTP/1."), "no HTTP response: %r" % buf[:300]
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        hdrs[k.strip().lower().decode()] = v.strip().decode("latin-1")
    n = int(hdrs.get("content-length", "0") or 0)
    while len(rest) < n and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        rest += chunk
    return status, hdrs, rest[:n] if n else rest


def assert_413_json(status, hdrs, body, what):
    assert status == 413, "%s: expected 413, got %d %r %r" % (what, status, hdrs, body[:300])
    assert hdrs.get("x-request-id"), "%s: no X-Request-Id: %r" % (what, hdrs)
    err = json.loads(body.decode("utf-8"))["error"]
    assert err.get("type") and err.get("message"), err


def upload_until_answered(gw, head, chunk_source, limit_bytes, what):
    """Send head, then chunks from chunk_source until the server answers or
    limit_bytes were sent; returns (bytes sent, status, headers, body)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head)
        s.setblocking(False)
        answered = b""
        deadline = time.monotonic() + 60
        for chunk in chunk_source:
            if sent >= limit_bytes or time.monotonic() > deadline:
                break
            try:
                answered += s.recv(65536)
                if answered:
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                view = memoryview(chunk)
                while view:
                    try:
                        n = s.send(view)
                        view = view[n:]
                        sent += n
                    except BlockingIOError:
                        # The server is not reading: see whether it answered.
                        try:
                            answered += s.recv(65536)
                        except BlockingIOError:
                            pass
                        if answered or time.monotonic() > deadline:
                            break
                        time.sleep(0.01)
                if answered:
                    break
            except OSError:   # reset: the server closed after answering
                break
        s.setblocking(True)
        status, hdrs, body = read_response_prefixed(s, answered, time.monotonic() + 20)
    return sent, status, hdrs, body


def read_response_prefixed(sock, prefix, deadline):
    class Pre:
        def __init__(self):
            self.buf = prefix

        def recv(self, n):
            if self.buf:
                b, self.buf = self.buf, b""
                return b
            try:
                return sock.recv(n)
            except ConnectionResetError:
                return b""

        def settimeout(self, t):
            sock.settimeout(t)
    return read_response(Pre(), deadline)


def test_content_length_40MB_is_refused_before_it_is_read(gw):
    total = 40_000_000
    head = raw_request_head(gw, content_length=total)

    def chunks():
        yield b'{"from": "noreply@acme.example", "to": ["ann@example.com"], "text": "'
        while True:
            yield b"x" * 65536
    sent, status, hdrs, body = upload_until_answered(gw, head, chunks(), total, "Content-Length 40,000,000")
    assert_413_json(status, hdrs, body, "Content-Length 40,000,000")
    # The server answered without reading the body in full (it may read some,
    # and the kernel buffers some; not the 40 MB).
    assert sent < total // 2, "the client had to send %d of %d bytes before the 413" % (sent, total)


def test_content_length_40MB_with_expect_100_continue(gw):
    head = raw_request_head(gw, content_length=40_000_000, extra=["Expect: 100-continue"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head)
        status, hdrs, body = read_response(s, time.monotonic() + 20)
    assert status != 100, "the server invited a 40 MB upload with 100 Continue"
    assert_413_json(status, hdrs, body, "Expect: 100-continue with Content-Length 40,000,000")


def test_chunked_upload_over_35MB_is_refused(gw):
    head = raw_request_head(gw, chunked=True)
    piece = b"x" * 65536
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"

    def chunks():
        # 36 MB of chunks, then the last chunk: the server may answer early,
        # or drain the body and answer at its end (the contract allows both).
        yield b"10\r\n" + b'{"text": "xxxxxx' + b"\r\n"
        for _ in range(36 * 1024 * 1024 // len(piece)):
            yield frame
        yield b"0\r\n\r\n"
    sent, status, hdrs, body = upload_until_answered(gw, head, chunks(), 40 * 1024 * 1024,
                                                     "chunked upload")
    assert_413_json(status, hdrs, body, "chunked upload over 35 MB")


def test_slow_loris_does_not_starve_normal_requests(gw):
    """50 connections (from 127.0.0.2, another client address on loopback)
    dribble request headers one byte per 100 ms for ~3 s; meanwhile requests
    from 127.0.0.1 are served promptly."""
    head = raw_request_head(gw, content_length=10)
    socks = []
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", gw.port))
        socks.append(s)
    stop = threading.Event()
    sent_bytes = [0]

    def dribble():
        i = 0
        t_end = time.monotonic() + 3.0
        while not stop.is_set() and time.monotonic() < t_end and i < len(head):
            for s in socks:
                try:
                    s.send(head[i:i + 1])
                    sent_bytes[0] += 1
                except OSError:
                    pass
            i += 1
            stop.wait(0.1)
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    latencies = []
    try:
        sess = requests.Session()
        sess.headers["Authorization"] = "Bearer " + gw.key
        while t.is_alive():
            for path in ("/healthz", "/v1/messages?limit=1"):
                t0 = time.monotonic()
                r = sess.get(gw.url + path, timeout=10)
                latencies.append((path, time.monotonic() - t0))
                assert r.status_code == 200, "%s during slow-loris: %d %s" % (path, r.status_code, r.text[:200])
        # A send (POST with a body) is served too.
        t0 = time.monotonic()
        r = sess.post(gw.url + "/v1/messages", json=P(to=["bad-address"]), timeout=10)
        latencies.append(("POST", time.monotonic() - t0))
        assert r.status_code == 422, r.text
    finally:
        stop.set()
        t.join(timeout=10)
        for s in socks:
            s.close()
    assert len(latencies) >= 4, latencies
    slow = [(p, round(d, 3)) for p, d in latencies if d > 2.0]
    assert not slow, "requests slowed down by slow-loris: %s (of %d)" % (slow, len(latencies))
    assert sent_bytes[0] > 50 * 20, "the slow-loris did not run (%d bytes)" % sent_bytes[0]
    assert gw.mg.alive()


def test_many_idle_connections_from_one_address_do_not_block_others(gw):
    """300 idle connections from 127.0.0.3 (no byte sent) must not lock out
    a client at 127.0.0.1."""
    socks = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.3", 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", gw.port))
            except OSError:
                s.close()
                break
            socks.append(s)
        t0 = time.monotonic()
        r = requests.get(gw.url + "/healthz", timeout=10)
        took = time.monotonic() - t0
        assert r.status_code == 200 and took < 2.0, (r.status_code, took)
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- after everything

def test_zz_after_the_corpus(gw):
    """Runs last in this module: the server is up, nothing was queued,
    request ids were unique, and a valid send still goes through."""
    assert gw.mg.alive(), "mailgate died:\n" + tail(gw.log_path)
    assert requests.get(gw.url + "/healthz", timeout=10).status_code == 200
    assert requests.get(gw.url + "/readyz", timeout=10).status_code == 200
    auth = {"Authorization": "Bearer " + gw.key}
    lst = json_of(requests.get(gw.url + "/v1/messages", headers=auth, timeout=10))
    assert lst.get("data") == [], "messages were queued by failed requests: %s" % json.dumps(lst)[:2000]
    ev = json_of(requests.get(gw.url + "/v1/events", headers=auth, timeout=10))
    assert ev.get("data") == [], "events were recorded: %s" % json.dumps(ev)[:2000]
    assert gw.relay.messages() == [], "the relay received mail"
    r = gw.redis
    for k in r.command("KEYS", "mg:jobs:*") or []:
        assert r.command("XLEN", k) == 0, "%s holds jobs" % k.decode()
    for pattern in ("mg:msg:*", "mg:idem:*", "mg:events:*", "mg:tmpl:*", "mg:supp:*"):
        keys = r.command("KEYS", pattern)
        assert not keys, "%s exists after failed requests: %s" % (pattern, keys[:10])
    for zset in ("mg:delayed", "mg:open"):
        assert r.command("ZCARD", zset) == 0, zset
    ids = gw.request_ids
    assert len(ids) >= 60 and len(set(ids)) == len(ids), "X-Request-Id values repeat"
    # A valid send still works and is delivered.
    resp = requests.post(gw.url + "/v1/messages", headers=auth, json=P(subject="after the storm"), timeout=20)
    assert resp.status_code == 202, resp.text
    mid = json_of(resp)["id"]
    msgs = gw.relay.wait_messages(1)
    assert len(msgs) == 1 and msgs[0].msg["Subject"] == "after the storm"
    assert msgs[0].msg["Message-ID"].strip("<>").split("@")[0] == mid
    assert msgs[0].rcpt_tos == ["ann@example.com"]
