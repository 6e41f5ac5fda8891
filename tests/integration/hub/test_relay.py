"""`ztm hub`: the relay's basic contract. Two agents (made with `ztm invite`
+ `ztm join`) each open Relay.Events and get a Hello naming them; an open to
an endpoint that is not connected gets 404 + ztm-error; alice opens to bob
with bytes sent before any accept, bob gets Incoming on his Events stream,
accepts, and the two exchange data both ways through the hub, byte for
byte, END_STREAM passed on in each direction; the log tells the session's
story (session_open, session_joined, session_end with byte counts)."""
import hashlib
import os
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

    alice.close()
    bob.close()
    hub.stop()
    return "Hello names the caller; 404 for a missing peer; open held, Incoming, accept, " \
           "1 MiB each way exact, END_STREAM both ways, session logged"


if __name__ == "__main__":
    zt.main(run)
