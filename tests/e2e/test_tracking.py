"""End-to-end tests of open and click tracking and one-click unsubscribe
(issue 5, points 3 and 4): a message sent with track_opens, track_clicks
and unsubscribe to two recipients, each getting a copy of its own; the
real pixel and click URLs from the received html followed with requests;
the events they record (recipient, user agent, IP, machine); a forged
token; RFC 8058 one-click unsubscribe; DKIM over a personal copy.

MAILGATE_PUBLIC_URL is left at its default, http:// + MAILGATE_LISTEN,
which is the mailgate under test, so the links point at it.
"""

import base64
import re
import time
from datetime import datetime
from html.parser import HTMLParser

import dkim
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import json_of, run_cli, wait_until

FROM = "Acme <news@acme.example>"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0 Safari/537.36")
APPLE_MPP = "Mozilla/5.0"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
SCANNER_WINDOW_S = 5  # GW_CLICK_SCANNER_WINDOW_MS

# The links as written in the html (entities and all) and the URLs they stand for.
LINK_QUERY = "&amp;".join("k%d=v%d" % (i, i) for i in range(300))
LINKS = [
    ('https://shop.example/p?a=1&amp;b=(2)&amp;c=%20x#frag',
     'https://shop.example/p?a=1&b=(2)&c=%20x#frag'),
    ("https://en.wikipedia.org/wiki/Mail_(protocol)", "https://en.wikipedia.org/wiki/Mail_(protocol)"),
    ("https://long.example/q?" + LINK_QUERY, "https://long.example/q?" + LINK_QUERY.replace("&amp;", "&")),
]
HTML = ("<html><head><title>Hi</title></head><body>"
        "<p>Hello {{name}}, <a href=\"%s\">shop</a>,</p>"
        "<p><A HREF='%s'>wiki</A> and <a class=x href=\"%s\">long</a>.</p>"
        "<p><a href=\"mailto:help@acme.example?subject=Hi&amp;x=1\">mail us</a> "
        "<a data-mailgate-notrack href=\"https://acme.example/private\">private</a></p>"
        "</BODY></html>") % (LINKS[0][0], LINKS[1][0], LINKS[2][0])


class Page(HTMLParser):
    """The hrefs of <a> and the srcs of <img>, decoded, in order."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img" and "src" in a:
            self.imgs.append(a["src"])


def parse(message):
    html = message.msg.get_body(("html",)).get_content()
    p = Page()
    p.feed(html)
    return p


def by_recipient(relay, n):
    got = relay.wait_messages(n)
    out = {}
    for m in got:
        assert len(m.rcpt_tos) == 1, "a personal copy goes to one recipient: %r" % m.rcpt_tos
        out[m.rcpt_tos[0]] = m
    return out


def events(c, mid, type_):
    return [e for e in c.message(mid)["events"] if e["type"] == type_]


def wait_event(c, mid, type_, n, desc):
    return wait_until(lambda: len(events(c, mid, type_)) >= n and events(c, mid, type_),
                      timeout=10, desc=desc)


def token_of(url, kind):
    m = re.fullmatch(r"http://127\.0\.0\.1:\d+/t/%s/([A-Za-z0-9_.-]+)" % kind, url)
    assert m, "not a /t/%s/ URL: %r" % (kind, url)
    return m.group(1)


def rfc3339(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def flip(token, i):
    """token with the character at i replaced by another of the alphabet."""
    c = token[i]
    return token[:i] + ("B" if c != "B" else "C") + token[i + 1:]


def test_open_click_unsubscribe_per_recipient(gateway):
    c, relay, mg = gateway.client, gateway.relay, gateway.mg
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com", {"email": "bob@example.org", "name": "Bob"}],
                      "subject": "Your offer", "text": "Hello {{name}}", "html": HTML, "data": {"name": "you"},
                      "tags": ["offer"], "track_opens": True, "track_clicks": True, "unsubscribe": True})
    mid = sent["id"]
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    copies = by_recipient(relay, 2)
    assert set(copies) == {"ann@example.com", "bob@example.org"}
    delivered = {e["recipient"]: e for e in msg["events"] if e["type"] == "delivered"}
    assert set(delivered) == {"ann@example.com", "bob@example.org"}

    pages = {r: parse(m) for r, m in copies.items()}
    for r, p in pages.items():
        # every http(s) link rewritten to a click URL on this mailgate;
        # mailto: and the notrack link are left as they were
        assert len(p.hrefs) == 5, p.hrefs
        for h in p.hrefs[:3]:
            token_of(h, "c")
            assert h.startswith(mg.url + "/t/c/")
        assert p.hrefs[3] == "mailto:help@acme.example?subject=Hi&x=1"
        assert p.hrefs[4] == "https://acme.example/private"
        # one pixel, the last thing in the body
        assert len(p.imgs) == 1 and p.imgs[0].startswith(mg.url + "/t/o/"), p.imgs
        html = copies[r].msg.get_body(("html",)).get_content()
        assert re.search(r'<img src="[^"]+/t/o/[^"]+"[^>]*/></BODY>', html), html[-400:]
        # the text part is the same for both and untouched
        assert copies[r].msg.get_body(("plain",)).get_content().strip() == "Hello you"
        # RFC 8058 headers
        lu = copies[r].msg["List-Unsubscribe"]
        assert re.fullmatch(r"<%s/t/u/[A-Za-z0-9_.-]+>" % re.escape(mg.url), str(lu)), lu
        assert str(copies[r].msg["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    # each copy names its own recipient: every token differs
    ann, bob = pages["ann@example.com"], pages["bob@example.org"]
    assert not set(ann.hrefs[:3] + ann.imgs) & set(bob.hrefs[:3] + bob.imgs)
    assert copies["ann@example.com"].msg["List-Unsubscribe"] != copies["bob@example.org"].msg["List-Unsubscribe"]
    # the same message otherwise: one Message-ID, To shows both
    assert copies["ann@example.com"].msg["Message-ID"] == copies["bob@example.org"].msg["Message-ID"]
    assert "bob@example.org" in str(copies["ann@example.com"].msg["To"])

    http = requests.Session()

    # A click right after delivery is what a link scanner does.
    t0 = time.time()
    r = http.get(bob.hrefs[1], headers={"User-Agent": CHROME}, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    assert r.headers["Location"] == LINKS[1][1]
    first = wait_event(c, mid, "clicked", 1, "a clicked event")[0]
    assert first["recipient"] == "bob@example.org" and first["url"] == LINKS[1][1]
    d_s = max(rfc3339(delivered[r]["created_at"]) for r in delivered)
    if t0 - d_s < SCANNER_WINDOW_S - 1:  # (a slow machine may have taken longer)
        assert first["machine"] is True, first
    # A person's click comes later.
    wait_s = d_s + SCANNER_WINDOW_S + 0.5 - time.time()
    if wait_s > 0:
        time.sleep(wait_s)
    for i, (_, want) in enumerate(LINKS):
        r = http.get(ann.hrefs[i], headers={"User-Agent": CHROME}, allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text
        assert r.headers["Location"] == want, "link %d: %r" % (i, r.headers["Location"][:200])
        assert "no-store" in r.headers.get("Cache-Control", "")
    clicks = wait_event(c, mid, "clicked", 4, "four clicked events")
    human = [e for e in clicks if e["recipient"] == "ann@example.com"]
    assert [e["url"] for e in human] == [u for _, u in LINKS]
    for e in human:
        assert e["user_agent"] == CHROME and e["ip"] == "127.0.0.1" and e["machine"] is False, e
        assert e["tags"] == ["offer"] and e["message_id"] == mid
    # HEAD answers but is not a click
    assert http.head(ann.hrefs[0], allow_redirects=False, timeout=10).status_code == 302
    assert len(events(c, mid, "clicked")) == 4

    # Opens: a person, Gmail's proxy (a person behind it), Apple MPP (machine).
    for url, ua in ((ann.imgs[0], CHROME), (ann.imgs[0], GMAIL_PROXY), (bob.imgs[0], APPLE_MPP)):
        r = http.get(url, headers={"User-Agent": ua}, timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "image/gif"
        assert r.content.startswith(b"GIF89a") and len(r.content) == 43
        assert "no-store" in r.headers["Cache-Control"] and r.headers.get("Pragma") == "no-cache"
    opens = wait_event(c, mid, "opened", 3, "three opened events")
    got = [(e["recipient"], e["user_agent"], e["machine"], e["ip"]) for e in opens]
    assert got == [("ann@example.com", CHROME, False, "127.0.0.1"),
                   ("ann@example.com", GMAIL_PROXY, False, "127.0.0.1"),
                   ("bob@example.org", APPLE_MPP, True, "127.0.0.1")], got
    # the tenant's event log has them too, filtered by type
    assert len(c.events(type="opened", message_id=mid)["data"]) == 3

    # Forged tokens: 404, never a redirect, no event.
    before = len(c.message(mid)["events"])
    tok = token_of(ann.hrefs[0], "c")
    other = token_of(bob.hrefs[0], "c")
    forged = [flip(tok, 3), flip(tok, len(tok) - 1), tok[:-1], tok + "A", tok.split(".")[0], "x.y", "A" * 40,
              tok.split(".")[0] + "." + other.split(".")[1]]  # Bob's MAC on Ann's payload
    for f in forged + [token_of(ann.imgs[0], "o")]:  # an open token is no click token either
        r = http.get(mg.url + "/t/c/" + f, headers={"User-Agent": CHROME}, allow_redirects=False, timeout=10)
        assert r.status_code == 404, (f, r.status_code, r.headers)
        assert "Location" not in r.headers
    for f in forged + [tok]:
        assert http.get(mg.url + "/t/o/" + f, headers={"User-Agent": CHROME}, timeout=10).status_code == 404
        assert http.post(mg.url + "/t/u/" + f, data={"List-Unsubscribe": "One-Click"},
                         timeout=10).status_code == 404
    time.sleep(0.3)
    assert len(c.message(mid)["events"]) == before
    assert "bob@example.org" not in {s["email"] for s in json_of(c.get("/v1/suppressions"))["data"]}

    # Unsubscribe: GET only asks; POST (RFC 8058 one-click) does it.
    lu = str(copies["bob@example.org"].msg["List-Unsubscribe"])[1:-1]
    r = http.get(lu, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "<form method=\"post\">" in r.text and "bob@example.org" in r.text
    supp = lambda: {s["email"].lower(): s for s in json_of(c.get("/v1/suppressions"))["data"]}  # noqa: E731
    assert "bob@example.org" not in supp()
    assert events(c, mid, "unsubscribed") == []
    r = http.post(lu, data="List-Unsubscribe=One-Click",
                  headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert r.status_code == 200, r.text
    assert supp()["bob@example.org"]["reason"] == "unsubscribed"
    assert "ann@example.com" not in supp()
    un = wait_event(c, mid, "unsubscribed", 1, "an unsubscribed event")
    assert [e["recipient"] for e in un] == ["bob@example.org"]
    # the next send to Bob is suppressed
    again = c.send_ok({"from": FROM, "to": ["bob@example.org"], "subject": "x", "text": "y"})
    assert again["recipients"] == [{"email": "bob@example.org", "status": "suppressed"}]


def test_untracked_send_is_one_shared_copy(gateway):
    """Without the flags nothing changes: one transaction, links untouched."""
    c, relay = gateway.client, gateway.relay
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com", "bob@example.org"], "subject": "Plain",
                      "html": HTML.replace("{{name}}", "you"), "track_opens": False})
    assert c.wait_message(sent["id"])["status"] == "delivered"
    got = relay.wait_messages(1)
    assert len(got) == 1 and sorted(got[0].rcpt_tos) == ["ann@example.com", "bob@example.org"]
    p = parse(got[0])
    assert p.imgs == [] and p.hrefs[0] == LINKS[0][1]
    assert got[0].msg["List-Unsubscribe"] is None


def test_tokens_outlive_the_message(gateway, redis):
    """After the record is gone (retention), a click still redirects and is
    recorded in the tenant's log."""
    c, relay, mg = gateway.client, gateway.relay, gateway.mg
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com"], "subject": "Gone soon",
                      "html": "<p><a href=\"https://x.example/after\">x</a></p>", "track_clicks": True})
    mid = sent["id"]
    assert c.wait_message(mid)["status"] == "delivered"
    link = parse(relay.wait_messages(1)[0]).hrefs[0]
    for k in ("mg:msg:%s" % mid, "mg:msg:%s:rcpt" % mid, "mg:msg:%s:events" % mid):
        redis.command("DEL", k)
    assert c.get("/v1/messages/" + mid).status_code == 404
    r = requests.get(link, headers={"User-Agent": CHROME}, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "https://x.example/after"
    ev = wait_until(lambda: c.events(type="clicked")["data"], timeout=10, desc="clicked in the tenant log")
    assert ev[0]["message_id"] == mid and ev[0]["recipient"] == "ann@example.com"
    assert ev[0]["url"] == "https://x.example/after"


def test_secret_shared_and_unsubscribe_header_refused(relay, mailgate, api_key, redis):
    """Without MAILGATE_SECRET the key is made once in Redis (mg:secret), so
    a second process verifies the first one's tokens; with MAILGATE_SECRET
    tokens are signed with it (another secret refuses them). Callers cannot
    set List-Unsubscribe themselves."""
    rl = relay(name="relay1")
    a = mailgate(rl)
    b = mailgate(rl)
    key = api_key("acme")
    c = a.client(key)
    r = c.send({"from": FROM, "to": ["ann@example.com"], "subject": "x", "text": "y",
                "headers": {"List-Unsubscribe": "<https://evil.example/>"}})
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "headers.List-Unsubscribe"
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com"], "subject": "x", "text": "y", "unsubscribe": True})
    c.wait_message(sent["id"])
    m = rl.wait_messages(1)[0]
    url = str(m.msg["List-Unsubscribe"])[1:-1]
    secret = redis.command("GET", "mg:secret")
    assert secret and len(secret) == 32
    # process b answers a's token (same key), on its own port
    tok = url.rsplit("/", 1)[1]
    assert requests.get(b.url + "/t/u/" + tok, timeout=10).status_code == 200
    # a process with another MAILGATE_SECRET refuses it
    other = mailgate(rl, env={"MAILGATE_SECRET": "another-secret-of-enough-length"})
    assert requests.get(other.url + "/t/u/" + tok, timeout=10).status_code == 404
    # the start-up warning about an http:// public URL
    assert any(line.get("event") == "public_url_not_https" for line in a.logs())
    # and no secret in any log
    for line in a.logs() + other.logs():
        assert "another-secret-of-enough-length" not in str(line)
        assert tok not in str(line)


def test_bad_secret_stops_startup(redis):
    r = run_cli(redis.url, "serve", env={"MAILGATE_SECRET": "short", "MAILGATE_LISTEN": "127.0.0.1:1"})
    assert r.returncode != 0 and "MAILGATE_SECRET" in r.stderr


@pytest.fixture
def dkim_key(tmp_path):
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))
    der = k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "acme.example:trk:%s" % path, {b"trk._domainkey.acme.example.": b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)}


def test_personal_copies_are_dkim_signed(relay, mailgate, api_key, redis, dkim_key):
    spec, txt = dkim_key
    rl = relay(name="relay1")
    mg = mailgate(rl, env={"MAILGATE_DKIM_KEYS": spec})
    c = mg.client(api_key("acme"))
    assert run_cli(redis.url, "tenant", "set", "acme", "--allowed-from", "acme.example").returncode == 0
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com", "bob@example.org"], "subject": "Signed",
                      "html": HTML.replace("{{name}}", "you"), "track_opens": True, "track_clicks": True,
                      "unsubscribe": True})
    assert c.wait_message(sent["id"])["status"] == "delivered"
    for m in by_recipient(rl, 2).values():
        assert m.raw.startswith(b"DKIM-Signature:")
        assert dkim.verify(m.raw, dnsfunc=lambda name, timeout=5: txt.get(name)), m.raw[:600]
        sig = str(m.msg["DKIM-Signature"]).replace("\r\n", "").replace(" ", "").lower()
        assert "list-unsubscribe:list-unsubscribe-post" in sig or \
            ("list-unsubscribe" in sig and "list-unsubscribe-post" in sig)


def test_personal_copy_retried_and_bodies_removed(relay, mailgate, api_key, redis):
    """A deferred recipient's retry sends its own copy again; every copy is
    deleted once all recipients are done."""
    rl = relay(name="relay1", rules=[{"cmd": "RCPT", "match": "bob@example.org", "reply": "451 4.2.0 later",
                                      "times": 1}])
    mg = mailgate(rl)
    c = mg.client(api_key("acme"))
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com", "bob@example.org", "cy@example.net"],
                      "subject": "Retry", "html": "<p><a href=\"https://x.example/r\">r</a></p>",
                      "track_clicks": True})
    mid = sent["id"]
    # a suppressed recipient would have no copy; here all three have one
    assert sorted(k.decode() for k in redis.command("KEYS", "mg:msg:%s:body*" % mid)) == \
        ["mg:msg:%s:body:%d" % (mid, n) for n in (1, 2, 3)] or c.message(mid)["status"] != "queued"
    msg = c.wait_message(mid)
    assert msg["status"] == "delivered", msg
    bob = [r for r in msg["recipients"] if r["email"] == "bob@example.org"][0]
    assert bob["attempts"] == 2
    copies = by_recipient(rl, 3)
    link = parse(copies["bob@example.org"]).hrefs[0]
    r = requests.get(link, headers={"User-Agent": CHROME}, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "https://x.example/r"
    ev = wait_event(c, mid, "clicked", 1, "Bob's click")
    assert ev[0]["recipient"] == "bob@example.org"
    assert redis.command("KEYS", "mg:msg:%s:body*" % mid) == []


def test_scheduled_personal_copies_send_and_cancel(gateway, redis):
    c, relay = gateway.client, gateway.relay
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com", "bob@example.org"], "subject": "Later",
                      "html": "<p>x</p>", "track_opens": True, "send_at": soon})
    assert sent["status"] == "scheduled"
    msg = c.wait_message(sent["id"])
    assert msg["status"] == "delivered", msg
    assert len(by_recipient(relay, 2)) == 2

    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com", "bob@example.org"], "subject": "Never",
                      "html": "<p>x</p>", "unsubscribe": True, "send_at": later})
    mid = sent["id"]
    assert len(redis.command("ZRANGE", "mg:delayed", 0, -1)) == 2
    assert c.delete("/v1/messages/" + mid).status_code == 204
    msg = c.message(mid)
    assert msg["status"] == "cancelled" and {r["status"] for r in msg["recipients"]} == {"cancelled"}
    assert redis.command("ZRANGE", "mg:delayed", 0, -1) == []
    assert redis.command("KEYS", "mg:msg:%s:body*" % mid) == []
    assert c.delete("/v1/messages/" + mid).status_code == 409
