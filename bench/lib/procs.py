"""Processes the harness starts: servers that must be ready before a test and
clients whose output is the measurement.

Every process gets its own session (so a Ctrl-C on the terminal reaches the
harness only, and the harness stops things in order) and is tracked by a
Supervisor until it is stopped; stop_all() runs on every exit path. Only
process groups this module created are ever signalled.

Readiness never connects to a server (an `iperf3 -s -1` would take a probe for
its one test): a server is ready when it printed its ready line, or when a
socket owned by its process is in LISTEN state on the expected port
(/proc/PID/fd against /proc/net/tcp*)."""

import os
import re
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(Exception):
    """A server did not become ready; the message says why (exit code and the
    last lines it printed, or a timeout)."""


_handed_out = set()


def free_port(host="127.0.0.1"):
    """An ephemeral port that is free right now (bind to port 0, close).

    Another process may take it before ours binds it; callers retry on
    StartError. A port is never handed out twice in one harness run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free ephemeral port found")


def _socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def listeners(pid):
    """{port: number of listening sockets} that process PID itself holds
    (a server with one SO_REUSEPORT listener per thread holds several)."""
    inodes = _socket_inodes(pid)
    ports = {}
    if not inodes:
        return ports
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:
                        port = int(fields[1].rsplit(":", 1)[1], 16)
                        ports[port] = ports.get(port, 0) + 1
        except OSError:
            continue
    return ports


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def cpu_seconds(pid):
    """CPU time (user + system) of process PID, its reaped children and its
    live descendants, in seconds; None once it is gone. Clock-tick resolution
    (10 ms), enough over a measurement of a second or more."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are 14..17.
    total = sum(int(x) for x in fields[11:15]) / CLK_TCK
    for kid in _children(pid):
        total += cpu_seconds(kid) or 0.0
    return total


class Proc:
    """A started process: its argv, its output files and its Popen."""

    def __init__(self, name, argv, popen, out_path, err_path):
        self.name = name
        self.argv = argv
        self.popen = popen
        self.out_path = out_path
        self.err_path = err_path
        self.match = None  # the ready line's match, when one was asked for

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        """Running (not exited); never reaps, see Supervisor.stop."""
        return self.popen.returncode is None and not _exited(self.popen.pid)

    def stderr_text(self):
        return _read(self.err_path)

    def stdout_text(self):
        return _read(self.out_path)

    def tail(self, lines=3):
        """What the process printed last (stderr, else stdout), on one line;
        lines that look like errors are preferred over notices."""
        text = self.stderr_text().strip() or self.stdout_text().strip()
        if not text:
            return "(no output)"
        all_lines = text.splitlines()
        errors = [l for l in all_lines if re.search(r"error|alert|fatal|fail", l, re.I)]
        return " | ".join((errors or all_lines)[-lines:])

    def cpu_seconds(self):
        return cpu_seconds(self.pid) if self.alive() else None


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Supervisor:
    """Starts, tracks and stops processes; logs go to files in LOG_DIR."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.live = []
        self.seq = 0

    def _spawn(self, name, argv):
        self.seq += 1
        base = os.path.join(self.log_dir, f"{self.seq:04d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}")
        out = open(base + ".out", "wb")
        err = open(base + ".err", "wb")
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     start_new_session=True, close_fds=True)
        except OSError as e:
            raise StartError(f"cannot run {argv[0]}: {e.strerror}") from None
        finally:
            out.close()
            err.close()
        proc = Proc(name, argv, popen, base + ".out", base + ".err")
        self.live.append(proc)
        return proc

    def start(self, name, argv, port=None, ready_line=None, listeners_wanted=1, timeout=10.0):
        """Starts a server and waits until it is ready: it printed READY_LINE
        (a regex, searched in its stderr), or it holds LISTENERS_WANTED
        listening sockets on PORT (fewer for over a second also counts: a
        server may share one listener among its threads). Raises StartError
        (after stopping it) if it exits or times out."""
        proc = self._spawn(name, argv)
        t0 = time.monotonic()
        pattern = re.compile(ready_line) if ready_line else None
        while True:
            if pattern:
                m = pattern.search(proc.stderr_text())
                if m:
                    proc.match = m
                    return proc
            if port is not None:
                n = listeners(proc.pid).get(port, 0)
                if n >= listeners_wanted or (n and time.monotonic() - t0 > 1.0):
                    return proc
            if _exited(proc.pid):
                self.stop(proc)
                code = proc.popen.returncode
                raise StartError(f"exited with code {code}: {proc.tail()}")
            if time.monotonic() - t0 > timeout:
                tail = proc.tail()
                self.stop(proc)
                raise StartError(f"not ready after {timeout:g} s (no listener on port {port}"
                                 + (", no ready line" if pattern else "") + f"); it printed: {tail}")
            time.sleep(0.02)

    def run(self, name, argv, timeout):
        """Runs a client to its end. Returns (exit code, stdout, stderr);
        exit code None if it was killed at the TIMEOUT (seconds)."""
        try:
            proc = self._spawn(name, argv)
        except StartError as e:
            return 127, "", str(e)
        deadline = time.monotonic() + timeout
        while not _exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        timed_out = not _exited(proc.pid)
        self.stop(proc)
        code = None if timed_out else proc.popen.returncode
        return code, proc.stdout_text(), proc.stderr_text()

    def stop(self, proc, grace=3.0):
        """SIGTERM to the process group, SIGKILL after GRACE seconds. The
        leader is reaped only after the group got its SIGKILL, so the group id
        cannot have been reused by then (children that outlive the leader,
        like socat's forks, are in the group too)."""
        if proc in self.live:
            self.live.remove(proc)
        pid = proc.popen.pid
        if proc.popen.returncode is not None:
            return  # reaped already: nothing of the group is left to signal safely
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not _exited(pid):
            time.sleep(0.01)
        _signal_group(pid, signal.SIGKILL)
        proc.popen.wait()

    def stop_all(self):
        for proc in reversed(list(self.live)):
            try:
                self.stop(proc, grace=1.0)
            except Exception:  # keep stopping the others
                pass


def _exited(pid):
    """True once PID is a zombie; does not reap it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
