"""End-to-end tests of outages (issue 6, points 1, 4 and 8): a recipient
that is deferred until MAILGATE_MAX_AGE bounces soft as "expired"; a relay
that is down for a while and then returns gets everything it held back;
redis-server restarted with AOF in the middle of a send burst loses no
message that got a 202; and while Redis is down the API degrades to 503
with Retry-After (readiness too) and recovers without a restart.

Redis for the restart tests is a redis-server of the test's own on a fixed
port with --appendonly yes --appendfsync always, so that what was
acknowledged before SIGTERM is there after the restart on the same port and
directory. Everything is stopped by PID; waiting is polling with deadlines."""

import json
import os
import signal
import threading
import time

import pytest
import requests

from conftest import (PYTHON, RELAY_PY, START_TIMEOUT, Proc, Redis, Relay, free_port, json_of,
                      run_cli, tail, wait_until)

FROM = "Acme <noreply@acme.example>"


def payload(i=0, **kw):
    p = {"from": FROM, "to": ["user%d@example.com" % i], "subject": "outage %d" % i, "text": "body %d" % i}
    p.update(kw)
    return p


def rfc3339_ms(s):
    """Milliseconds since the epoch of an RFC 3339 UTC time (...Z)."""
    import datetime
    d = datetime.datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z"
                                   if "." in s else "%Y-%m-%dT%H:%M:%S%z")
    return int(d.timestamp() * 1000)


def types(msg):
    return [e["type"] for e in msg["events"]]


def relay_ids(relay):
    """Message ids of what the relay accepted (from Message-ID <id@mailgate.test>)."""
    out = []
    for m in relay.messages():
        mid = (m.msg["Message-ID"] or "").strip().strip("<>")
        out.append(mid.split("@", 1)[0])
    return out


# ---------------------------------------------------------------- own redis with AOF

class AofRedis:
    """redis-server with AOF (appendfsync always) on a fixed port and dir,
    restartable in place."""

    def __init__(self, tmp_path, request):
        self.dir = tmp_path / "redis-aof"
        self.dir.mkdir()
        self.request = request
        self.n = 0
        self.proc = None
        for _ in range(5):
            self.port = free_port()
            if self.start(check_port=True):
                break
        else:
            raise AssertionError("could not start redis-server with AOF")
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self.client = Redis(self.port, self.proc)

    def start(self, check_port=False):
        self.n += 1
        log = self.dir / ("redis-%d.log" % self.n)
        self.proc = Proc(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                          "--appendfilename", "mg.aof", "--dir", str(self.dir),
                          "--daemonize", "no", "--logfile", ""], log)
        self.request.node.__dict__.setdefault("e2e_logs", []).append(("redis #%d" % self.n, str(log)))
        r = Redis(self.port, self.proc)

        def ready():
            if not self.proc.alive():
                return "exited"
            try:
                return r.command("PING") == "PONG" and "ready"
            except (OSError, RuntimeError):  # LOADING while the AOF is replayed
                return None
        state = wait_until(ready, timeout=START_TIMEOUT, desc="redis PING on %d" % self.port)
        if state != "ready":
            self.proc.stop()
            if check_port and "in use" in tail(log):
                return False
            raise AssertionError("redis-server exited:\n" + tail(log))
        self.client = r
        return True

    def stop(self):
        """SIGTERM (redis fsyncs the AOF and exits), wait for the exit."""
        rc = self.proc.stop(timeout=20)
        return rc

    def kill(self):
        """SIGKILL: no shutdown at all, as in a crash; with appendfsync
        always, every acknowledged write is already in the AOF."""
        if self.proc.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.popen.wait(timeout=20)
        return self.proc.stop()


def start_aof_redis(tmp_path, request):
    return AofRedis(tmp_path, request)


def mailgate_on(mailgate, aof, *relays, env=None):
    e = {"MAILGATE_REDIS_URL": aof.url}
    e.update(env or {})
    return mailgate(*relays, env=e)


def key_for(aof, tenant="acme"):
    r = run_cli(aof.url, "key", "create", "--tenant", tenant)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# ---------------------------------------------------------------- a. expiry

MAX_AGE_S = 8


@pytest.mark.parametrize("schedule", ["1s", "2s"])
def test_deferred_recipient_expires_as_soft_bounce(relay, mailgate, api_key, schedule):
    r = relay(rules=[{"cmd": "RCPT", "reply": "451 4.7.1 Try again later"}])
    # MAX_AGE leaves room for a slow first attempt on a loaded CI machine:
    # the first attempt must come before the recipient is old enough to expire.
    mg = mailgate(r, env={"MAILGATE_MAX_AGE": "%ds" % MAX_AGE_S, "MAILGATE_RETRY_SCHEDULE": schedule})
    c = mg.client(api_key("acme"))
    t0 = time.monotonic()
    mid = c.send_ok(payload(0))["id"]
    m = c.wait_message(mid, timeout=60)
    took = time.monotonic() - t0
    assert m["status"] == "bounced", m
    [rc] = m["recipients"]
    assert rc["status"] == "bounced", rc
    assert took <= MAX_AGE_S + 10, "expiry with MAX_AGE=%ds took %.1fs" % (MAX_AGE_S, took)
    ev = m["events"]
    bounces = [e for e in ev if e["type"] == "bounced"]
    assert len(bounces) == 1, types(m)
    b = bounces[0]
    assert b.get("bounce_type") == "soft", b
    assert b.get("reason") == "expired", b
    assert b.get("recipient", "").lower() == "user0@example.com", b
    # Deferred attempts came first, then the bounce.
    deferred = [e for e in ev if e["type"] == "deferred"]
    assert deferred, types(m)
    assert types(m).index("bounced") > max(i for i, t in enumerate(types(m)) if t == "deferred")
    # "Expired" means MAX_AGE has passed: a recipient is retried for MAX_AGE_S, not
    # given up on earlier because the next retry would come later than that.
    age = (rfc3339_ms(b["created_at"]) - rfc3339_ms(m["created_at"])) / 1000.0
    assert age >= MAX_AGE_S - 0.01, ("bounced as expired %.2fs after creation, before MAILGATE_MAX_AGE=%ds: %s"
                                     % (age, MAX_AGE_S, json.dumps(m)))
    assert deferred[0]["smtp"]["code"] == 451, deferred[0]
    assert ev[-1]["type"] == "bounced", types(m)
    # The bounce is listed in the event log too, and the relay accepted nothing.
    evs = c.events(type="bounced", message_id=mid)["data"]
    assert [e["reason"] for e in evs] == ["expired"], evs
    assert r.messages() == []
    assert len(r.client_lines("RCPT")) >= 1
    # Nothing is retried after the terminal state: no new RCPT for the message.
    n = len(r.client_lines("RCPT"))
    wait_until(lambda: c.message(mid)["status"] == "bounced" and len(r.client_lines("RCPT")) == n
               and time.monotonic() - t0 > took + 3, timeout=15, desc="no retry after expiry")
    assert len(r.client_lines("RCPT")) == n, "recipient retried after it bounced as expired"


# ---------------------------------------------------------------- b. relay down, then back

def start_relay_on(tmp_path, request, port, name="late"):
    base = tmp_path / ("relay-%s" % name)
    (base / "out").mkdir(parents=True)
    (base / "rules.json").write_text('{"rules": []}')
    proc = Proc([PYTHON, str(RELAY_PY), "--port", str(port), "--port-file", str(base / "port"),
                 "--outdir", str(base / "out"), "--rules", str(base / "rules.json")], base / "relay.stderr")
    request.node.__dict__.setdefault("e2e_logs", []).append(("relay %s stderr" % name, str(base / "relay.stderr")))
    request.node.__dict__.setdefault("e2e_logs", []).append(("relay %s commands" % name, str(base / "out" / "commands.log")))
    try:
        wait_until(lambda: (base / "port").exists() or not proc.alive(), timeout=START_TIMEOUT,
                   desc="relay on port %d" % port)
    except AssertionError:
        proc.stop()
        raise
    assert proc.alive(), "relay could not listen on %d:\n%s" % (port, tail(base / "relay.stderr"))
    return Relay(base / "out", name, None, proc, port, base / "rules.json")


def test_relay_down_then_back_delivers_everything(mailgate, api_key, tmp_path, request):
    port = free_port()
    url = "smtp://127.0.0.1:%d?tls=none&name=late" % port
    mg = mailgate(relay_urls=[url], env={"MAILGATE_RETRY_SCHEDULE": "1s,2s"})
    c = mg.client(api_key("acme"))
    ids = [c.send_ok(payload(i))["id"] for i in range(5)]

    def deferred_count(mid):
        return types(c.message(mid)).count("deferred")
    # Each message is deferred while nothing listens; the outage lasts long
    # enough for retries (two deferrals of the first message).
    for mid in ids:
        wait_until(lambda: deferred_count(mid) >= 1, timeout=30, desc="%s deferred" % mid)
    wait_until(lambda: deferred_count(ids[0]) >= 2, timeout=30, desc="a retry while the relay is down")
    for mid in ids:
        m = c.message(mid)
        assert m["status"] in ("queued", "sending"), m
        assert m["recipients"][0]["status"] == "deferred", m
        assert "delivered" not in types(m)
    rl = start_relay_on(tmp_path, request, port)
    up = time.monotonic()
    try:
        for mid in ids:
            m = c.wait_message(mid, timeout=90)
            assert m["status"] == "delivered", m
            t = types(m)
            assert t[0] == "queued" and "deferred" in t, t
            assert t.index("delivered") > max(i for i, x in enumerate(t) if x == "deferred"), t
            assert t.count("delivered") == 1, t
            d = [e for e in m["events"] if e["type"] == "delivered"][0]
            assert d["smtp"]["code"] == 250 and d["smtp"].get("relay") == "late", d
        took = time.monotonic() - up
        got = relay_ids(rl)
        assert sorted(set(got)) == sorted(ids), (got, ids)
        assert len(got) == len(ids), "duplicates at the relay: %s" % got
        # The retry schedule is 1s,2s: once the relay is back, the held-back
        # mail should not wait for a long relay-down back-off.
        assert took < 30, "delivery took %.1fs after the relay came back" % took
        print("delivered %.1fs after the relay came back" % took)
    finally:
        rl.stop()


# ---------------------------------------------------------------- c. redis restart mid-burst

@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_redis_restart_with_aof_mid_burst_loses_nothing(relay, mailgate, tmp_path, request, how):
    aof = start_aof_redis(tmp_path, request)
    try:
        rl = relay(name="relay1")
        key = key_for(aof)
        mg = mailgate_on(mailgate, aof, rl)
        results = []        # (index, status or exception text, id, retry-after, t)
        restarted = threading.Event()
        after_restart = [0]
        stop = threading.Event()

        lock = threading.Lock()
        counts = {"accepted": 0, "seq": 0}
        SENDERS = 4   # concurrent clients: requests are in flight when Redis goes away

        def burst():
            s = requests.Session()
            s.headers["Authorization"] = "Bearer " + key
            while not stop.is_set():
                with lock:
                    if counts["seq"] >= 50000 or (counts["accepted"] >= 300 and restarted.is_set()
                                                  and after_restart[0] >= 50):
                        return
                    i = counts["seq"]
                    counts["seq"] += 1
                try:
                    r = s.post(mg.url + "/v1/messages", json=payload(i), timeout=30)
                    mid = r.json().get("id") if r.status_code == 202 else None
                    rec = (i, r.status_code, mid, r.headers.get("Retry-After"),
                           r.headers.get("X-Request-Id"), r.text[:300] if r.status_code != 202 else "")
                except Exception as e:  # noqa: BLE001 - recorded and asserted on below
                    rec = (i, "%s: %s" % (type(e).__name__, e), None, None, None, "")
                with lock:
                    results.append(rec)
                    if rec[1] == 202:
                        counts["accepted"] += 1
                        if restarted.is_set():
                            after_restart[0] += 1
        threads = [threading.Thread(target=burst, daemon=True) for _ in range(SENDERS)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(results) >= 60, timeout=60, desc="60 sends before the outage")
            down_at = time.monotonic()
            n_before = len(results)
            aof.stop() if how == "sigterm" else aof.kill()
            # Down for about a second, and long enough for sends to see it.
            wait_until(lambda: time.monotonic() - down_at >= 1.0
                       and any(x[1] != 202 for x in results[n_before:]),
                       timeout=30, desc="a send refused while Redis is down")
            aof.start()
            restarted.set()
            wait_until(lambda: requests.get(mg.url + "/readyz", timeout=5).status_code == 200,
                       timeout=30, desc="/readyz after the restart")
            for t in threads:
                t.join(timeout=300)
                assert not t.is_alive(), "the burst did not finish"
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert mg.proc.alive(), "mailgate died:\n" + tail(mg.log_path)
        statuses = {}
        for x in results:
            statuses[x[1]] = statuses.get(x[1], 0) + 1
        bad = [x for x in results if x[1] not in (202, 503)]
        assert not bad, "answers other than 202/503 (%s): %s" % (statuses, bad[:10])
        refused = [x for x in results if x[1] == 503]
        assert refused, "no 503 during the outage: %s" % statuses
        no_retry_after = [x for x in refused if not x[3]]
        assert not no_retry_after, "503 without Retry-After: %s" % no_retry_after[:5]
        for x in refused[:20]:
            err = json.loads(x[5])["error"]
            assert err["type"] and err["message"] and x[4], x
        accepted = [x[2] for x in results if x[1] == 202]
        assert len(accepted) >= 300, statuses
        assert len(set(accepted)) == len(accepted)

        def all_there():
            got = set(relay_ids(rl))
            return not (set(accepted) - got) and got
        try:
            wait_until(all_there, timeout=180, interval=0.5, desc="every 202 delivered at the relay")
        except AssertionError:
            missing = set(accepted) - set(relay_ids(rl))
            raise AssertionError("%d of %d accepted messages never reached the relay, e.g. %s; "
                                 "answers: %s" % (len(missing), len(accepted), sorted(missing)[:5], statuses))
        got = relay_ids(rl)
        extra = set(got) - set(accepted)
        by_index = {x[0]: x for x in results}
        extra_info = []
        for m in rl.messages():
            mid = (m.msg["Message-ID"] or "").strip("<> ").split("@", 1)[0]
            if mid in extra:
                i = int(str(m.msg["Subject"]).split()[-1])
                extra_info.append((mid, by_index.get(i)))
        # A request in flight when Redis went away may have committed its
        # write although it was answered 503: at most one per client.
        assert len(extra) <= SENDERS, "messages delivered that were never accepted: %s" % extra_info[:10]
        print("answers %s; %d accepted, %d at the relay (%d distinct), %d extra"
              % (statuses, len(accepted), len(got), len(set(got)), len(extra)))
        for mid, rec in extra_info:
            print("delivered although answered %s: message %s, request %s" % (rec and rec[1], mid, rec and rec[4]))
        # Every accepted message reaches "delivered" in the API too.
        c = mg.client(key)
        for mid in accepted[:: max(1, len(accepted) // 25)]:
            assert c.wait_message(mid, timeout=60)["status"] == "delivered"
        wait_until(lambda: aof.client.command("ZCARD", "mg:open") == 0, timeout=60,
                   desc="no open message left")
    finally:
        aof.stop()


# ---------------------------------------------------------------- d. graceful degradation

def test_redis_down_degrades_to_503_and_recovers_without_restart(relay, mailgate, tmp_path, request):
    aof = start_aof_redis(tmp_path, request)
    try:
        rl = relay(name="relay1")
        key = key_for(aof)
        mg = mailgate_on(mailgate, aof, rl)
        c = mg.client(key)
        pid = mg.proc.pid
        sent = [c.send_ok(payload(0))["id"]]
        rl.wait_messages(1)
        for cycle in range(2):
            aof.stop()
            wait_until(lambda: requests.get(mg.url + "/readyz", timeout=5).status_code == 503,
                       timeout=15, desc="/readyz 503 while Redis is down")
            r = requests.get(mg.url + "/readyz", timeout=10)
            assert r.status_code == 503 and r.headers.get("X-Request-Id"), (r.status_code, r.headers)
            h = requests.get(mg.url + "/healthz", timeout=10)
            assert h.status_code == 200, "/healthz is about the process, not Redis: %d" % h.status_code
            for _ in range(3):
                t0 = time.monotonic()
                p = c.send(payload(100 + cycle))
                took = time.monotonic() - t0
                assert p.status_code == 503, (p.status_code, p.text)
                assert p.headers.get("Retry-After"), p.headers
                assert int(p.headers["Retry-After"]) >= 1
                assert p.headers.get("X-Request-Id")
                err = json_of(p)["error"]
                assert err["type"] and err["message"], err
                assert took < 10, "a send took %.1fs to be refused while Redis is down" % took
            g = c.get("/v1/messages")
            assert g.status_code == 503 and g.headers.get("Retry-After"), (g.status_code, g.text)
            assert mg.proc.alive()
            aof.start()
            wait_until(lambda: requests.get(mg.url + "/readyz", timeout=5).status_code == 200,
                       timeout=30, desc="/readyz 200 after Redis returned")

            def send_again():
                r = c.send(payload(200 + cycle))
                assert r.status_code in (202, 503), (r.status_code, r.text)
                return r.status_code == 202 and r.json()["id"]
            sent.append(wait_until(send_again, timeout=30, desc="a send accepted after Redis returned"))
            rl.wait_messages(len(sent), timeout=60)
            assert c.wait_message(sent[-1])["status"] == "delivered"
        assert mg.proc.alive() and mg.proc.pid == pid
        assert sorted(relay_ids(rl)) == sorted(sent)
    finally:
        aof.stop()
