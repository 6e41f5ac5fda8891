#!/usr/bin/env python3
"""relay.idle: --idle-timeout 0.5.
  - a connection that moves no byte is closed: the client sees EOF (not
    before 0.4 s, and within 10 s), the target side is closed too, and the
    log says conn.close reason=idle;
  - a connection that sends a byte and reads its echo every 0.1 s for 1.5 s
    is not closed; it still echoes after that and ends with reason=done."""
import os
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402


def run():
    target = zt.TcpServer(zt.echo_handler)
    relay = zt.Relay(target.port, "--idle-timeout", "0.5")

    # ---- an idle connection is closed ---------------------------------------
    t0 = time.monotonic()
    c = zt.connect(relay.port)
    port = c.getsockname()[1]
    zt.expect_eof(c, timeout=10, what="idle connection")
    took = time.monotonic() - t0
    c.close()
    zt.check(took >= 0.4, f"the idle connection was closed after {took:.2f}s, before the "
                          f"0.5 s idle timeout")
    cl = relay.close_for(port)
    zt.check(cl.get("reason") == "idle", f"conn.close {cl}; expected reason=idle")
    target.join(20)  # the echo handler returns once its side is closed too
    target.check()
    zt.log(f"idle connection closed after {took:.2f}s, reason=idle")

    # ---- a talking connection is not ------------------------------------------
    c = zt.connect(relay.port)
    port = c.getsockname()[1]
    c.settimeout(10)
    sent = 0
    t0 = time.monotonic()
    while True:
        try:
            c.sendall(b"x")
            d = c.recv(1)
        except OSError as e:
            zt.fail(f"talking connection failed after {time.monotonic() - t0:.2f}s: {e!r}")
        zt.check(d == b"x", f"talking connection closed (got {d!r}) after "
                            f"{time.monotonic() - t0:.2f}s although it moved a byte every 0.1 s")
        sent += 1
        if time.monotonic() - t0 >= 1.5:
            break
        time.sleep(0.1)
    zt.check(relay.logs("conn.close", client=f"127.0.0.1:{port}") == [],
             "the talking connection was logged closed")
    c.shutdown(socket.SHUT_WR)
    zt.expect_eof(c, what="talking connection after SHUT_WR")
    c.close()
    cl = relay.close_for(port)
    zt.check((cl.get("reason"), cl.get("up"), cl.get("down")) == ("done", str(sent), str(sent)),
             f"conn.close {cl}; expected reason=done up={sent} down={sent}")
    zt.log(f"talking connection: {sent} round trips over 1.5 s, not closed")

    relay.stop()
    target.close()
    return f"idle connection closed after {took:.2f}s (reason=idle); one talking every 0.1 s for 1.5 s kept"


zt.main(run)
