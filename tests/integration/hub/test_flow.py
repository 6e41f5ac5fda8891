"""`ztm hub`: flow control is end to end through a spliced session. bob
accepts alice's session but returns no flow-control credit at first (a
slow reader): alice's send window runs dry after about one hub stream
window plus bob's own window, and the hub's memory does not grow with what
alice would like to send. Then bob reads; 4 MiB of random bytes go each way
at once and arrive exactly (SHA-256), END_STREAM passed on both ways."""
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubcommon as hc  # noqa: E402
from hubcommon import zt  # noqa: E402

SIZE = 4 * hc.MiB
HUB_WINDOW = hc.MiB  # the hub's receive window per stream (dataplane/h2 default)


def run():
    hub = hc.start("flow")
    alice_c, bob_c = hc.enrol(hub, "alice"), hc.enrol(hub, "bob")
    alice, a_ev, _ = hc.connect_agent(hub, alice_c, "alice")
    bob, b_ev, _ = hc.connect_agent(hub, bob_c, "bob")

    ab, ba = os.urandom(SIZE), os.urandom(SIZE)
    sa = alice.open("bob")
    _, inc = bob.wait_event(b_ev, 2, others=[alice])
    sb = bob.accept(inc["session_id"], auto_ack=False)
    alice.wait(lambda: alice.streams[sa].headers is not None, others=[bob], what="open's answer")
    zt.check(alice.streams[sa].status == "200", f"open: {alice.streams[sa].headers}")
    rss0 = zt.rss_bytes(hub.pid)

    # bob reads nothing (no credit back): alice can send only so much.
    bob_window = bob.conn.local_settings.initial_window_size
    offa = 0
    last_change, last_off = time.monotonic(), 0
    while time.monotonic() - last_change < 1.5:
        offa = alice.send_some(sa, ab, offa)
        alice.pump(0.01)
        bob.pump(0.01)
        if offa != last_off:
            last_off, last_change = offa, time.monotonic()
        zt.check(offa < SIZE, "alice sent everything although bob returned no credit")
    stalled_at = offa
    limit = HUB_WINDOW + bob_window + 64 * 1024
    zt.check(stalled_at <= limit, f"alice sent {stalled_at} bytes to a reader that took none; "
             f"the hub should hold at most one window ({HUB_WINDOW}) beyond bob's ({bob_window})")
    zt.check(alice.window(sa) == 0, f"alice's send window is {alice.window(sa)}, expected 0")
    zt.check(bob.streams[sb].received <= bob_window,
             f"bob got {bob.streams[sb].received} bytes, over his window {bob_window}")
    rss1 = zt.rss_bytes(hub.pid)
    zt.check(rss1 - rss0 < 16 * hc.MiB, f"hub RSS grew {(rss1 - rss0) >> 20} MiB while stalled")
    zt.log(f"stalled: alice sent {stalled_at} bytes (window 0), bob received "
           f"{bob.streams[sb].received}; hub RSS {rss0 >> 20} -> {rss1 >> 20} MiB")

    # Now bob reads: both ways at once, to the end.
    bob.streams[sb].auto_ack = True
    bob.ack(sb)
    for st in (alice.streams[sa], bob.streams[sb]):
        st.keep = False
        st.hasher = hashlib.sha256()
    b0 = bytes(bob.streams[sb].data)
    bob.streams[sb].hasher.update(b0)
    offb = 0
    end = time.monotonic() + 120
    while not (alice.streams[sa].ended and bob.streams[sb].ended):
        zt.check(time.monotonic() < end, f"transfer incomplete after 120 s: alice sent {offa}, "
                 f"bob sent {offb}, bob got {bob.streams[sb].received}, alice got "
                 f"{alice.streams[sa].received}")
        zt.check(not alice.closed and not bob.closed, f"a connection closed: alice "
                 f"{alice.close_error}, bob {bob.close_error}")
        offa = alice.send_some(sa, ab, offa)
        offb = bob.send_some(sb, ba, offb)
        alice.pump(0.002)
        bob.pump(0.002)
    sa_st, sb_st = alice.streams[sa], bob.streams[sb]
    zt.check(sa_st.reset is None and sb_st.reset is None, f"resets: {sa_st.reset} {sb_st.reset}")
    zt.check(sb_st.received == SIZE and sb_st.hasher.digest() == hashlib.sha256(ab).digest(),
             f"alice->bob: {sb_st.received} of {SIZE} bytes, or they differ")
    zt.check(sa_st.received == SIZE and sa_st.hasher.digest() == hashlib.sha256(ba).digest(),
             f"bob->alice: {sa_st.received} of {SIZE} bytes, or they differ")
    e = hub.wait_for_log("relay.session_end", session=inc["session_id"])
    zt.check(e.get("bytes_ab") == str(SIZE) and e.get("bytes_ba") == str(SIZE) and
             e.get("reason") == "done", f"session_end: {e}")
    rss2 = zt.rss_bytes(hub.pid)
    # ASan's quarantine keeps freed memory (TLS records, frames) resident.
    slack = 96 * hc.MiB if hc.sanitized(hub.pid) else 24 * hc.MiB
    zt.log(f"hub RSS after the transfer: {rss2 >> 20} MiB")
    zt.check(rss2 - rss0 < slack, f"hub RSS grew {(rss2 - rss0) >> 20} MiB over the transfer")
    alice.close()
    bob.close()
    hub.stop()
    return (f"a reader that takes nothing stalls the writer after {stalled_at} bytes (window 0, "
            f"hub RSS flat); then 4 MiB each way exact, END_STREAM both ways")


if __name__ == "__main__":
    zt.main(run)
