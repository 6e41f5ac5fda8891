#!/usr/bin/env python3
"""relay.target_down: --to a port with nothing listening (bound, not
listening: connects are refused). Each client connection is closed cleanly
(EOF, zero bytes); the log has event=conn.connect_failed and conn.close
reason=connect_failed for the same conn. The relay keeps serving: once the
target listens on that same port, a connection through the relay echoes."""
import os
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

TRIES = 3


def run():
    tsock, tport = zt.reserve_port()
    relay = zt.Relay(tport)
    for i in range(TRIES):
        c = zt.connect(relay.port)
        port = c.getsockname()[1]
        zt.expect_eof(c, timeout=20, what=f"client {i + 1} with the target down")
        c.close()
        cl = relay.close_for(port)
        zt.check(cl.get("reason") == "connect_failed",
                 f"conn.close {cl}; expected reason=connect_failed")
        zt.check(cl.get("down") == "0", f"conn.close down={cl.get('down')}, expected 0")
        cf = relay.wait_for_log("conn.connect_failed", conn=cl.get("conn"))
        zt.check(cf.get("level") == "warn",
                 f"conn.connect_failed level={cf.get('level')}, expected warn")
        zt.check(cf.get("to") == f"127.0.0.1:{tport}",
                 f"conn.connect_failed to={cf.get('to')}, expected 127.0.0.1:{tport}")
    zt.log(f"{TRIES} connections with the target down: EOF, connect_failed logged")

    # The target comes up on the same port: the same relay now works.
    target = zt.TcpServer(zt.echo_handler, sock=tsock)
    c = zt.connect(relay.port)
    port = c.getsockname()[1]
    msg = os.urandom(100_000)
    c.sendall(msg)
    got = zt.recv_exact(c, len(msg))
    zt.check(got == msg, "echo through the relay after the target came up: bytes differ")
    c.shutdown(socket.SHUT_WR)
    zt.expect_eof(c, what="echo connection after SHUT_WR")
    c.close()
    cl = relay.close_for(port)
    zt.check(cl.get("reason") == "done", f"conn.close {cl}; expected reason=done")
    target.join()
    target.check()
    relay.stop()
    target.close()
    return (f"target down: {TRIES} clients got EOF + conn.connect_failed/reason=connect_failed; "
            "then the same relay relayed to the target once it listened")


zt.main(run)
