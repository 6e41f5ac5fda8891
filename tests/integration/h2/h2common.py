"""Shared pieces of the HTTP/2 + TLS integration tests: start `ztm h2-test
server|client` and read its log; the body pattern (byte i is i % 251)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ztmtest as zt  # noqa: E402

CERTS = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ZTM_TEST_CERTS", "")


def cert(name):
    return os.path.join(CERTS, name)


def pattern(n, off=0):
    period = bytes(i % 251 for i in range(251))
    reps = (off % 251 + n) // 251 + 2
    buf = period * reps
    start = off % 251
    return buf[start:start + n]


def tls_args(prefix="server", ca="ca.pem"):
    return ["--cert", cert(f"{prefix}.pem"), "--key", cert(f"{prefix}.key"), "--ca", cert(ca)]


class Server(zt.Proc):
    """`ztm h2-test server ARGS`, waited for; .port is the real port."""

    def __init__(self, *args, workers=2):
        self.events = []
        super().__init__([zt.ztm_bin(), "h2-test", "server", "--listen", "127.0.0.1:0",
                          "--workers", str(workers), *args], name="ztm-h2-server")
        ev = self.wait_for_log("h2test.listen", timeout=30)
        self.host, self.port = zt.split_hostport(ev["addr"])
        zt.log(f"h2-test server pid {self.pid} on {ev['addr']}")

    def _on_err_line(self, line):
        ev = zt.parse_log_line(line)
        if ev is not None:
            self.events.append(ev)

    def logs(self, event, **fields):
        with self.cond:
            return [e for e in self.events if e.get("event") == event
                    and all(e.get(k) == str(v) for k, v in fields.items())]

    def stop(self, timeout=60):
        """SIGTERM by PID; the server must drain and exit 0."""
        import signal
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        rc = self.wait_exit(timeout)
        zt.check(rc == 0, f"{self.name} exit code {rc} after SIGTERM, expected 0")

    def wait_for_log(self, event, timeout=30, **fields):
        import time
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e.get("event") == event and all(e.get(k) == str(v) for k, v in fields.items()):
                        return e
                left = end - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._threads[1].is_alive()):
                    zt.fail(f"{self.name}: no event={event} {fields} within {timeout}s")
                self.cond.wait(min(left, 0.2))


def client(port, *args, timeout=120):
    """Runs `ztm h2-test client --connect 127.0.0.1:PORT ARGS`; returns
    (rc, result line fields, stderr text)."""
    p = zt.Proc([zt.ztm_bin(), "h2-test", "client", "--connect", f"127.0.0.1:{port}",
                 "--log-level", "warn", *args], name="ztm-h2-client")
    rc = p.wait_exit(timeout)
    zt.check(rc is not None, f"the client did not finish within {timeout}s")
    res = {}
    for line in p.out:
        parts = line.split()
        if parts and parts[0] in ("ok", "FAIL"):
            res = dict(kv.split("=", 1) for kv in parts[1:] if "=" in kv)
            res["result"] = parts[0]
    return rc, res, "\n".join(p.err)
