"""ztmtest: a small harness for the integration tests (stdlib only).

A test is a plain script that ends with `ztmtest.main(run)`: `run()` does the
work and returns a one-line summary; a failure is an exception (use `fail()`
or `check()` for a clear message). On failure every process the test started
has its stderr/stdout printed, so the CI log says why.

What is here:
  Relay        start `ztm relay`, learn its port from event=relay.listen,
               collect and parse its log in a background thread, wait for
               events, stop it by PID and check the exit code
  spawn        start any other process (e.g. `python3 -m http.server`)
  TcpServer    a threaded target server on an ephemeral port
  start_async_server  the same for asyncio
  data helpers random byte streams with SHA-256, recv until EOF, expect EOF/RST
  rss_bytes    VmRSS of a PID from /proc/PID/status

Every process is started under `setpriv --pdeathsig KILL` (so it dies with
the test even if the test is killed) and is killed at exit if still running.
"""

import asyncio
import atexit
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

# ---- failures ---------------------------------------------------------------


class TestFailure(Exception):
    """A check failed; the message says what was expected and what was seen."""


def fail(msg):
    raise TestFailure(msg)


class TestSkipped(Exception):
    """The test cannot run here (a tool or a privilege is missing)."""


SKIP_RC = 77  # ctest: SKIP_RETURN_CODE 77


def skip(msg):
    """Ends the test as skipped (exit 77, "SKIP name: msg"): only for what
    the machine lacks, never for what the product does."""
    raise TestSkipped(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def log(msg):
    """Progress line on stdout (ctest shows it with --output-on-failure)."""
    print(f"[{time.monotonic() - _T0:7.3f}s] {msg}", flush=True)


_T0 = time.monotonic()

# ---- the binary -------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ztm_bin():
    """$ZTM_BIN (set by ctest), else the newest build*/ztm of the repo."""
    p = os.environ.get("ZTM_BIN")
    if p:
        check(os.access(p, os.X_OK), f"ZTM_BIN={p} is not an executable")
        return p
    cands = []
    for d in os.listdir(REPO):
        c = os.path.join(REPO, d, "ztm")
        if d.startswith("build") and os.access(c, os.X_OK):
            cands.append(c)
    check(cands, "no ztm binary: set ZTM_BIN or build into build*/")
    return max(cands, key=os.path.getmtime)


# ---- processes ----------------------------------------------------------------

_procs = []          # every Proc started, for cleanup and for the failure dump
_procs_lock = threading.Lock()
_SETPRIV = shutil.which("setpriv")


class Proc:
    """A child process whose stdout and stderr are collected line by line in
    background threads. Lines are kept (decoded) in .out and .err."""

    def __init__(self, argv, name=None, env=None, cwd=None):
        self.argv = list(argv)
        self.name = name or os.path.basename(self.argv[0])
        self.out = []
        self.err = []
        self.cond = threading.Condition()
        full = self.argv
        if _SETPRIV and threading.current_thread() is threading.main_thread():
            # setpriv exec's in place: the PID is the program's own PID. The
            # parent-death signal fires when the *thread* that forked exits,
            # so only the main thread can use it.
            full = [_SETPRIV, "--pdeathsig", "KILL", *self.argv]
        self.popen = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.pid = self.popen.pid
        self.started = time.monotonic()
        with _procs_lock:
            _procs.append(self)
        self._threads = [
            threading.Thread(target=self._reader, args=(self.popen.stdout, self.out, False),
                             daemon=True),
            threading.Thread(target=self._reader, args=(self.popen.stderr, self.err, True),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _reader(self, f, dest, is_err):
        for raw in iter(f.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                dest.append(line)
                if is_err:
                    self._on_err_line(line)
                self.cond.notify_all()
            if os.environ.get("ZTMTEST_VERBOSE"):
                print(f"  {self.name}[{self.pid}]: {line}", flush=True)
        f.close()
        with self.cond:
            self.cond.notify_all()

    def _on_err_line(self, line):
        pass

    def alive(self):
        return self.popen.poll() is None

    def wait_out(self, pattern, timeout=20):
        """Wait for a stdout line matching regex `pattern`; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            i = 0
            while True:
                while i < len(self.out):
                    m = rx.search(self.out[i])
                    if m:
                        return m
                    i += 1
                if not self.alive() and all(not t.is_alive() for t in self._threads):
                    fail(f"{self.name} exited (rc={self.popen.returncode}) before printing "
                         f"a line matching {pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(f"{self.name}: no stdout line matching {pattern!r} within {timeout}s")
                self.cond.wait(min(left, 0.2))

    def wait_exit(self, timeout):
        """Wait for exit; returns the exit code or None on timeout."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._threads:
            t.join(timeout=10)
        return rc

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self):
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def dump(self, max_lines=400):
        rc = self.popen.poll()
        state = "running" if rc is None else describe_rc(rc)
        print(f"----- {self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}")
        for label, lines in (("stderr", self.err), ("stdout", self.out)):
            with self.cond:
                lines = list(lines)
            if not lines:
                continue
            print(f"----- {self.name} {label} ({len(lines)} lines)")
            if len(lines) > max_lines:
                print(f"  ... {len(lines) - max_lines} earlier lines left out ...")
                lines = lines[-max_lines:]
            for line in lines:
                print("  " + line)
        sys.stdout.flush()


def describe_rc(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def spawn(argv, name=None, env=None, cwd=None):
    return Proc(argv, name=name, env=env, cwd=cwd)


def _cleanup():
    with _procs_lock:
        procs = list(_procs)
    for p in procs:
        p.kill()


atexit.register(_cleanup)

# ---- the relay ----------------------------------------------------------------

_LOGFMT = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')
_SANITIZER = re.compile(r"Sanitizer|runtime error:|LeakSanitizer|ThreadSanitizer")


def parse_log_line(line):
    """A logfmt (or JSON) log line as a dict of strings; None if not a log line."""
    line = line.strip()
    if line.startswith("{"):
        try:
            d = json.loads(line)
        except ValueError:
            return None
        return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in d.items()} \
            if isinstance(d, dict) else None
    d = {}
    for m in _LOGFMT.finditer(line):
        k, v = m.group(1), m.group(2)
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = re.sub(r"\\(.)", lambda mm: {"n": "\n", "t": "\t"}.get(mm.group(1), mm.group(1)),
                       v[1:-1])
        d[k] = v
    return d if "event" in d else None


def split_hostport(addr):
    """'127.0.0.1:80' or '[::1]:80' -> (host, port)."""
    m = re.fullmatch(r"\[(.*)\]:(\d+)|([^:]*):(\d+)", addr)
    check(m, f"cannot parse address {addr!r}")
    if m.group(1) is not None:
        return m.group(1), int(m.group(2))
    return m.group(3), int(m.group(4))


def _fields_str(event, fields):
    return " ".join([f"event={event}"] + [f"{k}={v}" for k, v in fields.items()])


class Relay(Proc):
    """`ztm relay --listen LISTEN --to TO ARGS...`, started and waited for.

    .port / .addr: the real listening address (from event=relay.listen)
    .events: parsed log lines (dicts) in order
    """

    def __init__(self, to, *args, listen="127.0.0.1:0", wait=True, start_timeout=30):
        if isinstance(to, int):
            to = f"127.0.0.1:{to}"
        self.events = []
        super().__init__([ztm_bin(), "relay", "--listen", listen, "--to", to,
                          *[str(a) for a in args]], name="ztm-relay")
        self.addr = None
        self.port = None
        if wait:
            ev = self.wait_for_log("relay.listen", timeout=start_timeout)
            check("addr" in ev, f"relay.listen has no addr=: {ev}")
            self.addr = ev["addr"]
            self.host, self.port = split_hostport(self.addr)
            check(self.port > 0, f"relay.listen addr has port 0: {ev}")
            log(f"relay pid {self.pid} listening on {self.addr} -> {to}")

    def _on_err_line(self, line):
        ev = parse_log_line(line)
        if ev is not None:
            self.events.append(ev)

    @staticmethod
    def _match(ev, event, fields):
        if ev.get("event") != event:
            return False
        return all(ev.get(k) == str(v) for k, v in fields.items())

    def logs(self, event, **fields):
        """Every log line so far with this event and these field values."""
        with self.cond:
            return [e for e in self.events if self._match(e, event, fields)]

    def wait_for_log(self, event, timeout=20, count=1, **fields):
        """Wait until `count` lines with this event and field values were
        logged; returns the first (count=1) or the list. Fails on timeout or if
        the relay exits first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.events if self._match(e, event, fields)]
                if len(found) >= count:
                    return found[0] if count == 1 else found[:count]
                stderr_done = all(not t.is_alive() for t in self._threads)
                if stderr_done:
                    fail(f"relay exited ({describe_rc(self.popen.poll())}) without logging "
                         f"{_fields_str(event, fields)} (x{count}; saw {len(found)})")
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(f"relay did not log {_fields_str(event, fields)} (x{count}) within "
                         f"{timeout}s (saw {len(found)})")
                self.cond.wait(min(left, 0.2))

    def close_for(self, sock_or_port, timeout=20, **fields):
        """The conn.close line of the connection whose client end is this
        socket (or local port); waits for it."""
        port = sock_or_port if isinstance(sock_or_port, int) else sock_or_port.getsockname()[1]
        return self.wait_for_log("conn.close", timeout=timeout, client=f"127.0.0.1:{port}",
                                 **fields)

    def closes_for(self, ports, timeout=30):
        """The conn.close lines of these client ports (a list of local ports
        of client sockets), in the same order. Waits until at least that many
        conn.close lines exist, then fails, naming the missing and the
        repeated client= values, if they do not map one to one."""
        self.wait_for_log("conn.close", timeout=timeout, count=len(ports))
        closes = self.logs("conn.close")
        by_client = {}
        for c in closes:
            by_client.setdefault(c.get("client"), []).append(c)
        want = [f"127.0.0.1:{p}" for p in ports]
        missing = [w for w in want if w not in by_client]
        repeated = {k: len(v) for k, v in by_client.items() if len(v) > 1}
        if missing or repeated:
            top = sorted(repeated.items(), key=lambda kv: -kv[1])[:5]
            fail(f"conn.close client= does not name the clients: {len(closes)} conn.close lines, "
                 f"{len(by_client)} distinct client= values for {len(ports)} client sockets; "
                 f"{len(missing)} client addresses never logged (e.g. {missing[:3]}); "
                 f"repeated: {', '.join(f'{k} x{n}' for k, n in top) or 'none'}")
        return [by_client[w][0] for w in want]

    def sanitizer_lines(self):
        with self.cond:
            return [l for l in self.err if _SANITIZER.search(l)]

    def stop(self, sig=signal.SIGTERM, timeout=60, expect_rc=0):
        """Signal by PID, wait for the exit, check the exit code and that no
        sanitizer report was printed. Returns the exit code."""
        if self.alive():
            os.kill(self.pid, sig)
        return self.wait_stopped(timeout, expect_rc, f"after {signal.Signals(sig).name}")

    def wait_stopped(self, timeout=60, expect_rc=0, why="(signalled earlier)"):
        """Wait for the exit without signalling (a second SIGTERM would stop
        it at once); check the exit code and for sanitizer reports."""
        rc = self.wait_exit(timeout)
        if rc is None:
            fail(f"relay (pid {self.pid}) did not exit within {timeout}s {why}")
        san = self.sanitizer_lines()
        if san:
            fail(f"relay printed a sanitizer report: {san[0]}")
        if expect_rc is not None:
            check(rc == expect_rc, f"relay {describe_rc(rc)} {why}, expected exit {expect_rc}")
        return rc


def run_ztm(args, timeout=5):
    """Run `ztm ARGS` to completion. Returns (rc, stdout, stderr, seconds);
    rc is None if it did not exit within `timeout` (it is killed then)."""
    p = Proc([ztm_bin(), *args], name="ztm " + " ".join(args))
    t0 = time.monotonic()
    rc = p.wait_exit(timeout)
    took = time.monotonic() - t0
    if rc is None:
        p.kill()
        p.wait_exit(5)
    with p.cond:
        return rc, list(p.out), list(p.err), took


# ---- target servers -----------------------------------------------------------


def reserve_port():
    """A socket bound to 127.0.0.1:<ephemeral>, not listening: connecting to
    it is refused, and nobody else can take the port. listen() on it later."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


class TcpServer:
    """A threaded TCP server on 127.0.0.1:<ephemeral>: each accepted
    connection runs handler(conn) in its own thread (conn has a 60 s timeout
    unless the handler changes it). Exceptions in handlers are collected;
    check() raises them."""

    def __init__(self, handler, sock=None, backlog=1024, name="target"):
        self.handler = handler
        self.name = name
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        sock.settimeout(0.2)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.accepted = 0
        self.errors = []
        self.conns = []
        self._lock = threading.Lock()
        self._closing = False
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self):
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closing:
                    return
                raise
            conn.settimeout(60)
            with self._lock:
                self.accepted += 1
                self.conns.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn):
        try:
            self.handler(conn)
        except Exception:
            with self._lock:
                self.errors.append(traceback.format_exc())
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def join(self, timeout=60):
        """Wait for every handler started so far to return."""
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0, deadline - time.monotonic()))
            check(not t.is_alive(), f"{self.name}: a handler is still running after {timeout}s")

    def check(self):
        with self._lock:
            if self.errors:
                fail(f"{self.name} handler failed:\n" + "\n".join(self.errors))

    def close(self):
        self._closing = True
        self._acceptor.join(5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def listen_socket(backlog=1024):
    """A listening socket on 127.0.0.1:<ephemeral>; returns (sock, port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    return s, s.getsockname()[1]


async def start_async_server(handler, sock=None, backlog=1024):
    """asyncio.start_server on 127.0.0.1:<ephemeral> (or on `sock`, from
    listen_socket(), so the port is known before the loop runs); returns
    (server, port)."""
    if sock is None:
        sock, _ = listen_socket(backlog)
    server = await asyncio.start_server(handler, sock=sock, backlog=backlog)
    return server, server.sockets[0].getsockname()[1]


def echo_handler(conn):
    """Echo until EOF, then close."""
    while True:
        d = conn.recv(65536)
        if not d:
            return
        conn.sendall(d)


# ---- data ---------------------------------------------------------------------

_POOL = None
_POOL_SIZE = 8 << 20


def _pool():
    global _POOL
    if _POOL is None:
        _POOL = memoryview(os.urandom(_POOL_SIZE))
    return _POOL


def random_chunks(total, chunk=256 << 10, seed=None):
    """`total` random-looking bytes as memoryview chunks, cheap to make:
    slices of an 8 MiB os.urandom pool at random (unaligned) offsets, so the
    stream never repeats in a way a relay bug could hide in."""
    pool = _pool()
    rng = random.Random(seed if seed is not None else os.urandom(16))
    left = total
    while left > 0:
        n = min(chunk, left)
        off = rng.randrange(0, _POOL_SIZE - n)
        yield pool[off:off + n]
        left -= n


def send_random(sock, total, chunk=256 << 10):
    """sendall() `total` random bytes; returns their SHA-256 hex digest."""
    h = hashlib.sha256()
    for c in random_chunks(total, chunk):
        sock.sendall(c)
        h.update(c)
    return h.hexdigest()


def recv_until_eof(sock, keep=False, limit=None):
    """Read until EOF. Returns (nbytes, sha256 hex, data-or-None)."""
    h = hashlib.sha256()
    n = 0
    parts = [] if keep else None
    while True:
        d = sock.recv(256 << 10)
        if not d:
            break
        h.update(d)
        n += len(d)
        if keep:
            parts.append(d)
        if limit is not None and n > limit:
            fail(f"received more than {limit} bytes")
    return n, h.hexdigest(), (b"".join(parts) if keep else None)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(n - len(buf))
        if not d:
            fail(f"EOF after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def connect(port, timeout=30):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def set_rst_on_close(sock):
    """SO_LINGER {1, 0}: close() sends an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def expect_eof(sock, timeout=10, what="connection"):
    """The peer closes cleanly (EOF) with no data within `timeout`."""
    sock.settimeout(timeout)
    try:
        d = sock.recv(65536)
    except socket.timeout:
        fail(f"{what}: not closed within {timeout}s (expected EOF)")
    except ConnectionResetError:
        fail(f"{what}: got a reset (ECONNRESET), expected a clean EOF")
    check(d == b"", f"{what}: got {len(d)} bytes, expected EOF with no data")


def expect_reset(sock, timeout=10, what="connection"):
    """The next recv fails with ECONNRESET (not a clean EOF) within `timeout`.
    Data that arrives before the reset is drained and ignored."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            d = sock.recv(65536)
        except socket.timeout:
            fail(f"{what}: no reset within {timeout}s")
        except ConnectionResetError:
            return
        if d == b"":
            fail(f"{what}: got a clean EOF, expected a reset (ECONNRESET)")
        if time.monotonic() > deadline:
            fail(f"{what}: still receiving data after {timeout}s, expected a reset")


# ---- process facts ------------------------------------------------------------


def rss_bytes(pid):
    """VmRSS of a PID, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                parts = line.split()
                check(parts[2] == "kB", f"unexpected VmRSS unit: {line!r}")
                return int(parts[1]) * 1024
    fail(f"no VmRSS in /proc/{pid}/status")


def wait_until(cond, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


MiB = 1 << 20
GiB = 1 << 30

# ---- running a test -------------------------------------------------------------


def _dump_all():
    time.sleep(0.5)  # let the last log lines of still-running processes arrive
    with _procs_lock:
        procs = list(_procs)
    for p in procs:
        p.dump()


def main(run, deadline=100):
    """Run a test: `run()` returns a one-line summary. Exit 0 on success,
    77 after skip() (register the test with SKIP_RETURN_CODE 77); on
    failure (or after `deadline` seconds, which is below the ctest TIMEOUT)
    print why plus the output of every process started, and exit 1."""
    sys.dont_write_bytecode = True
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]

    def watchdog():
        print(f"FAIL {name}: the test did not finish within {deadline}s", flush=True)
        traceback.print_stack(sys._current_frames().get(threading.main_thread().ident))
        _dump_all()
        _cleanup()
        os._exit(1)

    wd = threading.Timer(deadline, watchdog)
    wd.daemon = True
    wd.start()
    # ctest's timeout or a ^C: die through atexit so children are killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        summary = run()
    except TestSkipped as e:
        wd.cancel()
        _cleanup()
        print(f"SKIP {name}: {e}", flush=True)
        sys.exit(SKIP_RC)
    except TestFailure as e:
        wd.cancel()
        print(f"FAIL {name}: {e}", flush=True)
        _dump_all()
        _cleanup()
        sys.exit(1)
    except BaseException as e:  # noqa: B902 — report anything, including SystemExit from SIGTERM
        wd.cancel()
        traceback.print_exc()
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        _dump_all()
        _cleanup()
        sys.exit(1)
    wd.cancel()
    _cleanup()
    print(f"PASS {name}: {summary}", flush=True)
    sys.exit(0)
