"""Shared pieces of the mesh tests (mesh.*): the real `ztm hub`, `ztm invite`,
`ztm join`, `ztm agent` and the tunnel CLI, as a user runs them, with real
clients (curl, iperf3, python sockets) pushing bytes through the tunnels.

What is here:
  Daemon      a zt.Proc whose stderr log lines are parsed (logfmt); logs(),
              wait_for_log(event, after=MARK, **fields), mark(), no_log(),
              sanitizer_lines(); stop() by SIGTERM checks the exit code
  Hub         `ztm hub --state DIR --listen 127.0.0.1:PORT --name 127.0.0.1`
              in its own dirs (admin creds in its own ZTM_CONFIG_DIR);
              start() again on the same port after kill9() or stop();
              cli() runs admin commands (invite, revoke, get) against it
  Agent       one endpoint: a state dir, join(hub) (invite + `ztm join`),
              start() (`ztm agent`, waits for agent.ready), wait_up(),
              cli() (`ztm status|tunnel|leave` with ZTM_STATE_DIR), status(),
              export() (waits until published), import_() (returns the port)
  mesh()      the fixture: a hub and N agents joined and up
  servers     HttpDir (python3 -m http.server on an ephemeral port),
              echo_server() (threaded TCP echo), UdpEcho
  traffic     roundtrip() (send all, half-close, read to EOF),
              wait_carries() (retry until a tunnel carries a probe), curl()

Every test imports this and ends with zt.main(run, deadline=...).
"""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import ztmtest as zt  # noqa: E402

MiB = 1 << 20
LOCAL = "127.0.0.1"

# ---- temp dirs --------------------------------------------------------------------

_TMP = None


def tmpdir():
    """The test's temp dir (short: Unix socket paths must stay under 108
    bytes), removed at exit."""
    global _TMP
    if _TMP is None:
        _TMP = tempfile.TemporaryDirectory(prefix="ztm-mesh-", dir="/tmp")
    return _TMP.name


def subdir(*parts):
    p = os.path.join(tmpdir(), *parts)
    os.makedirs(p, exist_ok=True)
    return p


def read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def write(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


# ---- processes with a parsed log -----------------------------------------------------


class Daemon(zt.Proc):
    """A long-running ztm process; its log lines (stderr) are parsed into
    .events (dicts) as they arrive."""

    def __init__(self, argv, name, env=None):
        self.events = []
        super().__init__(argv, name=name, env=env)

    def _on_err_line(self, line):
        ev = zt.parse_log_line(line)
        if ev is not None:
            self.events.append(ev)

    @staticmethod
    def _match(ev, event, fields):
        return ev.get("event") == event and all(ev.get(k) == str(v) for k, v in fields.items())

    def mark(self):
        """A position in the log: wait_for_log(after=mark) sees only later lines."""
        with self.cond:
            return len(self.events)

    def logs(self, event, after=0, **fields):
        with self.cond:
            return [e for e in self.events[after:] if self._match(e, event, fields)]

    def wait_for_log(self, event, timeout=30, after=0, **fields):
        """The first line (after AFTER) with EVENT and these field values;
        fails on timeout or if the process exits without logging it."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events[after:]:
                    if self._match(e, event, fields):
                        return e
                if not self._threads[1].is_alive():
                    zt.fail(f"{self.name} exited ({zt.describe_rc(self.popen.poll())}) without "
                            f"logging event={event} {fields}; last lines: {self.err[-5:]}")
                left = end - time.monotonic()
                if left <= 0:
                    zt.fail(f"{self.name}: no event={event} {fields} within {timeout}s")
                self.cond.wait(min(left, 0.2))

    def wait_any(self, events, timeout=30, after=0):
        """The first line (after AFTER) whose event is one of EVENTS."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events[after:]:
                    if e.get("event") in events:
                        return e
                if not self._threads[1].is_alive():
                    zt.fail(f"{self.name} exited without logging any of {events}")
                left = end - time.monotonic()
                if left <= 0:
                    zt.fail(f"{self.name}: none of {events} logged within {timeout}s")
                self.cond.wait(min(left, 0.2))

    def sanitizer_lines(self):
        with self.cond:
            return [line for line in self.err if zt._SANITIZER.search(line)]

    def check_sanitizer(self):
        san = self.sanitizer_lines()
        zt.check(not san, f"{self.name} printed a sanitizer report: {san[:3]}")

    def stop(self, timeout=60, expect_rc=0):
        """SIGTERM by PID; checks the exit code and that no sanitizer report
        was printed. Returns the exit code."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        rc = self.wait_exit(timeout)
        zt.check(rc is not None, f"{self.name} (pid {self.pid}) did not exit within {timeout}s "
                 "of SIGTERM")
        self.check_sanitizer()
        if expect_rc is not None:
            zt.check(rc == expect_rc, f"{self.name} {zt.describe_rc(rc)} after SIGTERM, "
                     f"expected exit {expect_rc}")
        return rc

    def kill9(self):
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        rc = self.wait_exit(20)
        zt.check(rc is not None, f"{self.name} did not die of SIGKILL")
        return rc


def _run(argv, env, timeout=30, input=None):
    """Runs a CLI command; (rc, stdout, stderr) as text."""
    try:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                           input=input)
    except subprocess.TimeoutExpired:
        zt.fail(f"{' '.join(argv)}: no exit within {timeout}s")
    return r.returncode, r.stdout, r.stderr


def _base_env():
    env = dict(os.environ)
    for k in ("ZTM_STATE_DIR", "ZTM_CONFIG_DIR", "ZTM_CONTROLLER", "XDG_STATE_HOME",
              "XDG_CONFIG_HOME", "ZTM_LOG_LEVEL", "SSLKEYLOGFILE"):
        env.pop(k, None)
    return env


# ---- the hub --------------------------------------------------------------------------


class Hub:
    """`ztm hub` in DIR/state with admin credentials in DIR/config. start()
    again reuses the state dir and the port."""

    def __init__(self, name="hub", mesh=None, env_extra=None, start=True):
        self.label = name
        base = subdir(name)
        self.state = os.path.join(base, "state")
        self.config_dir = os.path.join(base, "config")
        self.mesh = mesh
        self.env_extra = dict(env_extra or {})
        self.port = 0
        self.proc = None
        self.procs = []
        if start:
            self.start()

    def env(self):
        env = _base_env()
        env["ZTM_CONFIG_DIR"] = self.config_dir
        return env

    def start(self, timeout=30):
        env = self.env()
        env.update(self.env_extra)
        argv = [zt.ztm_bin(), "hub", "--state", self.state, "--listen", f"{LOCAL}:{self.port}",
                "--name", LOCAL]
        if self.mesh:
            argv += ["--mesh", self.mesh]
        self.proc = Daemon(argv, name=f"ztm-hub[{self.label}]", env=env)
        self.procs.append(self.proc)
        ev = self.proc.wait_for_log("hub.listen", timeout=timeout)
        _, port = zt.split_hostport(ev["addr"])
        zt.check(self.port in (0, port), f"hub restarted on port {port}, expected {self.port}")
        self.port = port
        self.addr = ev["addr"]
        self.mesh_id = ev.get("mesh")
        zt.log(f"hub {self.label} pid {self.proc.pid} on {self.addr} (mesh {self.mesh_id})")
        return self

    # delegation to the current process
    def wait_for_log(self, event, **kw):
        return self.proc.wait_for_log(event, **kw)

    def logs(self, event, **kw):
        return self.proc.logs(event, **kw)

    def mark(self):
        return self.proc.mark()

    def stop(self, **kw):
        return self.proc.stop(**kw)

    def kill9(self):
        return self.proc.kill9()

    def cli(self, *args, timeout=30):
        """An admin command (invite, revoke, get, ...) against this hub."""
        return _run([zt.ztm_bin(), *args], self.env(), timeout)

    def invite(self, name, *args):
        rc, out, err = self.cli("invite", name, *args)
        zt.check(rc == 0, f"ztm invite {name}: rc {rc}: {err.strip()}")
        tok = out.strip().splitlines()[-1]
        zt.check(tok.startswith("ztm1."), f"ztm invite {name} printed {out!r}, expected a token")
        return tok

    def get_json(self, what):
        rc, out, err = self.cli("get", what, "-o", "json")
        zt.check(rc == 0, f"ztm get {what}: rc {rc}: {err.strip()}")
        return json.loads(out)


# ---- agents ---------------------------------------------------------------------------


class Agent:
    """An endpoint: its state dir, its `ztm agent` process (.proc) and the
    CLI run with ZTM_STATE_DIR pointing at it."""

    def __init__(self, name, state=None):
        self.name = name
        self.state = state or subdir("agents", name)
        self.proc = None
        self.procs = []
        self.meshes = []   # local mesh names joined

    def env(self):
        env = _base_env()
        env["ZTM_STATE_DIR"] = self.state
        return env

    def mesh_dir(self, mesh="mesh"):
        return os.path.join(self.state, "meshes", mesh)

    def join(self, hub, mesh=None, as_name=None):
        """`ztm invite NAME` on HUB, then `ztm join TOKEN --as NAME [--mesh M]` here."""
        tok = hub.invite(self.name)
        args = ["join", tok, "--as", as_name or self.name]
        if mesh:
            args += ["--mesh", mesh]
        rc, out, err = self.cli(*args)
        zt.check(rc == 0, f"ztm join as {self.name}: rc {rc}: {err.strip()}")
        self.meshes.append(mesh or "mesh")
        return out

    def start(self, timeout=30):
        self.proc = Daemon([zt.ztm_bin(), "agent"], name=f"ztm-agent[{self.name}]",
                           env=self.env())
        self.procs.append(self.proc)
        self.proc.wait_for_log("agent.ready", timeout=timeout)
        zt.log(f"agent {self.name} pid {self.proc.pid} ready (state {self.state})")
        return self

    def wait_up(self, mesh="mesh", timeout=30, after=0):
        return self.proc.wait_for_log("agent.hub_up", timeout=timeout, after=after, mesh=mesh)

    # delegation to the current process
    def wait_for_log(self, event, **kw):
        return self.proc.wait_for_log(event, **kw)

    def logs(self, event, **kw):
        return self.proc.logs(event, **kw)

    def mark(self):
        return self.proc.mark()

    def stop(self, **kw):
        return self.proc.stop(**kw)

    def cli(self, *args, timeout=30):
        return _run([zt.ztm_bin(), *args], self.env(), timeout)

    def ok(self, *args, timeout=30):
        rc, out, err = self.cli(*args, timeout=timeout)
        zt.check(rc == 0, f"{self.name}: ztm {' '.join(args)}: rc {rc}: {err.strip()}")
        return out

    def status(self):
        return json.loads(self.ok("status", "-o", "json"))

    def mesh_status(self, mesh="mesh"):
        for m in self.status()["meshes"]:
            if m["name"] == mesh:
                return m
        zt.fail(f"{self.name}: ztm status shows no mesh {mesh}")

    def hub_state(self, mesh="mesh"):
        return self.mesh_status(mesh)["hub_state"]

    def tunnels(self, mesh=None):
        args = ["tunnel", "ls", "-o", "json"] + (["--mesh", mesh] if mesh else [])
        return json.loads(self.ok(*args))

    def export(self, service, to, allow=None, udp=False, mesh=None, wait=True):
        """`ztm tunnel export SERVICE --to TO ...`; waits for agent.published."""
        if isinstance(to, int):
            to = f"{LOCAL}:{to}"
        after = self.mark()
        args = ["tunnel", "export", service, "--to", to]
        if allow:
            args += ["--allow", ",".join(allow) if not isinstance(allow, str) else allow]
        if udp:
            args.append("--udp")
        if mesh:
            args += ["--mesh", mesh]
        self.ok(*args)
        if wait:
            self.wait_for_log("agent.published", after=after, service=service,
                              proto="udp" if udp else "tcp")
        return to

    def import_(self, service, listen="0", via=None, udp=False, mesh=None):
        """`ztm tunnel import SERVICE --listen LISTEN ...`; returns the port
        bound (LISTEN 0: an ephemeral one, read from the CLI's answer)."""
        args = ["tunnel", "import", service, "--listen", str(listen)]
        if via:
            args += ["--via", via]
        if udp:
            args.append("--udp")
        if mesh:
            args += ["--mesh", mesh]
        out = self.ok(*args)
        m = re.search(r" on (\S+):(\d+) in mesh", out)
        zt.check(m, f"ztm tunnel import printed {out!r}: no bound address")
        return int(m.group(2))

    def import_port(self, service, udp=False, mesh=None):
        """The port an import is bound on, from `ztm tunnel ls -o json`."""
        for t in self.tunnels(mesh):
            if t["direction"] == "import" and t["name"] == service and \
                    t["protocol"] == ("udp" if udp else "tcp"):
                return zt.split_hostport(t["listen"])[1]
        zt.fail(f"{self.name}: no import of {service} in ztm tunnel ls")


def mesh(names=("alice", "bob"), hub=None, mesh_name=None, **hub_kw):
    """The fixture: a hub (or HUB) and one agent per name, joined and up.
    Returns (hub, {name: Agent})."""
    if hub is None:
        hub = Hub(**hub_kw)
    agents = {}
    for n in names:
        a = Agent(n)
        a.join(hub, mesh=mesh_name)
        agents[n] = a
    for a in agents.values():
        a.start()
    for a in agents.values():
        a.wait_up(mesh_name or "mesh")
    zt.log(f"mesh up: {', '.join(names)}")
    return hub, agents


def all_procs(hub, agents):
    return [*hub.procs, *[p for a in agents.values() for p in a.procs]]


def check_no_sanitizer(*daemons):
    for d in daemons:
        d.check_sanitizer()


# ---- target servers -----------------------------------------------------------------------


class HttpDir:
    """python3 -m http.server on 127.0.0.1:<ephemeral> serving DIR."""

    def __init__(self, directory):
        self.dir = directory
        self.proc = zt.spawn(["/usr/bin/python3", "-u", "-m", "http.server", "0", "--bind", LOCAL,
                              "--directory", directory], name="http.server")
        m = self.proc.wait_out(r"port (\d+)", timeout=20)
        self.port = int(m.group(1))


def echo_server():
    """A threaded TCP echo server (echo until EOF, then close): zt.TcpServer."""
    return zt.TcpServer(zt.echo_handler, name="echo")


class UdpEcho:
    """A UDP echo on 127.0.0.1:<ephemeral>: every datagram goes back to its
    sender unchanged. .count: datagrams seen."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCAL, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._closing = False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        while not self._closing:
            try:
                d, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.count += 1
            self.sock.sendto(d, peer)

    def close(self):
        self._closing = True
        self._t.join(2)
        self.sock.close()


def free_port(kind=socket.SOCK_STREAM):
    """A port that was free a moment ago (for servers that need a number)."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind((LOCAL, 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---- traffic --------------------------------------------------------------------------------


def roundtrip(port, data, timeout=30):
    """Connects to PORT, sends DATA (from a thread), shuts down the write side,
    reads until EOF. Returns the bytes read."""
    s = zt.connect(port, timeout=timeout)
    err = []

    def sender():
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        _, _, got = zt.recv_until_eof(s, keep=True)
    finally:
        t.join(timeout)
        s.close()
    if err:
        raise err[0]
    return got


def try_roundtrip(port, data, timeout=10):
    """roundtrip(), but an error or a short answer is None, not a failure."""
    try:
        return roundtrip(port, data, timeout)
    except (OSError, zt.TestFailure):
        return None


def wait_carries(port, timeout=30, what="the tunnel", probe=None):
    """Retries until a connection to PORT carries a probe: by default a
    random 64 KiB round trip through an echo target, exact. Returns the
    attempts made."""
    end = time.monotonic() + timeout
    n = 0
    last = None
    while True:
        n += 1
        if probe is not None:
            ok = probe()
        else:
            data = os.urandom(64 << 10)
            got = try_roundtrip(port, data)
            ok = got == data
            last = None if got is None else len(got)
        if ok:
            return n
        if time.monotonic() > end:
            zt.fail(f"{what} (port {port}) carried no probe within {timeout}s "
                    f"({n} attempts; last answer {last} bytes)")
        time.sleep(0.3)


def curl(port, path="/", out=None, timeout=60):
    """curl http://127.0.0.1:PORT/PATH; (rc, body bytes or None)."""
    argv = ["curl", "-sS", "--fail", "--max-time", str(timeout), "--noproxy", "*",
            f"http://{LOCAL}:{port}{path}"]
    if out:
        argv += ["-o", out]
    r = subprocess.run(argv, capture_output=True, timeout=timeout + 10)
    if r.returncode != 0:
        return r.returncode, None
    return 0, (read(out) if out else r.stdout)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Pusher:
    """A long transfer in a background thread: connects to PORT and sends
    TOTAL random bytes to an echo target while reading the echo; .result is
    ("ok", received bytes, sha equal) or ("error", text) once done."""

    def __init__(self, port, total, chunk=64 << 10, rate=None):
        self.port = port
        self.rate = rate  # bytes per second at most (None: as fast as it goes)
        self.total = total
        self.sent = 0
        self.received = 0
        self.result = None
        self.done = threading.Event()
        self._t = threading.Thread(target=self._run, args=(chunk,), daemon=True)
        self._t.start()

    def _run(self, chunk):
        hs, hr = hashlib.sha256(), hashlib.sha256()
        try:
            s = zt.connect(self.port, timeout=20)
        except OSError as e:
            self.result = ("error", f"connect: {e}")
            self.done.set()
            return
        reader_err = []

        def reader():
            try:
                while True:
                    d = s.recv(256 << 10)
                    if not d:
                        return
                    hr.update(d)
                    self.received += len(d)
            except OSError as e:
                reader_err.append(f"recv: {type(e).__name__}: {e}")

        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        err = None
        t0 = time.monotonic()
        try:
            for c in zt.random_chunks(self.total, chunk):
                s.sendall(c)
                hs.update(c)
                self.sent += len(c)
                if self.rate:
                    ahead = self.sent / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err = f"send: {type(e).__name__}: {e}"
        rt.join(60)
        s.close()
        if err or reader_err:
            self.result = ("error", err or reader_err[0])
        elif self.received != self.total:
            self.result = ("error", f"EOF after {self.received} of {self.total} bytes")
        else:
            self.result = ("ok", self.received, hs.hexdigest() == hr.hexdigest())
        self.done.set()

    def wait(self, timeout=120):
        zt.check(self.done.wait(timeout), f"the transfer did not end within {timeout}s "
                 f"(sent {self.sent}, received {self.received})")
        return self.result


def check_all_sanitizers():
    """No ztm process of this test (running, stopped or killed) printed a
    sanitizer report."""
    with zt._procs_lock:
        procs = list(zt._procs)
    for p in procs:
        if isinstance(p, Daemon):
            p.check_sanitizer()
