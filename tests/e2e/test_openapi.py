"""End-to-end check of the OpenAPI 3.1 description (issue 7, point 4):
docs/openapi.yaml against the real answers of a running server.

The document must be OpenAPI 3.1.0 with every schema a valid JSON Schema
draft 2020-12 (no 3.0-only keywords such as `nullable`), and the binary
must serve exactly the file at GET /v1/openapi.yaml. Then a set of real
requests (sends, reads, lists, events, stats, templates, suppressions,
webhooks, health, errors 400/401/403/404/409/415/422, a compatible
surface) goes to a server delivering through tests/relay.py; for each
answer the test finds the operation in `paths` (method and path template),
the response for the status code, checks the Content-Type is one the
document names (or that there is no body where it names none) and that
the headers it declares are present, and validates the JSON body against
the schema with a Draft 2020-12 validator ($refs resolved inside the
document). It also reports fields the server sends that the schema does
not name (unless the schema says additionalProperties), so the document
keeps up with the server.

Validator: python3-jsonschema from Debian (scripts/deps.sh).
"""

import base64
import json
import re
import time

import requests
import yaml

from conftest import REPO, json_of, run_cli, wait_until
from test_metrics import start_receiver

try:
    import jsonschema
    from jsonschema import Draft202012Validator, FormatChecker
except ImportError:  # a missing validator must fail CI, not skip the check
    raise ImportError("python3-jsonschema is missing: run scripts/deps.sh (apt-get install python3-jsonschema)")

DOC_PATH = REPO / "docs" / "openapi.yaml"
FROM = "Acme <noreply@acme.example>"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Formats are checked too. jsonschema checks date-time only with an extra
# package Debian does not ship, so RFC 3339 (section 5.6) is checked here.
FORMATS = FormatChecker()
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@FORMATS.checks("date-time")
def _date_time(value):
    return not isinstance(value, str) or bool(RFC3339.match(value))


def load_doc():
    return yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the document

def walk(node, path=()):
    """Yield (path, dict) for every mapping in node."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def schemas_of(doc):
    """Every schema object in the document, with a path naming it."""
    out = [(("components", "schemas", k), v) for k, v in doc["components"]["schemas"].items()]
    for path, node in walk(doc):
        if "schema" in node and isinstance(node["schema"], dict) and path[:2] != ("components", "schemas"):
            out.append((path + ("schema",), node["schema"]))
    return out


def test_document_is_openapi_31():
    doc = load_doc()
    assert doc["openapi"] == "3.1.0"
    assert not (REPO / "gateway" / "openapi.yaml").exists(), "the document moved to docs/openapi.yaml"
    for path, schema in schemas_of(doc):
        for sub, node in walk(schema, path):
            where = "/".join(map(str, sub))
            assert "nullable" not in node, "OpenAPI 3.0 'nullable' at %s: use a type array" % where
            assert "example" not in node, "OpenAPI 3.0 'example' at %s: use 'examples'" % where
        try:
            Draft202012Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as e:
            raise AssertionError("%s is not a valid 2020-12 schema: %s" % ("/".join(map(str, path)), e.message))
    # every $ref points at something
    for path, node in walk(doc):
        ref = node.get("$ref")
        if isinstance(ref, str):
            resolve_pointer(doc, ref)
    # operation ids are unique
    ids = [op["operationId"] for _, item in doc["paths"].items() for m, op in item.items()
           if m in ("get", "put", "post", "delete", "patch") and "operationId" in op]
    assert len(ids) == len(set(ids))


def resolve_pointer(doc, ref):
    assert ref.startswith("#/"), "only local $refs: %s" % ref
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, "dangling $ref %s" % ref
        node = node[part]
    return node


def deref(doc, node):
    while isinstance(node, dict) and "$ref" in node and len(node) == 1:
        node = resolve_pointer(doc, node["$ref"])
    return node


# ---------------------------------------------------------------- matching

def find_operation(doc, method, path):
    """(template, operation) for a concrete path; literal segments win over
    templated ones (/v1/messages/batch before /v1/messages/{id})."""
    best = None
    for template, item in doc["paths"].items():
        rx = "^" + re.sub(r"\{[^/}]+\}", "[^/]+", re.escape(template).replace(r"\{", "{").replace(r"\}", "}")) + "$"
        if re.match(rx, path) and method in item:
            score = template.count("{")
            if best is None or score < best[0]:
                best = (score, template, item[method])
    assert best, "no operation in the document for %s %s" % (method.upper(), path)
    return best[1], best[2]


def undocumented(doc, instance, schemas, where="$"):
    """Paths of object members no schema in `schemas` names (and none
    allows with additionalProperties/patternProperties)."""
    found = []
    flat = []

    def collect(s):
        s = deref(doc, s) if isinstance(s, dict) else s
        if not isinstance(s, dict):
            return
        if "$ref" in s:
            collect(resolve_pointer(doc, s["$ref"]))
        flat.append(s)
        for k in ("allOf", "oneOf", "anyOf"):
            for sub in s.get(k, []):
                collect(sub)
    for s in schemas:
        collect(s)
    if not flat:
        return found
    if isinstance(instance, dict):
        declared, open_ = set(), False
        for s in flat:
            declared.update(s.get("properties", {}))
            if s.get("additionalProperties", False) not in (False, None) or "patternProperties" in s:
                open_ = True
            if "additionalProperties" in s and isinstance(s["additionalProperties"], dict):
                for k, v in instance.items():
                    if k not in declared:
                        found += undocumented(doc, v, [s["additionalProperties"]], "%s.%s" % (where, k))
        if not any("properties" in s or "additionalProperties" in s for s in flat):
            return found  # an untyped value ("any JSON"): nothing to compare
        for k, v in instance.items():
            subs = [s["properties"][k] for s in flat if k in s.get("properties", {})]
            if subs:
                found += undocumented(doc, v, subs, "%s.%s" % (where, k))
            elif not open_:
                found.append("%s.%s" % (where, k))
    elif isinstance(instance, list):
        items = [s["items"] for s in flat if isinstance(s.get("items"), dict)]
        for i, v in enumerate(instance):
            found += undocumented(doc, v, items, "%s[%d]" % (where, i))
    return found


class Checker:
    """Validates responses against the document; collects what it checked."""

    def __init__(self, doc):
        self.doc = doc
        self.seen = []

    def check(self, r, expect=None):
        if expect is not None:
            assert r.status_code == expect, "%s %s -> %d (wanted %d): %s" % (
                r.request.method, r.request.url, r.status_code, expect, r.text[:500])
        method = r.request.method.lower()
        path = requests.utils.urlparse(r.request.url).path
        template, op = find_operation(self.doc, method, path)
        responses = op["responses"]
        code = str(r.status_code)
        resp = responses.get(code) or responses.get(code[0] + "XX") or responses.get("default")
        assert resp is not None, "%s %s: status %s is not documented (documented: %s)" % (
            method.upper(), template, code, sorted(responses))
        resp = deref(self.doc, resp)
        for name in resp.get("headers", {}):
            if name.lower() in ("x-request-id",):
                assert r.headers.get(name), "%s %s %s: header %s missing" % (method.upper(), template, code, name)
        content = resp.get("content")
        body = r.content
        if not content:
            assert not body, "%s %s %s: the document names no body, the server sent %r" % (
                method.upper(), template, code, body[:200])
            self.seen.append((method, template, code))
            return None
        ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        media = {k.lower(): v for k, v in content.items()}
        assert ctype in media, "%s %s %s: Content-Type %r not in the document (%s)" % (
            method.upper(), template, code, ctype, sorted(media))
        schema = media[ctype].get("schema")
        instance = None
        if ctype == "application/json" and schema is not None:
            instance = json_of(r)
            root = {"$schema": DIALECT, "components": self.doc["components"], "allOf": [schema]}
            v = Draft202012Validator(root, format_checker=FORMATS)
            errors = sorted(v.iter_errors(instance), key=lambda e: list(e.absolute_path))
            assert not errors, "%s %s %s: the body does not match the document:\n%s\nbody: %s" % (
                method.upper(), template, code,
                "\n".join("  at %s: %s" % ("/".join(map(str, e.absolute_path)) or "(root)", e.message)
                          for e in errors[:10]), r.text[:1500])
            extra = undocumented(self.doc, instance, [schema])
            assert not extra, "%s %s %s: fields the document does not name: %s" % (
                method.upper(), template, code, extra)
        self.seen.append((method, template, code))
        return instance


def check_webhook_requests(doc, outdir):
    """Validate what the receiver got against webhooks.event.post."""
    op = doc["webhooks"]["event"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    root = {"$schema": DIALECT, "components": doc["components"], "allOf": [schema]}
    v = Draft202012Validator(root, format_checker=FORMATS)
    recs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(outdir.glob("[0-9]*.json"))]
    assert len(recs) >= 3, recs
    for rec in recs:
        assert rec["method"] == "POST"
        hdrs = {k.lower(): val for k, val in rec["headers"]}
        assert hdrs.get("content-type", "").startswith("application/json")
        for p in op["parameters"]:
            if p["in"] == "header" and p.get("required"):
                val = hdrs.get(p["name"].lower())
                assert val is not None, "webhook request lacks %s" % p["name"]
                ps = p["schema"]
                inst = int(val) if ps.get("type") == "integer" else val
                errs = list(Draft202012Validator(ps).iter_errors(inst))
                assert not errs, "%s: %r: %s" % (p["name"], val, errs[0].message)
        body = json.loads(base64.b64decode(rec["body_b64"]))
        errs = list(v.iter_errors(body))
        assert not errs, "webhook body does not match the document: %s\n%s" % (errs[0].message, body)
        extra = undocumented(doc, body, [schema])
        assert not extra, "webhook body fields the document does not name: %s" % extra


# ---------------------------------------------------------------- the test

def test_real_responses_match_the_document(relay, mailgate, api_key, redis, tmp_path, request):
    doc = load_doc()
    hook_proc, hook_url, hook_out = start_receiver(tmp_path, request, fail_first=1)
    request.addfinalizer(hook_proc.stop)
    rl = relay(name="relay1", rules=[
        {"cmd": "RCPT", "match": "gone@example.com", "reply": "550 5.1.1 No such user"},
        {"cmd": "RCPT", "match": "later@example.com", "reply": "451 4.3.0 Try again later"},
    ])
    mg = mailgate(rl, env={"MAILGATE_WEBHOOK_ALLOW_PRIVATE": "true",
                           "MAILGATE_WEBHOOK_RETRY_SCHEDULE": "200ms"})
    key = api_key("acme")
    c = mg.client(key)
    ck = Checker(doc)

    # served document
    r = requests.get(mg.url + "/v1/openapi.yaml", timeout=10)
    ck.check(r, 200)
    assert r.content == DOC_PATH.read_bytes(), "the binary serves a stale description: rebuild"

    # operations
    ck.check(requests.get(mg.url + "/healthz", timeout=10), 200)
    ck.check(requests.get(mg.url + "/readyz", timeout=10), 200)
    ck.check(requests.get(mg.url + "/metrics", timeout=10), 200)

    # webhook first, so deliveries exist later (the receiver fails its first
    # request, so the attempt log has a failure and a success)
    hook = ck.check(c.post("/v1/webhooks", json={"url": hook_url, "events": ["delivered", "bounced"]}), 201)
    ck.check(c.get("/v1/webhooks"), 200)

    # suppressions
    ck.check(c.post("/v1/suppressions", json={"email": "blocked@example.com", "reason": "manual"}), 201)
    ck.check(c.post("/v1/suppressions", json={"email": "other@example.com"}), 201)
    ck.check(c.get("/v1/suppressions"), 200)
    ck.check(c.get("/v1/suppressions", params={"limit": 1}), 200)

    # templates
    ck.check(c.put("/v1/templates/receipt", json={"subject": "Hi {{name}}", "text": "Dear {{name}}"}), 201)
    ck.check(c.put("/v1/templates/receipt", json={"subject": "Hi {{name}}", "text": "Dear {{name}}",
                                                  "html": "<p>{{name}}</p>"}), 200)
    ck.check(c.put("/v1/templates/bare", json={"text": "just text"}), 201)
    ck.check(c.get("/v1/templates/receipt"), 200)
    ck.check(c.get("/v1/templates/bare"), 200)
    ck.check(c.get("/v1/templates"), 200)
    ck.check(c.post("/v1/templates/receipt/render", json={"data": {"name": "Ann"}}), 200)
    ck.check(c.post("/v1/templates/bare/render", json={"data": {}}), 200)

    # sends
    ok = ck.check(c.post("/v1/messages", json={
        "from": FROM, "to": ["ann@example.com", {"email": "bob@example.org", "name": "Bob"}],
        "cc": ["blocked@example.com"], "subject": "Receipt", "text": "t", "html": "<p>h</p>",
        "tags": ["receipt"], "metadata": {"order": "42"},
        "attachments": [{"filename": "a.txt", "content_type": "text/plain",
                         "content": base64.b64encode(b"hello").decode()}]}), 202)
    gone = ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["gone@example.com"], "template": "receipt",
                                                 "data": {"name": "Gone"}}), 202)
    later = ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["later@example.com"], "subject": "s",
                                                  "text": "t"}), 202)
    supp = ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["blocked@example.com"], "subject": "s",
                                                 "text": "t"}), 202)
    send_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    sched = ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["sched@example.com"], "subject": "s",
                                                  "text": "t", "send_at": send_at}), 202)
    ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["idem@example.com"], "subject": "s", "text": "t"},
                    headers={"Idempotency-Key": "k1"}), 202)
    ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["idem@example.com"], "subject": "s", "text": "t"},
                    headers={"Idempotency-Key": "k1"}), 202)
    ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["idem@example.com"], "subject": "x", "text": "t"},
                    headers={"Idempotency-Key": "k1"}), 409)
    ck.check(c.post("/v1/messages/batch", json={"messages": [
        {"from": FROM, "to": ["b1@example.com"], "subject": "s", "text": "t"},
        {"from": FROM, "to": ["not an address"], "subject": "s", "text": "t"}]}), 202)
    ck.check(c.post("/v1/messages/batch", json={"messages": [
        {"from": FROM, "to": ["not an address"], "subject": "s", "text": "t"}]}), 422)
    ck.check(c.post("/v1/messages/batch", json={"messages": []}), 422)

    # errors
    ck.check(requests.get(mg.url + "/v1/messages", timeout=10), 401)
    ck.check(requests.get(mg.url + "/v1/messages", timeout=10, headers={"Authorization": "Bearer nope"}), 401)
    rk = run_cli(redis.url, "key", "create", "--tenant", "acme", "--scopes", "read")
    assert rk.returncode == 0, rk.stderr
    ck.check(mg.client(rk.stdout.strip()).post("/v1/messages", json={"from": FROM, "to": ["a@example.com"]}), 403)
    ck.check(c.get("/v1/messages/nosuchmessage"), 404)
    ck.check(c.get("/v1/templates/nosuch"), 404)
    ck.check(c.delete("/v1/webhooks/wh_0123456789abcdef"), 404)
    ck.check(c.delete("/v1/suppressions/nobody@example.com"), 404)
    ck.check(c.post("/v1/messages", json={"from": FROM, "to": ["a@example.com"], "subject": "s", "text": "t",
                                          "nosuchfield": 1}), 422)
    ck.check(c.post("/v1/messages", json={"from": "nope", "to": ["a@example.com"], "subject": "s", "text": "t"}), 422)
    ck.check(c.get("/v1/messages", params={"limit": 5000}), 422)
    ck.check(c.post("/v1/messages", data=b"{not json", headers={"Content-Type": "application/json"}), 400)
    ck.check(c.post("/v1/messages", data=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    ck.check(requests.get(mg.url + "/t/o/forged-token", timeout=10), 404)

    # outcomes, then every read-back
    c.wait_message(ok["id"])
    c.wait_message(gone["id"])
    c.wait_message(supp["id"])
    wait_until(lambda: [e for e in c.message(later["id"])["events"] if e["type"] == "deferred"],
               timeout=30, desc="a deferral")
    for mid in (ok["id"], gone["id"], later["id"], supp["id"], sched["id"]):
        ck.check(c.get("/v1/messages/" + mid), 200)
    ck.check(c.get("/v1/messages"), 200)
    page = ck.check(c.get("/v1/messages", params={"limit": 2}), 200)
    assert page["next_cursor"]
    ck.check(c.get("/v1/messages", params={"limit": 2, "cursor": page["next_cursor"]}), 200)
    ck.check(c.get("/v1/messages", params={"status": "bounced"}), 200)
    ck.check(c.get("/v1/messages", params={"recipient": "ann@example.com", "tag": "receipt"}), 200)
    ck.check(c.get("/v1/events"), 200)
    ck.check(c.get("/v1/events", params={"type": "delivered", "limit": 1}), 200)
    ck.check(c.get("/v1/events", params={"message_id": gone["id"]}), 200)
    ck.check(c.get("/v1/stats"), 200)
    ck.check(c.get("/v1/stats", params={"interval": "hour"}), 200)

    # webhook attempts were made: the log validates against the document,
    # and so does every request the receiver got (the 3.1 `webhooks` entry)
    def attempts():
        d = c.get("/v1/webhooks/%s/deliveries" % hook["id"]).json()["data"]
        return len(d) >= 3 and d
    wait_until(attempts, timeout=30, desc="webhook attempts")
    ck.check(c.get("/v1/webhooks/%s/deliveries" % hook["id"]), 200)
    check_webhook_requests(doc, hook_out)

    # cancel, deletes
    ck.check(c.delete("/v1/messages/" + sched["id"]), 204)
    ck.check(c.get("/v1/messages/" + sched["id"]), 200)
    ck.check(c.delete("/v1/messages/" + ok["id"]), 409)
    ck.check(c.delete("/v1/templates/bare"), 204)
    ck.check(c.delete("/v1/suppressions/other@example.com"), 204)
    ck.check(c.delete("/v1/webhooks/" + hook["id"]), 204)

    # a compatible surface answers in its provider's shape
    ck.check(requests.post(mg.url + "/email", timeout=10, headers={"X-Postmark-Server-Token": key},
                           json={"From": "noreply@acme.example", "To": "ann@example.com", "Subject": "s",
                                 "TextBody": "t"}), 200)

    # breadth: every kind of answer the brief names was validated
    kinds = {(m, t, s) for m, t, s in ck.seen}
    for want in [("post", "/v1/messages", "202"), ("get", "/v1/messages/{id}", "200"), ("get", "/v1/messages", "200"),
                 ("get", "/v1/events", "200"), ("get", "/v1/messages", "401"), ("get", "/v1/messages/{id}", "404"),
                 ("post", "/v1/messages", "422"), ("get", "/v1/templates", "200"),
                 ("get", "/v1/suppressions", "200"), ("get", "/v1/webhooks", "200"), ("get", "/healthz", "200"),
                 ("get", "/readyz", "200")]:
        assert want in kinds, "not exercised: %r" % (want,)
