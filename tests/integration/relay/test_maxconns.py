#!/usr/bin/env python3
"""relay.maxconns: --max-conns 3. Three connections held open all echo; a
4th is closed at once (EOF, no bytes), never reaches the target, and is
logged event=conn.reject reason=max_conns; after one of the three closes
(its conn.close logged) a new connection echoes."""
import os
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402


def echo_ok(c, what):
    msg = os.urandom(10_000)
    try:
        c.sendall(msg)
        got = zt.recv_exact(c, len(msg))
    except (zt.TestFailure, OSError) as e:
        zt.fail(f"{what} (client port {c.getsockname()[1]}): echo failed: {e}")
    zt.check(got == msg, f"{what}: echo differs")


def run():
    target = zt.TcpServer(zt.echo_handler)
    relay = zt.Relay(target.port, "--max-conns", "3")

    held = []
    for i in range(3):
        c = zt.connect(relay.port)
        echo_ok(c, f"connection {i + 1} of 3")
        held.append(c)
    zt.check(target.accepted == 3, f"target accepted {target.accepted}, expected 3")

    fourth = zt.connect(relay.port)
    port4 = fourth.getsockname()[1]
    zt.expect_eof(fourth, timeout=10, what="4th connection over --max-conns 3")
    fourth.close()
    rej = relay.wait_for_log("conn.reject", client=f"127.0.0.1:{port4}")
    zt.check(rej.get("reason") == "max_conns", f"conn.reject {rej}; expected reason=max_conns")
    zt.check(target.accepted == 3, f"the 4th connection reached the target "
                                   f"(target accepted {target.accepted})")
    for i, c in enumerate(held):  # the three still work
        echo_ok(c, f"connection {i + 1} after the reject")
    zt.log("4th connection: EOF at once, conn.reject reason=max_conns")

    first = held.pop(0)
    port1 = first.getsockname()[1]
    first.shutdown(socket.SHUT_WR)
    zt.expect_eof(first, what="connection 1 after SHUT_WR")
    first.close()
    relay.close_for(port1, reason="done")

    c = zt.connect(relay.port)
    echo_ok(c, "new connection after one of the three closed")
    held.append(c)
    zt.check(len(relay.logs("conn.reject")) == 1,
             f"{len(relay.logs('conn.reject'))} conn.reject lines, expected 1")
    for c in held:
        c.shutdown(socket.SHUT_WR)
        zt.expect_eof(c)
        c.close()
    relay.wait_for_log("conn.close", count=4, reason="done")
    relay.stop()
    target.close()
    return ("3 connections work, the 4th gets EOF + conn.reject reason=max_conns, a slot freed "
            "is reused")


zt.main(run)
