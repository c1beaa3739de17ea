"""The container recipe and the OpenAPI description.

* scripts/container_check.sh replays docker/Dockerfile and docker/compose.yml
  without a Docker engine (static checks, the Dockerfile's build command in a
  clean copy, the binary run as the image and compose would run it); here it
  must pass.
* GET /v1/openapi.yaml: served unauthenticated by the binary itself, as
  application/yaml, byte for byte docs/openapi.yaml, an OpenAPI 3.x
  document whose paths cover every route of the product contract.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import requests
import yaml

from conftest import HTTP_TIMEOUT, REPO

CONTRACT = REPO.parent / "shared" / "CONTRACT.md"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

# Every route of the contract (shared/CONTRACT.md), method and path.
CONTRACT_ROUTES = [
    ("post", "/v1/messages"),
    ("post", "/v1/messages/batch"),
    ("get", "/v1/messages/{id}"),
    ("delete", "/v1/messages/{id}"),
    ("get", "/v1/messages"),
    ("get", "/v1/events"),
    ("get", "/v1/stats"),
    ("put", "/v1/templates/{name}"),
    ("get", "/v1/templates/{name}"),
    ("delete", "/v1/templates/{name}"),
    ("get", "/v1/templates"),
    ("post", "/v1/templates/{name}/render"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("delete", "/v1/webhooks/{id}"),
    ("get", "/v1/webhooks/{id}/deliveries"),
    ("get", "/v1/suppressions"),
    ("post", "/v1/suppressions"),
    ("delete", "/v1/suppressions/{email}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.yaml"),
    ("get", "/t/o/{token}"),
    ("get", "/t/c/{token}"),
    ("get", "/t/u/{token}"),
    ("post", "/t/u/{token}"),
    ("post", "/email"),
    ("post", "/email/batch"),
    ("post", "/email/withTemplate"),
    ("post", "/v3/mail/send"),
    ("post", "/emails"),
    ("post", "/emails/batch"),
    ("get", "/emails/{id}"),
    ("post", "/v3/{domain}/messages"),
]
UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics", "/v1/openapi.yaml",
                   "/t/o/{token}", "/t/c/{token}", "/t/u/{token}"}


def _shape(path):
    """/v1/messages/{id} and /v1/messages/{message_id} are the same route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _operations(doc):
    ops = set()
    for path, item in doc["paths"].items():
        for method in item:
            if method in METHODS:
                ops.add((method, _shape(path)))
    return ops


def _contract_routes_from_text(text):
    """`METHOD /path` and `GET|POST /path` as the contract writes them."""
    found = set()
    for methods, path in re.findall(r"`((?:GET|POST|PUT|DELETE|PATCH)(?:\|(?:GET|POST|PUT|DELETE|PATCH))*) (/[^\s`?]*)", text):
        for m in methods.split("|"):
            found.add((m.lower(), _shape(path)))
    return found


def _resolve(doc, ref):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_container_check_passes():
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "scripts" / "container_check.sh")], cwd=REPO,
                       capture_output=True, text=True, timeout=240)
    took = time.monotonic() - t0
    assert r.returncode == 0, "container_check.sh failed (%d):\n%s\n%s" % (r.returncode, r.stdout, r.stderr[-6000:])
    assert "passed" in r.stdout
    print("container_check.sh: %.0f s\n%s" % (took, r.stdout))


def test_openapi_document_is_well_formed():
    doc = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    assert str(doc["openapi"]).startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    for ref in set(_refs(doc)):
        _resolve(doc, ref)  # raises KeyError on a dangling $ref
    ids = []
    for path, item in doc["paths"].items():
        declared = {(_resolve(doc, p["$ref"]) if "$ref" in p else p).get("name")
                    for p in item.get("parameters", [])}
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert op.get("responses"), "%s %s has no responses" % (method, path)
            ids.append(op.get("operationId"))
            params = declared | {(_resolve(doc, p["$ref"]) if "$ref" in p else p).get("name")
                                 for p in op.get("parameters", [])}
            for name in re.findall(r"\{([^}]*)\}", path):
                assert name in params, "%s %s does not declare path parameter %s" % (method, path, name)
            if path in UNAUTHENTICATED:
                assert op.get("security") == [], "%s %s must be unauthenticated" % (method, path)
            elif path.startswith("/v1/"):
                assert "security" not in op, "%s %s must use the global bearer auth" % (method, path)
    assert None not in ids and len(ids) == len(set(ids)), "operationIds must be unique and present"
    assert doc["security"] == [{"bearerAuth": []}]
    err = doc["components"]["schemas"]["Error"]
    assert err["required"] == ["error"]
    assert set(err["properties"]["error"]["properties"]) == {"type", "message", "field"}


def test_openapi_served_and_covers_the_contract(mailgate):
    mg = mailgate()
    r = requests.get(mg.url + "/v1/openapi.yaml", timeout=HTTP_TIMEOUT)  # no Authorization
    assert r.status_code == 200, r.text[:500]
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/yaml"
    assert r.headers.get("X-Request-Id")
    assert r.content == (REPO / "docs" / "openapi.yaml").read_bytes(), \
        "the binary serves a stale openapi.yaml: rebuild"
    doc = yaml.safe_load(r.content)
    assert isinstance(doc, dict) and str(doc.get("openapi", "")).startswith("3.")
    ops = _operations(doc)
    missing = [(m.upper(), p) for m, p in CONTRACT_ROUTES if (m, _shape(p)) not in ops]
    assert not missing, "routes of the contract missing from openapi.yaml: %s" % missing
    if CONTRACT.exists():
        from_text = _contract_routes_from_text(CONTRACT.read_text(encoding="utf-8"))
        assert len(from_text) >= 20, "the contract's routes could not be read"
        missing = sorted((m.upper(), p) for m, p in from_text - ops)
        assert not missing, "routes in %s missing from openapi.yaml: %s" % (CONTRACT, missing)
    # HEAD-less clients and a wrong method still get the API's answers.
    r = requests.post(mg.url + "/v1/openapi.yaml", timeout=HTTP_TIMEOUT)
    assert r.status_code in (401, 404, 405), r.status_code
