#!/usr/bin/python3
"""hook_receiver.py - an HTTP webhook receiver for mailgate's end-to-end tests.

Usage:
    /usr/bin/python3 tests/e2e/hook_receiver.py --outdir DIR --port-file FILE
        [--host 127.0.0.1] [--port 0] [--fail-first N] [--fail-status 500]

A real HTTP/1.1 server (http.server, one thread per connection) that a test
starts as a subprocess and stops by its PID (SIGTERM: exit status 0).

Every request is recorded, in arrival order, as DIR/<seq>.json (seq =
000001, 000002, ...; written atomically: temporary file, then rename):
    {"seq", "method", "path", "headers": [[name, value], ...],
     "body_b64": the raw body bytes in base64, "received_at": unix seconds
     (float), "status": the status answered}
The first N requests (--fail-first, counted over all paths) are answered
--fail-status (default 500); the others 200 with body "ok".
The bound port is written to --port-file (atomically) once it listens.
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class State:
    def __init__(self, outdir, fail_first, fail_status):
        self.outdir = outdir
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.lock = threading.Lock()
        self.seq = 0

    def next(self):
        """The sequence number of a new request and the status to answer."""
        with self.lock:
            self.seq += 1
            status = self.fail_status if self.seq <= self.fail_first else 200
            return self.seq, status

    def record(self, seq, rec):
        path = os.path.join(self.outdir, "%06d.json" % seq)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f)
        os.replace(tmp, path)


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(n, MAX_BODY)) if n > 0 else b""
            seq, status = state.next()
            state.record(seq, {
                "seq": seq,
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_b64": base64.b64encode(body).decode(),
                "received_at": time.time(),
                "status": status,
            })
            out = b"ok" if status == 200 else b"failing on purpose"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_POST = _handle
        do_GET = _handle
        do_PUT = _handle

        def log_message(self, fmt, *args):
            sys.stderr.write("hook_receiver: " + (fmt % args) + "\n")

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--fail-status", type=int, default=500)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    state = State(a.outdir, a.fail_first, a.fail_status)
    srv = ThreadingHTTPServer((a.host, a.port), make_handler(state))
    srv.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(tmp, a.port_file)
    srv.serve_forever()
    srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
