#!/usr/bin/env python3
"""relay.reset: an RST is propagated as an RST.
  A: the target reads the request, then closes with SO_LINGER {1,0} (RST):
     the client's recv fails with ECONNRESET (not a clean EOF); the relay
     logs conn.close reason=reset for that client.
  B: the client, once the target has its request, closes with SO_LINGER
     {1,0}: the target's recv fails with ECONNRESET; logged reason=reset."""
import os
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

HELLO = b"hello, relay\n"


def run():
    # ---- A: the target resets ---------------------------------------------
    def reset_after_request(conn):
        zt.check(zt.recv_exact(conn, len(HELLO)) == HELLO, "A: target got a wrong request")
        zt.set_rst_on_close(conn)
        conn.close()

    ta = zt.TcpServer(reset_after_request, name="target A")
    relay = zt.Relay(ta.port)
    c = zt.connect(relay.port)
    port_a = c.getsockname()[1]
    c.sendall(HELLO)
    zt.expect_reset(c, timeout=20, what="A: client after the target's RST")
    c.close()
    ta.join()
    ta.check()
    cl = relay.close_for(port_a)
    zt.check(cl.get("reason") == "reset", f"A: conn.close {cl}; expected reason=reset")
    zt.check(cl.get("up") == str(len(HELLO)),
             f"A: conn.close up={cl.get('up')}, expected {len(HELLO)}")
    zt.log("A: target RST -> client ECONNRESET, reason=reset")

    # ---- B: the client resets ---------------------------------------------
    b = {"got": threading.Event(), "outcome": None}

    def await_reset(conn):
        zt.check(zt.recv_exact(conn, len(HELLO)) == HELLO, "B: target got a wrong request")
        b["got"].set()
        conn.settimeout(20)
        try:
            d = conn.recv(65536)
            b["outcome"] = "EOF (clean close)" if d == b"" else f"{len(d)} bytes of data"
        except ConnectionResetError:
            b["outcome"] = "reset"
        except TimeoutError:
            b["outcome"] = "nothing within 20s"

    tb = zt.TcpServer(await_reset, name="target B")
    relay_b = zt.Relay(tb.port)
    c = zt.connect(relay_b.port)
    port_b = c.getsockname()[1]
    c.sendall(HELLO)
    zt.check(b["got"].wait(20), "B: the target never got the request")
    zt.set_rst_on_close(c)
    c.close()
    tb.join()
    tb.check()
    zt.check(b["outcome"] == "reset",
             f"B: after the client's RST the target saw {b['outcome']}, expected ECONNRESET")
    cl = relay_b.close_for(port_b)
    zt.check(cl.get("reason") == "reset", f"B: conn.close {cl}; expected reason=reset")
    zt.log("B: client RST -> target ECONNRESET, reason=reset")

    relay.stop()
    relay_b.stop()
    ta.close()
    tb.close()
    return ("target RST -> client ECONNRESET; client RST -> target ECONNRESET; both logged "
            "reason=reset")


zt.main(run)
