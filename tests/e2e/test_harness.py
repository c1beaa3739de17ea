"""Checks of the harness itself (tests/relay.py and the redis fixture), so a
failure in the product tests is not a failure of the tools they stand on."""

import smtplib
import socket


def _read_reply(f):
    lines = []
    while True:
        line = f.readline()
        assert line, "relay closed the connection"
        lines.append(line)
        if line[3:4] == b" ":
            return lines


def test_redis_fixture_answers(redis):
    assert redis.command("SET", "k", "v") == "OK"
    assert redis.command("GET", "k") == b"v"


def test_relay_rules_dot_stuffing_and_wire_log(relay):
    rl = relay(rules=[
        {"cmd": "RCPT", "match": "bad@x.test", "reply": "550 5.1.1 No such user"},
        {"cmd": "RCPT", "match": "slow@x.test", "reply": "451 4.3.0 Try again later", "times": 1},
    ])
    with smtplib.SMTP("127.0.0.1", rl.port, timeout=10) as s:
        s.ehlo("t.test")
        assert s.has_extn("pipelining") and s.has_extn("enhancedstatuscodes")
        refused = s.sendmail("a@x.test", ["good@x.test", "bad@x.test", "slow@x.test"],
                             b"Subject: one\r\n\r\n.hidden\r\n.\r\nend\r\n")
        assert refused == {"bad@x.test": (550, b"5.1.1 No such user"),
                           "slow@x.test": (451, b"4.3.0 Try again later")}
        assert s.sendmail("a@x.test", ["slow@x.test"], b"Subject: two\r\n\r\nx\r\n") == {}
    msgs = rl.wait_messages(2)
    assert [m.rcpt_tos for m in msgs] == [["good@x.test"], ["slow@x.test"]]
    assert msgs[0].raw == b"Subject: one\r\n\r\n.hidden\r\n.\r\nend\r\n"
    assert str(msgs[0].msg["Subject"]) == "one"
    assert len(rl.client_lines("RCPT")) == 4
    assert len(rl.client_lines("<end of data>")) == 2

    # Rules can be changed while the relay runs.
    rl.set_rules([{"cmd": "MAIL", "reply": "421 4.3.2 Going away"}])
    with smtplib.SMTP("127.0.0.1", rl.port, timeout=10) as s:
        s.ehlo("t.test")
        code, _ = s.mail("a@x.test")
        assert code == 421


def test_relay_logs_pipelined_commands_in_one_read(relay):
    rl = relay(pipelining=False, rules=[{"cmd": "MAIL", "delay_ms": 300}])
    with socket.create_connection(("127.0.0.1", rl.port), timeout=10) as c:
        f = c.makefile("rb")
        _read_reply(f)
        c.sendall(b"EHLO p.test\r\n")
        assert not any(b"PIPELINING" in l for l in _read_reply(f))
        c.sendall(b"MAIL FROM:<p@x.test>\r\nRCPT TO:<q@x.test>\r\nDATA\r\n")
        for _ in range(3):
            _read_reply(f)
        c.sendall(b"Subject: p\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
        assert _read_reply(f)[0].startswith(b"250 2.0.0")
    [m] = rl.wait_messages(1)
    assert m.raw == b"Subject: p\r\n\r\n.dot\r\n"
    recs = [r for r in rl.commands() if "dir" in r]
    cmds = {r["line"]: r for r in recs if r["dir"] == "C"}
    assert cmds["MAIL FROM:<p@x.test>"]["read"] == cmds["RCPT TO:<q@x.test>"]["read"] == cmds["DATA"]["read"]
    order = [r["line"] for r in recs]
    assert order.index("RCPT TO:<q@x.test>") < order.index("250 2.1.0 OK")
