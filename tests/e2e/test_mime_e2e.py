"""End-to-end tests of MIME shapes, attachments, custom headers and DKIM
(issue 4, points 3-5 and 7), through the real pipeline: POST /v1/messages ->
Redis -> SMTP -> the aiosmtpd relay (tests/relay.py).

- Every MIME shape (text, html, both; + inline image; + PDF with a non-ASCII
  file name; all together) is parsed back from the received bytes with
  email.policy.strict and compared part by part: content types and their
  order, dispositions, file names, Content-IDs and the decoded bytes.
- DKIM signatures (rsa-sha256 and ed25519-sha256) are verified with an
  independent verifier, Debian's python3-dkim, fed the public keys made
  here through its dnsfunc hook (no DNS), for bodies with trailing white
  space, empty bodies and long lines; a key signs only for a tenant whose
  --allowed-from names its domain.
- Attachment validation, the MAILGATE_MAX_MESSAGE_SIZE limit (413) and
  start-up errors for bad MAILGATE_DKIM_KEYS / MAILGATE_MAX_MESSAGE_SIZE.
"""

import base64
import email
import email.policy
import os

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from conftest import json_of, run_cli

FROM = "Acme <news@acme.example>"
RSA_DOMAIN, RSA_SELECTOR = "acme.example", "mg2026"
ED_DOMAIN, ED_SELECTOR = "ed.example", "ed1"

# A 1x1 PNG and a small PDF, as real attachments would be.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
       b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
       + bytes(range(256)) * 40)
PDF_NAME = "Rechnung Größe №42 – été 2026 ü.pdf"


def b64(data):
    return base64.b64encode(data).decode("ascii")


def assert_error(r, status, field=None, type_=None):
    assert r.status_code == status, "expected %d, got %d: %s" % (status, r.status_code, r.text)
    err = json_of(r)["error"]
    if field is not None:
        assert err.get("field") == field, "error.field %r, want %r (%s)" % (err.get("field"), field, err)
    if type_ is not None:
        assert err["type"] == type_, err
    return err


# ---------------------------------------------------------------- keys and DNS

@pytest.fixture
def dkim_keys(tmp_path):
    """An RSA-2048 and an Ed25519 key as PEM files, and the TXT records a
    verifier would find in DNS for them."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_path = tmp_path / "rsa.pem"
    ed_path = tmp_path / "ed25519.pem"
    rsa_path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    ed_path.write_bytes(ed_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    rsa_der = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    ed_raw = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    txt = {
        ("%s._domainkey.%s." % (RSA_SELECTOR, RSA_DOMAIN)).encode():
            b"v=DKIM1; k=rsa; p=" + base64.b64encode(rsa_der),
        ("%s._domainkey.%s." % (ED_SELECTOR, ED_DOMAIN)).encode():
            b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ed_raw),
    }
    spec = "%s:%s:%s,%s:%s:%s" % (RSA_DOMAIN, RSA_SELECTOR, rsa_path, ED_DOMAIN, ED_SELECTOR, ed_path)
    return spec, txt


def dns_for(txt):
    def dnsfunc(name, timeout=5):
        return txt.get(name)
    return dnsfunc


class DkimGateway:
    def __init__(self, relay, mg, key, txt, redis):
        self.relay = relay
        self.mg = mg
        self.key = key
        self.client = mg.client(key)
        self.txt = txt
        self.redis = redis

    def send_and_receive(self, payload):
        """Send, wait for delivery; return the message as the relay got it."""
        before = len(self.relay.messages())
        r = self.client.send(payload)
        assert r.status_code == 202, "send: %d %s" % (r.status_code, r.text)
        mid = json_of(r)["id"]
        msg = self.client.wait_message(mid)
        assert msg["status"] == "delivered", msg
        got = self.relay.wait_messages(before + 1)
        return got[before]

    def verify(self, raw):
        return dkim.verify(raw, dnsfunc=dns_for(self.txt))


@pytest.fixture
def dgw(relay, mailgate, api_key, redis, dkim_keys):
    """relay + mailgate with both DKIM keys; tenant "acme" allowed to send
    from both domains."""
    spec, txt = dkim_keys
    rl = relay(name="relay1")
    mg = mailgate(rl, env={"MAILGATE_DKIM_KEYS": spec})
    key = api_key("acme")
    # --allowed-from also limits the From domains a tenant may use at all,
    # so the domains the unsigned cases send from are listed too.
    r = run_cli(redis.url, "tenant", "set", "acme", "--allowed-from",
                "%s,%s,unsigned.example,mail.acme.example,%s" % (RSA_DOMAIN, ED_DOMAIN, FROM.split("@")[1].rstrip(">")))
    assert r.returncode == 0, r.stderr
    return DkimGateway(rl, mg, key, txt, redis)


# What Python's parser says about RFC 2047 words in a quoted parameter
# (name="=?UTF-8?B?...?="): it decodes them, noting these.
NAME_EW_DEFECTS = {"encoded word inside quoted string", "missing trailing whitespace after encoded-word"}


def parse_strict(raw):
    """Parse with email.policy.strict (raises on any message defect) and
    check every header of every part parses without defects, apart from
    the RFC 2047 words in a quoted name= parameter, which are the documented
    fallback for clients without RFC 2231."""
    msg = email.message_from_bytes(raw, policy=email.policy.strict)
    for part in msg.walk():
        for name, value in part.items():
            defects = [d for d in value.defects
                       if not (name.lower() == "content-type" and str(d) in NAME_EW_DEFECTS)]
            assert not defects, "%s: %r has defects %r" % (name, str(value), defects)
    return msg


def structure(msg):
    """The MIME tree as a nested list of content types, depth first."""
    if msg.is_multipart():
        return [msg.get_content_type(), [structure(p) for p in msg.iter_parts()]]
    return msg.get_content_type()


def leaves(msg):
    return [p for p in msg.walk() if not p.is_multipart()]


def header_lines(raw):
    end = raw.find(b"\r\n\r\n")
    return raw[:end].split(b"\r\n")


# ---------------------------------------------------------------- MIME shapes

TEXT = "Hello Ann,\nyour receipt is attached.\n€ 42  \n"
HTML = '<p>Hello <b>Ann</b></p><img src="cid:logo@acme.example"><p>' + "long line " * 200 + "</p>"
INLINE = {"filename": "logo.png", "content": b64(PNG), "content_id": "logo@acme.example"}
ATTACH = {"filename": PDF_NAME, "content_type": "application/pdf", "content": b64(PDF)}
CSV = {"filename": "data.csv", "content": b64(b"a,b\r\n1,2\r\n")}

SHAPES = {
    "text": ({"text": TEXT}, "text/plain"),
    "html": ({"html": HTML}, "text/html"),
    "both": ({"text": TEXT, "html": HTML}, ["multipart/alternative", ["text/plain", "text/html"]]),
    "html+inline": ({"html": HTML, "attachments": [INLINE]},
                    ["multipart/related", ["text/html", "image/png"]]),
    "both+inline": ({"text": TEXT, "html": HTML, "attachments": [INLINE]},
                    ["multipart/related", [["multipart/alternative", ["text/plain", "text/html"]], "image/png"]]),
    "text+pdf": ({"text": TEXT, "attachments": [ATTACH]},
                 ["multipart/mixed", ["text/plain", "application/pdf"]]),
    "both+pdf": ({"text": TEXT, "html": HTML, "attachments": [ATTACH]},
                 ["multipart/mixed", [["multipart/alternative", ["text/plain", "text/html"]], "application/pdf"]]),
    # without html an inline part has nothing to refer to it: it goes in mixed
    "text+inline": ({"text": TEXT, "attachments": [INLINE]},
                    ["multipart/mixed", ["text/plain", "image/png"]]),
    "all": ({"text": TEXT, "html": HTML, "attachments": [ATTACH, INLINE, CSV]},
            ["multipart/mixed", [
                ["multipart/related", [["multipart/alternative", ["text/plain", "text/html"]], "image/png"]],
                "application/pdf", "text/csv"]]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_mime_shape_parses_strictly(dgw, shape):
    extra, want = SHAPES[shape]
    p = {"from": "Acme <news@unsigned.example>", "to": ["ann@example.com"], "subject": "Shape " + shape}
    p.update(extra)
    m = dgw.send_and_receive(p)
    msg = parse_strict(m.raw)
    assert structure(msg) == want, "structure of %s" % shape

    # Every line within 998 octets; header lines within 78 except where a
    # quoted ASCII name forbids folding (none here).
    for line in m.raw.split(b"\r\n"):
        assert len(line) <= 998
    assert b"\n" not in m.raw.replace(b"\r\n", b"")

    atts = extra.get("attachments", [])
    parts = leaves(msg)
    # the text parts first, in order, then the attachments in the order of
    # the tree: inline ones (related) before the others (mixed)
    texts = [p_ for p_ in parts if p_.get_content_disposition() is None]
    files = [p_ for p_ in parts if p_.get_content_disposition() is not None]
    want_texts = [t for t in ("text", "html") if t in extra]
    assert [t.get_content_type() for t in texts] == ["text/" + ("plain" if t == "text" else "html")
                                                     for t in want_texts]
    for part, key in zip(texts, want_texts):
        assert part.get_content_charset() == "utf-8"
        got = part.get_content().replace("\r\n", "\n")
        assert got == extra[key] or got == extra[key] + "\n", "%s differs" % key
    related = "html" in extra
    order = ([a for a in atts if a.get("content_id") and related] +
             [a for a in atts if not (a.get("content_id") and related)])
    assert len(files) == len(order)
    for part, a in zip(files, order):
        assert part.get_filename() == a["filename"]
        assert part.get_content_disposition() == ("inline" if a.get("content_id") else "attachment")
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_payload(decode=True) == base64.b64decode(a["content"])
        ctype = a.get("content_type") or {"png": "image/png", "csv": "text/csv"}[a["filename"].rsplit(".", 1)[1]]
        assert part.get_content_type() == ctype
        if a.get("content_id"):
            assert part["Content-ID"] == "<%s>" % a["content_id"]
        else:
            assert part["Content-ID"] is None
        # base64 in lines of 76
        body = part.get_payload(decode=False).strip("\r\n").split("\n")
        assert all(len(line.rstrip("\r")) <= 76 for line in body)
        assert all(len(line.rstrip("\r")) == 76 for line in body[:-1])
    if related and any(a.get("content_id") for a in atts):
        rel = [p_ for p_ in msg.walk() if p_.get_content_type() == "multipart/related"][0]
        assert rel.get_param("type") in ("multipart/alternative", "text/html")


def test_non_ascii_filename_encodings(dgw):
    """RFC 2231 filename* on Content-Disposition, RFC 2047 name= fallback on
    Content-Type, both decoding to the same name; a long one continues
    over numbered segments within 78 characters a line."""
    long_name = "Überweisungsbestätigung für den Zeitraum Januar bis Dezember 2026 – Kopie ü.pdf"
    p = {"from": FROM, "to": ["ann@example.com"], "subject": "names", "text": "see attachment",
         "attachments": [{"filename": PDF_NAME, "content": b64(b"x")},
                         {"filename": long_name, "content": b64(b"y")},
                         {"filename": 'plain "quoted" \\ name.txt', "content": b64(b"z")},
                         {"filename": "ü.txt", "content": b64(b"w")}]}
    m = dgw.send_and_receive(p)
    msg = parse_strict(m.raw)
    files = [p_ for p_ in msg.walk() if p_.get_content_disposition() == "attachment"]
    assert [f.get_filename() for f in files] == [PDF_NAME, long_name, 'plain "quoted" \\ name.txt', "ü.txt"]
    assert files[0].get_content_type() == "application/pdf"
    assert files[2].get_content_type() == "text/plain"
    raw = m.raw.decode("ascii")  # non-ASCII names never reach the wire as 8-bit
    assert "filename*=utf-8''%C3%BC.txt" in raw                    # short: one segment
    assert "filename*0*=utf-8''" in raw and "filename*1*=" in raw  # long: continued
    assert 'name="=?UTF-8?B?' in raw
    # the name= fallback decodes to the same name
    for f, want in zip(files[:2], (PDF_NAME, long_name)):
        value = str(f.get("Content-Type"))
        name = value.split('name="', 1)[1].rsplit('"', 1)[0]
        words = email.header.decode_header(name.replace("\r\n", ""))
        assert "".join(w.decode(c or "ascii") if isinstance(w, bytes) else w for w, c in words) == want
    # part header lines of the non-ASCII names stay within 78
    for line in m.raw.split(b"\r\n"):
        if b"filename*" in line or b"=?UTF-8?B?" in line:
            assert len(line) <= 78, line


def test_attachment_content_types_from_extension(dgw):
    names = {"a.pdf": "application/pdf", "b.JPG": "image/jpeg", "c.docx":
             "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
             "d.ics": "text/calendar", "e.unknownext": "application/octet-stream", "noext": "application/octet-stream",
             "f.xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "g.zip": "application/zip"}
    p = {"from": FROM, "to": ["ann@example.com"], "subject": "types", "text": "x",
         "attachments": [{"filename": n, "content": b64(n.encode())} for n in names]}
    msg = parse_strict(dgw.send_and_receive(p).raw)
    files = [p_ for p_ in msg.walk() if p_.get_content_disposition() == "attachment"]
    assert {f.get_filename(): f.get_content_type() for f in files} == names
    assert all(f.get_payload(decode=True) == f.get_filename().encode() for f in files)


def test_empty_attachment_and_base64_with_line_breaks(dgw):
    wrapped = base64.encodebytes(PDF).decode("ascii")  # 76-column lines with \n
    p = {"from": FROM, "to": ["ann@example.com"], "subject": "b64", "text": "x",
         "attachments": [{"filename": "empty.bin", "content": ""},
                         {"filename": "wrapped.pdf", "content": wrapped.replace("\n", "\r\n")}]}
    msg = parse_strict(dgw.send_and_receive(p).raw)
    files = [p_ for p_ in msg.walk() if p_.get_content_disposition() == "attachment"]
    assert files[0].get_payload(decode=True) == b""
    assert files[1].get_payload(decode=True) == PDF


# ---------------------------------------------------------------- validation

def test_attachment_validation(dgw):
    c = dgw.client
    base = {"from": FROM, "to": ["ann@example.com"], "subject": "x", "text": "x"}
    good = {"filename": "a.pdf", "content": b64(b"hello")}
    cases = [
        ({"attachments": "nope"}, "attachments"),
        ({"attachments": ["nope"]}, "attachments[0]"),
        ({"attachments": [good, {"filename": "b.txt", "content": "aGVsbG8=", "size": 5}]}, "attachments[1].size"),
        ({"attachments": [{"content": "aGVsbG8="}]}, "attachments[0].filename"),
        ({"attachments": [{"filename": "a.txt"}]}, "attachments[0].content"),
        ({"attachments": [{"filename": "a\r\nBcc: x@y.example", "content": "aGVsbG8="}]}, "attachments[0].filename"),
        ({"attachments": [{"filename": "a\nb.txt", "content": "aGVsbG8="}]}, "attachments[0].filename"),
        ({"attachments": [{"filename": "", "content": "aGVsbG8="}]}, "attachments[0].filename"),
        ({"attachments": [{"filename": 5, "content": "aGVsbG8="}]}, "attachments[0].filename"),
        ({"attachments": [{"filename": "a", "content": "aGVsbG8"}]}, "attachments[0].content"),      # no padding
        ({"attachments": [{"filename": "a", "content": "aGVs bG8="}]}, "attachments[0].content"),    # space
        ({"attachments": [{"filename": "a", "content": "aGVsbG8=="}]}, "attachments[0].content"),    # too much
        ({"attachments": [{"filename": "a", "content": "aG=sbG8="}]}, "attachments[0].content"),     # '=' inside
        ({"attachments": [{"filename": "a", "content": "aGVsbG8*"}]}, "attachments[0].content"),     # alphabet
        ({"attachments": [{"filename": "a", "content": "aGVs-G8_"}]}, "attachments[0].content"),     # base64url
        ({"attachments": [good, {"filename": "a", "content": "a==="}]}, "attachments[1].content"),
        ({"attachments": [{"filename": "a", "content": "aGVsbG8=", "content_type": "pdf"}]},
         "attachments[0].content_type"),
        ({"attachments": [{"filename": "a", "content": "aGVsbG8=", "content_type": "text/plain; charset=x"}]},
         "attachments[0].content_type"),
        ({"attachments": [{"filename": "a", "content": "aGVsbG8=", "content_type": "multipart/mixed"}]},
         "attachments[0].content_type"),
        ({"attachments": [{"filename": "a", "content": "aGVsbG8=", "content_id": "a b"}]},
         "attachments[0].content_id"),
        ({"attachments": [{"filename": "a", "content": "aGVsbG8=", "content_id": "x>\r\nBcc: y"}]},
         "attachments[0].content_id"),
        ({"attachments": [dict(good) for _ in range(101)]}, "attachments"),
    ]
    for extra, field in cases:
        p = dict(base)
        p.update(extra)
        err = assert_error(c.send(p), 422, field=field)
        assert field.split("[")[0] in err["message"]
    r = c.send(dict(base, attachments=[{"filename": "a", "content": "aGVsbG8*"}]))
    assert "base64" in json_of(r)["error"]["message"]
    # nothing was queued by any of them
    assert json_of(c.get("/v1/messages"))["data"] == []
    # a Content-ID given with its angle brackets is accepted as the same id
    msg = parse_strict(dgw.send_and_receive(dict(
        base, html='<img src="cid:pic">', attachments=[{"filename": "p.png", "content": b64(PNG),
                                                         "content_id": "<pic>"}])).raw)
    [img] = [p_ for p_ in msg.walk() if p_.get_content_type() == "image/png"]
    assert img["Content-ID"] == "<pic>"


def test_custom_headers_long_values_folded(dgw):
    words = " ".join("word%03d" % i for i in range(120))   # ~960 characters
    nospace = "x" * 600                                      # one word, too long to fold
    p = {"from": FROM, "to": ["ann@example.com"], "subject": "headers", "text": "x",
         "headers": {"X-Long": words, "X-Nospace": nospace, "X-Unicode": "Grüße " * 60}}
    m = dgw.send_and_receive(p)
    msg = parse_strict(m.raw)
    assert str(msg["X-Long"]) == words
    assert str(msg["X-Nospace"]) == nospace
    assert str(msg["X-Unicode"]) == ("Grüße " * 60).strip() or str(msg["X-Unicode"]) == "Grüße " * 60
    # folded at white space within 78; a single 600-character word cannot
    # be (RFC 5322 folds only at white space) and stays within 998
    for line in header_lines(m.raw):
        assert len(line) <= (998 if line.startswith(b"X-Nospace:") else 78), line
    # names are RFC 5322 field names, values have no CR/LF, owned ones refused
    c = dgw.client
    for name, value in (("X Bad", "v"), ("X-Bad:", "v"), ("Content-Disposition", "inline"),
                        ("DKIM-Signature", "v=1"), ("List-Unsubscribe-Post", "x"), ("X-Ok", "a\r\nb")):
        assert_error(c.send(dict(p, headers={name: value})), 422, field="headers.%s" % name)


def test_message_size_limit(relay, mailgate, api_key):
    rl = relay(name="relay1")
    mg = mailgate(rl, env={"MAILGATE_MAX_MESSAGE_SIZE": "64K"})
    c = mg.client(api_key("acme"))
    base = {"from": FROM, "to": ["ann@example.com"], "subject": "size", "text": "x"}
    big = os.urandom(60 * 1024)   # 80K once base64-encoded
    err = assert_error(c.send(dict(base, attachments=[{"filename": "big.bin", "content": b64(big)}])), 413,
                       type_="message_too_large")
    assert "65536" in err["message"]
    r = c.send(dict(base, text="y" * 70000))
    assert_error(r, 413, type_="message_too_large")
    assert json_of(c.get("/v1/messages"))["data"] == []
    small = os.urandom(30 * 1024)
    r = c.send(dict(base, attachments=[{"filename": "ok.bin", "content": b64(small)}]))
    assert r.status_code == 202, r.text
    [m] = rl.wait_messages(1)
    files = [p_ for p_ in parse_strict(m.raw).walk() if p_.get_content_disposition() == "attachment"]
    assert files[0].get_payload(decode=True) == small


def test_bad_config_values_stop_startup(redis, tmp_path):
    notkey = tmp_path / "notkey.pem"
    notkey.write_text("not a key\n")
    for var, value in (("MAILGATE_DKIM_KEYS", "acme.example"),
                       ("MAILGATE_DKIM_KEYS", "acme.example:s1:%s" % (tmp_path / "missing.pem")),
                       ("MAILGATE_DKIM_KEYS", "acme.example:s1:%s" % notkey),
                       ("MAILGATE_DKIM_KEYS", "bad domain:s1:%s" % notkey),
                       ("MAILGATE_MAX_MESSAGE_SIZE", "25X"),
                       ("MAILGATE_MAX_MESSAGE_SIZE", "0"),
                       ("MAILGATE_MAX_MESSAGE_SIZE", "1G")):
        r = run_cli(redis.url, "serve", env={var: value, "MAILGATE_LISTEN": "127.0.0.1:1"}, timeout=20)
        assert r.returncode != 0, (var, value)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and var in lines[0], (var, value, r.stderr)


# ---------------------------------------------------------------- DKIM

def dkim_tags(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    value = msg["DKIM-Signature"]
    assert value, "no DKIM-Signature"
    tags = {}
    for item in "".join(value.split()).split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            tags[k] = v
    return tags


BODIES = {
    "plain": {"text": "Hello Ann,\nthanks."},
    "trailing-ws": {"text": "trailing   \nspaces\t \n\n\n  \n", "html": "<p>x</p>   \n\t\n\n"},
    "empty": {"text": ""},
    "empty-lines": {"text": "\n\n\n"},
    "long-lines": {"text": ("word  " * 900).strip() + "\n" + "y" * 3000 + "\n", "html": "<p>" + "z" * 5000 + "</p>"},
    "dots": {"text": ".\n..leading dots\n.\n"},
    "attachments": {"text": "see", "html": '<img src="cid:logo@acme.example">',
                    "attachments": [INLINE, ATTACH]},
}


@pytest.mark.parametrize("domain,selector,algo", [(RSA_DOMAIN, RSA_SELECTOR, "rsa-sha256"),
                                                  (ED_DOMAIN, ED_SELECTOR, "ed25519-sha256")])
def test_dkim_signatures_verify(dgw, domain, selector, algo):
    for name, body in BODIES.items():
        p = {"from": "Acme <news@%s>" % domain, "to": ["ann@example.com"], "cc": ["Carl <carl@example.net>"],
             "reply_to": "support@%s" % domain, "subject": "DKIM %s – Grüße" % name,
             "headers": {"X-Campaign": "q4"}}
        p.update(body)
        m = dgw.send_and_receive(p)
        assert m.raw.startswith(b"DKIM-Signature: "), m.raw[:200]
        assert dgw.verify(m.raw), "%s/%s does not verify:\n%s" % (algo, name, m.raw[:3000].decode("latin-1"))
        tags = dkim_tags(m.raw)
        assert tags["a"] == algo and tags["c"] == "relaxed/relaxed"
        assert tags["d"] == domain and tags["s"] == selector
        assert abs(int(tags["t"]) - int(__import__("time").time())) < 600
        h = tags["h"].lower().split(":")
        assert h.count("from") == 2, h  # oversigned
        for f in ("to", "cc", "reply-to", "subject", "date", "message-id", "mime-version", "content-type"):
            assert f in h, (f, h)
        assert "x-campaign" not in h and "bcc" not in h
        for line in header_lines(m.raw):
            if line.startswith(b"DKIM-Signature") or line.startswith(b" "):
                assert len(line) <= 78 or b"=" not in line[:3], line
        parse_strict(m.raw)
        # and the verifier is not trivially happy: any change breaks it
        tampered = m.raw.replace(b"\r\n\r\n", b"\r\n\r\nX", 1) if name != "attachments" else \
            m.raw[:-20] + m.raw[-20:].replace(b"--", b"-X", 1)
        assert not dgw.verify(m.raw.replace(b"\r\nDate: ", b"\r\nDate:  Sun,", 1))
        assert not dgw.verify(m.raw.replace(b"\r\nTo: ", b"\r\nTo: ann2@example.com, ", 1))
        assert not dgw.verify(tampered)
        # a second From added later is caught by the oversigning
        assert not dgw.verify(m.raw.replace(b"\r\nFrom: ", b"\r\nFrom: Evil <evil@example.com>\r\nFrom: ", 1))


def test_dkim_only_for_tenants_allowed_the_domain(dgw, api_key, redis):
    # acme may use both domains: signed
    m = dgw.send_and_receive({"from": "news@%s" % RSA_DOMAIN, "to": ["a@example.com"], "subject": "s", "text": "x"})
    assert m.raw.startswith(b"DKIM-Signature:") and dgw.verify(m.raw)
    # From domain case does not matter
    m = dgw.send_and_receive({"from": "news@ACME.Example", "to": ["a@example.com"], "subject": "s", "text": "x"})
    assert m.raw.startswith(b"DKIM-Signature:") and dgw.verify(m.raw)
    # a domain without a key: not signed
    m = dgw.send_and_receive({"from": "news@unsigned.example", "to": ["a@example.com"], "subject": "s", "text": "x"})
    assert b"DKIM-Signature" not in m.raw
    # a subdomain is not the key's domain
    m = dgw.send_and_receive({"from": "news@mail.acme.example", "to": ["a@example.com"], "subject": "s", "text": "x"})
    assert b"DKIM-Signature" not in m.raw

    # another tenant: no allowed-from at all, then allowed-from another domain,
    # then only the Ed25519 domain
    other = dgw.mg.client(api_key("other"))

    def sent_by_other(frm):
        before = len(dgw.relay.messages())
        r = other.send({"from": frm, "to": ["a@example.com"], "subject": "s", "text": "x"})
        assert r.status_code == 202, r.text
        other.wait_message(json_of(r)["id"])
        return dgw.relay.wait_messages(before + 1)[before]

    assert b"DKIM-Signature" not in sent_by_other("news@%s" % RSA_DOMAIN).raw
    assert run_cli(redis.url, "tenant", "set", "other", "--allowed-from", "other.example").returncode == 0
    # now the key's domain is not one "other" may send from at all
    r = other.send({"from": "news@%s" % RSA_DOMAIN, "to": ["a@example.com"], "subject": "s", "text": "x"})
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "from", r.text
    assert b"DKIM-Signature" not in sent_by_other("news@other.example").raw
    assert run_cli(redis.url, "tenant", "set", "other", "--allowed-from", "other.example, %s" % ED_DOMAIN).returncode == 0
    m = sent_by_other("news@%s" % ED_DOMAIN)
    assert m.raw.startswith(b"DKIM-Signature:") and dgw.verify(m.raw)
    assert dkim_tags(m.raw)["d"] == ED_DOMAIN


def test_template_inline_image_pdf_and_dkim_through_pipeline(dgw):
    """The issue's "done when": a stored template, an inline image, a PDF
    with a non-ASCII file name and a DKIM key, to the aiosmtpd relay; the
    message parses strictly and its signature verifies."""
    c = dgw.client
    r = c.put("/v1/templates/receipt", json={
        "subject": "Receipt for {{name}}",
        "text": "Hello {{name}},\nyour total is {{total}}.\n",
        "html": '<p>Hello {{name}}</p><img src="cid:logo@acme.example"><p>Total: {{total}}</p>'})
    assert r.status_code in (200, 201), r.text
    m = dgw.send_and_receive({"from": FROM, "to": ["ann@example.com"], "template": "receipt",
                              "data": {"name": "Ann & <Bob>", "total": "€ 42"},
                              "attachments": [INLINE, ATTACH]})
    assert dgw.verify(m.raw)
    msg = parse_strict(m.raw)
    assert structure(msg) == SHAPES["all"][1][:1] + [[
        ["multipart/related", [["multipart/alternative", ["text/plain", "text/html"]], "image/png"]],
        "application/pdf"]]
    assert str(msg["Subject"]) == "Receipt for Ann & <Bob>"
    plain = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "Hello Ann & <Bob>," in plain and "€ 42" in plain
    assert "Hello Ann &amp; &lt;Bob&gt;" in html and 'src="cid:logo@acme.example"' in html
    [img] = [p_ for p_ in msg.walk() if p_.get_content_type() == "image/png"]
    assert img["Content-ID"] == "<logo@acme.example>" and img.get_payload(decode=True) == PNG
    [pdf] = [p_ for p_ in msg.walk() if p_.get_content_type() == "application/pdf"]
    assert pdf.get_filename() == PDF_NAME and pdf.get_payload(decode=True) == PDF
