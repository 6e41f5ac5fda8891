#!/usr/bin/env python3
"""Relay sessions through `ztm hub`, in parallel: PAIRS pairs of hub links
(tests/integration/agent's ztm-hublink-driver, one process each), alice_i
opens a session to bob_i and both send BYTES at once; the figure is the
bytes relayed (both ways, all pairs) over the wall time from the first open
to the last byte received, and the hub's CPU time per GiB relayed.

  bench/tools/hub_sessions.py [--pairs N] [--mib M] [--hub-args "--workers 2"] [--runs R]

Needs a Release build in build/ (or ZTM_BIN / ZTM_HUBLINK_DRIVER). Timing
only: it checks that every byte arrived (count and SHA-256) and fails
otherwise, but it is not a test."""
import argparse
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration", "agent"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration", "hub"))
os.environ.setdefault("ZTM_BIN", os.path.join(REPO, "build", "ztm"))
import hlcommon as hl  # noqa: E402
import hubcommon as hc  # noqa: E402
from hlcommon import zt  # noqa: E402


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(hub, creds, pairs, size):
    bobs = [hl.Driver([hub.addr], hub.mesh, creds[f"bob{i}"], "--accept", "--send", size,
                      "--seed", 2, "--log-level", "warn", name=f"bob{i}") for i in range(pairs)]
    for b in bobs:
        b.wait_line(rf"^state up hub={hub.addr}")
    cpu0 = cpu_seconds(hub.pid)
    t0 = time.monotonic()
    alices = [hl.Driver([hub.addr], hub.mesh, creds[f"alice{i}"], "--open", f"bob{i}", "--send",
                        size, "--seed", 1, "--log-level", "warn", name=f"alice{i}")
              for i in range(pairs)]
    for d in alices + bobs:
        _, m = d.wait_line(r"^relay eof received=(\d+)", timeout=600)
        zt.check(int(m.group(1)) == size, f"{d.name}: received {m.group(1)} of {size}")
    secs = time.monotonic() - t0
    cpu = cpu_seconds(hub.pid) - cpu0
    for d in alices + bobs:
        d.stop()
    total = 2 * pairs * size
    return total / secs / 1e6, cpu / (total / (1 << 30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--hub-args", default="")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    hub = hc.start("bench", "--log-level", "warn", *shlex.split(a.hub_args))
    creds = {}
    for i in range(a.pairs):
        for who in ("alice", "bob"):
            creds[f"{who}{i}"] = hl.agent_creds(hub, f"{who}{i}")
    rates, cpus = [], []
    for _ in range(a.runs):
        mbs, cpg = one_run(hub, creds, a.pairs, a.mib << 20)
        rates.append(mbs)
        cpus.append(cpg)
        print(f"run: {mbs:.0f} MB/s, hub CPU {cpg:.2f} s/GiB", flush=True)
    hub.stop()
    rates.sort()
    cpus.sort()
    print(f"hub {a.hub_args or '(defaults)'}: {a.pairs} pairs x {a.mib} MiB each way: "
          f"median {rates[len(rates) // 2]:.0f} MB/s (min {rates[0]:.0f}, max {rates[-1]:.0f}), "
          f"hub CPU {cpus[len(cpus) // 2]:.2f} s/GiB")


if __name__ == "__main__":
    zt.main(lambda: main() or "done", deadline=3600)
