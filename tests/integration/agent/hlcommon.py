"""Shared pieces of the hub link tests (hublink.*).

  Driver       ztm-hublink-driver (tests/integration/agent/hublink_driver.c):
               one hub link on an engine; its stdout lines are the link's
               events ("state up hub=...", "reply ...", "relay ..."), its
               stderr the log (parsed like every ztm log)
  agent_creds  invite + `ztm join` against a controller: (cert, key, ca)
               paths of the joined endpoint
  pattern      the bytes a driver sends with --seed S
"""
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "controlplane"))
import cpcommon as cp  # noqa: E402
from cpcommon import zt  # noqa: E402


def driver_bin():
    p = os.environ.get("ZTM_HUBLINK_DRIVER")
    if not p:
        p = os.path.join(os.path.dirname(zt.ztm_bin()), "ztm-hublink-driver")
    zt.check(os.access(p, os.X_OK), f"no driver at {p}: build ztm-hublink-driver")
    return p


def run_cli(args, env, timeout=60):
    return subprocess.run([zt.ztm_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def agent_creds(ctl, name):
    """Invites NAME and joins it with `ztm join`: (cert, key, ca) paths."""
    env = dict(os.environ, ZTM_CONFIG_DIR=ctl.config_dir)
    r = run_cli(["invite", name], env)
    zt.check(r.returncode == 0, f"ztm invite {name}: rc {r.returncode} {r.stderr}")
    tok = r.stdout.strip()
    state = cp.subdir(f"agent-{name}")
    r = run_cli(["join", tok, "--state", state], env)
    zt.check(r.returncode == 0, f"ztm join {name}: rc {r.returncode} {r.stderr}")
    d = os.path.join(state, "meshes", ctl.mesh)
    return tuple(os.path.join(d, f) for f in ("cert.pem", "key.pem", "ca.pem"))


class Driver(zt.Proc):
    """ztm-hublink-driver --hub ... with CREDS (cert, key, ca) and ARGS."""

    def __init__(self, hubs, mesh, creds, *args, name="driver"):
        self.events = []
        argv = [driver_bin()]
        for h in hubs:
            argv += ["--hub", h]
        cert, key, ca = creds
        argv += ["--mesh", mesh, "--cert", cert, "--key", key, "--ca", ca,
                 *[str(a) for a in args]]
        super().__init__(argv, name=name)

    def _on_err_line(self, line):
        ev = zt.parse_log_line(line)
        if ev is not None:
            self.events.append(ev)

    def logs(self, event):
        with self.cond:
            return [e for e in self.events if e.get("event") == event]

    def lines(self, prefix):
        with self.cond:
            return [ln for ln in self.out if ln.startswith(prefix)]

    def wait_line(self, pattern, timeout=20, after=0):
        """The first stdout line at index >= AFTER matching regex PATTERN:
        (index, match)."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        with self.cond:
            i = after
            while True:
                while i < len(self.out):
                    m = rx.search(self.out[i])
                    if m:
                        return i, m
                    i += 1
                if not self.alive() and all(not t.is_alive() for t in self._threads):
                    zt.fail(f"{self.name} exited ({zt.describe_rc(self.popen.poll())}) before "
                            f"a line matching {pattern!r}; last lines: {self.out[-5:]}")
                left = end - time.monotonic()
                if left <= 0:
                    zt.fail(f"{self.name}: no line matching {pattern!r} within {timeout}s; "
                            f"last lines: {self.out[-8:]}")
                self.cond.wait(min(left, 0.2))

    def stop(self, timeout=30):
        """SIGTERM: the driver stops its link and exits 0; no sanitizer report."""
        self.signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        zt.check(rc == 0, f"{self.name}: {zt.describe_rc(rc)} after SIGTERM, expected exit 0; "
                 f"stderr tail: {self.err[-10:]}")
        bad = [ln for ln in self.err if re.search(r"Sanitizer|runtime error:", ln)]
        zt.check(not bad, f"{self.name}: sanitizer report: {bad[:5]}")
        zt.check(self.out and self.out[-1] == "exited", f"{self.name}: last line {self.out[-1:]}")


def pattern(n, seed):
    return bytes(((i % 251) ^ ((i >> 16) & 255) ^ seed) & 255 for i in range(n))


def sha256_pattern(n, seed):
    return hashlib.sha256(pattern(n, seed)).hexdigest()
