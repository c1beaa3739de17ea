"""End-to-end test of Redis Sentinel support (issue 6 point 5): mailgate
finds the master through SENTINEL get-master-addr-by-name (URL
redis-sentinel://host:port[,host:port]/name[/db]) and, after a failover,
finds the new one without a restart. Real redis-server processes: a
master, a replica and a sentinel."""

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

        # Failover: wait until the replica is in sync (else Sentinel answers
        # NOGOODSLAVE), then ask for it and wait for both ends to switch.
        wait_until(lambda: "master_link_status:up" in redis_cli(rport, "INFO", "replication"),
                   timeout=30, desc="replica in sync")
        wait_until(lambda: redis_cli(sport, "SENTINEL", "FAILOVER", "mg") == "OK", timeout=60,
                   interval=1, desc="sentinel accepts the failover")
        wait_until(lambda: redis_cli(sport, "SENTINEL", "get-master-addr-by-name", "mg").split() ==
                   ["127.0.0.1", str(rport)], timeout=60, desc="failover to the replica")
        # Writes a demoted master accepts before Sentinel reconfigures it are
        # lost by Redis replication itself, so send once it is a replica:
        # mailgate's open connections to it then get -READONLY.
        wait_until(lambda: "role:slave" in redis_cli(mport, "INFO", "replication"), timeout=60,
                   desc="the old master is demoted")

        def sent():
            resp = c.send({"from": "a@acme.example", "to": ["two@example.com"], "subject": "2", "text": "x"})
            return [resp] if resp.status_code == 202 else None
        m2 = json_of(wait_until(sent, timeout=60, desc="sends work after the failover")[0])
        assert c.wait_message(m2["id"], timeout=60)["status"] == "delivered"
        assert redis_cli(rport, "EXISTS", "mg:msg:" + m2["id"]) == "1"
        mg.stop()
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()
