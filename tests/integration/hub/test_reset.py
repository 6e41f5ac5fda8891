"""`ztm hub`: the end of one side reaches the other. An RST_STREAM from the
opener arrives at the acceptor as RST_STREAM(CANCEL), and the other way
round; an agent whose connection drops mid-transfer leaves its partner
with a reset stream; `ztm revoke bob` mid-transfer cuts bob's connection
at once and alice's stream is reset (and bob cannot come back). Each
session's end is logged with its reason."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubcommon as hc  # noqa: E402
from hubcommon import cp, zt  # noqa: E402

CANCEL = 8


def session(alice, bob, b_ev, n_event):
    """alice opens to bob, bob accepts: (alice's sid, bob's sid, session id)."""
    sa = alice.open("bob")
    kind, inc = bob.wait_event(b_ev, n_event, others=[alice])
    zt.check(kind == "incoming", f"bob's event #{n_event}: {kind}")
    sb = bob.accept(inc["session_id"])
    alice.wait(lambda: alice.streams[sa].headers is not None, others=[bob], what="open's answer")
    zt.check(alice.streams[sa].status == "200", f"open: {alice.streams[sa].headers}")
    return sa, sb, inc["session_id"]


def flow(alice, sa, bob, sb, secs, data):
    """Both send for SECS seconds (no END_STREAM)."""
    end = time.monotonic() + secs
    oa = ob = 0
    while time.monotonic() < end:
        oa = alice.send_some(sa, data, oa, end_stream=False) % len(data)
        ob = bob.send_some(sb, data, ob, end_stream=False) % len(data)
        alice.pump(0.005)
        bob.pump(0.005)


def run():
    F = cp.Findings()
    hub = hc.start("reset")
    alice_c, bob_c = hc.enrol(hub, "alice"), hc.enrol(hub, "bob")
    alice, a_ev, _ = hc.connect_agent(hub, alice_c, "alice")
    bob, b_ev, _ = hc.connect_agent(hub, bob_c, "bob")
    data = os.urandom(4 * hc.MiB)

    # RST from the opener, then from the acceptor.
    n = 2
    for who in ("opener", "acceptor"):
        sa, sb, sid = session(alice, bob, b_ev, n)
        n += 1
        flow(alice, sa, bob, sb, 0.3, data)
        src, src_sid, dst, dst_sid = (alice, sa, bob, sb) if who == "opener" else (bob, sb, alice, sa)
        src.reset(src_sid, CANCEL)
        st = dst.wait_end(dst_sid, others=[src])
        F.check(st.reset == CANCEL, f"RST from the {who}: the other side's stream ended with "
                f"reset={st.reset} (expected CANCEL)")
        e = hub.wait_for_log("relay.session_end", session=sid)
        F.check(e.get("reason") == f"{who}_reset", f"session_end after the {who}'s RST: {e}")
    zt.log("RST passed on both ways as CANCEL")

    # alice's connection drops mid-transfer: bob's stream is reset.
    sa, sb, sid = session(alice, bob, b_ev, n)
    n += 1
    flow(alice, sa, bob, sb, 0.3, data)
    alice.sock.close()
    st = bob.wait_end(sb)
    F.check(st.reset == CANCEL, f"opener's connection gone: bob's stream reset={st.reset}")
    e = hub.wait_for_log("relay.session_end", session=sid)
    zt.log(f"connection drop: {e.get('reason')} bytes_ab={e.get('bytes_ab')}")

    # Revocation mid-transfer.
    alice, a_ev, _ = hc.connect_agent(hub, alice_c, "alice2")
    sa, sb, sid = session(alice, bob, b_ev, n)
    flow(alice, sa, bob, sb, 0.3, data)
    r = hc.ztm(hub, "revoke", "bob")
    zt.check(r.returncode == 0, f"ztm revoke bob: rc {r.returncode} {r.stderr}")
    t0 = time.monotonic()
    oa = 0
    while not (alice.streams[sa].ended and bob.closed):
        if time.monotonic() - t0 > 15:
            break
        oa = alice.send_some(sa, data, oa, end_stream=False) % len(data)
        alice.pump(0.01)
        bob.pump(0.01)
    F.check(bob.closed, "bob's connection still open 15 s after his revocation")
    F.check(alice.streams[sa].reset == CANCEL,
            f"alice's stream after bob's revocation: reset={alice.streams[sa].reset}, "
            f"ended={alice.streams[sa].ended}")
    zt.log(f"revoked: bob cut and alice reset within {time.monotonic() - t0:.2f}s "
           f"({bob.close_error})")
    e = hub.wait_for_log("relay.session_end", session=sid)
    F.check(e.get("reason") == "acceptor_reset", f"session_end after the revocation: {e}")
    try:
        b2 = hc.Agent(hub, bob_c, "bob-again")
        s = b2.events()
        st = b2.wait_end(s, timeout=5)
        F.check(b2.closed or st.status != "200" or st.header("grpc-status") not in (None, "0"),
                f"revoked bob reconnected and got Events: {st.headers}")
        b2.close()
    except (OSError, Exception) as ex:  # noqa: BLE001 — a refused handshake is the expected way
        zt.log(f"revoked bob refused: {type(ex).__name__}")
    # alice is unharmed: her Events stream is still up.
    alice.pump(0.1)
    F.check(not alice.closed and not alice.streams[a_ev].ended, "alice's connection suffered")
    alice.close()
    hub.stop()
    return F.done("RST both ways -> CANCEL; a dropped connection resets the partner; revoke "
                  "mid-transfer cuts bob and resets alice's stream")


if __name__ == "__main__":
    zt.main(run)
