"""End-to-end tests of process lifecycle (issue 6 points 3 and 4):
graceful shutdown on SIGTERM (new sends refused with 503 while the
in-flight transaction finishes, exit status 0, nothing lost) and the
start-up refusal on a Redis whose maxmemory-policy may evict queued mail."""

import hashlib
import os
import signal
import socket
import subprocess
import threading

import requests

from conftest import START_TIMEOUT, MAILGATE_BIN, Proc, base_env, free_port, json_of, wait_until

BODY = {"from": "Acme <noreply@acme.example>", "to": ["ann@example.com"], "subject": "Slow", "text": "x"}


def test_sigterm_finishes_in_flight_and_refuses_new_sends(relay, mailgate, api_key):
    # The relay takes 3 s to answer the final ".": the transaction is in
    # flight when SIGTERM arrives.
    r = relay(rules=[{"cmd": "EOD", "reply": "250 2.0.0 OK slow", "delay_ms": 3000}])
    mg = mailgate(r)
    c = mg.client(api_key("acme"))
    sent = c.send(BODY)
    assert sent.status_code == 202, sent.text
    mid = json_of(sent)["id"]
    wait_until(lambda: any(x.get("line") == "<end of data>" for x in r.commands()),
               desc="the body reached the relay")
    os.kill(mg.proc.pid, signal.SIGTERM)
    # (a Response is falsy when not ok, so wrap it for wait_until)
    refused = wait_until(lambda: (lambda x: [x] if x.status_code == 503 else None)(c.send(BODY)),
                         timeout=3, desc="a send during shutdown is refused with 503")[0]
    assert refused.headers.get("Retry-After")
    assert mg.proc.popen.wait(timeout=20) == 0
    # The in-flight transaction completed and was recorded before exit.
    # (a send racing the signal may still have been accepted and delivered)
    assert any(mid in str(m.msg["Message-ID"]) for m in r.messages())
    assert any(e.get("event") == "delivery" and e.get("message_id") == mid and e.get("status") == "delivered"
               for e in mg.logs())
    assert any(e.get("event") == "stopped" for e in mg.logs())


def test_refuses_redis_that_may_evict(redis, tmp_path):
    redis.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    env = dict(base_env(redis.url), MAILGATE_LISTEN="127.0.0.1:0")
    p = subprocess.run([MAILGATE_BIN, "serve"], env=env, capture_output=True, text=True, timeout=20)
    assert p.returncode != 0
    assert "maxmemory-policy" in p.stderr and "noeviction" in p.stderr
    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")


def _old_redis(listener, stop):
    """A stand-in for a Redis 6.2 on listener: INFO says 6.2.14, SCRIPT
    LOAD answers the script's SHA1, CONFIG GET says noeviction, anything
    else +OK. Enough for mailgate's start-up checks, nothing more."""
    def bulk(b):
        return b"$%d\r\n%s\r\n" % (len(b), b)

    def serve(conn):
        f = conn.makefile("rb")
        with conn:
            while not stop.is_set():
                head = f.readline()
                if not head.startswith(b"*"):
                    return
                args = []
                for _ in range(int(head[1:])):
                    n = int(f.readline()[1:])
                    args.append(f.read(n + 2)[:-2])
                cmd = [a.upper() for a in args[:2]]
                if cmd[0] == b"INFO":
                    out = bulk(b"# Server\r\nredis_version:6.2.14\r\n")
                elif cmd == [b"SCRIPT", b"LOAD"]:
                    out = bulk(hashlib.sha1(args[2]).hexdigest().encode())
                elif cmd[0] == b"CONFIG":
                    out = b"*2\r\n" + bulk(b"maxmemory-policy") + bulk(b"noeviction")
                else:
                    out = b"+OK\r\n"
                conn.sendall(out)

    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def test_refuses_redis_older_than_7(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    t = threading.Thread(target=_old_redis, args=(listener, stop), daemon=True)
    t.start()
    try:
        url = "redis://127.0.0.1:%d/0" % listener.getsockname()[1]
        env = dict(base_env(url), MAILGATE_LISTEN="127.0.0.1:0")
        p = subprocess.run([MAILGATE_BIN, "serve"], env=env, capture_output=True, text=True, timeout=20)
        assert p.returncode != 0
        assert "Redis 6.2 is too old" in p.stderr and "7.0 or later" in p.stderr, p.stderr
    finally:
        stop.set()
        t.join(5)
        listener.close()


def test_sender_admin_listener_serves_probes_only(redis, api_key, tmp_path):
    """MAILGATE_ADMIN_LISTEN of --role sender answers /healthz, /readyz and
    /metrics; the API (sends, reads, templates, tracking) is not there,
    even with a valid key."""
    key = api_key("acme")
    port = free_port()
    env = dict(base_env(redis.url), MAILGATE_ADMIN_LISTEN="127.0.0.1:%d" % port,
               MAILGATE_RELAYS="smtp://127.0.0.1:9?tls=none")
    proc = Proc([MAILGATE_BIN, "serve", "--role", "sender"], tmp_path / "sender.stderr", env=env)
    base = "http://127.0.0.1:%d" % port
    try:
        def up():
            try:
                return requests.get(base + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return None
        wait_until(up, timeout=START_TIMEOUT, desc="sender admin /healthz")
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
        assert "mailgate_" in requests.get(base + "/metrics", timeout=5).text
        auth = {"Authorization": "Bearer " + key}
        body = {"from": "a@example.com", "to": ["b@example.com"], "subject": "s", "text": "t"}
        for method, path, kw in [("POST", "/v1/messages", {"json": body}), ("GET", "/v1/messages", {}),
                                 ("GET", "/v1/events", {}), ("GET", "/v1/templates", {}),
                                 ("GET", "/v1/openapi.yaml", {}), ("GET", "/t/o/x", {})]:
            r = requests.request(method, base + path, headers=auth, timeout=5, **kw)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert json_of(r)["error"]["type"] == "not_found"
        assert redis.command("EXISTS", "mg:tenant:acme:messages") == 0  # nothing was queued
    finally:
        proc.stop()


def test_bad_configuration_names_the_variable(redis):
    for var, value in [("MAILGATE_RELAYS", "ftp://x"), ("MAILGATE_MAX_AGE", "soon"),
                       ("MAILGATE_REDIS_URL", "http://x"), ("MAILGATE_LOG_LEVEL", "loud"),
                       ("MAILGATE_LISTEN", "nowhere")]:
        env = dict(base_env(redis.url), **{var: value})
        p = subprocess.run([MAILGATE_BIN, "serve"], env=env, capture_output=True, text=True, timeout=20)
        assert p.returncode != 0, var
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and var in lines[0], (var, p.stderr)


def test_metrics_and_readyz_show_queue_age(gateway):
    c = gateway.client
    mid = json_of(c.send(BODY))["id"]
    c.wait_message(mid)
    m = c.get("/metrics")
    assert m.status_code == 200 and m.headers["Content-Type"].startswith("text/plain")
    text = m.text
    for name in ["mailgate_http_requests_total", "mailgate_recipients_total", "mailgate_queue_jobs",
                 "mailgate_queue_delayed", "mailgate_oldest_open_age_seconds", "mailgate_redis_up 1"]:
        assert name in text, name
    assert 'mailgate_recipients_total{outcome="delivered"} 1' in text
    assert "mailgate_messages_open 0" in text
    ready = json_of(c.get("/readyz"))
    assert ready["status"] == "ready" and ready["oldest_open_age_seconds"] == 0
