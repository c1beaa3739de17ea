#!/bin/bash
# container_check.sh - check the container recipe without a Docker engine.
#
#   scripts/container_check.sh          (exit 0: every check passed)
#
# No Docker engine runs on the machines that build and test mailgate, so
# this replays what docker/Dockerfile and docker/compose.yml say, with the
# same commands, on the host:
#
#  1. static: parse docker/Dockerfile (two stages on debian:12-slim, a
#     numeric non-root USER, exec-form ENTRYPOINT/CMD, HEALTHCHECK, ENV,
#     EXPOSE, the Dockerfile.dockerignore keeping build/ and bin/ out) and
#     docker/compose.yml with a YAML parser: every MAILGATE_* variable set
#     is one gateway/gw_config.c reads, every command is a valid `serve
#     --role`, mailgate services are read-only and non-root, the sender has
#     no container_name and no fixed host port, Redis has AOF and
#     noeviction, the relay is the capture service with tls=none, every
#     service has a healthcheck and sits on the private network.
#  2. build: copy the build context (the working tree's tracked and
#     untracked, non-ignored files, less what the .dockerignore drops) to
#     a clean temporary directory and run the build stage's `RUN make ...`
#     line there; then check that the runtime stage installs the Debian
#     package of every library the binary links against.
#  3. run: like the image would, the binary at its image path, as the
#     image's USER (setpriv), with a clean environment (the image's ENV plus
#     the service's), as PID 1 of its own PID namespace with the root
#     filesystem read-only (unshare; skipped with a note where the kernel
#     refuses), against a redis-server started with compose's arguments and
#     the capture server started with compose's command. It runs the image
#     default (CMD) and then compose's api and sender together, runs each
#     HEALTHCHECK command until healthy, creates a key the way `docker
#     compose run --rm api key create` would, sends a message through the
#     api and waits until the sender has delivered it to the capture
#     server, then sends SIGTERM to each mailgate and expects exit 0.
#
# What it cannot check: see README "Container" (image builds with BuildKit,
# the apt mirror, Docker's networking, DNS names, the healthcheck scheduler,
# volume ownership, compose's own schema).
#
# CONTAINER_CHECK_KEEP=1 keeps the temporary directory for inspection.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/mailgate-container-check.XXXXXX)
chmod 0755 "$TMP"   # the image's USER must reach the binary inside
start=$(date +%s)

cleanup() {
    if [ "${CONTAINER_CHECK_KEEP:-0}" = 1 ]; then
        echo "container_check: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

# ---- 1. static checks; writes $TMP/plan.json ------------------------------
echo "== container_check: static checks of docker/Dockerfile and docker/compose.yml"
"$PY" - "$ROOT" "$TMP" <<'PY'
import json, os, re, shlex, sys
import yaml

root, tmp = sys.argv[1], sys.argv[2]
errors = []
def err(msg):
    errors.append(msg)

def read(path):
    with open(os.path.join(root, path), encoding="utf-8") as f:
        return f.read()

# -- the variables mailgate reads (the configuration table) and its roles
known_env = set(re.findall(r'"(MAILGATE_[A-Z0-9_]+)"', read("gateway/gw_config.c")))
if len(known_env) < 5:
    err("could not extract the MAILGATE_* variables from gateway/gw_config.c")
# "Every environment variable is documented": the README's table names them all.
documented = set(re.findall(r"^\| `(MAILGATE_[A-Z0-9_]+)`", read("README.md"), re.M))
for v in sorted(known_env - documented):
    err("README.md: %s is read by gateway/gw_config.c but not in the configuration table" % v)
m = re.search(r"--role must be ([a-z, ]+)", read("gateway/main.c"))
roles = set(re.split(r",\s*|\s+or\s+", m.group(1).strip())) if m else {"all", "api", "sender"}

# -- Dockerfile: logical lines (continuations joined, comments dropped)
lines, cur = [], ""
for raw in read("docker/Dockerfile").splitlines():
    s = raw.strip()
    if not cur and (not s or s.startswith("#")):
        continue
    if s.startswith("#"):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append((cur + s).strip())
    cur = ""
args, stages = {}, []
for ln in lines:
    instr, _, rest = ln.partition(" ")
    instr, rest = instr.upper(), rest.strip()
    if instr == "ARG" and not stages:
        k, _, v = rest.partition("=")
        args[k] = v
    elif instr == "FROM":
        parts = rest.split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda mm: args.get(mm.group(1), ""), parts[0])
        name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
        stages.append({"image": image, "name": name, "instr": []})
    elif stages:
        stages[-1]["instr"].append((instr, rest))
if len(stages) < 2:
    err("Dockerfile: expected a multi-stage build (build and runtime)")
for st in stages:
    if st["image"] != "debian:12-slim":
        err("Dockerfile: stage %s is FROM %s, expected debian:12-slim" % (st["name"], st["image"]))
build, runtime = stages[0], stages[-1]

def exec_form(rest, what):
    try:
        v = json.loads(rest)
    except ValueError:
        v = None
    if not (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
        err("Dockerfile: %s must be in exec (JSON) form, got %r" % (what, rest))
        return []
    return v

def apt_packages(stage):
    pk = []
    for instr, rest in stage["instr"]:
        if instr == "RUN" and "apt-get install" in rest:
            seg = rest.split("apt-get install", 1)[1].split("&&")[0]
            pk += [w for w in seg.split() if not w.startswith("-")]
    return pk

build_cmds = [rest for instr, rest in build["instr"] if instr == "RUN" and re.match(r"make(\s|$)", rest)]
if len(build_cmds) != 1:
    err("Dockerfile: the build stage needs exactly one `RUN make ...` line")
workdir = next((rest for instr, rest in build["instr"] if instr == "WORKDIR"), "/")
deps = read("scripts/deps.sh")
for p in apt_packages(build):
    if not re.search(r"(^|[\s\"])%s([\s\"]|$)" % re.escape(p), deps):
        err("Dockerfile: build package %s is not one scripts/deps.sh installs" % p)

rt = {"env": {}, "user": None, "entrypoint": None, "cmd": None, "healthcheck": None,
      "expose": [], "copies": {}}
for instr, rest in runtime["instr"]:
    if instr == "ENV":
        for kv in shlex.split(rest):
            k, _, v = kv.partition("=")
            rt["env"][k] = v
    elif instr == "USER":
        rt["user"] = rest
    elif instr == "ENTRYPOINT":
        rt["entrypoint"] = exec_form(rest, "ENTRYPOINT")
    elif instr == "CMD":
        rt["cmd"] = exec_form(rest, "CMD")
    elif instr == "HEALTHCHECK":
        hc = re.sub(r"--\w[\w-]*=\S+\s*", "", rest)
        if not hc.startswith("CMD "):
            err("Dockerfile: HEALTHCHECK must run a command")
        else:
            rt["healthcheck"] = exec_form(hc[4:].strip(), "HEALTHCHECK CMD")
    elif instr == "EXPOSE":
        rt["expose"] += rest.split()
    elif instr == "COPY":
        w = rest.split()
        src, dst = w[-2], w[-1]
        if any(x.startswith("--from=") for x in w):
            src = os.path.normpath(os.path.join(workdir, src)) if not src.startswith("/") else src
            src = os.path.relpath(src, workdir)  # path inside the build tree
        rt["copies"][dst] = src
uid = gid = None
if not rt["user"] or not re.fullmatch(r"\d+(:\d+)?", rt["user"]):
    err("Dockerfile: USER must be a numeric uid[:gid] (Kubernetes runAsNonRoot can check it), got %r" % rt["user"])
else:
    uid, _, g = rt["user"].partition(":")
    uid, gid = int(uid), int(g or uid)
    if uid == 0:
        err("Dockerfile: USER must not be root")
if not rt["entrypoint"] or not rt["cmd"]:
    err("Dockerfile: ENTRYPOINT and CMD are required")
elif rt["cmd"][0] != "serve":
    err("Dockerfile: CMD must be serve, got %r" % rt["cmd"])
if rt["env"].get("MAILGATE_LISTEN") != "0.0.0.0:8080":
    err("Dockerfile: ENV MAILGATE_LISTEN=0.0.0.0:8080 is required")
if "8080" not in rt["expose"]:
    err("Dockerfile: EXPOSE 8080 is required")
if not rt["healthcheck"]:
    err("Dockerfile: HEALTHCHECK is required")
for k in rt["env"]:
    if k.startswith("MAILGATE_") and k not in known_env:
        err("Dockerfile: ENV %s is not a variable mailgate reads" % k)
if rt["entrypoint"] and rt["copies"].get(rt["entrypoint"][0]) != "bin/mailgate":
    err("Dockerfile: ENTRYPOINT %s is not where bin/mailgate is copied" % rt["entrypoint"][0])
ign = os.path.join(root, "docker/Dockerfile.dockerignore")
ignore = []
if os.path.exists(ign):
    ignore = [l.strip() for l in open(ign) if l.strip() and not l.startswith("#")]
for must in ("build", "bin"):
    if must not in ignore:
        err("docker/Dockerfile.dockerignore must exclude %s/ (host objects would end up in the image)" % must)

# -- compose
compose = yaml.safe_load(read("docker/compose.yml"))
services = compose.get("services") or {}
networks = set((compose.get("networks") or {}).keys())

def env_of(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) if "=" in x else (x, "") for x in e)
    return {k: "" if v is None else str(v) for k, v in e.items()}

def argv(v):
    return shlex.split(v) if isinstance(v, str) else list(v or [])

mg_services, redis_name, capture_name = {}, None, None
for name, svc in services.items():
    for k in env_of(svc):
        if k.startswith("MAILGATE_") and k not in known_env:
            err("compose: %s sets %s, which mailgate does not read" % (name, k))
    if not svc.get("healthcheck"):
        err("compose: %s has no healthcheck" % name)
    nets = svc.get("networks") or []
    if not nets or any(n not in networks for n in nets) or svc.get("network_mode"):
        err("compose: %s must be on the private network(s) declared in the file" % name)
    b = svc.get("build") or {}
    dockerfile = b.get("dockerfile", "") if isinstance(b, dict) else ""
    cmd = argv(svc.get("command"))
    if dockerfile.endswith("docker/Dockerfile"):
        mg_services[name] = svc
    elif cmd[:1] == ["redis-server"]:
        redis_name = name
    elif "aiosmtpd" in dockerfile or "capture" in name:
        capture_name = name
for n in networks:
    if (compose["networks"].get(n) or {}).get("external"):
        err("compose: network %s must be private to the project, not external" % n)

by_role = {}
for name, svc in mg_services.items():
    cmd = argv(svc.get("command"))
    role = "all"
    if cmd[:1] != ["serve"]:
        err("compose: %s command must start with serve, got %r" % (name, cmd))
    elif cmd[1:] and not (len(cmd) == 3 and cmd[1] == "--role" and cmd[2] in roles):
        err("compose: %s command must be `serve [--role %s]`, got %r" % (name, "|".join(sorted(roles)), cmd))
    elif cmd[1:]:
        role = cmd[2]
    by_role.setdefault(role, []).append(name)
    if svc.get("read_only") is not True:
        err("compose: %s must set read_only: true" % name)
    user = str(svc.get("user", rt["user"] or ""))
    if not re.fullmatch(r"[1-9]\d*(:\d+)?", user):
        err("compose: %s must run as a numeric non-root user, got %r" % (name, user))
for role in ("api", "sender"):
    if len(by_role.get(role, [])) != 1:
        err("compose: expected one mailgate service with `serve --role %s`" % role)
api_name = (by_role.get("api") or [None])[0]
sender_name = (by_role.get("sender") or [None])[0]
if sender_name:
    snd = mg_services[sender_name]
    if snd.get("container_name"):
        err("compose: sender must not set container_name (it would break --scale)")
    for p in snd.get("ports") or []:
        fixed = (isinstance(p, dict) and p.get("published")) or (isinstance(p, (str, int)) and ":" in str(p))
        if fixed:
            err("compose: sender must not publish a fixed host port (%r): --scale would collide" % (p,))
    if not env_of(snd).get("MAILGATE_ADMIN_LISTEN"):
        err("compose: sender needs MAILGATE_ADMIN_LISTEN for its healthcheck")
if api_name:
    ports = [str(p.get("target") if isinstance(p, dict) else p).split(":")[-1]
             for p in mg_services[api_name].get("ports") or []]
    listen = env_of(mg_services[api_name]).get("MAILGATE_LISTEN", rt["env"].get("MAILGATE_LISTEN", ""))
    if listen.rsplit(":", 1)[-1] not in ports:
        err("compose: api must publish its MAILGATE_LISTEN port (%s)" % listen)
if not redis_name:
    err("compose: no redis-server service")
else:
    rc = argv(services[redis_name].get("command"))
    def opt(name):
        return rc[rc.index(name) + 1] if name in rc and rc.index(name) + 1 < len(rc) else None
    if opt("--appendonly") != "yes":
        err("compose: redis must run with --appendonly yes")
    if opt("--maxmemory-policy") != "noeviction":
        err("compose: redis must run with --maxmemory-policy noeviction")
    if not any(v.split(":")[-1] == "/data" for v in services[redis_name].get("volumes") or []):
        err("compose: redis needs a volume on /data for its AOF")
if not capture_name:
    err("compose: no capture SMTP service")
for name, svc in mg_services.items():
    env = env_of(svc)
    relays = env.get("MAILGATE_RELAYS", "")
    mm = re.match(r"smtp://([^:/?]+):(\d+)\?(.*)$", relays)
    if not mm or mm.group(1) != capture_name or "tls=none" not in mm.group(3).split("&"):
        err("compose: %s MAILGATE_RELAYS must be smtp://%s:PORT?tls=none..., got %r" % (name, capture_name, relays))
    r = re.match(r"redis://([^:/]+)(:\d+)?", env.get("MAILGATE_REDIS_URL", ""))
    if not r or r.group(1) != redis_name:
        err("compose: %s MAILGATE_REDIS_URL must name the %s service" % (name, redis_name))
    hc = argv((svc.get("healthcheck") or {}).get("test"))
    if hc[:1] != ["CMD"] or not rt["healthcheck"] or hc[1] != rt["healthcheck"][0]:
        err("compose: %s healthcheck must be [CMD, %s, ...]" % (name, rt["healthcheck"] and rt["healthcheck"][0]))
    if not svc.get("stop_grace_period"):
        err("compose: %s should set stop_grace_period above MAILGATE_SHUTDOWN_TIMEOUT (30s)" % name)

if errors:
    for e in errors:
        print("container_check: FAIL: " + e, file=sys.stderr)
    sys.exit(1)

plan = {
    "build_cmd": build_cmds[0], "uid": uid, "gid": gid, "ignore": ignore,
    "image_env": rt["env"], "entrypoint": rt["entrypoint"], "cmd": rt["cmd"],
    "healthcheck": rt["healthcheck"], "copies": rt["copies"],
    "runtime_packages": apt_packages(runtime),
    "redis": {"name": redis_name, "command": argv(services[redis_name]["command"])},
    "capture": {"name": capture_name, "command": argv(services[capture_name].get("command"))},
    "services": {n: {"command": argv(s.get("command")), "env": env_of(s),
                     "healthcheck": argv(s["healthcheck"]["test"])[1:]}
                 for n, s in mg_services.items()},
    "api": api_name, "sender": sender_name,
}
json.dump(plan, open(os.path.join(tmp, "plan.json"), "w"), indent=1)
print("   ok: %d stages, USER %s, %d compose services, %d known variables"
      % (len(stages), rt["user"], len(services), len(known_env)))
PY

# ---- 2. build in a clean copy of the build context -----------------------
echo "== container_check: build from a clean copy of the build context"
CTX="$TMP/src"
mkdir -p "$CTX"
"$PY" - "$ROOT" "$CTX" "$TMP/plan.json" <<'PY'
import fnmatch, json, os, shutil, subprocess, sys
root, ctx, plan = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
try:   # what `docker build .` would send, less what .gitignore names (build/, bin/, var/)
    files = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout.decode().split("\0")
except (OSError, subprocess.CalledProcessError):   # not a git checkout: every file
    files = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
def ignored(path):
    parts = path.split("/")
    for pat in plan["ignore"]:
        pat = pat.rstrip("/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatch("/".join(parts[:i]), pat) or fnmatch.fnmatch(parts[i - 1], pat.replace("**/", "")):
                return True
    return False
n = 0
for f in files:
    src = os.path.join(root, f)
    if not f or ignored(f) or not os.path.isfile(src):
        continue   # deleted in the work tree, or dropped by the .dockerignore
    dst = os.path.join(ctx, f)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst)
    n += 1
for d in ("build", "bin"):
    if os.path.exists(os.path.join(ctx, d)):
        sys.exit("container_check: FAIL: %s/ leaked into the build context" % d)
print("   %d files copied" % n)
PY
BUILD_CMD=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["build_cmd"])' "$TMP/plan.json")
echo "   RUN $BUILD_CMD"
if ! (cd "$CTX" && /bin/sh -c "$BUILD_CMD") >"$TMP/build.log" 2>&1; then
    tail -n 40 "$TMP/build.log" >&2
    echo "container_check: FAIL: the Dockerfile's build command failed (log above)" >&2
    exit 1
fi

# ---- 3. runtime libraries, then run it as the image would ----------------
echo "== container_check: runtime packages, then run as the image and compose would"
"$PY" - "$CTX" "$TMP" <<'PY'
import json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request

ctx, tmp = sys.argv[1], sys.argv[2]
plan = json.load(open(os.path.join(tmp, "plan.json")))
failures = []
procs = []   # (popen, what), stopped at the end whatever happens
started = [] # Mailgate instances: their PID-1 child is killed at the end too

def fail(msg):
    print("container_check: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)

# -- every library the binary links against comes from a runtime package
binary = os.path.join(ctx, "bin/mailgate")
needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                    subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout)
rt_pk = set(plan["runtime_packages"])
owners = {}   # soname -> Debian packages shipping it (one dpkg call: it is slow)
out = subprocess.run(["dpkg", "-S"] + ["*/" + so for so in needed], capture_output=True, text=True).stdout
for l in out.splitlines():
    pk, _, path = l.partition(": ")
    for p in pk.split(", "):
        owners.setdefault(os.path.basename(path.strip()), set()).add(p.split(":")[0])
for so in needed:
    pkgs = owners.get(so, set())
    if not pkgs:
        fail("no Debian package ships %s" % so)
    if pkgs & {"libc6"}:
        continue   # in every Debian image
    if not pkgs & rt_pk:
        fail("%s comes from %s, which the runtime stage does not install" % (so, "/".join(sorted(pkgs))))
for p in rt_pk:
    if subprocess.run(["dpkg-query", "-W", p], capture_output=True).returncode != 0 and \
       subprocess.run(["apt-cache", "show", "--no-all-versions", p], capture_output=True).returncode != 0:
        fail("runtime package %s is not a Debian 12 package" % p)
print("   ok: %d linked libraries, all from the runtime stage's packages" % len(needed))

# -- lay out the image's files: COPY destinations under a fake root
fakeroot = os.path.join(tmp, "root")
def image_path(p):
    return os.path.join(fakeroot, p.lstrip("/"))
for dst, src in plan["copies"].items():
    os.makedirs(os.path.dirname(image_path(dst)), exist_ok=True)
    shutil.copy2(os.path.join(ctx, src), image_path(dst))
    os.chmod(image_path(dst), 0o755)
    for d in (os.path.dirname(image_path(dst)),):
        while d.startswith(tmp):
            os.chmod(d, 0o755)
            d = os.path.dirname(d)

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_until(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if fn():
                return
        except Exception:
            pass
        time.sleep(0.1)
    fail("timed out waiting for " + what)

# -- what this kernel lets us emulate
uid, gid = plan["uid"], plan["gid"]
as_user = os.geteuid() == 0 and shutil.which("setpriv")
ns_ok = as_user and shutil.which("unshare") and subprocess.run(
    ["unshare", "--pid", "--fork", "--mount", "/bin/sh", "-c", "mount -o remount,bind,ro / && ! touch /.ro-probe 2>/dev/null"],
    capture_output=True).returncode == 0
print("   run as uid %s: %s; PID 1 + read-only root: %s" % (
    uid, "yes" if as_user else "no (not root or no setpriv)", "yes" if ns_ok else "no (unshare refused)"))

# -- redis, with compose's arguments; the capture server, with compose's command
ports = {}
redis_port = free_port()
rdir = os.path.join(tmp, "redis")
os.makedirs(rdir)
rcmd = [shutil.which("redis-server") or "redis-server"] + plan["redis"]["command"][1:] + \
       ["--port", str(redis_port), "--bind", "127.0.0.1", "--dir", rdir, "--save", ""]
procs.append((subprocess.Popen(rcmd, stdout=open(os.path.join(tmp, "redis.log"), "w"), stderr=subprocess.STDOUT), "redis"))
cap_port = free_port()
maildir = os.path.join(tmp, "mail")
for d in ("tmp", "new", "cur"):
    os.makedirs(os.path.join(maildir, d))
ccmd = list(plan["capture"]["command"])
if "-l" in ccmd:
    ccmd[ccmd.index("-l") + 1] = "127.0.0.1:%d" % cap_port
ccmd[-1] = maildir   # the Mailbox handler's maildir
procs.append((subprocess.Popen(["/usr/bin/python3", "-m", "aiosmtpd", "-n"] + ccmd,
                               stdout=open(os.path.join(tmp, "capture.log"), "w"), stderr=subprocess.STDOUT), "capture"))

def can_connect(port):
    socket.create_connection(("127.0.0.1", port), 1).close()
    return True
wait_until(lambda: can_connect(redis_port), 10, "redis-server")
wait_until(lambda: can_connect(cap_port), 10, "the capture SMTP server")

def localize(env, portmap):
    """Service names -> 127.0.0.1, container ports -> the local ones, in a
    dict of variables or a list of arguments."""
    if isinstance(env, list):
        return list(localize(dict(enumerate(env)), portmap).values())
    out = {}
    for k, v in env.items():
        v = v.replace("//%s:" % plan["redis"]["name"], "//127.0.0.1:").replace("//%s:" % plan["capture"]["name"], "//127.0.0.1:")
        v = re.sub(r"(0\.0\.0\.0|127\.0\.0\.1|localhost|\[::\]):(\d+)",
                   lambda m: "127.0.0.1:%d" % portmap.get(m.group(2), int(m.group(2))), v)
        out[k] = v
    return out

def command(argv, env, pid1):
    """argv as the image's USER, in a clean environment, optionally as PID 1
    of a new PID namespace with / read-only."""
    argv = [image_path(argv[0]) if argv[0] in plan["copies"] else argv[0]] + argv[1:]
    envl = ["%s=%s" % kv for kv in sorted(env.items())]
    inner = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + envl + argv
    if as_user:
        inner = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--clear-groups", "--"] + inner
    if pid1 and ns_ok:
        return ["unshare", "--pid", "--fork", "--mount", "/bin/sh", "-c",
                'mount -o remount,bind,ro / && exec "$@"', "sh"] + inner
    return inner

class Mailgate:
    def __init__(self, what, args, env, healthcheck, portmap):
        self.what, self.env, self.portmap = what, env, portmap
        self.healthcheck = healthcheck
        self.log = os.path.join(tmp, what + ".log")
        self.p = subprocess.Popen(command(plan["entrypoint"] + args, env, True),
                                  stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        procs.append((self.p, what))
        started.append(self)

    def pid(self):
        """The mailgate process: unshare's child when it runs as PID 1."""
        if not ns_ok:
            return self.p.pid
        kids = open("/proc/%d/task/%d/children" % (self.p.pid, self.p.pid)).read().split()
        return int(kids[0]) if kids else None

    def healthy(self):
        r = subprocess.run(command(self.healthcheck, self.env, False), capture_output=True, timeout=5)
        if self.p.poll() is not None:
            fail("%s exited %s at start:\n%s" % (self.what, self.p.returncode, open(self.log).read()[-3000:]))
        return r.returncode == 0

    def url(self, path):
        port = self.portmap.get("8080") or self.portmap.get("9090")
        return "http://127.0.0.1:%d%s" % (port, path)

    def stop(self):
        pid = self.pid()
        if pid is None:
            fail("%s: cannot find the mailgate process" % self.what)
        os.kill(pid, signal.SIGTERM)
        try:
            rc = self.p.wait(20)
        except subprocess.TimeoutExpired:
            fail("%s did not exit within 20 s of SIGTERM" % self.what)
        if rc != 0:
            fail("%s exited %s on SIGTERM, expected 0:\n%s" % (self.what, rc, open(self.log).read()[-3000:]))
        log = open(self.log).read()
        if "Read-only file system" in log:
            fail("%s tried to write to the read-only root filesystem:\n%s" % (self.what, log[-3000:]))
        print("   ok: %s healthy, SIGTERM -> exit 0" % self.what)

def http(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers, r.read()

redis_url = "redis://127.0.0.1:%d/0" % redis_port
try:
    # (a) the image alone: docker run -e MAILGATE_REDIS_URL=... mailgate (CMD, ENV, HEALTHCHECK)
    pm = {"8080": free_port()}
    env = localize(dict(plan["image_env"], MAILGATE_REDIS_URL=redis_url), pm)
    mg = Mailgate("image-default", plan["cmd"], env, plan["healthcheck"], pm)
    wait_until(mg.healthy, 20, "the image's HEALTHCHECK (%s)" % mg.what)
    st, _, _ = http(mg.url("/healthz"))
    if st != 200:
        fail("GET /healthz answered %s" % st)
    mg.stop()

    # (b) compose's api and sender, together, against compose's redis and capture server
    pm = {"8080": free_port(), "9090": free_port(), "6379": redis_port, "2525": cap_port}
    running = {}
    for name, svc in plan["services"].items():
        env = localize(dict(plan["image_env"], **svc["env"]), pm)
        running[name] = Mailgate("compose-" + name, svc["command"], env, localize(svc["healthcheck"], pm), pm)
    for m in running.values():
        wait_until(m.healthy, 20, "the healthcheck of " + m.what)
    api = running[plan["api"]]
    # docker compose run --rm api key create --tenant check
    key = subprocess.run(command(plan["entrypoint"] + ["key", "create", "--tenant", "check"], api.env, False),
                         capture_output=True, text=True, timeout=20)
    if key.returncode != 0 or not key.stdout.strip():
        fail("key create failed: %s" % key.stderr[-2000:])
    auth = {"Authorization": "Bearer " + key.stdout.strip(), "Content-Type": "application/json"}
    body = json.dumps({"from": "Check <check@example.com>", "to": ["you@example.org"],
                       "subject": "container check", "text": "It works."}).encode()
    st, _, out = http(api.url("/v1/messages"), body, auth)
    if st != 202:
        fail("POST /v1/messages answered %s" % st)
    mid = json.loads(out)["id"]
    wait_until(lambda: os.listdir(os.path.join(maildir, "new")), 20,
               "the sender to deliver to the capture server")
    wait_until(lambda: json.loads(http(api.url("/v1/messages/" + mid), headers=auth)[2])["status"] == "delivered",
               20, "the message to read back as delivered")
    st, hdr, out = http(api.url("/v1/openapi.yaml"))
    if st != 200 or not hdr.get("Content-Type", "").startswith("application/yaml"):
        fail("GET /v1/openapi.yaml answered %s %s" % (st, hdr.get("Content-Type")))
    print("   ok: api + sender delivered a message to the capture server")
    for m in running.values():
        m.stop()
finally:
    # unshare does not pass signals on: end a mailgate left running (a
    # failed check) by its own PID first, then everything else.
    for m in started:
        try:
            if m.p.poll() is None and m.pid():
                os.kill(m.pid(), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for p, what in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
PY
echo "== container_check: passed in $(( $(date +%s) - start )) s"
