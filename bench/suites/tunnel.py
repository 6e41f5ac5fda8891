"""The tunnel suite: a TCP service reached through ztm's tunnel (agent -> hub
-> agent, on 127.0.0.1), side by side with `ssh -L` (OpenSSH, AES-GCM), a
two-hop stunnel chain (TLS 1.3 entry -> middle -> exit, mirroring the
agent -> hub -> agent hops) and no tunnel at all (direct loopback, the
ceiling).

Measurements, each through every path: iperf3 throughput with 1 and 8
streams; 64-byte ping-pong latency over one connection (ztm-pingpong); new
connections per second (ztm-pingpong --new-conn: connect, 1-byte echo,
close, 4 client threads); and, during each, the CPU % and the peak RSS of
every process of the path (hub and both agents; ssh and sshd; the three
stunnels), sampled every 50 ms. Every measurement starts its own backend
and its own path (for ztm: a fresh hub, two joined agents, an export and an
import) on fresh ephemeral ports and stops them after; within a round each
test runs through every path back to back, in an order that rotates from
round to round (as in the relay suite).

Targets (the issue), on the medians: ztm's throughput >= 1.5x ssh -L's (1
and 8 streams); ztm's p50 ping-pong latency <= 2x direct's + 50 us; the
peak RSS of the hub and of each agent <= 64 MiB during the iperf3 runs.

After the measured rounds (not with --quick) the suite profiles the ztm
path once with perf (8 iperf3 streams; one `perf record` per process) and
puts the breakdown in the report, so a missed target comes with where the
time goes.
"""

import json
import os
import re
import shutil
import tempfile
import threading
import time

from lib import report
from lib.env import ROOT, rel, which
from lib.procs import StartError, cpu_seconds, free_port
from lib.progress import Progress
from lib.stats import ratio, summarize

NAME = "tunnel"
SUMMARY = ("ztm tunnel (agent -> hub -> agent) vs ssh -L vs a stunnel chain vs direct: "
           "iperf3, ping-pong latency, new connections/s, RSS")
PEER_TOOLS = {"iperf3": "iperf3", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
              "sshd": "openssh-server", "stunnel4": "stunnel4", "openssl": "openssl"}
TARGETS = ["ztm", "ztm-pingpong"]

HOST = "127.0.0.1"
SERVICE = "bench"  # the exported service's name
CERT_SCRIPT = os.path.join(ROOT, "tests", "integration", "tls", "make-certs.sh")
SSH_CIPHER = "aes128-gcm@openssh.com"
TLS13_CIPHER = "TLS_AES_128_GCM_SHA256"  # what ztm negotiates; stunnel is held to it too
RSS_INTERVAL = 0.05  # seconds between RSS samples

VARIANTS = [  # (name, label); the first round runs them in this order
    ("direct", "direct loopback"),
    ("ztm", "ztm tunnel"),
    ("ssh", "ssh -L"),
    ("stunnel", "stunnel chain"),
]
LABEL = dict(VARIANTS)

# The processes of each path: (key, label). Their CPU % and peak RSS are
# reported per process; sshd counts with every process it forked.
ROLES = {
    "direct": [],
    "ztm": [("hub", "hub"), ("agent_a", "agent A (import)"), ("agent_b", "agent B (export)")],
    "ssh": [("ssh", "ssh"), ("sshd", "sshd (all processes)")],
    "stunnel": [("entry", "stunnel entry"), ("middle", "stunnel middle"), ("exit", "stunnel exit")],
}

TESTS = [
    {"name": "iperf3_1", "label": "iperf3, 1 stream", "kind": "iperf3", "streams": 1},
    {"name": "iperf3_8", "label": "iperf3, 8 streams", "kind": "iperf3", "streams": 8},
    {"name": "pingpong", "label": "64 B ping-pong, 1 connection", "kind": "pingpong", "size": 64,
     "conns": 1},
    {"name": "connrate", "label": "new connections, 1 B echo, 4 threads", "kind": "connrate", "size": 1,
     "conns": 4},
]
IPERF_TESTS = ["iperf3_1", "iperf3_8"]
RSS_LIMIT_MIB = 64

# Rows of the results table: (test, metric, label, higher is better or None).
ROWS = [
    ("iperf3_1", "gbit_s", "iperf3 1 stream, Gbit/s", True),
    ("iperf3_8", "gbit_s", "iperf3 8 streams, Gbit/s", True),
    ("pingpong", "rt_per_s", "64 B ping-pong, round trips/s", True),
    ("pingpong", "p50_us", "64 B ping-pong p50, µs", False),
    ("pingpong", "p99_us", "64 B ping-pong p99, µs", False),
    ("connrate", "conns_per_s", "new connections/s (connect, 1 B echo, close)", True),
    ("connrate", "p50_us", "new connection p50, µs", False),
    ("connrate", "p99_us", "new connection p99, µs", False),
    ("iperf3_1", "cpu_s_per_gb", "tunnel CPU seconds per GB (iperf3 1 stream)", False),
    ("iperf3_8", "cpu_s_per_gb", "tunnel CPU seconds per GB (iperf3 8 streams)", False),
    ("pingpong", "cpu_us_per_rt", "tunnel CPU µs per round trip (ping-pong)", False),
    ("connrate", "cpu_us_per_conn", "tunnel CPU µs per new connection", False),
    ("iperf3_1", "cpu_pct_total", "tunnel CPU % (iperf3 1 stream)", None),
    ("iperf3_8", "cpu_pct_total", "tunnel CPU % (iperf3 8 streams)", None),
    ("pingpong", "cpu_pct_total", "tunnel CPU % (ping-pong)", None),
    ("connrate", "cpu_pct_total", "tunnel CPU % (new connections)", None),
    ("iperf3_1", "rss_mib_total", "tunnel RSS, MiB, peak (iperf3 1 stream)", None),
    ("iperf3_8", "rss_mib_total", "tunnel RSS, MiB, peak (iperf3 8 streams)", None),
]


class Failed(Exception):
    """One measurement failed; the message names the tool and why."""


def fmt_s(seconds):
    return f"{seconds:g}"


def _tail(text, n=3):
    return " | ".join(text.strip().splitlines()[-n:]) or "(no output)"


# ---- files and command lines (the same functions print the report's templates)

def ztm_argv(b, cmd, cfg_dir):
    """`ztm CMD…` with ZTM_CONFIG_DIR (the hub writes the first admin's
    credentials there, `ztm invite` reads them). `env` execs ztm: the process
    (and its pid) is ztm itself."""
    return ["env", f"ZTM_CONFIG_DIR={cfg_dir}", b["ztm"], *cmd]


def hub_cmd(state):
    return ["hub", "--state", state, "--listen", f"{HOST}:0", "--name", HOST, "--log-level", "warn"]


def agent_cmd(state):
    return ["agent", "--state", state, "--log-level", "warn"]


def export_cmd(state, target):
    return ["tunnel", "export", SERVICE, "--to", f"{HOST}:{target}", "--state", state]


def import_cmd(state, listen):
    return ["tunnel", "import", SERVICE, "--listen", f"{HOST}:{listen}", "--state", state]


def sshd_config(d, as_root):
    root = "PermitRootLogin prohibit-password\n" if as_root else ""
    return f"""\
# Generated by bench/suites/tunnel.py: a private sshd for `ssh -L`, key login only.
ListenAddress {HOST}
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile none
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
{root}AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
Ciphers {SSH_CIPHER}
LogLevel ERROR
"""


def sshd_argv(b, cfg, port):
    return [b["sshd"], "-D", "-e", "-f", cfg, "-p", str(port)]


def ssh_argv(b, d, sshd_port, listen, target, user):
    return [b["ssh"], "-F", "/dev/null", "-i", f"{d}/client_key", "-p", str(sshd_port),
            "-c", SSH_CIPHER, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", "Compression=no", "-o", "LogLevel=ERROR",
            "-N", "-L", f"{HOST}:{listen}:{HOST}:{target}", f"{user}@{HOST}"]


_STUNNEL_GLOBAL = """\
foreground = yes
pid =
syslog = no
debug = warning
"""
_TLS_SERVER = f"""\
cert = {{certs}}/server.pem
key = {{certs}}/server.key
sslVersionMin = TLSv1.3
ciphersuites = {TLS13_CIPHER}
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""
_TLS_CLIENT = f"""\
client = yes
CAfile = {{certs}}/ca.pem
verifyChain = yes
checkHost = localhost
sslVersionMin = TLSv1.3
ciphersuites = {TLS13_CIPHER}
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""


def stunnel_configs(certs, entry, middle, exit_, target, unix_path):
    """The three stunnels of the chain: entry (plain in, TLS out), middle (TLS
    in, TLS out: two services joined by a Unix socket, as stunnel terminates
    TLS per service) and exit (TLS in, plain out to the target)."""
    head = "# Generated by bench/suites/tunnel.py: hop {} of the stunnel chain.\n" + _STUNNEL_GLOBAL
    server = _TLS_SERVER.format(certs=certs)
    client = _TLS_CLIENT.format(certs=certs)
    return {
        "entry": head.format("1 (entry)") + f"\n[entry]\naccept = {HOST}:{entry}\nconnect = {HOST}:{middle}\n"
        + client,
        "middle": head.format("2 (middle)") + f"\n[middle-in]\naccept = {HOST}:{middle}\nconnect = {unix_path}\n"
        + server + f"\n[middle-out]\naccept = {unix_path}\nconnect = {HOST}:{exit_}\n" + client,
        "exit": head.format("3 (exit)") + f"\n[exit]\naccept = {HOST}:{exit_}\nconnect = {HOST}:{target}\n"
        + server,
    }


def backend_argv(b, test, port):
    if test["kind"] == "iperf3":
        return [b["iperf3"], "-s", "-1", "-B", HOST, "-p", str(port)]
    return [b["ztm-pingpong"], "server", "--listen", f"{HOST}:{port}"]


def client_argv(b, test, port, cfg):
    if test["kind"] == "iperf3":
        argv = [b["iperf3"], "-c", HOST, "-p", str(port), "-t", fmt_s(cfg["iperf3_seconds"])]
        if test["streams"] > 1:
            argv += ["-P", str(test["streams"])]
        return argv + ["--json"]
    seconds, warmup = ((cfg["pingpong_seconds"], cfg["pingpong_warmup"]) if test["kind"] == "pingpong"
                       else (cfg["connrate_seconds"], cfg["connrate_warmup"]))
    argv = [b["ztm-pingpong"], "client", "--connect", f"{HOST}:{port}", "--size", str(test["size"]),
            "--conns", str(test["conns"]), "--seconds", fmt_s(seconds), "--warmup", fmt_s(warmup)]
    if test["kind"] == "connrate":
        argv.append("--new-conn")
    return argv + ["--json"]


# ---- setting up: certificates and keys, once per suite run ----------------------

def make_certs(ctx):
    out = os.path.join(ctx.tmp, "certs")
    code, so, se = ctx.procs.run("make-certs", ["bash", CERT_SCRIPT, out], timeout=120)
    if code != 0 or not all(os.path.exists(os.path.join(out, f)) for f in ("ca.pem", "server.pem", "server.key")):
        raise Failed(f"{rel(CERT_SCRIPT)} failed (code {code}): {_tail(se or so)}")
    return out


def make_ssh_keys(ctx):
    """A host key, a client key and an authorized_keys file in $TMP/ssh.
    As root, sshd also needs its privilege separation directory (/run/sshd,
    which the ssh service makes at boot): it is made when missing."""
    d = os.path.join(ctx.tmp, "ssh")
    os.makedirs(d, mode=0o700)
    for name in ("host_key", "client_key"):
        argv = [ctx.bin["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", f"ztm-bench-{name}",
                "-f", os.path.join(d, name)]
        code, so, se = ctx.procs.run("ssh-keygen", argv, timeout=30)
        if code != 0:
            raise Failed(f"ssh-keygen failed (code {code}): {_tail(se or so)}")
    shutil.copyfile(os.path.join(d, "client_key.pub"), os.path.join(d, "authorized_keys"))
    os.chmod(os.path.join(d, "authorized_keys"), 0o600)
    note = None
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755)
        note = "made /run/sshd (sshd's privilege separation directory, missing: the ssh service was never started)"
    with open(os.path.join(d, "sshd_config"), "w") as f:
        f.write(sshd_config(d, os.geteuid() == 0))
    return d, note


def current_user():
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


# ---- the paths -----------------------------------------------------------------

class Path:
    """One running tunnel: its entry port, its processes by role and every
    process started for it (stopped in reverse order)."""

    def __init__(self):
        self.port = None
        self.roles = []  # (key, Proc)
        self.procs = []
        self.argv = {}
        self.info = {}

    def add(self, proc, role=None):
        self.procs.append(proc)
        if role:
            self.roles.append((role, proc))
        return proc

    def stop(self, ctx):
        for proc in reversed(self.procs):
            ctx.procs.stop(proc)

    def dead(self):
        return next(((k, p) for k, p in self.roles if not p.alive()), None)


def _start(ctx, path, name, argv, role=None, **kw):
    try:
        proc = ctx.procs.start(name, argv, **kw)
    except StartError as e:
        raise Failed(f"{name} failed to start: {e}") from None
    path.argv[name] = argv
    return path.add(proc, role)


def _cli(ctx, path, name, argv, timeout=20):
    code, out, err = ctx.procs.run(name, argv, timeout)
    path.argv.setdefault("cli", []).append(argv)
    if code != 0:
        why = "timed out" if code is None else f"exited with code {code}"
        raise Failed(f"`{' '.join(argv[2:5])}…` {why}: {_tail(err or out)}")
    return out


def _json(out):
    try:
        return json.loads(out)
    except ValueError:
        return None


def _wait(what, probe, timeout=20.0):
    """Polls PROBE (returns (done, detail)) until done; Failed after TIMEOUT."""
    t0 = time.monotonic()
    detail = None
    while time.monotonic() - t0 < timeout:
        done, detail = probe()
        if done:
            return
        time.sleep(0.05)
    raise Failed(f"{what} not ready after {timeout:g} s: {detail}")


def start_ztm(ctx, path, target):
    """A fresh mesh: a hub, agent A (alice, the import) and agent B (bob, the
    export, reaching TARGET), joined with invite tokens; ready when both hub
    links are up, the export is published and the import listens."""
    b = ctx.bin
    d = tempfile.mkdtemp(prefix="ztm-", dir=ctx.tmp)
    cfg_dir, hub_state = os.path.join(d, "cli"), os.path.join(d, "hub")
    states = {"agent_a": os.path.join(d, "alice"), "agent_b": os.path.join(d, "bob")}
    names = {"agent_a": "alice", "agent_b": "bob"}
    # The agents find the hub through their invite tokens.
    _start(ctx, path, "ztm hub", ztm_argv(b, hub_cmd(hub_state), cfg_dir), "hub",
           ready_line=r"event=hub\.listen\b[^\n]*\baddr=\S+:(\d+)", timeout=30)
    for role, state in states.items():
        token = _cli(ctx, path, "ztm invite", ztm_argv(b, ["invite", names[role]], cfg_dir))
        token = token.strip().splitlines()[-1] if token.strip() else ""
        _cli(ctx, path, "ztm join", ztm_argv(b, ["join", token, "--as", names[role], "--state", state],
                                             cfg_dir))
    for role, state in states.items():
        # Ready at once: at --log-level warn an agent prints nothing; its
        # readiness is its status over its socket, polled below.
        _start(ctx, path, f"ztm agent ({names[role]})", ztm_argv(b, agent_cmd(state), cfg_dir), role,
               ready_line=r"^")

    def link_up(state):
        def probe():
            code, out, err = ctx.procs.run("ztm status", ztm_argv(b, ["status", "-o", "json", "--state", state],
                                                                  cfg_dir), 10)
            j = _json(out) if code == 0 else None
            meshes = (j or {}).get("meshes") or [{}]
            if meshes[0].get("record_layer"):
                path.info["record_layer"] = meshes[0]["record_layer"]
            return meshes[0].get("hub_state") == "up", _tail(err or out)
        return probe
    for role, state in states.items():
        _wait(f"ztm agent ({names[role]})'s hub link", link_up(state))
        if not dict(path.roles)[role].alive():
            raise Failed(f"ztm agent ({names[role]}) exited: {dict(path.roles)[role].tail()}")

    _cli(ctx, path, "ztm tunnel export", ztm_argv(b, export_cmd(states["agent_b"], target), cfg_dir))
    for attempt in range(3):
        port = free_port()
        try:
            _cli(ctx, path, "ztm tunnel import", ztm_argv(b, import_cmd(states["agent_a"], port), cfg_dir))
            break
        except Failed as e:
            if attempt == 2 or not re.search(r"in use|EADDRINUSE", str(e), re.I):
                raise

    def tunnel_state(state, direction, want):
        def probe():
            code, out, err = ctx.procs.run("ztm tunnel ls", ztm_argv(b, ["tunnel", "ls", "-o", "json", "--state",
                                                                         state], cfg_dir), 10)
            j = _json(out) if code == 0 else None
            t = next((t for t in (j or []) if t.get("direction") == direction and t.get("name") == SERVICE), {})
            return t.get("state") == want, t.get("state") or _tail(err or out)
        return probe
    _wait("the export (agent B)", tunnel_state(states["agent_b"], "export", "published"))
    _wait("the import (agent A)", tunnel_state(states["agent_a"], "import", "listening"))
    path.port = port


def start_ssh(ctx, path, target, setup):
    d = setup["ssh_dir"]
    for attempt in range(3):
        sshd_port = free_port()
        try:
            _start(ctx, path, "sshd", sshd_argv(ctx.bin, os.path.join(d, "sshd_config"), sshd_port), "sshd",
                   port=sshd_port)
            break
        except Failed as e:
            if attempt == 2 or not re.search(r"in use|Address already", str(e), re.I):
                raise
    for attempt in range(3):
        listen = free_port()
        try:
            _start(ctx, path, "ssh -L", ssh_argv(ctx.bin, d, sshd_port, listen, target, current_user()), "ssh",
                   port=listen, timeout=20)
            break
        except Failed as e:
            if attempt == 2 or not re.search(r"in use|Address already|forwarding", str(e), re.I):
                raise
    path.port = listen


def start_stunnel(ctx, path, target, setup):
    d = tempfile.mkdtemp(prefix="stunnel-", dir=ctx.tmp)
    entry, middle, exit_ = free_port(), free_port(), free_port()
    cfgs = stunnel_configs(setup["certs"], entry, middle, exit_, target, os.path.join(d, "middle.sock"))
    for role, port in (("exit", exit_), ("middle", middle), ("entry", entry)):
        cfg = os.path.join(d, f"{role}.conf")
        with open(cfg, "w") as f:
            f.write(cfgs[role])
        _start(ctx, path, f"stunnel {role}", [ctx.bin["stunnel4"], cfg], role, port=port)
    path.port = entry


def start_path(ctx, variant, target, setup):
    path = Path()
    if variant == "direct":
        path.port = target
        return path
    if setup.get(variant):
        raise Failed(setup[variant])
    try:
        if variant == "ztm":
            start_ztm(ctx, path, target)
        elif variant == "ssh":
            start_ssh(ctx, path, target, setup)
        else:
            start_stunnel(ctx, path, target, setup)
    except BaseException:
        path.stop(ctx)
        raise
    return path


# ---- watching the path's processes during a test --------------------------------

def _tree(pid):
    """PID and its live descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def rss_kib(pid):
    """Resident memory of PID and its live descendants, KiB (0 once gone)."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            pass
    return total


class Watch:
    """Samples the RSS of each role every RSS_INTERVAL from start() to
    stop() (a thread; reading /proc is cheap next to the traffic) and takes
    the CPU time of each over the same period."""

    def __init__(self, roles):
        self.roles = roles
        self.peak = {k: 0 for k, _ in roles}
        self.peak_total = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self):
        total = 0
        for key, proc in self.roles:
            kib = rss_kib(proc.pid)
            self.peak[key] = max(self.peak[key], kib)
            total += kib
        self.peak_total = max(self.peak_total, total)

    def _loop(self):
        while not self.stopping.wait(RSS_INTERVAL):
            self._sample()

    def start(self):
        self.cpu0 = {k: cpu_seconds(p.pid) for k, p in self.roles}
        self.t0 = time.monotonic()
        self._sample()
        self.thread.start()

    def stop(self):
        """{metric: value}: cpu_pct_<role>, rss_mib_<role>, and the totals."""
        wall = time.monotonic() - self.t0
        self.stopping.set()
        self.thread.join()
        self._sample()
        m = {}
        if not self.roles:
            return m
        cpu_total = 0.0
        for key, proc in self.roles:
            c1 = cpu_seconds(proc.pid)
            if c1 is not None and self.cpu0.get(key) is not None:
                m[f"cpu_pct_{key}"] = round((c1 - self.cpu0[key]) / wall * 100, 1)
                cpu_total += m[f"cpu_pct_{key}"]
            m[f"rss_mib_{key}"] = round(self.peak[key] / 1024, 1)
        m["cpu_pct_total"] = round(cpu_total, 1)
        m["rss_mib_total"] = round(self.peak_total / 1024, 1)
        return m


# ---- one measurement ---------------------------------------------------------------

def parse_iperf3(code, out, err, timeout):
    if code is None:
        raise Failed(f"iperf3 client did not finish within {timeout:g} s")
    try:
        j = json.loads(out)
    except ValueError:
        raise Failed(f"iperf3 client exited with code {code}: {_tail(err or out)}") from None
    if j.get("error"):
        raise Failed(f"iperf3: {j['error']}")
    try:
        end = j["end"]
        rx, tx = end["sum_received"], end["sum_sent"]
        cpu = end.get("cpu_utilization_percent") or {}
        return {"gbit_s": rx["bits_per_second"] / 1e9, "sender_gbit_s": tx["bits_per_second"] / 1e9,
                "bytes": rx["bytes"], "seconds": rx["seconds"], "retransmits": tx.get("retransmits"),
                "iperf3_client_cpu_pct": cpu.get("host_total"),
                "iperf3_server_cpu_pct": cpu.get("remote_total")}
    except (KeyError, TypeError) as e:
        raise Failed(f"iperf3 --json output without {e}") from None


def parse_pingpong(code, out, err, timeout):
    if code is None:
        raise Failed(f"ztm-pingpong client did not finish within {timeout:g} s")
    if code != 0:
        raise Failed(f"ztm-pingpong client exited with code {code}: {_tail(err or out)}")
    try:
        j = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Failed(f"ztm-pingpong client printed no JSON: {_tail(out + err)}") from None
    keys = ("rt_per_s", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us", "min_us", "mean_us",
            "round_trips", "elapsed_s")
    m = {k: j[k] for k in keys if k in j}
    if j.get("new_conn"):
        m["conns_per_s"] = m.pop("rt_per_s")
        m["connections"] = m.pop("round_trips")
    return m


def measure(ctx, cfg, rnd, test, variant, setup):
    rec = {"round": rnd, "test": test["name"], "variant": variant, "ok": False, "error": None,
           "metrics": {}, "argv": {}}
    try:
        _measure(ctx, cfg, rec, test, variant, setup)
    finally:
        # Binaries of the build appear relative to the repository.
        rec["argv"] = json.loads(json.dumps(rec["argv"]).replace(ROOT + os.sep, ""))
    return rec


def _measure(ctx, cfg, rec, test, variant, setup):
    backend = path = None
    try:
        port = free_port()
        argv = rec["argv"]["backend"] = backend_argv(ctx.bin, test, port)
        name = "iperf3 server" if test["kind"] == "iperf3" else "ztm-pingpong server"
        try:
            backend = ctx.procs.start(name, argv, port=port)
        except StartError as e:
            raise Failed(f"{name} failed to start: {e}") from None
        path = start_path(ctx, variant, port, setup)
        rec["argv"].update(path.argv)
        if path.info:
            rec["path_info"] = path.info
        argv = rec["argv"]["client"] = client_argv(ctx.bin, test, path.port, cfg)
        if test["kind"] == "iperf3":
            timeout, parse = cfg["iperf3_seconds"] + 30, parse_iperf3
        else:
            timeout = cfg[f"{test['kind']}_seconds"] + cfg[f"{test['kind']}_warmup"] + 30
            parse = parse_pingpong
        watch = Watch(path.roles)
        watch.start()
        t0 = time.monotonic()
        code, out, err = ctx.procs.run(argv[0].rsplit("/", 1)[-1] + " client", argv, timeout)
        wall = time.monotonic() - t0
        usage = watch.stop()
        dead = path.dead()
        if dead:
            key, proc = dead
            raise Failed(f"{LABEL[variant]}: {dict(ROLES[variant])[key]} exited during the test (code "
                         f"{proc.popen.poll()}): {proc.tail()}")
        metrics = parse(code, out, err, timeout)
        metrics.update(usage)
        # CPU per unit of work: how much of the machine the path needs,
        # which holds better than the rates on a machine shared with others.
        busy = usage.get("cpu_pct_total")
        if busy:
            if metrics.get("gbit_s"):
                metrics["cpu_s_per_gb"] = round(busy / 100 / (metrics["gbit_s"] / 8), 3)
            elif metrics.get("conns_per_s"):
                metrics["cpu_us_per_conn"] = round(busy / 100 / metrics["conns_per_s"] * 1e6, 1)
            elif metrics.get("rt_per_s"):
                metrics["cpu_us_per_rt"] = round(busy / 100 / metrics["rt_per_s"] * 1e6, 1)
        rec["metrics"] = metrics
        rec["wall_s"] = round(wall, 3)
        rec["ok"] = True
    except Failed as e:
        rec["error"] = str(e)
    finally:
        if path:
            # ztm runs at --log-level warn: anything it printed up to the end of
            # the test is worth keeping (its ready lines are at info; stopping
            # adds warnings of its own, so this is read before).
            noise = []
            for key, proc in path.roles:
                if variant == "ztm":
                    lines = [l for l in proc.stderr_text().strip().splitlines() if "level=info" not in l]
                    noise += [f"{key}: {l}" for l in lines[-5:]]
            if noise:
                rec["stderr_tail"] = noise
            path.stop(ctx)
        if backend:
            ctx.procs.stop(backend)


def brief(rec):
    if not rec["ok"]:
        return f"FAILED: {rec['error']}"
    m = rec["metrics"]
    extra = ""
    if "cpu_pct_total" in m:
        extra = f", path CPU {m['cpu_pct_total']:.0f} %, RSS {m['rss_mib_total']:.0f} MiB"
    if "gbit_s" in m:
        return f"{m['gbit_s']:.2f} Gbit/s{extra}"
    if "conns_per_s" in m:
        return f"{m['conns_per_s']:,.0f} conns/s, p50 {m['p50_us']:.0f} µs, p99 {m['p99_us']:.0f} µs{extra}"
    return f"{m['rt_per_s']:,.0f} rt/s, p50 {m['p50_us']:.1f} µs, p99 {m['p99_us']:.1f} µs{extra}"


# ---- the profile: where the ztm path's time goes ----------------------------------

def _perf_rows(text):
    """(percent, dso, symbol) rows of `perf report --stdio --sort dso,sym`,
    largest first. Addresses without a symbol (a stripped library: Debian's
    BoringSSL keeps only its exported names) are summed into one row per
    library."""
    rows, unnamed = [], {}
    for line in text.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*\S)\s*$", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(4)
        if re.fullmatch(r"0x[0-9a-f]+", sym):
            unnamed[dso] = unnamed.get(dso, 0.0) + pct
        else:
            rows.append((pct, dso, sym))
    rows += [(pct, dso, "(addresses without a symbol, summed)") for dso, pct in unnamed.items()]
    return sorted(rows, key=lambda r: -r[0])


def _perf_dsos(text):
    """{library: percent} from `perf report --stdio --sort dso`."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\S+)\s*$", line)
        if m:
            name = m.group(2)
            name = "kernel" if name.startswith("[kernel") else os.path.basename(name)
            out[name] = out.get(name, 0.0) + float(m.group(1))
    return out


def _ctx_switches(pid):
    """Voluntary + involuntary context switches of PID's threads so far."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return total


def profile(ctx, cfg, setup):
    """One extra run of 8 iperf3 streams through a fresh ztm path, with one
    `perf record -g` per process of the path for PROFILE seconds. Not timed
    into the figures (perf's sampling costs CPU)."""
    perf = which("perf")
    result = {"seconds": cfg["profile_seconds"], "streams": 8}
    if ctx.quick:
        return {**result, "skipped": "not with --quick"}
    if not perf:
        return {**result, "skipped": "perf is not installed (Debian package linux-perf); no profile"}
    result["perf"] = perf
    test = next(t for t in TESTS if t["name"] == "iperf3_8")
    backend = path = client = None
    recorders = []
    try:
        port = free_port()
        backend = ctx.procs.start("iperf3 server", backend_argv(ctx.bin, test, port), port=port)
        path = start_path(ctx, "ztm", port, setup)
        seconds = cfg["profile_seconds"]
        argv = client_argv(ctx.bin, test, path.port, {**cfg, "iperf3_seconds": seconds + 3})
        # A client in the background: ready at once, waited for below.
        client = ctx.procs.start("iperf3 client", argv, ready_line=r"^")
        time.sleep(1)  # past the slow start
        watch = Watch(path.roles)
        watch.start()
        switches0 = {k: _ctx_switches(p.pid) for k, p in path.roles}
        pdir = os.path.join(ctx.tmp, "perf")
        os.makedirs(pdir, exist_ok=True)
        for key, proc in path.roles:
            data = os.path.join(pdir, f"{key}.data")
            rargv = [perf, "record", "-g", "-o", data, "-p", str(proc.pid), "--", "sleep", fmt_s(seconds)]
            recorders.append((key, data, ctx.procs.start(f"perf record {key}", rargv, ready_line=r"^")))
        t_end = time.monotonic() + seconds + 15
        while any(r.alive() for _, _, r in recorders) and time.monotonic() < t_end:
            time.sleep(0.1)
        result["usage"] = watch.stop()
        result["ctx_switches_per_s"] = {k: round((_ctx_switches(p.pid) - switches0[k]) / seconds)
                                        for k, p in path.roles}
        while client.alive() and time.monotonic() < t_end:
            time.sleep(0.1)
        out = client.stdout_text()
        try:
            result["gbit_s"] = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
        except (ValueError, KeyError, TypeError):
            pass
        result["processes"] = {}
        for key, data, rec in recorders:
            ctx.procs.stop(rec)
            if not os.path.exists(data):
                result["processes"][key] = {"error": f"perf record wrote nothing: {rec.tail()}"}
                continue
            base = [perf, "report", "-i", data, "--stdio", "--no-children", "-g", "none"]
            code, so, se = ctx.procs.run(f"perf report {key}", base + ["--sort", "dso,sym"], 120)
            code2, so2, se2 = ctx.procs.run(f"perf report {key}", base + ["--sort", "dso"], 120)
            rows, dsos = _perf_rows(so), _perf_dsos(so2)
            if code != 0 or code2 != 0 or not rows or not dsos:
                result["processes"][key] = {"error": f"perf report failed (code {code}, {code2}): "
                                                     f"{_tail(se or so or se2 or so2)}"}
                continue
            samples = re.search(r"^# Samples: (\S+)", so, re.M)
            result["processes"][key] = {
                "samples": samples.group(1) if samples else None,
                "libraries": {k: round(v, 1) for k, v in sorted(dsos.items(), key=lambda kv: -kv[1])},
                "top": [[round(p, 2), os.path.basename(dso), sym] for p, dso, sym in rows[:20]],
            }
        result["record_command"] = f"perf record -g -o $TMP/perf/ROLE.data -p PID -- sleep {fmt_s(seconds)}"
        result["report_command"] = ("perf report -i $TMP/perf/ROLE.data --stdio --no-children -g none "
                                    "--sort dso (and --sort dso,sym)")
    except (Failed, StartError) as e:
        result["error"] = str(e)
    finally:
        for _, _, r in recorders:
            ctx.procs.stop(r)
        if client:
            ctx.procs.stop(client)
        if path:
            path.stop(ctx)
        if backend:
            ctx.procs.stop(backend)
    return result


# ---- the suite ------------------------------------------------------------------

def run(ctx):
    cfg = {
        "iperf3_seconds": 1 if ctx.quick else 10,
        "pingpong_seconds": 1 if ctx.quick else 10,
        "pingpong_warmup": 0.5 if ctx.quick else 1,
        "connrate_seconds": 1 if ctx.quick else 5,
        "connrate_warmup": 0.5 if ctx.quick else 1,
        "profile_seconds": 5,
        "rss_interval_s": RSS_INTERVAL,
        "ssh_cipher": SSH_CIPHER,
        "tls13_cipher": TLS13_CIPHER,
        "run_as": current_user(),
    }
    names = [v for v, _ in VARIANTS]
    setup, notes = {}, []
    try:
        setup["certs"] = make_certs(ctx)
    except Failed as e:
        setup["stunnel"] = f"setup failed: {e}"
    try:
        setup["ssh_dir"], note = make_ssh_keys(ctx)
        if note:
            notes.append(note)
            ctx.say(note)
    except (Failed, OSError) as e:
        setup["ssh"] = f"setup failed: {e}"

    orders = [names[r % len(names):] + names[:r % len(names)] for r in range(ctx.runs)]
    setup_s = {"direct": 0.2, "ztm": 2.0, "ssh": 0.6, "stunnel": 0.5}
    steps, estimates = [], []
    for r, order in enumerate(orders, 1):
        for test in TESTS:
            for variant in order:
                steps.append((r, test, variant))
                if test["kind"] == "iperf3":
                    est = cfg["iperf3_seconds"] + 0.5
                else:
                    est = cfg[f"{test['kind']}_seconds"] + cfg[f"{test['kind']}_warmup"] + 0.3
                estimates.append(est + setup_s[variant])

    progress = Progress(estimates)
    records = []
    for r, test, variant in steps:
        progress.start(f"round {r}/{ctx.runs} · {test['label']} · {LABEL[variant]}")
        rec = measure(ctx, cfg, r, test, variant, setup)
        records.append(rec)
        progress.done(brief(rec))

    prof = profile(ctx, cfg, setup)
    if prof.get("skipped"):
        ctx.say(f"profile: skipped ({prof['skipped']})")
    elif prof.get("error"):
        ctx.say(f"profile: failed: {prof['error']}")
    else:
        ctx.say("profile: done")

    summary = {}
    for test in TESTS:
        for variant in names:
            recs = [x for x in records if x["test"] == test["name"] and x["variant"] == variant]
            keys = sorted({k for x in recs if x["ok"] for k, v in x["metrics"].items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
            summary.setdefault(test["name"], {})[variant] = {
                "runs": len(recs), "failed": sum(not x["ok"] for x in recs),
                **{k: summarize([x["metrics"].get(k) if x["ok"] else None for x in recs]) for k in keys},
            }

    def med(test, variant, metric):
        s = summary[test][variant].get(metric)
        return s["median"] if s else None

    ratios = {}
    for test, metric, _, higher in ROWS:
        if higher is not None:
            ratios.setdefault(test, {})[metric] = {
                "ztm_over_ssh": ratio(med(test, "ztm", metric), med(test, "ssh", metric)),
                "ztm_over_stunnel": ratio(med(test, "ztm", metric), med(test, "stunnel", metric)),
                "ztm_over_direct": ratio(med(test, "ztm", metric), med(test, "direct", metric)),
            }

    goals = []
    for test in IPERF_TESTS:
        z, s = med(test, "ztm", "gbit_s"), med(test, "ssh", "gbit_s")
        rt = ratio(z, s)
        goals.append({"name": f"throughput, {next(t['label'] for t in TESTS if t['name'] == test)}",
                      "kind": "ratio", "ztm": z, "ssh": s, "ratio": rt, "target": 1.5, "unit": " Gbit/s",
                      "met": None if rt is None else rt >= 1.5})
    z, d = med("pingpong", "ztm", "p50_us"), med("pingpong", "direct", "p50_us")
    limit = None if d is None else 2 * d + 50
    goals.append({"name": "p50 latency, 64 B ping-pong", "kind": "latency", "ztm": z, "direct": d,
                  "added_us": None if z is None or d is None else z - d, "limit_us": limit,
                  "met": None if z is None or limit is None else z <= limit})
    for key, label in ROLES["ztm"]:
        vals = [med(t, "ztm", f"rss_mib_{key}") for t in IPERF_TESTS]
        vals = [v for v in vals if v is not None]
        peak = max(vals) if vals else None
        goals.append({"name": f"peak RSS, {label}", "kind": "rss", "role": key, "ztm": peak,
                      "limit_mib": RSS_LIMIT_MIB, "met": None if peak is None else peak <= RSS_LIMIT_MIB})

    # The exact commands, with placeholders where each measurement puts its ports.
    shown = {k: (rel(p) if k in TARGETS else os.path.basename(p)) for k, p in ctx.bin.items()}
    z = lambda cmd: " ".join(ztm_argv(shown, cmd, "$CLI"))
    commands = [
        {"name": "ztm hub", "command": z(hub_cmd("$D/hub"))},
        {"name": "ztm invite", "command": z(["invite", "alice"]) + "   (and bob)"},
        {"name": "ztm join", "command": z(["join", "$TOKEN", "--as", "alice", "--state", "$D/alice"])
         + "   (and bob)"},
        {"name": "ztm agent", "command": z(agent_cmd("$D/alice")) + "   (and $D/bob)"},
        {"name": "ztm export", "command": z(export_cmd("$D/bob", "$BACKEND"))},
        {"name": "ztm import", "command": z(import_cmd("$D/alice", "$LISTEN"))},
        {"name": "ztm ready", "command": "ztm status -o json (hub_state up, both agents), ztm tunnel ls -o json "
                                         "(export published, import listening)"},
        {"name": "sshd", "command": " ".join(sshd_argv(shown, "$TMP/ssh/sshd_config", "$SSHD"))},
        {"name": "ssh -L", "command": " ".join(ssh_argv(shown, "$TMP/ssh", "$SSHD", "$LISTEN", "$BACKEND",
                                                         "$USER"))},
        {"name": "ssh keys", "command": "ssh-keygen -q -t ed25519 -N '' -f $TMP/ssh/host_key (and client_key; "
                                        "authorized_keys = client_key.pub)"},
        {"name": "certificates", "command": f"bash {rel(CERT_SCRIPT)} $TMP/certs"},
        {"name": "stunnel exit", "command": "stunnel4 $TMP/stunnel/exit.conf"},
        {"name": "stunnel middle", "command": "stunnel4 $TMP/stunnel/middle.conf"},
        {"name": "stunnel entry", "command": "stunnel4 $TMP/stunnel/entry.conf"},
    ]
    for test in TESTS:
        kind = test["kind"]
        srv = "iperf3 server" if kind == "iperf3" else "pingpong server"
        if not any(c["name"] == srv for c in commands):
            commands.append({"name": srv, "command": " ".join(backend_argv(shown, test, "$BACKEND"))})
        commands.append({"name": f"{test['label']} client", "command": " ".join(
            client_argv(shown, test, "$LISTEN", cfg))})
    commands.append({"name": "note", "command": "direct loopback: the client connects to $BACKEND; "
                                                "ztm: $LISTEN is agent A's import, ssh: ssh's -L port, "
                                                "stunnel: the entry's port"})
    cfgs = stunnel_configs("$TMP/certs", "$LISTEN", "$MIDDLE", "$EXIT", "$BACKEND", "$TMP/stunnel/middle.sock")
    files = {"$TMP/ssh/sshd_config": sshd_config("$TMP/ssh", os.geteuid() == 0),
             **{f"$TMP/stunnel/{k}.conf": v for k, v in cfgs.items()}}

    return {
        "config": cfg,
        "variants": [{"name": v, "label": l} for v, l in VARIANTS],
        "roles": {v: [{"key": k, "label": l} for k, l in rs] for v, rs in ROLES.items()},
        "plots": [
            {"test": "iperf3_1", "metric": "gbit_s", "title": "iperf3, 1 stream", "unit": "Gbit/s"},
            {"test": "iperf3_8", "metric": "gbit_s", "title": "iperf3, 8 streams", "unit": "Gbit/s"},
            {"test": "pingpong", "metric": "p50_us", "title": "64 B ping-pong p50", "unit": "µs"},
            {"test": "pingpong", "metric": "p99_us", "title": "64 B ping-pong p99", "unit": "µs"},
            {"test": "connrate", "metric": "conns_per_s", "title": "new connections (1 B echo, 4 threads)",
             "unit": "connections/s"},
            {"test": "iperf3_8", "metric": "rss_mib_total", "title": "RSS of the tunnel's processes, "
             "peak during 8 iperf3 streams", "unit": "MiB"},
        ],
        "tests": TESTS,
        "orders": orders,
        "setup_notes": notes,
        "runs_raw": records,
        "summary": summary,
        "ratios": ratios,
        "goals": goals,
        "profile": prof,
        "commands": commands,
        "files": files,
    }


# ---- the markdown body ---------------------------------------------------------------

def _verdict(met):
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def render(data):
    cfg = data["config"]
    names = [v["name"] for v in data["variants"]]
    labels = {v["name"]: v["label"] for v in data["variants"]}
    roles = {v: [(r["key"], r["label"]) for r in rs] for v, rs in data["roles"].items()}
    summary = data["summary"]
    out = []

    out += ["## Targets", "",
            "From the issue, on the medians: the ztm tunnel's throughput ≥ 1.5× `ssh -L`'s; its p50 "
            "ping-pong latency ≤ 2× direct loopback's p50 + 50 µs (the *added* latency is shown too); "
            f"the peak RSS of the hub and of each agent ≤ {RSS_LIMIT_MIB} MiB while iperf3 runs at full "
            "speed (the larger of the 1- and 8-stream medians).", ""]
    rows = []
    for g in data["goals"]:
        if g["kind"] == "ratio":
            rows.append([g["name"], report.num(g["ztm"], g["unit"]), f"ssh -L {report.num(g['ssh'], g['unit'])}",
                         report.times(g["ratio"]) + " of ssh -L", f"≥ {g['target']:.1f}× ssh -L",
                         _verdict(g["met"])])
        elif g["kind"] == "latency":
            added = "–" if g["added_us"] is None else f"+{report.num(g['added_us'])} µs over direct"
            rows.append([g["name"], report.num(g["ztm"], " µs"), f"direct {report.num(g['direct'], ' µs')}",
                         added, f"≤ {report.num(g['limit_us'], ' µs')} (2× direct + 50 µs)",
                         _verdict(g["met"])])
        else:
            rows.append([g["name"], report.num(g["ztm"], " MiB"), "–", "–", f"≤ {g['limit_mib']} MiB",
                         _verdict(g["met"])])
    out += [report.table(["target", "ztm tunnel", "against", "ratio / difference", "goal", "verdict"], rows), ""]
    missing = [g["name"] for g in data["goals"] if g["met"] is None]
    if missing:
        out += [f"Not measured ({', '.join(missing)}): see the failures below.", ""]

    runs = (f"Median of {data['runs']} runs (min–max)" if data["runs"] > 1
            else "One run per measurement, so no spread")
    la = data.get("load_average") or {}
    busy = [v[0] for v in (la.get("start"), la.get("end")) if v]
    cpus = data["machine"].get("nproc") or 1
    if busy and max(busy) > cpus:
        out += [f"> **A busy machine**: the 1-minute load average was {' at the start, '.join(f'{b:g}' for b in busy)} "
                f"at the end, on {cpus} CPUs: other work competed with every measurement. A path whose "
                "processes wait for a CPU loses more than its CPU cost says; the CPU per unit of work "
                "(below) is the steadier comparison.", ""]
    out += ["## Results", "",
            f"{runs}. iperf3 {cfg['iperf3_seconds']:g} s per run, Gbit/s as received by the server; "
            f"ping-pong 64 B over one connection, {cfg['pingpong_seconds']:g} s after "
            f"{cfg['pingpong_warmup']:g} s of warm-up; new connections: 4 client threads each doing connect, "
            f"1-byte echo, close, {cfg['connrate_seconds']:g} s after {cfg['connrate_warmup']:g} s of warm-up "
            "(latency = the whole exchange). Tunnel CPU %: CPU time of all the path's processes over the "
            "client's run time (100 % = one core); CPU per unit: that CPU over the rate (CPU seconds per GB "
            "received, µs per round trip or per connection), which holds better than the rates on a "
            "machine shared with other work; RSS: the largest sum of their resident memory, "
            f"sampled every {cfg['rss_interval_s'] * 1000:g} ms. The last columns: ztm over ssh -L and over "
            "the stunnel chain (above 1× is better for rates, below 1× for latency).", ""]
    rows = []
    for test, metric, label, higher in ROWS:
        row = [label]
        for v in names:
            s = summary[test][v]
            if v == "direct" and metric.startswith(("cpu_", "rss_")):
                row.append("–")
            elif s.get(metric) is None:
                row.append(f"failed ({s['failed']}/{s['runs']})" if s["failed"] else "–")
            else:
                part = f" ({s['failed']} of {s['runs']} failed)" if s["failed"] else ""
                row.append(report.spread(s[metric]) + part)
        r = data["ratios"].get(test, {}).get(metric) or {}
        row += [report.times(r.get("ztm_over_ssh")), report.times(r.get("ztm_over_stunnel"))]
        rows.append(row)
    out += [report.table(["measurement", *(labels[v] for v in names), "ztm / ssh -L", "ztm / stunnel"],
                         rows), ""]

    out += ["### Per process", "",
            "CPU % and peak RSS (MiB) of each process of each path, medians; sshd counts with the "
            "processes it forked for the connection.", ""]
    rows = []
    for v in names[1:]:
        for key, label in roles[v]:
            row = [f"{labels[v]}: {label}"]
            for test in data["tests"]:
                s = summary[test["name"]][v]
                cpu, rss = s.get(f"cpu_pct_{key}"), s.get(f"rss_mib_{key}")
                row.append("–" if cpu is None else f"{report.num(cpu['median'])} % · {report.num(rss['median'])} MiB")
            rows.append(row)
    out += [report.table(["process", *(t["label"] for t in data["tests"])], rows), ""]

    out += _render_notes(data)
    out += _render_profile(data.get("profile") or {}, dict(roles["ztm"]))

    out += ["## The paths", "",
            "- **direct loopback**: the client connects to the backend (iperf3 -s, ztm-pingpong server).",
            "- **ztm tunnel**: a fresh mesh per measurement: `ztm hub`, two agents joined with invite tokens "
            "(alice, bob), `ztm tunnel export` on bob (to the backend) and `ztm tunnel import` on alice; "
            "the client connects to alice's import. Each byte goes client → agent A → hub → agent B → "
            "backend: TLS 1.3 on each agent's hub link, and the agents' own end-to-end TLS 1.3 session "
            "inside it (the hub relays ciphertext), so each byte is sealed twice and opened twice by the "
            "agents, opened and sealed once more by the hub. Everything at `--log-level warn`.",
            f"- **ssh -L**: a private `sshd -D` on 127.0.0.1 (host key, authorized key and config in the "
            f"run's temp dir, run as {cfg['run_as']}) and `ssh -N -L` with `-c {cfg['ssh_cipher']}`; one SSH "
            "connection, a channel per forwarded connection; one encryption hop.",
            f"- **stunnel chain**: three stunnel4 processes, two TLS 1.3 hops ({cfg['tls13_cipher']}): entry "
            "(plain in, TLS out) → middle (TLS in, TLS out: two services joined by a Unix socket) → exit "
            "(TLS in, plain out to the backend), mirroring agent → hub → agent; the middle sees plaintext, "
            "which ztm's hub does not. A TLS handshake per hop per connection (no session resumption "
            "across connections).", ""]
    layers = sorted({r["path_info"]["record_layer"] for r in data["runs_raw"]
                     if (r.get("path_info") or {}).get("record_layer")})
    if layers:
        out += [f"ztm's hub links ran with the TLS record layer in: {', '.join(layers)} (`ztm status`: "
                "*user* = BoringSSL in the process, *kernel* = kTLS; the agent's default `--ktls auto` "
                "falls back to user when the kernel has no TLS ULP).", ""]
    for n in data.get("setup_notes") or []:
        out += [f"Setup: {n}.", ""]

    out += report.failures(data, names, labels)
    noisy = [r for r in data["runs_raw"] if r.get("stderr_tail")]
    if noisy:
        out += ["## What ztm logged", "", "At `--log-level warn` the hub and agents print nothing unless "
                "something went wrong:", ""]
        tests = {t["name"]: t["label"] for t in data["tests"]}
        for r in noisy[:10]:
            out += [f"- round {r['round']}, {tests[r['test']]}:", "", "```", *r["stderr_tail"], "```", ""]

    out += ["## Every run", "",
            "Order of the paths in each round: "
            + "; ".join(f"round {i}: {', '.join(labels[v] for v in o)}" for i, o in enumerate(data["orders"], 1))
            + ".", ""]
    rows = []
    for rnd in range(1, data["runs"] + 1):
        for test in data["tests"]:
            row = [str(rnd), test["label"]]
            for v in names:
                r = next((x for x in data["runs_raw"] if x["round"] == rnd and x["test"] == test["name"]
                          and x["variant"] == v), None)
                if r is None:
                    row.append("–")
                elif not r["ok"]:
                    row.append("failed")
                else:
                    m = r["metrics"]
                    if "gbit_s" in m:
                        row.append(f"{m['gbit_s']:.2f} Gbit/s")
                    elif "conns_per_s" in m:
                        row.append(f"{m['conns_per_s']:,.0f}/s, p50 {m['p50_us']:.0f} µs")
                    else:
                        row.append(f"{m['rt_per_s']:,.0f}/s, p50 {m['p50_us']:.1f}, p99 {m['p99_us']:.1f} µs")
            rows.append(row)
    out += [report.table(["round", "test", *(labels[v] for v in names)], rows, right=set()), ""]
    return "\n".join(out)


def _render_profile(p, names):
    out = ["## Profile of the ztm tunnel", ""]
    if p.get("skipped"):
        return out + [f"Not run: {p['skipped']}.", ""]
    if p.get("error"):
        return out + [f"Failed: {p['error']}", ""]
    procs = p.get("processes") or {}
    usage = p.get("usage") or {}
    gbit = f", {p['gbit_s']:.2f} Gbit/s under perf" if p.get("gbit_s") else ""
    out += [f"One extra run of {p['streams']} iperf3 streams through a fresh ztm path{gbit} (not part of the "
            f"figures above), `perf record -g` on each process for {p['seconds']:g} s: "
            f"`{p.get('record_command', '')}`; flat profiles (self time) with "
            f"`{p.get('report_command', '')}`. Shares are of each process's own samples; the CPU % of each "
            "process during the profile gives their weight.", ""]
    rows = []
    switches = p.get("ctx_switches_per_s") or {}
    for key, pr in procs.items():
        cpu = usage.get(f"cpu_pct_{key}")
        sw = switches.get(key)
        if pr.get("error"):
            rows.append([names.get(key, key), "–", "–", pr["error"]])
            continue
        libs = ", ".join(f"{k} {v:.0f} %" for k, v in pr["libraries"].items() if v >= 1)
        rows.append([names.get(key, key), "–" if cpu is None else f"{cpu:.0f} %", "–" if sw is None else f"{sw:,}",
                     libs])
    out += [report.table(["process", "CPU %", "context switches/s", "self time by library"], rows,
                         right={1, 2}), ""]
    for key, pr in procs.items():
        if pr.get("top"):
            out += [f"Top symbols, {names.get(key, key)} ({pr.get('samples') or '?'} samples):", "", "```"]
            out += [f"{pct:6.2f}%  {dso:<24} {sym}" for pct, dso, sym in pr["top"]]
            out += ["```", ""]
    return out


def _med(data, test, variant, metric):
    s = data["summary"].get(test, {}).get(variant, {}).get(metric)
    return s["median"] if s else None


def _render_notes(data):
    """What the figures say about a missed target, from this run's data
    alone (the profile, CPU per unit of work, the number of relaying
    processes each way)."""
    goals = {g["name"]: g for g in data["goals"]}
    missed = [g for g in data["goals"] if g["met"] is False]
    if not missed:
        return []
    out = ["## Why, from these figures", ""]
    if any(g["kind"] == "ratio" for g in missed):
        for test in IPERF_TESTS:
            z, s = _med(data, test, "ztm", "cpu_s_per_gb"), _med(data, test, "ssh", "cpu_s_per_gb")
            zc = _med(data, test, "ztm", "cpu_pct_total")
            label = next(t["label"] for t in data["tests"] if t["name"] == test)
            if z and s:
                out.append(f"- {label}: the ztm path used {z:.2f} CPU seconds per GB, ssh -L {s:.2f} "
                           f"({z / s:.1f}×), with the ztm processes together at {zc:.0f} % of a core.")
        if out[-1].startswith("- iperf3"):
            out.append("- Where the CPUs are the limit, 1.5× ssh's throughput needs at most 0.67× its CPU per "
                       "byte.")
        procs = (data.get("profile") or {}).get("processes") or {}
        libs = {}
        for pr in procs.values():
            for k, v in (pr.get("libraries") or {}).items():
                libs[k] = libs.get(k, 0.0) + v / len(procs)
        if libs:
            top = ", ".join(f"{k} {v:.0f} %" for k, v in sorted(libs.items(), key=lambda kv: -kv[1])[:4])
            out.append(f"- The profile (below), averaged over the hub and the agents: {top} of their time. The "
                       "kernel part is TCP over the path's four loopback connections (copies in and out, "
                       "wake-ups); libcrypto is BoringSSL's AES-GCM, which each byte passes six times (the "
                       "agents' end-to-end TLS inside each hub link's TLS: seal twice, open and seal at the hub, "
                       "open twice); libc is mostly memmove between the rings and the TLS buffers.")
        one, eight = _med(data, "iperf3_1", "ztm", "gbit_s"), _med(data, "iperf3_8", "ztm", "gbit_s")
        c1 = _med(data, "iperf3_1", "ztm", "cpu_pct_total")
        if one and eight and c1 is not None:
            out.append(f"- One stream reached {one:.2f} Gbit/s, {one / eight:.2f}× the 8-stream figure, with the "
                       f"ztm processes at {c1:.0f} % CPU together: a single stream is held back by its flow-"
                       "control window across three processes as much as by CPU.")
    lat = goals.get("p50 latency, 64 B ping-pong")
    if lat and lat["met"] is False:
        d = _med(data, "pingpong", "direct", "p50_us")
        z = _med(data, "pingpong", "ztm", "p50_us")
        sh = _med(data, "pingpong", "ssh", "p50_us")
        cz = _med(data, "pingpong", "ztm", "cpu_us_per_rt")
        line = (f"- Latency: ztm adds {z - d:.0f} µs to direct's p50; a round trip passes three relaying "
                f"processes each way (agent, hub, agent): {(z - d) / 6:.0f} µs per pass, each a wake-up plus "
                f"TLS and HTTP/2 work ({cz:.0f} CPU µs per round trip in all).")
        if sh:
            line += (f" ssh -L adds {sh - d:.0f} µs over two passes each way ({(sh - d) / 4:.0f} µs per pass): "
                     "the extra hop through the hub is most of the gap.")
        out.append(line)
    return out + [""]
