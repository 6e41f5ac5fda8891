#!/usr/bin/env python3
"""relay.backpressure: the relay does not buffer a stream its reader does
not read. The target accepts but does not read; the client pushes with a
non-blocking socket (up to 1 GiB, for at most 30 s) until no byte has been
accepted for 3 s ("stuck"). Checks: it gets stuck, far below 1 GiB (below
what the kernel socket buffers on the path can hold, from the tcp_rmem /
tcp_wmem maxima, capped at 256 MiB); the relay's VmRSS stays under 64 MiB
while stuck (printed). Then the target starts reading, the client sends the
rest of exactly 1 GiB, and every byte arrives (count and SHA-256 exact);
logged conn.close reason=done up=1 GiB down=0."""
import hashlib
import os
import select
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

TOTAL = 1 * zt.GiB
PUSH_FOR = 30.0         # seconds at most for the push phase
STALL = 3.0             # no byte accepted for this long = stuck
RSS_LIMIT = 64 * zt.MiB
BUFFER_SIZE = 65536     # the relay's default --buffer-size


def sysctl_max(name):
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


def run():
    # What the kernel alone may hold on client -> relay -> target: each
    # socket's send and receive buffer at their autotuning maxima, plus the
    # relay's own 4 x buffer-size per direction, plus slack.
    kernel = 2 * (sysctl_max("tcp_rmem") + sysctl_max("tcp_wmem"))
    bound = min(kernel + 8 * BUFFER_SIZE + 16 * zt.MiB, 256 * zt.MiB)

    go = threading.Event()
    got = {}

    def lazy_reader(conn):
        zt.check(go.wait(120), "target: never told to read")
        conn.settimeout(60)
        n, sha, _ = zt.recv_until_eof(conn)
        got["n"], got["sha"] = n, sha

    target = zt.TcpServer(lazy_reader)
    relay = zt.Relay(target.port)
    rss0 = zt.rss_bytes(relay.pid)

    c = zt.connect(relay.port)
    port = c.getsockname()[1]
    c.setblocking(False)
    h = hashlib.sha256()
    chunks = zt.random_chunks(TOTAL, 1 * zt.MiB)
    pending = memoryview(b"")
    pushed = 0
    t0 = last = time.monotonic()
    stuck = False
    while pushed < TOTAL:
        now = time.monotonic()
        if now - t0 > PUSH_FOR:
            break
        if not pending:
            pending = next(chunks)
        try:
            n = c.send(pending)
        except BlockingIOError:
            n = 0
        if n:
            h.update(pending[:n])
            pending = pending[n:]
            pushed += n
            last = now
            continue
        if now - last >= STALL:
            stuck = True
            break
        select.select([], [c], [], 0.1)
    zt.check(stuck, f"the writer never got stuck: pushed {pushed / zt.MiB:.1f} MiB in "
                    f"{time.monotonic() - t0:.1f}s to a target that does not read")
    zt.log(f"writer stuck after {pushed / zt.MiB:.1f} MiB (bound {bound / zt.MiB:.1f} MiB)")
    zt.check(pushed < bound, f"the relay took {pushed / zt.MiB:.1f} MiB before the writer "
                             f"stuck; the kernel buffers on the path hold at most "
                             f"{bound / zt.MiB:.1f} MiB, so the relay buffered the rest")
    stuck_at = pushed
    rss = 0
    for _ in range(5):  # over a second, the highest
        rss = max(rss, zt.rss_bytes(relay.pid))
        time.sleep(0.2)
    print(f"relay VmRSS while stuck: {rss / zt.MiB:.1f} MiB (at start {rss0 / zt.MiB:.1f} MiB, "
          f"limit {RSS_LIMIT / zt.MiB:.0f} MiB)", flush=True)
    zt.check(rss < RSS_LIMIT, f"relay VmRSS {rss / zt.MiB:.1f} MiB while stuck, limit "
                              f"{RSS_LIMIT / zt.MiB:.0f} MiB")
    zt.check(relay.logs("conn.close", client=f"127.0.0.1:{port}") == [],
             "the relay closed the stuck connection")

    # The reader reads now: everything pushed, and the rest, arrives.
    go.set()
    c.setblocking(True)
    c.settimeout(60)
    t1 = time.monotonic()
    while True:
        if pending:
            c.sendall(pending)
            h.update(pending)
            pushed += len(pending)
        try:
            pending = next(chunks)
        except StopIteration:
            break
    zt.check(pushed == TOTAL, f"internal: pushed {pushed} != {TOTAL}")
    c.shutdown(socket.SHUT_WR)
    zt.expect_eof(c, timeout=60, what="client after sending everything")
    c.close()
    target.join()
    target.check()
    zt.log(f"rest sent and received in {time.monotonic() - t1:.1f}s")
    zt.check(got.get("n") == TOTAL, f"target received {got.get('n')} bytes, client sent {TOTAL}")
    zt.check(got.get("sha") == h.hexdigest(), "target received different bytes (SHA-256 differs)")
    cl = relay.close_for(port)
    zt.check((cl.get("reason"), cl.get("up"), cl.get("down")) == ("done", str(TOTAL), "0"),
             f"conn.close {cl}; expected reason=done up={TOTAL} down=0")
    relay.stop()
    target.close()
    return (f"writer stuck at {stuck_at / zt.MiB:.1f} MiB (bound {bound / zt.MiB:.0f} MiB), "
            f"relay VmRSS {rss / zt.MiB:.1f} MiB < 64 MiB while stuck; then 1 GiB delivered "
            f"with exact SHA-256")


zt.main(run)
