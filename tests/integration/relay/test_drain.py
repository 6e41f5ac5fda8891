#!/usr/bin/env python3
"""relay.drain: SIGTERM drains.
  A: 4 clients each send 50 MiB to a target that reads 2 MiB, waits until
     the SIGTERM was sent, then reads the rest at ~25 MiB/s (about 2 s) and,
     at EOF, answers with the SHA-256 it computed. With all 4 in flight,
     SIGTERM: the relay logs relay.drain live=4; a new
     connection is refused (connect fails, or it is closed at once) and never
     reaches the target; the 4 transfers complete with exact SHA-256 both
     ways; 4 x conn.close reason=done up=50 MiB; relay.stop forced=0; exit 0.
  B: --drain-timeout 0.5 and a connection that never ends (a byte each way
     every 50 ms): after SIGTERM it is cut (the client sees EOF or a reset),
     the relay exits 0 within 10 s, conn.close reason=drain, relay.stop
     forced=1."""
import hashlib
import os
import select
import signal
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

N = 4
SIZE = 50 * zt.MiB
RATE = 25 * zt.MiB  # bytes/s each target connection reads at most after SIGTERM
HOLD = 2 * zt.MiB   # each target connection reads this much, then waits for SIGTERM


def scenario_a():
    lock = threading.Lock()
    progress = {}   # target conn index -> bytes read so far
    finished = {}   # target conn index -> (bytes, sha)
    go = threading.Event()

    def slow_sink(conn):
        with lock:
            idx = len(progress)
            progress[idx] = 0
        h = hashlib.sha256()
        n = 0
        t0 = None
        while True:
            if t0 is None and n >= HOLD:
                zt.check(go.wait(60), "target: SIGTERM never sent")
                t0, n0 = time.monotonic(), n
            d = conn.recv(256 << 10)
            if not d:
                break
            h.update(d)
            n += len(d)
            with lock:
                progress[idx] = n
            if t0 is not None:
                ahead = (n - n0) / RATE - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        with lock:
            finished[idx] = (n, h.hexdigest())
        conn.sendall(h.hexdigest().encode())
        conn.shutdown(socket.SHUT_WR)

    target = zt.TcpServer(slow_sink, name="slow target")
    relay = zt.Relay(target.port)

    results = {}
    errors = []

    def client(i):
        try:
            c = zt.connect(relay.port, timeout=60)
            port = c.getsockname()[1]
            sha = zt.send_random(c, SIZE)
            c.shutdown(socket.SHUT_WR)
            n, _, reply = zt.recv_until_eof(c, keep=True)
            c.close()
            results[i] = (port, sha, reply)
        except Exception as e:
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(N)]
    for t in threads:
        t.start()

    def all_under_way():
        with lock:
            return len(progress) == N and all(v >= HOLD for v in progress.values())
    zt.wait_until(all_under_way, 60, f"{N} transfers to be under way")
    with lock:
        zt.check(not finished, f"a transfer finished before SIGTERM ({len(finished)}); "
                               f"the test needs them in flight")
        snapshot = dict(progress)
    zt.log("in flight at SIGTERM: " + ", ".join(f"{v / zt.MiB:.1f}" for v in snapshot.values())
           + " MiB")
    os.kill(relay.pid, signal.SIGTERM)
    dr = relay.wait_for_log("relay.drain")
    zt.check(dr.get("live") == str(N), f"relay.drain {dr}; expected live={N}")

    # New connections are refused now (or closed at once), never relayed.
    try:
        p = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    except (ConnectionRefusedError, ConnectionResetError) as e:
        how = f"refused ({e.strerror})"
    else:
        p.settimeout(10)
        try:
            d = p.recv(1)
            zt.check(d == b"", f"a connection made during the drain received {d!r}")
            how = "accepted then closed (EOF)"
        except ConnectionResetError:
            how = "accepted then reset"
        except TimeoutError:
            zt.fail(f"a connection made after relay.drain was logged was accepted and kept open "
                    f"for 10s (it {'reached' if target.accepted > N else 'never reached'} the "
                    f"target; "
                    f"target accepted {target.accepted} of {N} expected)")
        p.close()
    zt.check(target.accepted == N, f"a connection made during the drain reached the target "
                                   f"(target accepted {target.accepted})")
    zt.log(f"new connection during the drain: {how}")
    go.set()

    for t in threads:
        t.join(90)
    zt.check(not errors, "; ".join(errors))
    zt.check(len(results) == N, f"only {len(results)} of {N} transfers completed")
    target.join()
    target.check()
    sent = sorted(sha for _, sha, _ in results.values())
    got = sorted(sha for _, sha in finished.values())
    zt.check(all(n == SIZE for n, _ in finished.values()),
             f"target byte counts {[n for n, _ in finished.values()]}, expected {SIZE} each")
    zt.check(sent == got, "the target received different bytes than the clients sent")
    for port, sha, reply in results.values():
        zt.check(reply == sha.encode(), f"client {port}: the target's reply {reply[:70]!r} "
                                        f"does not match its own SHA-256")
    relay.wait_stopped(timeout=60, why="after SIGTERM with the transfers done")
    closes = relay.logs("conn.close")
    zt.check(len(closes) == N, f"{len(closes)} conn.close lines, expected {N}")
    for cl in closes:
        zt.check((cl.get("reason"), cl.get("up"), cl.get("down")) == ("done", str(SIZE), "64"),
                 f"conn.close {cl}; expected reason=done up={SIZE} down=64")
    relay.closes_for([port for port, _, _ in results.values()])  # client= names each client
    st = relay.logs("relay.stop")
    zt.check(st, "no event=relay.stop logged")
    zt.check(st[0].get("forced") == "0", f"relay.stop {st[0]}; expected forced=0")
    target.close()
    zt.log(f"A: {N} x 50 MiB in flight at SIGTERM all completed exactly; exit 0")


def scenario_b():
    target = zt.TcpServer(zt.echo_handler, name="echo target")
    relay = zt.Relay(target.port, "--drain-timeout", "0.5")
    c = zt.connect(relay.port)
    port = c.getsockname()[1]
    c.setblocking(False)
    echoed = 0
    signalled = None
    closed = None
    t0 = time.monotonic()
    next_send = t0
    while closed is None:
        now = time.monotonic()
        if signalled is None and now - t0 >= 0.5:
            zt.check(echoed > 0, "nothing echoed through the relay before SIGTERM")
            os.kill(relay.pid, signal.SIGTERM)
            signalled = now
        if signalled is not None and now - signalled > 15:
            zt.fail("the never-ending connection was not cut within 15s of SIGTERM "
                    "(--drain-timeout 0.5)")
        if now >= next_send:  # a byte every 50 ms
            next_send = now + 0.05
            try:
                c.send(b"x")
            except (BrokenPipeError, ConnectionResetError) as e:
                closed = type(e).__name__
                break
            except BlockingIOError:
                pass
        r, _, _ = select.select([c], [], [], max(0.0, next_send - time.monotonic()))
        if r:
            try:
                d = c.recv(65536)
            except ConnectionResetError:
                closed = "reset"
                break
            if not d:
                closed = "EOF"
                break
            echoed += len(d)
    c.close()
    zt.check(signalled is not None, f"the connection was closed ({closed}) before SIGTERM")
    cut_after = time.monotonic() - signalled
    relay.wait_stopped(max(0.1, signalled + 10 - time.monotonic()),
                       why="within 10s of SIGTERM (--drain-timeout 0.5)")
    took = time.monotonic() - signalled
    cl = relay.close_for(port, timeout=1)
    zt.check(cl.get("reason") == "drain", f"conn.close {cl}; expected reason=drain")
    st = relay.logs("relay.stop")
    zt.check(st, "no event=relay.stop logged")
    zt.check(st[0].get("forced") == "1", f"relay.stop {st[0]}; expected forced=1")
    target.close()
    zt.log(f"B: cut ({closed}) {cut_after:.2f}s after SIGTERM, relay exited 0 after {took:.2f}s")
    return took


def run():
    scenario_a()
    took = scenario_b()
    return (f"{N} x 50 MiB in flight at SIGTERM completed exactly, new connects refused, exit 0; "
            f"--drain-timeout 0.5 cut a never-ending connection, exit 0 after {took:.1f}s")


zt.main(run)
