"""End-to-end tests of observability (issue 7, points 2 and 3): GET /metrics
in the Prometheus text format 0.0.4, and the JSON logs.

/metrics is parsed strictly by a small parser below (no client library):
every line is a comment or a sample matching the exposition grammar, every
metric family has exactly one HELP and one TYPE line before its samples, a
family's samples are contiguous, no series repeats, counters end in _total,
and every histogram series has buckets with ascending le, cumulative counts,
a last bucket le="+Inf" equal to _count, and a _sum. The values are then
checked after real traffic through tests/relay.py: a delivery, a hard bounce
(550 5.1.1 to RCPT), a deferral (451 4.3.0, once, then delivered on the
retry), a suppressed recipient, an open and a click, and a webhook receiver
that fails once.

Logs: every line mailgate writes is one JSON object; each delivery attempt
has a "delivery" line with the message id, recipient, relay, reply code,
enhanced code and duration_ms; the API key, the relay's AUTH password (also
base64-encoded as AUTH PLAIN sends it) and a marker string from the message
body appear nowhere in the log; the X-Request-Id a response carries is the
request_id of that request's "http" log line.
"""

import base64
import json
import math
import re
import time

import requests

import conftest
from conftest import PYTHON, REPO, START_TIMEOUT, Proc, _attach_log, base_env, free_port, wait_until

FROM = "Acme <noreply@acme.example>"
RECEIVER_PY = REPO / "tests" / "e2e" / "hook_receiver.py"

# ---------------------------------------------------------------- the parser

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
LABEL = r"%s=%s" % (LABEL_NAME, LABEL_VALUE)
LABELS = r"\{(?:%s(?:,%s)*,?)?\}" % (LABEL, LABEL)
VALUE = r"(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|[+-]Inf|NaN)"
SAMPLE_RE = re.compile(r"^(%s)(%s)? (%s)(?: -?\d+)?$" % (NAME, LABELS, VALUE))
HELP_RE = re.compile(r"^# HELP (%s) (.*)$" % NAME)
TYPE_RE = re.compile(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % NAME)
LABEL_RE = re.compile(r"(%s)=(%s)" % (LABEL_NAME, LABEL_VALUE))


def parse_value(s):
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    return special[s] if s in special else float(s)


def parse_labels(text):
    if not text:
        return ()
    out = []
    for m in LABEL_RE.finditer(text[1:-1]):
        v = m.group(2)[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        out.append((m.group(1), v))
    names = [k for k, _ in out]
    assert len(names) == len(set(names)), "a label repeats in %r" % text
    return tuple(sorted(out))


class Exposition:
    """families: name -> {"type", "help", "samples": [(sample_name, labels, value)]}."""

    def __init__(self, families):
        self.families = families

    def value(self, name, **labels):
        """The value of one sample (exactly one must match)."""
        fam = self.families[family_of(name, self.families)]
        want = tuple(sorted(labels.items()))
        got = [v for n, lab, v in fam["samples"] if n == name and all(p in lab for p in want)]
        assert len(got) == 1, "%s%r: %d samples" % (name, labels, len(got))
        return got[0]

    def samples(self, name):
        fam = self.families[family_of(name, self.families)]
        return [(lab, v) for n, lab, v in fam["samples"] if n == name]

    def histogram(self, name, **labels):
        """{"buckets": [(le, count)], "sum", "count"} of one histogram series."""
        fam = self.families[name]
        assert fam["type"] == "histogram"
        want = tuple(sorted(labels.items()))
        buckets = [(parse_value(dict(lab)["le"]), v) for n, lab, v in fam["samples"]
                   if n == name + "_bucket" and tuple(p for p in lab if p[0] != "le") == want]
        return {"buckets": buckets, "sum": self.value(name + "_sum", **labels),
                "count": self.value(name + "_count", **labels)}


def family_of(sample, families):
    if sample in families:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample[:-len(suffix)] in families:
            base = sample[:-len(suffix)]
            if families[base]["type"] in ("histogram", "summary"):
                return base
    raise AssertionError("sample %s belongs to no family with HELP and TYPE" % sample)


def parse_exposition(text):
    """Parse and check the whole text; return an Exposition."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families = {}
    order = []          # family names in order of first appearance
    current = None      # the family whose samples are being read
    seen_series = set()
    for no, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (no, line)
        assert line.strip(), "empty line at " + where
        if line.startswith("#"):
            m = HELP_RE.match(line)
            if m:
                fam = families.setdefault(m.group(1), {"type": None, "help": None, "samples": []})
                assert fam["help"] is None, "second HELP at " + where
                assert not fam["samples"], "HELP after samples at " + where
                assert m.group(2).strip(), "empty HELP at " + where
                fam["help"] = m.group(2)
                if m.group(1) not in order:
                    order.append(m.group(1))
                current = m.group(1)
                continue
            m = TYPE_RE.match(line)
            assert m, "a comment that is neither HELP nor TYPE at " + where
            fam = families.setdefault(m.group(1), {"type": None, "help": None, "samples": []})
            assert fam["type"] is None, "second TYPE at " + where
            assert not fam["samples"], "TYPE after samples at " + where
            fam["type"] = m.group(2)
            if m.group(1) not in order:
                order.append(m.group(1))
            current = m.group(1)
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample line at " + where
        name, labels, value = m.group(1), parse_labels(m.group(2)), parse_value(m.group(3))
        fam_name = family_of(name, families)
        assert fam_name == current, "samples of %s are not contiguous (%s)" % (fam_name, where)
        series = (name, labels)
        assert series not in seen_series, "series repeats at " + where
        seen_series.add(series)
        families[fam_name]["samples"].append((name, labels, value))
    for name, fam in families.items():
        assert fam["help"] is not None, "%s has no HELP" % name
        assert fam["type"] is not None, "%s has no TYPE" % name
        assert name.startswith("mailgate_"), "%s lacks the mailgate_ prefix" % name
        if fam["type"] == "counter":
            assert name.endswith("_total"), "counter %s must end in _total" % name
            for n, lab, v in fam["samples"]:
                assert v >= 0 and v == int(v), "counter %s%r = %r" % (n, lab, v)
        if fam["type"] == "histogram":
            check_histogram(name, fam)
    return Exposition(families)


def check_histogram(name, fam):
    series = {}
    for n, lab, v in fam["samples"]:
        assert n in (name + "_bucket", name + "_sum", name + "_count"), "%s in histogram %s" % (n, name)
        key = tuple(p for p in lab if p[0] != "le")
        s = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if n.endswith("_bucket"):
            le = dict(lab).get("le")
            assert le is not None, "bucket without le in %s" % name
            s["buckets"].append((parse_value(le), v))
        elif n.endswith("_sum"):
            s["sum"] = v
        else:
            s["count"] = v
    assert series, "histogram %s has no series" % name
    for key, s in series.items():
        b = s["buckets"]
        assert b, "%s%r has no buckets" % (name, key)
        les = [le for le, _ in b]
        assert les == sorted(les) and len(set(les)) == len(les), "%s: le not ascending: %r" % (name, les)
        assert les[-1] == math.inf, "%s: the last bucket must be +Inf" % name
        counts = [c for _, c in b]
        assert counts == sorted(counts), "%s: buckets not cumulative: %r" % (name, counts)
        assert s["count"] is not None and s["sum"] is not None, "%s%r lacks _sum or _count" % (name, key)
        assert counts[-1] == s["count"], "%s: +Inf bucket %r != _count %r" % (name, counts[-1], s["count"])
        assert s["sum"] >= 0


def scrape(url):
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers["Content-Type"]
    return parse_exposition(r.text)


def test_parser_rejects_bad_expositions():
    """The checker itself: each of these must fail."""
    good = ("# HELP mailgate_x_seconds X.\n# TYPE mailgate_x_seconds histogram\n"
            'mailgate_x_seconds_bucket{le="0.1"} 1\nmailgate_x_seconds_bucket{le="+Inf"} 2\n'
            "mailgate_x_seconds_sum 0.3\nmailgate_x_seconds_count 2\n")
    parse_exposition(good)
    bad = [
        good.replace('le="+Inf"} 2', 'le="+Inf"} 3'),                 # +Inf != _count
        good.replace('{le="0.1"} 1', '{le="0.1"} 5'),                 # not cumulative
        good.replace('mailgate_x_seconds_bucket{le="+Inf"} 2\n', ""),  # no +Inf
        good.replace("# HELP mailgate_x_seconds X.\n", ""),           # no HELP
        good + "mailgate_y 1\n",                                      # no TYPE
        good.replace("_count 2", "_count two"),                        # bad value
        "# HELP mailgate_a_total A.\n# TYPE mailgate_a_total counter\nmailgate_a_total{x=\"1} 1\n",
    ]
    for text in bad:
        try:
            parse_exposition(text)
        except AssertionError:
            continue
        raise AssertionError("accepted a bad exposition:\n" + text)


# ---------------------------------------------------------------- helpers

def start_receiver(tmp_path, request, fail_first):
    base = tmp_path / "receiver"
    (base / "out").mkdir(parents=True)
    port_file = base / "port"
    proc = Proc([PYTHON, str(RECEIVER_PY), "--port-file", str(port_file), "--outdir", str(base / "out"),
                 "--fail-first", str(fail_first)], base / "receiver.stderr")
    _attach_log(request, "hook receiver stderr", base / "receiver.stderr")
    port = wait_until(lambda: port_file.exists() and int(port_file.read_text().strip()),
                      timeout=START_TIMEOUT, desc="hook receiver to listen")
    return proc, "http://127.0.0.1:%d/hook" % port, base / "out"


def tracking_urls(raw):
    """The open pixel and first click link in a delivered message."""
    text = raw.decode("latin-1").replace("=\r\n", "").replace("=3D", "=")
    opens = re.findall(r"https?://[^\s\"'<>]*/t/o/[A-Za-z0-9_\-.]+", text)
    clicks = re.findall(r"https?://[^\s\"'<>]*/t/c/[A-Za-z0-9_\-.]+", text)
    return opens[0], clicks[0]


# ---------------------------------------------------------------- /metrics

def test_metrics_after_traffic(relay, mailgate, api_key, tmp_path, request):
    rl = relay(name="relay1", rules=[
        {"cmd": "RCPT", "match": "gone@example.com", "reply": "550 5.1.1 No such user"},
        {"cmd": "RCPT", "match": "later@example.com", "reply": "451 4.3.0 Try again later", "times": 1},
    ])
    hook_proc, hook_url, _ = start_receiver(tmp_path, request, fail_first=1)
    try:
        mg = mailgate(rl, env={"MAILGATE_WEBHOOK_ALLOW_PRIVATE": "true",
                               "MAILGATE_WEBHOOK_RETRY_SCHEDULE": "300ms",
                               "MAILGATE_PUBLIC_URL": "http://127.0.0.1:1"})
        c = mg.client(api_key("acme"))
        # before any traffic: every family is there, counters at zero
        m0 = scrape(mg.url)
        for name in ("accepted", "delivered", "deferred", "bounced", "suppressed", "opened", "clicked"):
            assert m0.families["mailgate_%s_total" % name]["type"] == "counter"
            assert m0.value("mailgate_%s_total" % name) == 0
        for name in ("mailgate_api_request_seconds", "mailgate_smtp_transaction_seconds",
                     "mailgate_accepted_to_delivered_seconds"):
            assert m0.families[name]["type"] == "histogram"
        assert m0.value("mailgate_smtp_pool_size", relay="relay1") == 4
        assert m0.value("mailgate_webhook_failures_total") == 0

        r = c.post("/v1/webhooks", json={"url": hook_url, "events": ["delivered"]})
        assert r.status_code == 201, r.text
        r = c.post("/v1/suppressions", json={"email": "blocked@example.com", "reason": "manual"})
        assert r.status_code in (200, 201), r.text

        ok = c.send_ok({"from": FROM, "to": ["ann@example.com"], "subject": "s", "text": "t",
                        "html": '<p><a href="https://acme.example/x">x</a></p>',
                        "track_opens": True, "track_clicks": True})
        gone = c.send_ok({"from": FROM, "to": ["gone@example.com"], "subject": "s", "text": "t"})
        later = c.send_ok({"from": FROM, "to": ["later@example.com"], "subject": "s", "text": "t"})
        supp = c.send_ok({"from": FROM, "to": ["blocked@example.com"], "subject": "s", "text": "t"})
        assert supp["recipients"][0]["status"] == "suppressed"
        assert c.wait_message(ok["id"])["status"] == "delivered"
        assert c.wait_message(gone["id"])["status"] == "bounced"
        assert c.wait_message(later["id"])["status"] == "delivered"
        assert c.wait_message(supp["id"])["status"] == "suppressed"

        # an open and a click through the links in the delivered copy
        [msg] = [m for m in rl.messages() if "ann@example.com" in m.rcpt_tos]
        o, k = tracking_urls(msg.raw)
        path_o, path_k = o[o.index("/t/o/"):], k[k.index("/t/c/"):]
        assert requests.get(mg.url + path_o, timeout=10, headers={"User-Agent": "Mozilla/5.0"}).status_code == 200
        assert requests.get(mg.url + path_k, timeout=10, allow_redirects=False,
                            headers={"User-Agent": "Mozilla/5.0"}).status_code in (301, 302, 303, 307, 308)

        # the webhook: two deliveries events (ann, later); the first attempt fails
        def hooks_done():
            m = scrape(mg.url)
            return (m.value("mailgate_webhook_deliveries_total") >= 2 and
                    m.value("mailgate_webhook_pending") == 0) and m
        wait_until(hooks_done, timeout=30, desc="both webhook deliveries done")

        m = scrape(mg.url)
        assert m.value("mailgate_accepted_total") == 4
        assert m.value("mailgate_delivered_total") == 2
        assert m.value("mailgate_bounced_total") == 1
        assert m.value("mailgate_deferred_total") == 1
        assert m.value("mailgate_suppressed_total") == 1
        assert m.value("mailgate_opened_total") == 1
        assert m.value("mailgate_clicked_total") == 1
        assert m.value("mailgate_webhook_failures_total") == 1
        assert m.value("mailgate_webhook_backlog") == 0

        # SMTP transactions: ann, gone, later twice
        txn = m.histogram("mailgate_smtp_transaction_seconds")
        assert txn["count"] == 4 == m.value("mailgate_smtp_transactions_total")
        assert 0 < txn["sum"] < 30
        # accepted -> delivered: ann at once, later after a retry of ~1 s
        acc = m.histogram("mailgate_accepted_to_delivered_seconds")
        assert acc["count"] == 2
        assert acc["sum"] >= 0.85, acc
        at_half = [c for le, c in acc["buckets"] if le == 0.5]
        assert at_half and at_half[0] <= 1, acc["buckets"]  # the retried one is above 0.5 s
        # every request answered before this scrape was observed once
        api = m.histogram("mailgate_api_request_seconds")
        answered = sum(v for _, v in m.samples("mailgate_http_requests_total"))
        assert api["count"] == answered and answered >= 10, (api["count"], answered)
        assert api["sum"] > 0

        # the pool: sessions stay open between transactions, none busy now
        assert m.value("mailgate_smtp_pool_size", relay="relay1") == 4
        assert 1 <= m.value("mailgate_smtp_pool_open", relay="relay1") <= 4
        assert m.value("mailgate_smtp_pool_busy", relay="relay1") == 0

        # the queue drained
        assert m.value("mailgate_redis_up") == 1
        assert m.value("mailgate_queue_delayed") == 0
        assert m.value("mailgate_queue_pending") == 0
        assert m.value("mailgate_messages_open") == 0
        assert m.value("mailgate_oldest_open_age_seconds") == 0
    finally:
        hook_proc.stop()


def test_metrics_queue_gauges_and_backlog(redis, tmp_path, request, api_key):
    """An API-only process (no sender, no dispatcher) shows what waits in
    Redis: scheduled sends, the oldest open message's age, and webhook
    deliveries due (backlog) versus waiting (pending). No relay runs, so
    the pool families are present without samples."""
    port = free_port()
    env = base_env(redis.url)
    env.update({"MAILGATE_LISTEN": "127.0.0.1:%d" % port, "MAILGATE_LOG_LEVEL": "debug",
                "MAILGATE_HELO_NAME": "mailgate.test"})
    log = tmp_path / "api.stderr"
    proc = Proc([conftest.MAILGATE_BIN, "serve", "--role", "api"], log, env=env, cwd=str(tmp_path))
    _attach_log(request, "mailgate api stderr", log)
    url = "http://127.0.0.1:%d" % port
    try:
        wait_until(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200,
                   timeout=START_TIMEOUT, desc="api /readyz")
        c_key = api_key("acme")
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + c_key
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
        for _ in range(2):
            r = s.post(url + "/v1/messages", json={"from": FROM, "to": ["a@example.com"], "subject": "s",
                                                   "text": "t", "send_at": later}, timeout=10)
            assert r.status_code == 202, r.text
        r = s.post(url + "/v1/messages", json={"from": FROM, "to": ["b@example.com"], "subject": "s", "text": "t"},
                   timeout=10)
        assert r.status_code == 202, r.text
        now = int(time.time() * 1000)
        redis.command("ZADD", "mg:wh:due", now - 5000, "wh_a:ev_1", now - 1000, "wh_a:ev_2", now - 10, "wh_b:ev_3",
                      now + 600000, "wh_a:ev_4", now + 900000, "wh_b:ev_5")
        time.sleep(1.1)
        m = scrape(url)
        assert m.value("mailgate_accepted_total") == 3
        assert m.value("mailgate_queue_delayed") == 2
        assert m.value("mailgate_queue_jobs") >= 1          # the unscheduled one waits for a sender
        assert m.value("mailgate_messages_open") == 3
        assert m.value("mailgate_oldest_open_age_seconds") >= 1.0
        assert m.value("mailgate_webhook_backlog") == 3
        assert m.value("mailgate_webhook_pending") == 5
        for fam in ("mailgate_smtp_pool_size", "mailgate_smtp_pool_open", "mailgate_smtp_pool_busy"):
            assert m.families[fam]["type"] == "gauge" and m.families[fam]["samples"] == []
        assert m.histogram("mailgate_smtp_transaction_seconds")["count"] == 0
    finally:
        proc.stop()


# ---------------------------------------------------------------- logs

def test_logs_are_json_lines_without_secrets(relay, mailgate, api_key):
    password = "Sekr3t-relay-Pa55"
    marker = "BODY-MARKER-5f0c2e91"
    rl = relay(name="authrelay", extra_args=["--auth", "mg-user:" + password, "--auth-plaintext"],
               rules=[{"cmd": "RCPT", "match": "gone@example.com", "reply": "550 5.1.1 No such user"}])
    url = "smtp://mg-user:%s@127.0.0.1:%d?tls=none&name=authrelay" % (password, rl.port)
    mg = mailgate(relay_urls=[url])
    key = api_key("acme")
    c = mg.client(key)
    att = base64.b64encode(("attachment " + marker).encode()).decode()
    sent = c.send_ok({"from": FROM, "to": ["ann@example.com", "gone@example.com"], "subject": "Receipt",
                      "text": "text " + marker, "html": "<p>html %s</p>" % marker,
                      "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": att}]})
    assert c.wait_message(sent["id"])["status"] == "partially_delivered"
    assert marker.encode() in rl.messages()[0].raw  # the marker really went through
    assert [e for e in rl.commands() if e.get("event") == "auth" and e.get("success")]

    # a request whose id we look for, and a failed one
    r = c.get("/v1/messages/" + sent["id"])
    rid = r.headers["X-Request-Id"]
    r404 = c.get("/v1/messages/nosuchmessage")
    assert r404.status_code == 404
    rid404 = r404.headers["X-Request-Id"]
    assert rid and rid404 and rid != rid404

    def logged():
        got = {x.get("request_id") for x in mg.logs() if x.get("event") == "http"}
        return rid in got and rid404 in got
    wait_until(logged, timeout=10, desc="the http log lines of both requests")

    text = mg.log_path.read_text(encoding="utf-8")
    lines = []
    for no, line in enumerate(text.splitlines(), 1):
        assert line.strip(), "empty log line %d" % no
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError("log line %d is not JSON: %r" % (no, line)) from None
        assert isinstance(obj, dict), "log line %d is not an object" % no
        for k in ("ts", "level", "event"):
            assert k in obj, "log line %d lacks %s: %r" % (no, k, line)
        lines.append(obj)

    # no secrets, no bodies
    plain_b64 = base64.b64encode(b"\0mg-user\0" + password.encode()).decode()
    for needle, what in ((key, "the API key"), (password, "the relay password"),
                         (plain_b64, "the AUTH PLAIN credentials"),
                         (base64.b64encode(password.encode()).decode(), "the AUTH LOGIN password"),
                         (marker, "the message body"), (att, "the attachment")):
        assert needle not in text, "%s appears in the log" % what

    # one delivery line per attempt and recipient, with the fixed keys
    deliveries = {x["recipient"]: x for x in lines if x.get("event") == "delivery"}
    assert set(deliveries) == {"ann@example.com", "gone@example.com"}, deliveries
    for rcpt, x in deliveries.items():
        assert x["message_id"] == sent["id"]
        assert x["relay"] == "authrelay"
        assert int(x["duration_ms"]) >= 0
        assert x["attempt"] == "1"
    assert deliveries["ann@example.com"]["code"] == "250"
    assert deliveries["ann@example.com"]["enhanced_code"] == "2.0.0"
    assert deliveries["ann@example.com"]["status"] == "delivered"
    assert deliveries["gone@example.com"]["code"] == "550"
    assert deliveries["gone@example.com"]["enhanced_code"] == "5.1.1"
    assert deliveries["gone@example.com"]["status"] == "bounced"

    # the request id in the header is the one in that request's log line
    [h] = [x for x in lines if x.get("event") == "http" and x.get("request_id") == rid]
    assert h["path"] == "/v1/messages/" + sent["id"] and h["status"] == "200" and h["method"] == "GET"
    assert int(h["duration_ms"]) >= 0
    [h404] = [x for x in lines if x.get("event") == "http" and x.get("request_id") == rid404]
    assert h404["status"] == "404"
    # every response carries one, unauthenticated routes and errors included
    for path in ("/healthz", "/metrics", "/v1/openapi.yaml", "/nope"):
        assert requests.get(mg.url + path, timeout=10).headers.get("X-Request-Id", "").startswith("req_")
    assert requests.get(mg.url + "/v1/messages", timeout=10).headers.get("X-Request-Id")
