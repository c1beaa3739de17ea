"""End-to-end tests of per-tenant limits set with `mailgate tenant set`
(issue 6 point 7): --rate (429 with Retry-After and X-RateLimit-*),
--daily, --max-recipients and --allowed-from (422 naming "from")."""

from conftest import json_of, run_cli


def body(frm="noreply@acme.example", to=("a@example.com",)):
    return {"from": frm, "to": list(to), "subject": "s", "text": "t"}


def tenant_set(redis, *args):
    p = run_cli(redis.url, "tenant", "set", "acme", *args)
    assert p.returncode == 0, p.stderr


def test_rate_limit_429_with_headers(gateway, redis):
    tenant_set(redis, "--rate", "2/s")
    c = gateway.client
    codes = []
    for _ in range(8):
        r = c.send(body())
        codes.append(r.status_code)
        if r.status_code == 429:
            limited = r
        else:
            assert r.status_code == 202, r.text
        assert r.headers["X-RateLimit-Limit"] == "2"
        assert int(r.headers["X-RateLimit-Remaining"]) >= 0
        assert int(r.headers["X-RateLimit-Reset"]) >= 0
    assert 429 in codes and codes.count(202) >= 2, codes
    assert int(limited.headers["Retry-After"]) >= 1
    assert json_of(limited)["error"]["type"] == "rate_limited"
    # Refused requests queued nothing: the relay gets only the accepted ones.
    accepted = codes.count(202)
    msgs = json_of(c.get("/v1/messages", params={"limit": 100}))["data"]
    assert len(msgs) == accepted


def test_daily_limit(gateway, redis):
    tenant_set(redis, "--daily", "3")
    c = gateway.client
    codes = [c.send(body()).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429], codes


def test_max_recipients_and_allowed_from(gateway, redis):
    tenant_set(redis, "--max-recipients", "2", "--allowed-from", "acme.example,acme.test")
    c = gateway.client
    r = c.send(body(to=("a@example.com", "b@example.com", "c@example.com")))
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "to", r.text
    assert c.send(body(to=("a@example.com", "b@example.com"))).status_code == 202
    r = c.send(body(frm="someone@evil.example"))
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "from", r.text
    assert c.send(body(frm="Ops <ops@ACME.test>")).status_code == 202


def test_bad_tenant_settings_are_refused(redis):
    for args in (["--rate", "fast"], ["--daily", "-1"], ["--max-recipients", "0"]):
        p = run_cli(redis.url, "tenant", "set", "acme", *args)
        assert p.returncode != 0, args
