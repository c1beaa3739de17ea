"""End-to-end tests of the API's cache of keys and tenant settings
(queue/queue_cache.c) and of the one-round-trip send.

The cache is kept correct by Redis client-side-caching invalidations: a
revoked key, a changed tenant setting, FLUSHALL and a Redis restart must
take effect on the very next request, with no waiting. The suppression
check rides in the enqueue's own pipeline (WATCH / guard script / MULTI
... EXEC): a suppression added a moment ago still applies. And a POST with
a warm cache makes exactly one pipelined trip to Redis: no HMGET of
mg:key:*, no HGETALL of mg:tenant:*, no separate HMGET of mg:supp:*.
"""

import threading
import time

from conftest import (START_TIMEOUT, Proc, Redis, json_of, redis_monitor, run_cli, tail,
                      wait_until)

FROM = "Acme <noreply@acme.example>"


def body(to=("a@example.com",), frm=FROM, **kw):
    p = {"from": frm, "to": list(to), "subject": "s", "text": "t"}
    p.update(kw)
    return p


def cache_live(mg):
    """Wait until the gateway says its invalidation subscriber is live."""
    wait_until(lambda: any(l.get("event") == "cache_live" for l in mg.logs()),
               timeout=START_TIMEOUT, desc="cache_live in the gateway log")


def warm(gw):
    """The cache is live and holds acme's key and settings."""
    cache_live(gw.mg)
    for _ in range(2):
        gw.client.send_ok(body())


def key_id(key):
    return key.split("_")[1]


def test_revoked_key_is_refused_on_the_next_request(gateway, redis):
    warm(gateway)
    p = run_cli(redis.url, "key", "revoke", key_id(gateway.key))
    assert p.returncode == 0, p.stderr
    r = gateway.client.send(body())
    assert r.status_code == 401, r.text
    # and stays refused (no stale copy refilled from anywhere)
    assert gateway.client.send(body()).status_code == 401


def test_send_with_a_key_revoked_a_moment_ago_queues_nothing(gateway, redis, api_key):
    """The invalidation reaches the cache asynchronously, so a request that
    follows a revoke within microseconds may still find the key cached;
    a send must still be refused: the enqueue re-checks the key in its own
    round trip. Revoked the way `key revoke` does it (DEL of the record),
    straight from this process so the next request follows at once."""
    cache_live(gateway.mg)
    for i in range(40):
        key = api_key("acme")
        c = gateway.mg.client(key)
        for _ in range(2):
            c.send_ok(body())  # now cached
        before = redis.command("ZCARD", "mg:tenant:acme:messages")
        assert redis.command("DEL", "mg:key:" + key_id(key)) == 1
        for n in range(3):
            r = c.send(body(to=("r%d-%d@example.com" % (i, n),)))
            assert r.status_code == 401, (i, n, r.status_code, r.text)
        assert redis.command("ZCARD", "mg:tenant:acme:messages") == before, i
        assert redis.command("EXISTS", "mg:msgi:acme:rcpt:r%d-0@example.com" % i) == 0


def test_tenant_setting_applies_to_the_next_request(gateway, redis):
    warm(gateway)
    c = gateway.client
    two = ("a@example.com", "b@example.com")
    assert c.send(body(to=two)).status_code == 202
    p = run_cli(redis.url, "tenant", "set", "acme", "--max-recipients", "1")
    assert p.returncode == 0, p.stderr
    r = c.send(body(to=two))
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "to", r.text

    p = run_cli(redis.url, "tenant", "set", "acme", "--allowed-from", "other.example")
    assert p.returncode == 0, p.stderr
    r = c.send(body())
    assert r.status_code == 422 and json_of(r)["error"]["field"] == "from", r.text
    assert c.send(body(frm="x@other.example")).status_code == 202


def test_flushall_drops_cached_keys(gateway, redis):
    warm(gateway)
    assert redis.command("FLUSHALL") == "OK"
    r = gateway.client.send(body())
    assert r.status_code == 401, r.text


def _start_redis_on(port, path, request):
    proc = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(path.parent),
                 "--daemonize", "no", "--logfile", ""], path)
    request.node.__dict__.setdefault("e2e_logs", []).append(("redis restarted", str(path)))
    r = Redis(port, proc)

    def ready():
        if not proc.alive():
            raise AssertionError("redis-server exited:\n" + tail(path))
        try:
            return r.command("PING") == "PONG"
        except OSError:
            return None
    wait_until(ready, timeout=START_TIMEOUT, desc="restarted redis PING")
    return r


def _not_503(client):
    """The status of one send, or None when it was 503."""
    code = client.send(body()).status_code
    return None if code == 503 else code


def test_redis_restart_drops_cached_keys(gateway, redis, tmp_path, request):
    """A restarted (here: empty) Redis no longer knows the key; the entry
    cached before the restart must not let it in."""
    warm(gateway)
    c = gateway.client
    redis.stop()
    r = c.send(body())
    assert r.status_code == 503, r.text
    again = _start_redis_on(redis.port, tmp_path / "redis-restarted.log", request)
    try:
        # /readyz is 200 once the API's Redis connections work again
        wait_until(lambda: gateway.mg.client().get("/readyz").status_code == 200,
                   timeout=START_TIMEOUT, desc="/readyz after the restart")
        # each API thread's connection finds out about the restart on its
        # next use, and that one request is a 503 (README: a Redis restart
        # costs a caller one failed request): wait for the others
        status = wait_until(lambda: _not_503(c), timeout=START_TIMEOUT, desc="an answer other than 503")
        assert status == 401
        # a key made in the new Redis works, through the cache again
        p = run_cli(redis.url, "key", "create", "--tenant", "acme")
        assert p.returncode == 0, p.stderr
        fresh = gateway.mg.client(p.stdout.strip())
        cache_live_again = lambda: sum(l.get("event") == "cache_live" for l in gateway.mg.logs()) >= 2
        wait_until(cache_live_again, timeout=START_TIMEOUT, desc="cache live after the restart")
        status = wait_until(lambda: _not_503(fresh), timeout=START_TIMEOUT, desc="the fresh key answered")
        assert status == 202
        assert c.send(body()).status_code == 401
    finally:
        again.stop()


def test_suppression_added_just_now_applies_mixed(gateway):
    warm(gateway)
    c = gateway.client
    c.send_ok(body(to=("gone@example.com", "ok@example.com")))  # both sendable so far
    gateway.relay.wait_messages(3)
    n_before = len(gateway.relay.messages())
    assert c.post("/v1/suppressions", json={"email": "Gone@Example.com"}).status_code == 201

    sent = c.send_ok(body(to=("GONE@example.com", "ok@example.com")))
    assert {r["email"]: r["status"] for r in sent["recipients"]} == {
        "GONE@example.com": "suppressed", "ok@example.com": "queued"}
    msg = c.wait_message(sent["id"])
    assert {r["email"]: r["status"] for r in msg["recipients"]} == {
        "GONE@example.com": "suppressed", "ok@example.com": "delivered"}
    assert msg["status"] == "partially_delivered"
    types = sorted((e["type"], e["recipient"]) for e in msg["events"])
    assert types == [("delivered", "ok@example.com"), ("queued", "ok@example.com"),
                     ("suppressed", "GONE@example.com")], types
    got = gateway.relay.wait_messages(n_before + 1)[n_before:]
    assert [m.rcpt_tos for m in got] == [["ok@example.com"]]


def test_suppression_with_personal_copies(gateway, redis):
    """Tracking gives each recipient a copy of its own: a suppressed one
    gets none, and no job."""
    warm(gateway)
    c = gateway.client
    assert c.post("/v1/suppressions", json={"email": "gone@example.com"}).status_code == 201
    n_before = len(gateway.relay.wait_messages(2))
    sent = c.send_ok(body(to=("ok@example.com", "gone@example.com", "ok2@example.com"),
                          html="<p>hi <a href=\"https://example.com/x\">x</a></p>",
                          track_opens=True, track_clicks=True))
    assert [r["status"] for r in sent["recipients"]] == ["queued", "suppressed", "queued"]
    mid = sent["id"]
    assert redis.command("EXISTS", "mg:msg:%s:body:2" % mid) == 0
    msg = c.wait_message(mid)
    assert [r["status"] for r in msg["recipients"]] == ["delivered", "suppressed", "delivered"]
    got = gateway.relay.wait_messages(n_before + 2)[n_before:]
    assert sorted(m.rcpt_tos[0] for m in got) == ["ok2@example.com", "ok@example.com"]
    assert all(len(m.rcpt_tos) == 1 for m in got)


def test_all_recipients_suppressed(gateway):
    warm(gateway)
    c = gateway.client
    for a in ("x1@example.com", "x2@example.com"):
        assert c.post("/v1/suppressions", json={"email": a}).status_code == 201
    sent = c.send_ok(body(to=("x1@example.com", "X2@example.com")))
    assert [r["status"] for r in sent["recipients"]] == ["suppressed", "suppressed"]
    msg = c.wait_message(sent["id"])
    assert msg["status"] == "suppressed"
    assert sorted(e["type"] for e in msg["events"]) == ["suppressed", "suppressed"]


# ---------------------------------------------------------------- round trips

def _client_and_args(line):
    """(client, [first two arguments]) of a MONITOR line
    '<ts> [db client] "CMD" "ARG" ...'; client is b"lua" inside scripts."""
    head, _, rest = line.partition(b"] ")
    client = head.rsplit(b" ", 1)[-1]
    args = [a for a in rest.split(b'"') if a.strip()][:2]
    return client, args


def test_warm_post_is_one_round_trip(gateway, redis):
    warm(gateway)
    c = gateway.client
    stop, lines, started = threading.Event(), [], threading.Event()
    t = threading.Thread(target=redis_monitor, args=(redis.port, stop, lines, started), daemon=True)
    t.start()
    started.wait(5)
    time.sleep(0.2)
    hgetall_before = redis.command("INFO", "commandstats").decode()
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    for i in range(50):
        c.send_ok(body(to=("r%d@example.com" % i,), send_at=later))
    time.sleep(0.3)
    stop.set()
    redis.command("PING")  # wake the monitor reader
    t.join(5)

    def calls(info, cmd):
        for l in info.splitlines():
            if l.startswith("cmdstat_%s:" % cmd):
                return int(l.split("calls=")[1].split(",")[0])
        return 0
    hgetall_after = redis.command("INFO", "commandstats").decode()

    per_client, stray = {}, []
    for line in lines:
        client, args = _client_and_args(line)
        if not args or client == b"lua":
            continue
        cmd = args[0].upper()
        if cmd == b"SCRIPT":
            continue  # SCRIPT LOAD: once per new connection, before its first command
        key = args[1] if len(args) > 1 else b""
        if (cmd == b"HMGET" and key.startswith(b"mg:key:")) or \
           (cmd == b"HGETALL" and key.startswith(b"mg:tenant:")) or \
           (cmd == b"HMGET" and key.startswith(b"mg:supp:")):
            stray.append(line)
        per_client.setdefault(client, []).append(cmd)
    assert not stray, "lookups a warm cache should have answered: %r" % stray[:5]

    # The API connections: every command belongs to a WATCH ... EXEC block
    # sent as one pipeline (WATCH, guard EVAL, MULTI, writes, EXEC).
    api = {k: v for k, v in per_client.items() if b"WATCH" in v}
    assert sum(v.count(b"WATCH") for v in api.values()) == 50, api
    for client, cmds in api.items():
        blocks, cur = [], None
        for cmd in cmds:
            if cmd == b"WATCH":
                assert cur is None, "%s: WATCH inside a block: %r" % (client, cmds)
                cur = [cmd]
            else:
                assert cur is not None, "%s: %s outside the send pipeline: %r" % (client, cmd, cmds)
                cur.append(cmd)
                if cmd == b"EXEC":
                    blocks.append(cur)
                    cur = None
        assert cur is None
        for b in blocks:
            assert b[1] == b"EVAL" and b[2] == b"MULTI", b
    # Scheduled sends are not delivered meanwhile: nothing else reads a hash
    # per request either.
    assert calls(hgetall_after, "hgetall") - calls(hgetall_before, "hgetall") < 10
