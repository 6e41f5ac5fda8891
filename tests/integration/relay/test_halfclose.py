#!/usr/bin/env python3
"""relay.halfclose: half-close works both ways through the relay.
  A: the client sends a request then shutdown(SHUT_WR); the target replies
     only after it sees EOF (2 MiB); the client reads the whole reply.
  B: the target sends a greeting then shutdown(SHUT_WR) first; the client
     reads it to EOF, then keeps sending 2 MiB; the target receives it all.
Bytes and SHA-256 exact; each connection logged conn.close reason=done with
exact up/down counts."""
import os
import socket
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

REQ = 100_000
REPLY = 2 * zt.MiB
GREETING = 65_537
UPLOAD = 2 * zt.MiB


def run():
    # ---- A: client half-closes first -------------------------------------
    a = {}

    def reply_after_eof(conn):
        n, sha, _ = zt.recv_until_eof(conn)
        a["req"] = (n, sha)
        a["reply"] = zt.send_random(conn, REPLY)
        conn.shutdown(socket.SHUT_WR)
        zt.expect_eof(conn, what="target A after its reply")

    ta = zt.TcpServer(reply_after_eof, name="target A")
    relay_a = zt.Relay(ta.port)
    c = zt.connect(relay_a.port)
    port_a = c.getsockname()[1]
    req_sha = zt.send_random(c, REQ)
    c.shutdown(socket.SHUT_WR)
    n, sha, _ = zt.recv_until_eof(c)
    c.close()
    ta.join()
    ta.check()
    zt.check(a.get("req") == (REQ, req_sha),
             f"A: target received {a.get('req')}, client sent ({REQ}, {req_sha})")
    zt.check((n, sha) == (REPLY, a["reply"]),
             f"A: after its shutdown(SHUT_WR) the client received {n} bytes sha {sha[:12]}, "
             f"target sent {REPLY} sha {a['reply'][:12]}")
    cl = relay_a.close_for(port_a)
    zt.check((cl.get("reason"), cl.get("up"), cl.get("down")) == ("done", str(REQ), str(REPLY)),
             f"A: conn.close {cl}; expected reason=done up={REQ} down={REPLY}")
    relay_a.stop()
    ta.close()
    zt.log("A: client shutdown(SHUT_WR) then read the whole 2 MiB reply")

    # ---- B: target half-closes first -------------------------------------
    b = {"greeted": threading.Event()}

    def greet_then_listen(conn):
        b["greeting"] = zt.send_random(conn, GREETING)
        conn.shutdown(socket.SHUT_WR)
        b["greeted"].set()
        n, sha, _ = zt.recv_until_eof(conn)
        b["upload"] = (n, sha)

    tb = zt.TcpServer(greet_then_listen, name="target B")
    relay_b = zt.Relay(tb.port)
    c = zt.connect(relay_b.port)
    port_b = c.getsockname()[1]
    n, sha, _ = zt.recv_until_eof(c)  # the target's write side ended: EOF here
    zt.check(b["greeted"].wait(30), "B: target did not send its greeting")
    zt.check((n, sha) == (GREETING, b["greeting"]),
             f"B: client received {n} bytes sha {sha[:12]} before EOF, target sent {GREETING} "
             f"sha {b['greeting'][:12]}")
    up_sha = zt.send_random(c, UPLOAD)  # still flows client -> target
    c.shutdown(socket.SHUT_WR)
    tb.join()
    tb.check()
    c.close()
    zt.check(b.get("upload") == (UPLOAD, up_sha),
             f"B: after its own shutdown(SHUT_WR) the target received {b.get('upload')}, "
             f"client sent ({UPLOAD}, {up_sha})")
    cl = relay_b.close_for(port_b)
    zt.check((cl.get("reason"), cl.get("up"), cl.get("down")) ==
             ("done", str(UPLOAD), str(GREETING)),
             f"B: conn.close {cl}; expected reason=done up={UPLOAD} down={GREETING}")
    relay_b.stop()
    tb.close()
    zt.log("B: target shutdown(SHUT_WR) first, client then sent 2 MiB, all received")
    return ("half-close both ways: request+SHUT_WR then 2 MiB reply; greeting+SHUT_WR then "
            "2 MiB upload; exact")


zt.main(run)
