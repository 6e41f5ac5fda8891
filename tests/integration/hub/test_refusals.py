"""`ztm hub`: who may use the relay, and the answers when a session cannot
be made. The CLI's admin certificate and a connection without a
certificate are refused on every relay route (Events: PERMISSION_DENIED
trailers-only; open/accept: 403 + ztm-error); accept of an unknown session,
or of alice's session by someone other than its target, is 404; malformed
ztm-peer / ztm-session are 400; an open nobody accepts gets 504 + ztm-error
after --accept-timeout (1 s here) and alice's held bytes are dropped; a
second Events stream of an endpoint replaces the first (ALREADY_EXISTS);
an agent that does not read its events loses the oldest offers (logged),
not the hub's memory; presence follows the Events stream (ListEndpoints:
online with the hub's ID, then offline)."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubcommon as hc  # noqa: E402
from hubcommon import cp, zt  # noqa: E402

import h2.settings  # noqa: E402


def endpoint(admin, name):
    eps, _ = admin.list_endpoints()
    for e in eps:
        if e.name == name:
            return e
    zt.fail(f"ListEndpoints has no {name}")


def run():
    F = cp.Findings()
    hub = hc.start("refusals", "--accept-timeout", "1")
    alice_c, bob_c, carol_c = (hc.enrol(hub, n) for n in ("alice", "bob", "carol"))
    admin_c = hub.admin_creds()

    # -- who may use the relay
    for who, creds in (("admin", admin_c), ("no certificate", None)):
        x = hc.Agent(hub, creds, who)
        sid = x.events()
        st = x.wait_end(sid)
        F.check(st.status == "200" and st.header("grpc-status") == "7" and not st.data,
                f"Events as {who}: {st.headers} (expected trailers-only grpc-status 7)")
        for path_sid in (x.open("bob", end_stream=True), x.accept(12345, end_stream=True)):
            st = x.wait_end(path_sid)
            F.check(st.status == "403" and st.header("ztm-error"),
                    f"open/accept as {who}: {st.headers} (expected 403 + ztm-error)")
        x.close()
    zt.log("admin and anonymous callers refused on Events, open and accept")

    alice, a_ev, _ = hc.connect_agent(hub, alice_c, "alice")
    bob, b_ev, b_hello = hc.connect_agent(hub, bob_c, "bob")
    carol, c_ev, _ = hc.connect_agent(hub, carol_c, "carol")
    admin = hub.client(admin_c)
    ep = endpoint(admin, "bob")
    F.check(ep.online and ep.hub_id, f"bob with an Events stream: online={ep.online} hub_id={ep.hub_id!r}")

    # -- bad and unknown sessions
    for sid, what, want in ((alice.accept(987654321, end_stream=True), "unknown session", "404"),
                            (alice.request("/ztm.relay/accept", [("ztm-session", "x1")],
                                           end_stream=True), "ztm-session x1", "400"),
                            (alice.request("/ztm.relay/open", end_stream=True), "no ztm-peer", "400"),
                            (alice.open("no/such", end_stream=True), "ztm-peer no/such", "400"),
                            (alice.request("/ztm.relay/nothing", end_stream=True), "unknown path",
                             "404")):
        st = alice.wait_end(sid)
        F.check(st.status == want and st.header("ztm-error"), f"{what}: {st.headers}, expected {want}")

    # carol may not accept alice's session to bob; bob may, once.
    sa = alice.open("bob", body=b"held")
    _, inc = bob.wait_event(b_ev, 2, others=[alice])
    st = carol.wait_end(carol.accept(inc["session_id"], end_stream=True))
    F.check(st.status == "404", f"carol accepting bob's session: {st.headers}, expected 404")
    sb = bob.accept(inc["session_id"])
    bob.wait(lambda: bob.streams[sb].headers is not None, others=[alice], what="accept's answer")
    F.check(bob.streams[sb].status == "200", f"bob's accept: {bob.streams[sb].headers}")
    sid = bob.accept(inc["session_id"], end_stream=True)
    st = bob.wait_end(sid, others=[alice])
    F.check(st.status == "404", f"a second accept of a joined session: {st.headers}")
    bob.wait(lambda: len(bob.streams[sb].data) >= 4, others=[alice], what="the held bytes")
    F.check(bytes(bob.streams[sb].data) == b"held", f"held bytes: {bytes(bob.streams[sb].data)!r}")
    alice.reset(sa)
    bob.wait_end(sb, others=[alice])

    # -- nobody accepts: 504 after the accept timeout
    t0 = time.monotonic()
    sa = alice.open("carol")
    alice.send_some(sa, os.urandom(200000), 0, end_stream=False)
    st = alice.wait_end(sa, timeout=10, others=[carol, bob])
    took = time.monotonic() - t0
    F.check(st.status == "504" and "carol" in (st.header("ztm-error") or ""),
            f"unaccepted open: {st.headers}, expected 504 + ztm-error")
    F.check(0.8 < took < 5, f"504 after {took:.1f}s with --accept-timeout 1")
    e = hub.wait_for_log("relay.session_end", reason="timeout")
    F.check(e.get("to") == "carol", f"session_end for the timeout: {e}")

    # -- a second Events stream replaces the first
    bob2 = hc.Agent(hub, bob_c, "bob2")
    b2_ev = bob2.events()
    kind, hello2 = bob2.wait_event(b2_ev, 1, others=[bob])
    F.check(kind == "hello" and hello2["endpoint_id"] == b_hello["endpoint_id"], f"bob2: {hello2}")
    st = bob.wait_end(b_ev, others=[bob2])
    F.check(st.trailers and st.trailers.get("grpc-status") == "6",
            f"the replaced Events stream ended with {st.trailers} {st.reset}, expected ALREADY_EXISTS")
    bob.close()
    # ... and sessions now reach bob2.
    sa = alice.open("bob", end_stream=True)
    kind, inc = bob2.wait_event(b2_ev, 2, others=[alice])
    F.check(kind == "incoming" and inc["from_name"] == "alice", f"bob2's event: {kind} {inc}")
    time.sleep(0.2)
    bob2.close()
    st = alice.wait_end(sa, timeout=10)
    F.check(st.status == "504", f"open to bob2 that left: {st.headers}")
    deadline = time.monotonic() + 10
    while endpoint(admin, "bob").online and time.monotonic() < deadline:
        time.sleep(0.1)
    F.check(not endpoint(admin, "bob").online, "bob still online after his connections closed")

    # -- an agent that does not read its events: the oldest offers are dropped
    slow = hc.Agent(hub, carol_c, "carol-slow")
    slow.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    slow.flush()
    s_ev = slow.events()
    slow.wait_event(s_ev, 1)
    slow.streams[s_ev].auto_ack = False
    opened = [alice.open("carol", end_stream=True) for _ in range(20)]
    for _ in range(50):
        alice.pump(0.02)
        slow.pump(0)
    drops = hub.logs("relay.event_dropped")
    F.check(len(drops) >= 5, f"{len(drops)} relay.event_dropped lines for 20 unread offers "
            f"(queue of 8)")
    rss = zt.rss_bytes(hub.pid)
    zt.log(f"unread events: {len(drops)} dropped, hub RSS {rss >> 20} MiB")
    # carol reads again: she gets the rest, none of the dropped ones.
    slow.streams[s_ev].auto_ack = True
    slow.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    slow.ack(s_ev)
    want = 1 + len(opened) - len(drops)
    slow.wait_event(s_ev, want, others=[alice])
    got = [e for k, e in slow.event_messages(s_ev)[1:]]
    dropped = {int(d["session"]) for d in drops}
    F.check(not dropped & {e["session_id"] for e in got} and len(got) == want - 1,
            f"carol got {len(got)} Incoming after reading again (expected {want - 1}, none of "
            f"the dropped): {sorted(e['session_id'] for e in got)} dropped {sorted(dropped)}")
    for sid in opened:
        alice.wait_end(sid, timeout=10, others=[slow])
    slow.close()
    carol.close()
    alice.close()
    admin.close()
    hub.stop()
    return F.done("admin/anonymous refused (PERMISSION_DENIED, 403); 404 unknown or foreign session; "
                  "400 bad headers; 504 after --accept-timeout; Events replaced with ALREADY_EXISTS; "
                  "unread events dropped oldest-first; presence follows Events")


if __name__ == "__main__":
    zt.main(run)
