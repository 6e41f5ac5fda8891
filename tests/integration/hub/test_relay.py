"""`ztm hub`: the relay's basic contract. Two agents (made with `ztm invite`
+ `ztm join`) each open Relay.Events and get a Hello naming them; an open to
an endpoint that is not connected gets 404 + ztm-error; alice opens to bob
with bytes sent before any accept, bob gets Incoming on his Events stream,
accepts, and the two exchange data both ways through the hub, byte for
byte, END_STREAM passed on in each direction; the log tells the session's
story (session_open, session_joined, session_end with byte counts)."""
import hashlib
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubcommon as hc  # noqa: E402
from hubcommon import zt  # noqa: E402


def run():
    hub = hc.start("relay")
    alice_c, bob_c = hc.enrol(hub, "alice"), hc.enrol(hub, "bob")

    alice, a_ev, a_hello = hc.connect_agent(hub, alice_c, "alice")
    bob, b_ev, b_hello = hc.connect_agent(hub, bob_c, "bob")
    zt.check(a_hello["endpoint_name"] == "alice" and len(a_hello["endpoint_id"]) == 32,
             f"alice's Hello: {a_hello}")
    zt.check(b_hello["endpoint_name"] == "bob", f"bob's Hello: {b_hello}")
    zt.check(a_hello["hub_name"] == hub.hub_name, f"Hello hub_name {a_hello['hub_name']!r}, "
             f"expected the hub's name {hub.hub_name!r}")
    zt.check(b_hello["version"] > 0, f"Hello version: {b_hello}")
    hdr = alice.streams[a_ev].headers
    zt.check(hdr.get(":status") == "200" and hdr.get("content-type") == "application/grpc",
             f"Events response head: {hdr}")
    zt.log(f"Hellos: {a_hello}, {b_hello}")

    # Nobody named carol is connected.
    sid = alice.open("carol", end_stream=True)
    st = alice.wait_end(sid)
    zt.check(st.status == "404" and "carol" in (st.header("ztm-error") or ""),
             f"open to a missing endpoint: {st.headers}")

    # alice opens to bob and sends at once (held by the hub until bob accepts).
    early = b"client hello, sent before any accept\n"
    sa = alice.open("bob", body=early)
    kind, inc = bob.wait_event(b_ev, 2, others=[alice])
    zt.check(kind == "incoming" and inc["from_name"] == "alice" and
             inc["from_endpoint_id"] == a_hello["endpoint_id"] and inc["session_id"] > 0,
             f"bob's event after the open: {kind} {inc}")
    hub.wait_for_log("relay.session_open", session=inc["session_id"], **{"from": "alice", "to": "bob"})
    zt.check(alice.streams[sa].headers is None, "alice's open was answered before bob accepted")

    sb = bob.accept(inc["session_id"])
    bob.wait(lambda: bob.streams[sb].headers is not None, others=[alice], what="accept's answer")
    alice.wait(lambda: alice.streams[sa].headers is not None, others=[bob], what="open's answer")
    zt.check(alice.streams[sa].status == "200" and bob.streams[sb].status == "200",
             f"joined: alice {alice.streams[sa].headers}, bob {bob.streams[sb].headers}")
    hub.wait_for_log("relay.session_joined", session=inc["session_id"])

    # 1 MiB each way, then END_STREAM both ways.
    ab = early + os.urandom(hc.MiB)
    ba = os.urandom(hc.MiB + 7)
    offa, offb = len(early), 0
    for _ in range(100000):
        offa = alice.send_some(sa, ab, offa)
        offb = bob.send_some(sb, ba, offb)
        alice.pump(0.005)
        bob.pump(0.005)
        if alice.streams[sa].ended and bob.streams[sb].ended:
            break
    got_b, got_a = bytes(bob.streams[sb].data), bytes(alice.streams[sa].data)
    zt.check(alice.streams[sa].reset is None and bob.streams[sb].reset is None,
             f"resets: alice {alice.streams[sa].reset}, bob {bob.streams[sb].reset}")
    zt.check(len(got_b) == len(ab) and hashlib.sha256(got_b).digest() == hashlib.sha256(ab).digest(),
             f"alice->bob: {len(got_b)} bytes received of {len(ab)}, or they differ")
    zt.check(len(got_a) == len(ba) and hashlib.sha256(got_a).digest() == hashlib.sha256(ba).digest(),
             f"bob->alice: {len(got_a)} bytes received of {len(ba)}, or they differ")
    end = hub.wait_for_log("relay.session_end", session=inc["session_id"])
    zt.check(end.get("bytes_ab") == str(len(ab)) and end.get("bytes_ba") == str(len(ba)) and
             end.get("reason") == "done", f"session_end: {end}")

    bob.close()

    # A session to oneself: both streams on one connection.
    s1 = alice.open("alice")
    _, inc = alice.wait_event(a_ev, 2)
    s2 = alice.accept(inc["session_id"])
    x, y = os.urandom(300000), os.urandom(200000)
    o1 = o2 = 0
    for _ in range(100000):
        o1 = alice.send_some(s1, x, o1)
        o2 = alice.send_some(s2, y, o2)
        alice.pump(0.005)
        if alice.streams[s1].ended and alice.streams[s2].ended:
            break
    zt.check(bytes(alice.streams[s2].data) == x and bytes(alice.streams[s1].data) == y,
             f"self-session: {len(alice.streams[s2].data)}/{len(x)} and "
             f"{len(alice.streams[s1].data)}/{len(y)} bytes, or they differ")

    # SIGTERM with alice's Events stream open: it ends with UNAVAILABLE, an
    # open waiting for an accept gets 503, and the hub exits 0.
    sa = alice.open("alice")  # to herself: held, nobody will accept
    alice.wait(lambda: len(hub.logs("relay.session_open", **{"from": "alice", "to": "alice"})) == 2,
               what="the hub's session_open")
    hub.signal(signal.SIGTERM)
    st = alice.wait_end(a_ev, timeout=15)
    zt.check(st.trailers and st.trailers.get("grpc-status") == "14",
             f"Events at shutdown: trailers {st.trailers}, reset {st.reset}")
    st = alice.wait_end(sa, timeout=15)
    zt.check(st.status == "503" and st.header("ztm-error"), f"waiting open at shutdown: {st.headers}")
    alice.wait(lambda: alice.closed or not hub.alive(), timeout=15, what="the hub's exit")
    alice.close()
    rc = hub.wait_exit(20)
    zt.check(rc == 0, f"hub after SIGTERM: {zt.describe_rc(rc)}")
    return "Hello names the caller; 404 for a missing peer; open held, Incoming, accept, " \
           "1 MiB each way exact, END_STREAM both ways, session logged; a session to oneself; drain ends Events " \
           "(UNAVAILABLE) and waiting opens (503), exit 0"


if __name__ == "__main__":
    zt.main(run)
