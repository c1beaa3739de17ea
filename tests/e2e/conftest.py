"""End-to-end test harness for mailgate: real Redis, real SMTP, the real binary.

Run:
    cd /work/main && MAILGATE_BIN=$PWD/bin/mailgate \\
        /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/e2e

Every server a test uses is a subprocess on a free 127.0.0.1 port, started by
a fixture and stopped by its PID (SIGTERM, wait, SIGKILL on timeout) when the
test ends, also when it fails. Nothing is mocked. Waiting is always polling
with a deadline (`wait_until`), never a fixed sleep.

Fixtures
  redis       a fresh redis-server (``--save '' --appendonly no``, data dir in
              the test's tmp_path); ``.port``, ``.url``
              (redis://127.0.0.1:P/0), ``.command(*args)`` for a raw RESP call.
  relay       factory: ``relay(pipelining=True, rules=None, name="relay1",
              params=None)`` starts tests/relay.py and returns a Relay with
              ``.port``, ``.outdir``, ``.name``, ``.url`` (the MAILGATE_RELAYS
              entry: smtp://127.0.0.1:P?tls=none&name=NAME plus params),
              ``.messages()`` (accepted messages, oldest first, as
              RelayMessage: .mail_from, .rcpt_tos, .raw bytes, .msg parsed with
              email.policy.default), ``.wait_messages(n)``, ``.commands()``
              (parsed commands.log records), ``.set_rules(rules)`` and
              ``.stop()``. Rules are described in tests/relay.py.
  mailgate    factory: ``mailgate(*relays, env=None, relay_urls=None)``
              starts ``$MAILGATE_BIN serve`` with MAILGATE_LISTEN on a free
              port, MAILGATE_REDIS_URL of the ``redis`` fixture,
              MAILGATE_RELAYS built from the relays (in order),
              MAILGATE_HELO_NAME=mailgate.test, MAILGATE_RETRY_SCHEDULE=1s,2s,
              MAILGATE_LOG_LEVEL=debug (``env`` overrides or adds), stderr to a
              file; waits for GET /readyz == 200. Returns a Mailgate with
              ``.url``, ``.env``, ``.log_path``, ``.logs()``, ``.client(key)``
              and ``.stop()``.
  api_key     ``api_key(tenant, *extra_args)`` runs ``mailgate key create
              --tenant NAME`` against the test's Redis; returns the key.
  client      ``client(mg, key)`` -> Client (also ``mg.client(key)``): a
              requests.Session with the base URL and ``Authorization: Bearer``;
              ``.get/.post/.put/.delete(path, ...)``, ``.send(payload)``,
              ``.message(id)``, ``.events(**query)``, ``.wait_message(id,
              statuses)``.
  gateway     shortcut: redis + one default relay + mailgate + a key for
              tenant "acme"; ``.relay``, ``.mg``, ``.key``, ``.client``.

When a test fails, the tail of every mailgate stderr log and relay
commands.log it started is attached to the pytest report.

Helpers: ``wait_until(fn, timeout, desc)``, ``free_port()``,
``run_cli(redis_url, *args)`` (runs $MAILGATE_BIN with that Redis).
"""

import base64
import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
RELAY_PY = REPO / "tests" / "relay.py"
MAILGATE_BIN = os.environ.get("MAILGATE_BIN") or str(REPO / "bin" / "mailgate")

# Generous deadlines: CI machines may have 2 cores and run a sanitizer build.
START_TIMEOUT = 20
DELIVERY_TIMEOUT = 30
HTTP_TIMEOUT = 20

TERMINAL_MESSAGE_STATUSES = {"delivered", "partially_delivered", "bounced",
                             "suppressed", "cancelled"}


# ---------------------------------------------------------------- helpers

def redis_monitor(port, stop, lines, started=None):
    """Run Redis MONITOR on port until stop (a threading.Event) is set,
    appending each line (bytes, without CRLF) to lines; started (an Event)
    is set once the command is sent. For a thread: the caller stops it by
    setting stop and sending any command to wake the reader."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        f = s.makefile("rb")
        if started is not None:
            started.set()
        while not stop.is_set():
            try:
                line = f.readline()
            except OSError:
                return
            if not line:
                return
            lines.append(line.rstrip(b"\r\n"))


def wait_until(fn, timeout=10, interval=0.05, desc=None):
    """Call fn until it returns a truthy value; return that value.

    Exceptions from fn count as "not yet"; on timeout an AssertionError names
    desc and the last result or exception.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - polled condition may raise
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s (last: %r)"
                                 % (timeout, desc or getattr(fn, "__name__", fn), last))
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def free_port():
    """A port that was free a moment ago (callers retry if it got taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, limit=30000):
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    if len(data) > limit:
        data = b"...(truncated)...\n" + data[-limit:]
    return data.decode("utf-8", "replace")


class Proc:
    """A subprocess with its output in a file; stopped by PID."""

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.argv = argv
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.popen = wait_until(lambda: subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd), timeout=10, desc="exec %s (being rebuilt?)" % argv[0])
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=10):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit status."""
        try:
            if self.popen.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    self.popen.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        finally:
            self._log.close()
        return self.popen.returncode


def _attach_log(request, title, path):
    request.node.__dict__.setdefault("e2e_logs", []).append((title, str(path)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for title, path in item.__dict__.get("e2e_logs", []):
            rep.sections.append((title, tail(path)))


# ---------------------------------------------------------------- redis

class Redis:
    def __init__(self, port, proc):
        self.port = port
        self.proc = proc
        self.url = "redis://127.0.0.1:%d/0" % port

    def command(self, *args, timeout=5):
        """Send one command, return the decoded reply (minimal RESP client)."""
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(out)
            f = s.makefile("rb")
            return _resp_read(f)

    def stop(self):
        return self.proc.stop()


def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError("redis error: " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise ValueError("bad RESP line %r" % line)


@pytest.fixture
def redis(tmp_path, request):
    d = tmp_path / "redis"
    d.mkdir()
    r, failures = None, []
    for attempt in range(5):
        port = free_port()
        log = d / ("redis-%d.log" % attempt)
        proc = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(d),
                     "--daemonize", "no", "--logfile", ""], log)
        cand = Redis(port, proc)

        def ready():
            if not proc.alive():
                return "exited"
            try:
                return cand.command("PING") == "PONG" and "ready"
            except OSError:
                return None

        try:
            state = wait_until(ready, timeout=START_TIMEOUT, desc="redis PING")
        except AssertionError:
            proc.stop()
            raise
        if state == "ready":
            r = cand
            break
        proc.stop()
        failures.append(tail(log))
        if "in use" not in failures[-1]:
            break
    assert r is not None, "redis-server did not start:\n" + "\n".join(failures)
    try:
        yield r
    finally:
        r.stop()


# ---------------------------------------------------------------- relay

class RelayMessage:
    """One message the relay accepted."""

    def __init__(self, rec):
        self.rec = rec
        self.seq = rec["seq"]
        self.session = rec["session"]
        self.mail_from = rec["mail_from"]
        self.rcpt_tos = rec["rcpt_tos"]
        self.raw = base64.b64decode(rec["data_b64"])
        self.msg = email.message_from_bytes(self.raw, policy=email.policy.default)

    def header_block(self):
        """Raw header section (bytes), up to the first empty line."""
        end = self.raw.find(b"\r\n\r\n")
        return self.raw if end < 0 else self.raw[:end + 2]

    def header_lines(self):
        """Physical header lines (bytes, without CRLF)."""
        return self.header_block().split(b"\r\n")[:-1]

    def __repr__(self):
        return "RelayMessage(seq=%d, from=%r, to=%r, %d bytes)" % (
            self.seq, self.mail_from, self.rcpt_tos, len(self.raw))


class Relay:
    def __init__(self, outdir, name, params, proc, port, rules_path):
        self.outdir = Path(outdir)
        self.name = name
        self.params = params
        self.proc = proc
        self.port = port
        self.rules_path = rules_path
        q = "tls=none&name=%s" % name
        for k, v in (params or {}).items():
            q += "&%s=%s" % (k, v)
        self.url = "smtp://127.0.0.1:%d?%s" % (port, q)

    def messages(self):
        out = []
        for p in sorted(self.outdir.glob("[0-9]*.json")):
            with open(p, encoding="utf-8") as f:
                out.append(RelayMessage(json.load(f)))
        return out

    def wait_messages(self, n, timeout=DELIVERY_TIMEOUT):
        """Wait until at least n messages arrived; return all of them."""
        return wait_until(lambda: len(self.messages()) >= n and self.messages(),
                          timeout=timeout, desc="%d message(s) at relay %s" % (n, self.name))

    def commands(self):
        path = self.outdir / "commands.log"
        if not path.exists():
            return []
        recs = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                recs.append(json.loads(line))
        return recs

    def client_lines(self, verb=None):
        """Client command records, optionally only those starting with verb."""
        recs = [r for r in self.commands() if r.get("dir") == "C"]
        if verb:
            recs = [r for r in recs if r["line"].upper().startswith(verb.upper())]
        return recs

    def set_rules(self, rules):
        tmp = str(self.rules_path) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"rules": rules}, f)
        os.replace(tmp, self.rules_path)

    def stop(self):
        return self.proc.stop()


@pytest.fixture
def relay(tmp_path, request):
    started = []
    counter = [0]

    def start(pipelining=True, rules=None, name=None, params=None, extra_args=()):
        counter[0] += 1
        n = counter[0]
        name = name or "relay%d" % n
        base = tmp_path / ("relay-%d" % n)
        outdir = base / "out"
        outdir.mkdir(parents=True)
        rules_path = base / "rules.json"
        with open(rules_path, "w", encoding="utf-8") as f:
            json.dump({"rules": rules or []}, f)
        port_file = base / "port"
        argv = [PYTHON, str(RELAY_PY), "--port", "0", "--port-file", str(port_file),
                "--outdir", str(outdir), "--rules", str(rules_path), *extra_args]
        if not pipelining:
            argv.append("--no-pipelining")
        proc = Proc(argv, base / "relay.stderr")
        started.append(proc)
        _attach_log(request, "relay %s stderr" % name, base / "relay.stderr")
        _attach_log(request, "relay %s commands.log" % name, outdir / "commands.log")

        def ready():
            if not proc.alive():
                raise AssertionError("relay exited: " + tail(base / "relay.stderr"))
            # The relay writes the file once it listens; no probe connection,
            # so commands.log shows only mailgate's sessions.
            if not port_file.exists():
                return None
            return int(port_file.read_text().strip())

        port = wait_until(ready, timeout=START_TIMEOUT, desc="relay %s to listen" % name)
        return Relay(outdir, name, params, proc, port, rules_path)

    try:
        yield start
    finally:
        for p in started:
            p.stop()


# ---------------------------------------------------------------- mailgate

def json_of(r):
    """The JSON body of response r; an AssertionError naming the request if it is not JSON."""
    try:
        return r.json()
    except ValueError:
        raise AssertionError("%s %s -> %d with a body that is not JSON (Content-Type %r): %r" % (
            r.request.method, r.request.url, r.status_code, r.headers.get("Content-Type"),
            r.text[:500])) from None


class Client:
    """HTTP client for one mailgate with one API key (or none)."""

    def __init__(self, base_url, key=None):
        self.base_url = base_url
        self.key = key
        self.s = requests.Session()
        if key is not None:
            self.s.headers["Authorization"] = "Bearer " + key

    def request(self, method, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return self.s.request(method, self.base_url + path, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def send(self, payload, **kw):
        return self.post("/v1/messages", json=payload, **kw)

    def send_ok(self, payload):
        """POST /v1/messages expecting 202; returns the JSON body."""
        r = self.send(payload)
        assert r.status_code == 202, "send: %d %s" % (r.status_code, r.text)
        return json_of(r)

    def message(self, mid):
        r = self.get("/v1/messages/" + mid)
        assert r.status_code == 200, "GET message %s: %d %s" % (mid, r.status_code, r.text)
        return json_of(r)

    def events(self, **query):
        r = self.get("/v1/events", params=query)
        assert r.status_code == 200, "GET events %r: %d %s" % (query, r.status_code, r.text)
        return json_of(r)

    def wait_message(self, mid, statuses=TERMINAL_MESSAGE_STATUSES, timeout=DELIVERY_TIMEOUT):
        """Poll GET /v1/messages/{id} until its status is in statuses; return it."""
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        seen = []

        def check():
            m = self.message(mid)
            seen.append(m.get("status"))
            return m if m.get("status") in statuses else None

        try:
            return wait_until(check, timeout=timeout,
                              desc="message %s status in %s" % (mid, sorted(statuses)))
        except AssertionError as e:
            raise AssertionError("%s; statuses seen: %s; last body: %s" % (
                e, sorted(set(seen)), self._last(mid))) from None

    def _last(self, mid):
        try:
            return self.get("/v1/messages/" + mid).text
        except Exception as e:  # noqa: BLE001
            return repr(e)


class Mailgate:
    def __init__(self, proc, port, env, log_path):
        self.proc = proc
        self.port = port
        self.env = env
        self.log_path = log_path
        self.url = "http://127.0.0.1:%d" % port

    def client(self, key=None):
        return Client(self.url, key)

    def logs(self):
        """stderr parsed as JSON lines (non-JSON lines are skipped)."""
        out = []
        for line in tail(self.log_path, limit=10**9).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self):
        return self.proc.stop()


def base_env(redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env["MAILGATE_REDIS_URL"] = redis_url
    return env


def run_cli(redis_url, *args, env=None, timeout=30):
    """Run $MAILGATE_BIN with args against redis_url; return CompletedProcess."""
    e = base_env(redis_url)
    e.update(env or {})
    # wait_until retries while a concurrent `make` relinks the binary.
    return wait_until(lambda: subprocess.run(
        [MAILGATE_BIN, *args], env=e, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL), timeout=10, desc="run %s %s" % (MAILGATE_BIN, args[:2]))


@pytest.fixture
def mailgate(redis, tmp_path, request):
    wait_until(lambda: os.access(MAILGATE_BIN, os.X_OK), timeout=10,
               desc="MAILGATE_BIN %s to be an executable" % MAILGATE_BIN)
    started = []
    counter = [0]

    def start(*relays, env=None, relay_urls=None):
        counter[0] += 1
        n = counter[0]
        urls = list(relay_urls) if relay_urls is not None else [r.url for r in relays]
        last = None
        for attempt in range(5):
            port = free_port()
            e = base_env(redis.url)
            e.update({
                "MAILGATE_LISTEN": "127.0.0.1:%d" % port,
                "MAILGATE_RELAYS": ",".join(urls),
                "MAILGATE_HELO_NAME": "mailgate.test",
                "MAILGATE_RETRY_SCHEDULE": "1s,2s",
                "MAILGATE_LOG_LEVEL": "debug",
            })
            e.update(env or {})
            log_path = tmp_path / ("mailgate-%d-%d.stderr" % (n, attempt))
            proc = Proc([MAILGATE_BIN, "serve"], log_path, env=e, cwd=str(tmp_path))
            started.append(proc)
            _attach_log(request, "mailgate #%d stderr" % n, log_path)

            def ready():
                if not proc.alive():
                    return "exited"
                try:
                    r = requests.get("http://127.0.0.1:%d/readyz" % port, timeout=2)
                except requests.RequestException:
                    return None
                return r.status_code == 200 and "ready"

            try:
                state = wait_until(ready, timeout=START_TIMEOUT, desc="mailgate /readyz")
            except AssertionError as err:
                proc.stop()
                raise AssertionError("%s\n--- mailgate stderr ---\n%s" % (err, tail(log_path)))
            if state == "ready":
                return Mailgate(proc, port, e, log_path)
            proc.stop()
            text = tail(log_path)
            last = AssertionError("mailgate exited during start-up (status %s):\n%s"
                                  % (proc.popen.returncode, text))
            if "in use" not in text.lower():
                break
        raise last

    try:
        yield start
    finally:
        for p in started:
            p.stop()


@pytest.fixture
def api_key(redis):
    def create(tenant, *extra):
        r = run_cli(redis.url, "key", "create", "--tenant", tenant, *extra)
        assert r.returncode == 0, "key create failed (%d): %s %s" % (r.returncode, r.stdout, r.stderr)
        key = r.stdout.strip()
        assert key and "\n" not in key, "key create printed %r" % r.stdout
        return key
    return create


@pytest.fixture
def client():
    def make(mg, key=None):
        return mg.client(key)
    return make


class Gateway:
    def __init__(self, relay, mg, key):
        self.relay = relay
        self.mg = mg
        self.key = key
        self.client = mg.client(key)


@pytest.fixture
def gateway(relay, mailgate, api_key):
    r = relay(name="relay1")
    mg = mailgate(r)
    return Gateway(r, mg, api_key("acme"))
