#!/usr/bin/python3
"""relay.py - a scriptable SMTP relay for mailgate's end-to-end tests.

Usage:
    /usr/bin/python3 tests/relay.py --port P --outdir DIR
        [--host 127.0.0.1] [--port-file FILE] [--no-pipelining]
        [--rules rules.json] [--size-limit BYTES] [--smtputf8]
        [--tls-cert CERT.pem --tls-key KEY.pem [--smtps] [--require-starttls]
         [--starttls-inject TEXT [--starttls-inject-at reply|handshake]]]
        [--auth USER:PASS [--auth-mechanisms PLAIN,LOGIN] [--auth-plaintext]
         [--auth-eq]]

It is a real SMTP server (aiosmtpd) that a test starts as a subprocess.

TLS and AUTH (all optional; without them the relay is plaintext, no AUTH):
  --tls-cert/--tls-key  PEM certificate chain and key. Alone: STARTTLS is
                 offered (RFC 3207). With --smtps: implicit TLS from the first
                 byte (no STARTTLS offered). --require-starttls: commands other
                 than EHLO/HELO/NOOP/QUIT/STARTTLS get 530 before STARTTLS.
  --starttls-inject TEXT  after the "220 Ready to start TLS" reply, send TEXT
                 in plaintext before the handshake (the RFC 3207 §6 response
                 injection attack); the two characters \r\n in TEXT stand
                 for CRLF. --starttls-inject-at reply (the default): in the
                 same write as the 220; handshake: in a write of its own when
                 the client's first handshake bytes (ClientHello) arrive,
                 i.e. ahead of the server's handshake reply.
  --auth USER:PASS  AUTH (RFC 4954) accepting exactly this user and password
                 (anything else: 535 5.7.8). --auth-mechanisms: the mechanisms
                 offered (default PLAIN,LOGIN). AUTH is advertised only over
                 TLS unless --auth-plaintext (or --smtps). --auth-eq advertises
                 it in the old "AUTH=PLAIN LOGIN" form only.

Output (all under DIR):
  <seq>.json     one file per accepted message (seq = 000001, 000002, ...),
                 written atomically (temporary file, then rename):
                 {"seq", "session", "peer", "helo", "mail_from", "mail_options",
                  "rcpt_tos", "rcpt_options", "received_at",
                  "data": raw message decoded as latin-1 (lossless: encode
                          with latin-1 to get the exact bytes back),
                  "data_b64": the same bytes in base64}
                 The message is the DATA payload with dot-stuffing undone.
  commands.log   one JSON object per line, in the order things happened:
                 {"t", "session", "event": "connect"|"disconnect", "peer"}
                 {"t", "session", "dir": "C", "read": K, "line": "MAIL FROM:<a@b>"}
                     a command line from the client; K numbers the TCP reads
                     of the session, so lines with the same K arrived in one
                     read (pipelined). Message content is not logged; the end
                     of it shows as {"dir": "C", "line": "<end of data>",
                     "bytes": N}.
                 {"t", "session", "dir": "S", "line": "250 OK"}
                     a reply line sent to the client.
                 {"t", "session", "event": "tls", "version", "cipher",
                  "sni", "implicit"}
                     the TLS handshake finished (sni: the server name the
                     client asked for, null when it sent none).
                 {"t", "session", "event": "inject", "bytes", "at"}
                     --starttls-inject bytes were written.
                 {"t", "session", "event": "auth", "mechanism", "login",
                  "success"}
                     an AUTH exchange finished (the password is not logged;
                     the client's AUTH lines are, as sent, base64 included).
  port file      with --port 0, the bound port is written to --port-file
                 (atomically) once the server accepts connections.

Rules (--rules FILE, JSON) inject replies. The file is re-read whenever it
changes, so a test may rewrite it while the relay runs (rule counters reset on
reload). Format: {"rules": [RULE, ...]} or just [RULE, ...]. A RULE is
    {"cmd": "CONNECT"|"EHLO"|"STARTTLS"|"AUTH"|"MAIL"|"RCPT"|"DATA"|"EOD",
     "match": "addr@example.com",   optional; MAIL: the sender, RCPT: the
                                    recipient, DATA/EOD: any recipient of the
                                    transaction, EHLO: the client's name,
                                    AUTH: the mechanism (case-insensitive)
     "reply": "550 5.1.1 No such user",   optional; default: normal handling
     "times": N,        optional; the rule applies to its first N matches only
     "tls": true|false, optional; only in sessions that are (not) under TLS
     "delay_ms": M}     optional; wait before replying
"CONNECT" is the greeting (instead of "220 relay.test ..."; a 421 greeting
also closes the connection; "delay_ms" alone makes a relay that accepts but
stays silent). "EHLO" may have a list of lines as "reply" (sent as they are,
e.g. ["250-relay.test", "250-SIZE 100", "250 HELP"]). "STARTTLS" replaces the
220 (e.g. "454 4.7.0 TLS not available"). "AUTH" is the reply once the client
has sent its credentials, instead of checking them (delay_ms not supported).
"DATA" is the reply to the DATA command itself (instead of 354), "EOD" the
reply after the end of the message. The first applicable rule wins. State
(how often each rule matched) lives in the process.

Default replies carry enhanced status codes (and ENHANCEDSTATUSCODES is
advertised): MAIL "250 2.1.0 OK", RCPT "250 2.1.5 OK",
end of data "250 2.0.0 OK queued as <seq>".

SIGTERM or SIGINT stops the relay cleanly (exit status 0).
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult, syntax

MAX_LOGGED_LINE = 1000
MAX_PENDING_LINE = 64 * 1024


class Log:
    """Append-only JSON-lines log; one write() per record."""

    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8", buffering=1)

    def write(self, **rec):
        rec = {"t": round(time.time(), 6), **rec}
        self.f.write(json.dumps(rec, ensure_ascii=True) + "\n")
        self.f.flush()


RULE_CMDS = ("CONNECT", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "EOD")


class Rules:
    """The reply rules, reloaded when the file changes."""

    def __init__(self, path):
        self.path = path
        self.sig = None
        self.rules = []
        self.counts = []
        self.reload()

    def reload(self):
        if not self.path:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.sig is not None:
                self.sig, self.rules, self.counts = None, [], []
            return
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self.sig:
            return
        with open(self.path, encoding="utf-8") as f:
            doc = json.load(f)
        rules = doc.get("rules", []) if isinstance(doc, dict) else doc
        for r in rules:
            r["cmd"] = r["cmd"].upper()
            if r["cmd"] not in RULE_CMDS:
                raise ValueError("bad rule cmd: %r" % r["cmd"])
        self.sig, self.rules, self.counts = sig, rules, [0] * len(rules)

    def find(self, cmd, candidates, tls=None):
        """Return the first rule for cmd matching one of candidates (and the
        session's TLS state, when the rule names one), counting it."""
        try:
            self.reload()
        except (OSError, ValueError) as e:
            print("relay: bad rules file: %s" % e, file=sys.stderr, flush=True)
        wanted = {(c or "").lower() for c in candidates}
        for i, r in enumerate(self.rules):
            if r["cmd"] != cmd:
                continue
            m = r.get("match")
            if m is not None and m.lower() not in wanted:
                continue
            if "tls" in r and tls is not None and bool(r["tls"]) != bool(tls):
                continue
            if "times" in r and self.counts[i] >= int(r["times"]):
                continue
            self.counts[i] += 1
            return r
        return None


async def apply_delay(rule):
    if rule and rule.get("delay_ms"):
        await asyncio.sleep(rule["delay_ms"] / 1000.0)


class Handler:
    """aiosmtpd handler: hooks for EHLO, MAIL, RCPT and end of data."""

    def __init__(self, args, rules, log):
        self.args = args
        self.rules = rules
        self.log = log
        self.seq = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # The 5-argument hook replaces aiosmtpd's own handling, so it has to
        # remember the client's name itself.
        rule = self.rules.find("EHLO", [hostname], server.relay_tls)
        await apply_delay(rule)
        if rule and rule.get("reply"):
            reply = rule["reply"]
            if reply[0].startswith("2"):
                session.host_name = hostname
            return list(reply) if isinstance(reply, list) else [reply]
        session.host_name = hostname
        extra = ["250-ENHANCEDSTATUSCODES"]
        if self.args.pipelining:
            extra.insert(0, "250-PIPELINING")
        if not self.args.auth:
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        elif self.args.auth_eq:
            responses = [("250-AUTH=" + r[len("250-AUTH "):]) if r.startswith("250-AUTH ") else r
                         for r in responses]
        # responses ends with "250 HELP"; the extensions go before it.
        return responses[:-1] + extra + responses[-1:]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        rule = self.rules.find("MAIL", [address], server.relay_tls)
        await apply_delay(rule)
        reply = (rule or {}).get("reply") or "250 2.1.0 OK"
        if reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rule = self.rules.find("RCPT", [address], server.relay_tls)
        await apply_delay(rule)
        reply = (rule or {}).get("reply") or "250 2.1.5 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        rule = self.rules.find("EOD", envelope.rcpt_tos, server.relay_tls)
        await apply_delay(rule)
        if rule and rule.get("reply") and not rule["reply"].startswith("2"):
            return rule["reply"]
        self.seq += 1
        raw = bytes(envelope.original_content or b"")
        rec = {
            "seq": self.seq,
            "session": server.relay_session,
            "peer": list(session.peer) if session.peer else None,
            "helo": session.host_name,
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "rcpt_options": envelope.rcpt_options,
            "received_at": time.time(),
            "data": raw.decode("latin-1"),
            "data_b64": base64.b64encode(raw).decode("ascii"),
        }
        name = "%06d.json" % self.seq
        tmp = os.path.join(self.args.outdir, ".tmp-" + name)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.args.outdir, name))
        if rule and rule.get("reply"):
            return rule["reply"]
        return "250 2.0.0 OK queued as %06d" % self.seq


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with a wire log: commands per TCP read, and replies."""

    sessions = 0
    live = set()

    def __init__(self, handler, log, implicit_tls=False, inject=b"", inject_at="reply", **kw):
        super().__init__(handler, **kw)
        self.relay_log = log
        RelaySMTP.sessions += 1
        self.relay_session = RelaySMTP.sessions
        self.reads = 0
        self.pending = b""
        self.in_data = False
        self.data_bytes = 0
        self.implicit_tls = implicit_tls
        self.inject = inject
        self.inject_at = inject_at
        self.greeted = False
        self.starttls_pending = False

    @property
    def relay_tls(self):
        """True when this session runs under TLS (implicit or after STARTTLS)."""
        return bool(self.implicit_tls or self._tls_protocol is not None)

    def connection_made(self, transport):
        first = self.transport is None
        super().connection_made(transport)
        if first:
            RelaySMTP.live.add(self)
            peer = transport.get_extra_info("peername")
            self.relay_log.write(session=self.relay_session, event="connect",
                                 peer=list(peer) if peer else None)
        if first and self.implicit_tls or not first and self._tls_protocol is not None:
            self._log_tls(transport, implicit=first)

    def _log_tls(self, transport, implicit):
        obj = transport.get_extra_info("ssl_object")
        if obj is None:
            return
        cipher = obj.cipher()
        self.relay_log.write(session=self.relay_session, event="tls", version=obj.version(),
                             cipher=cipher[0] if cipher else None,
                             sni=getattr(obj, "relay_sni", None), implicit=implicit)

    def connection_lost(self, exc):
        RelaySMTP.live.discard(self)
        self.relay_log.write(session=self.relay_session, event="disconnect")
        super().connection_lost(exc)

    def data_received(self, data):
        # Log before aiosmtpd sees the bytes: the log then shows what the
        # client sent before it had the replies to earlier commands.
        self.reads += 1
        self.pending += data
        while True:
            nl = self.pending.find(b"\n")
            if nl < 0:
                break
            line, self.pending = self.pending[:nl + 1], self.pending[nl + 1:]
            self._wire_line(line)
        if len(self.pending) > MAX_PENDING_LINE:
            if not self.in_data:
                self._log_cmd(self.pending[:MAX_LOGGED_LINE] + b"...(long line)")
            else:
                self.data_bytes += len(self.pending)
            self.pending = b""
        super().data_received(data)

    def _wire_line(self, line):
        if self.in_data:
            if line.rstrip(b"\r\n") == b".":
                self.in_data = False
                self.relay_log.write(session=self.relay_session, dir="C",
                                     read=self.reads, line="<end of data>",
                                     bytes=self.data_bytes)
            else:
                self.data_bytes += len(line)
            return
        self._log_cmd(line.rstrip(b"\r\n"))

    def _log_cmd(self, line):
        self.relay_log.write(session=self.relay_session, dir="C", read=self.reads,
                             line=line[:MAX_LOGGED_LINE].decode("latin-1"))

    async def push(self, status):
        close = False
        if not self.greeted:
            # The first reply of a session is the greeting.
            self.greeted = True
            rule = self.event_handler.rules.find("CONNECT", [], self.relay_tls)
            await apply_delay(rule)
            if rule and rule.get("reply"):
                status = rule["reply"]
                close = status.startswith("421")
        text = status if isinstance(status, str) else status.decode("latin-1")
        if text.startswith("354"):
            # The client may send the message only after this reply, so the
            # flag is set before any of its bytes can arrive.
            self.in_data = True
            self.data_bytes = 0
        self.relay_log.write(session=self.relay_session, dir="S", line=text)
        if self.starttls_pending and text.startswith("220") and self.inject:
            self.starttls_pending = False
            if self.inject_at == "reply":
                # The injected bytes leave in the same write as the 220.
                raw = status.encode("latin-1") if isinstance(status, str) else status
                self._writer.write(raw + b"\r\n" + self.inject)
                self.relay_log.write(session=self.relay_session, event="inject",
                                     bytes=self.inject.decode("latin-1"), at="reply")
                await self._writer.drain()
                return
            # "handshake": once smtp_STARTTLS has put the TLS layer in place
            # (it does so right after this push, without yielding), hook its
            # input so the bytes go out when the ClientHello comes in.
            asyncio.get_running_loop().call_soon(self._hook_handshake, self.transport)
        await super().push(status)
        if close and self.transport is not None:
            self.transport.close()

    def _hook_handshake(self, raw_transport):
        tls = self._tls_protocol
        if tls is None:
            return
        done = []
        for name in ("buffer_updated", "data_received"):
            orig = getattr(tls, name, None)
            if orig is None:
                continue

            def hooked(*a, _orig=orig, _name=name):
                setattr(tls, _name, _orig)
                if not done and not raw_transport.is_closing():
                    done.append(1)
                    # Straight onto the TCP transport, under the TLS layer.
                    raw_transport.write(self.inject)
                    self.relay_log.write(session=self.relay_session, event="inject",
                                         bytes=self.inject.decode("latin-1"), at="handshake")
                return _orig(*a)

            setattr(tls, name, hooked)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg):
        if not arg and self.tls_context:
            rule = self.event_handler.rules.find("STARTTLS", [], self.relay_tls)
            await apply_delay(rule)
            if rule and rule.get("reply"):
                await self.push(rule["reply"])
                return
            self.starttls_pending = True
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg):
        if self.session.host_name and self.envelope.rcpt_tos and not arg:
            rule = self.event_handler.rules.find("DATA", self.envelope.rcpt_tos, self.relay_tls)
            await apply_delay(rule)
            if rule and rule.get("reply") and not rule["reply"].startswith("3"):
                await self.push(rule["reply"])
                self._set_post_data_state()
                return
        await super().smtp_DATA(arg)


def tls_context(args, log):
    """Server-side TLS context from --tls-cert/--tls-key; records the SNI the
    client sent on the SSL object (logged with the "tls" event)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)

    def sni(obj, server_name, _ctx):
        try:
            obj.relay_sni = server_name
        except AttributeError:
            pass
        return None

    ctx.sni_callback = sni
    return ctx


def make_authenticator(args, rules, log):
    """aiosmtpd authenticator: an "AUTH" rule decides when one applies, else
    the credentials must be exactly --auth USER:PASS."""
    user, _, password = args.auth.partition(":")

    def authenticator(server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace") if auth_data.login is not None else None
        rule = rules.find("AUTH", [mechanism], server.relay_tls)
        if rule and rule.get("reply"):
            ok = rule["reply"].startswith("2")
            message = rule["reply"]
        else:
            ok = (auth_data.login == user.encode("utf-8")
                  and auth_data.password == password.encode("utf-8"))
            message = None
        log.write(session=server.relay_session, event="auth", mechanism=mechanism,
                  login=login, success=ok)
        return AuthResult(success=ok, handled=False, message=message, auth_data=login)

    return authenticator


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def main(args):
    os.makedirs(args.outdir, exist_ok=True)
    log = Log(os.path.join(args.outdir, "commands.log"))
    rules = Rules(args.rules)
    handler = Handler(args, rules, log)
    loop = asyncio.get_running_loop()

    ctx = tls_context(args, log) if args.tls_cert else None
    tls_kw = {}
    if ctx is not None and not args.smtps:
        tls_kw = {"tls_context": ctx, "require_starttls": args.require_starttls}
    if args.auth:
        mechanisms = {m.strip().upper() for m in args.auth_mechanisms.split(",") if m.strip()}
        tls_kw.update({
            "authenticator": make_authenticator(args, rules, log),
            "auth_require_tls": not (args.auth_plaintext or args.smtps),
            "auth_exclude_mechanism": [m for m in ("PLAIN", "LOGIN") if m not in mechanisms],
        })
    inject = args.starttls_inject.replace("\\r\\n", "\r\n").encode("latin-1") \
        if args.starttls_inject else b""

    def factory():
        return RelaySMTP(handler, log, hostname="relay.test",
                         data_size_limit=args.size_limit or None,
                         enable_SMTPUTF8=args.smtputf8, loop=loop,
                         implicit_tls=bool(args.smtps), inject=inject,
                         inject_at=args.starttls_inject_at, **tls_kw)

    server = await loop.create_server(factory, host=args.host, port=args.port,
                                      ssl=ctx if args.smtps else None)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        write_atomic(args.port_file, "%d\n" % port)
    print("relay: listening on %s:%d" % (args.host, port), file=sys.stderr, flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for proto in list(RelaySMTP.live):
        if proto.transport is not None:
            proto.transport.close()
    await server.wait_closed()
    print("relay: stopped", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description="scriptable SMTP relay for tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument("--port-file", help="write the bound port here when ready")
    p.add_argument("--outdir", required=True)
    p.add_argument("--no-pipelining", dest="pipelining", action="store_false")
    p.add_argument("--rules")
    p.add_argument("--size-limit", type=int, default=40 * 1024 * 1024,
                   help="SIZE limit in bytes (0: none)")
    p.add_argument("--smtputf8", action="store_true", help="advertise SMTPUTF8")
    p.add_argument("--tls-cert", help="PEM certificate (chain): offer STARTTLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--smtps", action="store_true", help="implicit TLS instead of STARTTLS")
    p.add_argument("--require-starttls", action="store_true",
                   help="530 to commands other than EHLO/HELO/NOOP/QUIT/STARTTLS before TLS")
    p.add_argument("--starttls-inject", default="",
                   help="plaintext sent after the 220 to STARTTLS (\\r\\n = CRLF)")
    p.add_argument("--starttls-inject-at", choices=("reply", "handshake"), default="reply",
                   help="inject with the 220 (reply) or when the ClientHello arrives")
    p.add_argument("--auth", help="USER:PASS accepted by AUTH")
    p.add_argument("--auth-mechanisms", default="PLAIN,LOGIN", help="AUTH mechanisms offered")
    p.add_argument("--auth-plaintext", action="store_true", help="advertise AUTH before TLS too")
    p.add_argument("--auth-eq", action="store_true", help='advertise "AUTH=..." instead of "AUTH ..."')
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.smtps and not args.tls_cert:
        p.error("--smtps needs --tls-cert and --tls-key")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
