"""`ztm hub --workers 3`: three data-plane workers (each with its own
SO_REUSEPORT listener) and the control-plane worker (worker 0: the store,
the CA, the API; it accepts no connection). Which worker took a connection
is read from the hub's link.open line (worker=N, peer=ADDR:PORT); agents
reconnect until they land where the test wants them.

  - alice and bob on different workers: a session spliced across workers,
    2 MiB each way exact, END_STREAM both ways, logged with both workers;
  - flow control across workers: bob takes nothing, alice stalls after
    about one hub window beyond bob's, hub RSS flat; then 2 MiB each way;
  - an accept arriving on a third worker (bob's second connection), not the
    one holding his Events stream nor alice's: joined, exact both ways;
  - unary calls forwarded from data workers (ztm invite, ztm get endpoints
    showing presence written by the control plane);
  - a Watch stream on a data worker (raw HTTP/2): snapshot, then the live
    events of a presence change and of a revocation;
  - `ztm revoke bob` while alice and bob exchange bytes: bob's connection
    (a data worker's) is cut at once by the snapshot the control plane
    published, alice's stream (another worker) is reset, the session ends
    acceptor_reset, bob's handshakes are refused on every worker;
  - SIGTERM: Events ends UNAVAILABLE, the hub exits 0;
  - `--workers 1` (one data worker + the control worker): a session and a
    call, then SIGTERM, exit 0."""
import hashlib
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubcommon as hc  # noqa: E402
from hubcommon import cp, zt  # noqa: E402

CANCEL = 8
HUB_WINDOW = hc.MiB


def worker_of(hub, agent, timeout=10):
    """The data worker that took AGENT's connection (from link.open)."""
    port = agent.sock.getsockname()[1]
    ev = hub.wait_for_log("link.open", timeout=timeout, peer=f"127.0.0.1:{port}")
    return int(ev["worker"])


def connect_where(hub, creds, name, ok, events=True, tries=40):
    """An Agent (with its Events stream and Hello when EVENTS) on a worker
    for which OK(worker) holds: (agent, worker, events sid)."""
    for _ in range(tries):
        a = hc.Agent(hub, creds, name)
        w = worker_of(hub, a)
        if ok(w):
            sid = None
            if events:
                sid = a.events()
                kind, _ = a.wait_event(sid, 1)
                zt.check(kind == "hello", f"{name}: first event {kind}")
            return a, w, sid
        a.close()
    zt.fail(f"{name}: no connection landed on a wanted worker in {tries} tries")


def exchange(x, sx, y, sy, xy, yx, x_off=0, timeout=120):
    """X sends XY on SX (XY[:X_OFF] sent already) and Y sends YX on SY,
    both with END_STREAM; both read to the end. Checks the bytes (count
    and SHA-256, what arrived before included) both ways."""
    for st in (x.streams[sx], y.streams[sy]):
        st.keep = False
        st.hasher = hashlib.sha256(bytes(st.data))
    ox, oy = x_off, 0
    y_ended = False
    end = time.monotonic() + timeout
    while not (x.streams[sx].ended and y.streams[sy].ended):
        zt.check(time.monotonic() < end, f"transfer incomplete: {x.name} sent {ox}, {y.name} "
                 f"sent {oy}, received {y.streams[sy].received} / {x.streams[sx].received}")
        zt.check(not x.closed and not y.closed, f"closed: {x.close_error} {y.close_error}")
        ox = x.send_some(sx, xy, ox)
        # Y ends only after X has sent all (the harness stops sending on a
        # stream whose response has ended).
        oy = y.send_some(sy, yx, oy, end_stream=False)
        if ox == len(xy) and oy == len(yx) and not y_ended:
            y.conn.end_stream(sy)
            y.flush()
            y_ended = True
        x.pump(0.002)
        y.pump(0.002)
    a, b = x.streams[sx], y.streams[sy]
    zt.check(a.reset is None and b.reset is None, f"resets: {a.reset} {b.reset}")
    zt.check(b.received == len(xy) and b.hasher.digest() == hashlib.sha256(xy).digest(),
             f"{x.name}->{y.name}: {b.received} of {len(xy)} bytes, or they differ")
    zt.check(a.received == len(yx) and a.hasher.digest() == hashlib.sha256(yx).digest(),
             f"{y.name}->{x.name}: {a.received} of {len(yx)} bytes, or they differ")


def offer(opener, ev_owner, ev_sid, n_event, acceptor=None, body=None):
    """OPENER opens to EV_OWNER's endpoint; the Incoming arrives on EV_SID;
    ACCEPTOR (default: EV_OWNER) accepts. (opener sid, acceptor sid, session id)."""
    acceptor = acceptor or ev_owner
    peer = ev_owner.name.split("-")[0]
    sa = opener.open(peer, body=body)
    others = [opener] + ([acceptor] if acceptor is not ev_owner else [])
    kind, inc = ev_owner.wait_event(ev_sid, n_event, others=others)
    zt.check(kind == "incoming", f"{ev_owner.name}'s event #{n_event}: {kind}")
    sb = acceptor.accept(inc["session_id"])
    opener.wait(lambda: opener.streams[sa].headers is not None, others=[acceptor, ev_owner],
                what="open's answer")
    acceptor.wait(lambda: acceptor.streams[sb].headers is not None, others=[opener],
                  what="accept's answer")
    zt.check(opener.streams[sa].status == "200" and acceptor.streams[sb].status == "200",
             f"joined: {opener.streams[sa].headers} {acceptor.streams[sb].headers}")
    return sa, sb, inc["session_id"]


def watch_events(agent, sid, pb):
    msgs, _ = hc.grpc_messages(bytes(agent.streams[sid].data))
    return [pb.watch.WatchEvent.FromString(m) for m in msgs]


def run():
    F = cp.Findings()
    hub = hc.start("workers", "--workers", "3")
    zt.check(hub.logs("hub.listen")[0].get("workers") == "3", f"hub.listen: {hub.logs('hub.listen')}")
    pb = cp.protos()
    alice_c, bob_c, carol_c = (hc.enrol(hub, n) for n in ("alice", "bob", "carol"))
    admin_c = hub.admin_creds()

    # -- unary calls, forwarded by whichever data worker took the CLI's connection
    opens = hub.logs("link.open")
    zt.check(opens and all(e["worker"] in ("1", "2", "3") for e in opens),
             f"connections taken by workers {[e['worker'] for e in opens]} (expected 1-3 only)")
    joins = hub.logs("endpoint.joined")
    F.check(len(joins) == 3 and all(e["worker"] == "0" for e in joins),
            f"joins ran on workers {[e['worker'] for e in joins]}, expected the control worker 0")

    # -- a Watch on a data worker (raw HTTP/2, so that we know which)
    watcher, ww, _ = connect_where(hub, admin_c, "watcher", lambda w: True, events=False)
    req = pb.watch.SubscribeRequest(topics=[pb.watch.TOPIC_ENDPOINTS, pb.watch.TOPIC_REVOCATIONS])
    wsid = watcher.request("/ztm.v1.Watch/Subscribe", body=cp.grpc_frame(req.SerializeToString()),
                           end_stream=True, grpc=True)
    watcher.wait(lambda: any(e.type == pb.watch.WatchEvent.TYPE_SYNCED
                             for e in watch_events(watcher, wsid, pb)), what="the snapshot")
    snap = watch_events(watcher, wsid, pb)
    F.check(snap[0].type == pb.watch.WatchEvent.TYPE_RESET and
            {e.endpoint.name for e in snap if e.type == pb.watch.WatchEvent.TYPE_PUT} >=
            {"alice", "bob", "carol"}, f"watch snapshot on worker {ww}: {snap}")
    zt.log(f"watch on worker {ww}: snapshot of {len(snap)} events")

    # -- alice and bob on different workers
    alice, wa, a_ev = connect_where(hub, alice_c, "alice", lambda w: True)
    bob, wb, b_ev = connect_where(hub, bob_c, "bob", lambda w: w != wa)
    zt.log(f"alice on worker {wa}, bob on worker {wb}")

    # presence, written by the control worker, seen by the watch and by a call
    def online_put(name):
        return [e for e in watch_events(watcher, wsid, pb)[len(snap):]
                if e.type == pb.watch.WatchEvent.TYPE_PUT and e.endpoint.name == name and
                e.endpoint.online]
    watcher.wait(lambda: online_put("alice") and online_put("bob"), others=[alice, bob],
                 what="presence events")
    r = hc.ztm(hub, "get", "endpoints")
    F.check(r.returncode == 0 and all(n in r.stdout for n in ("alice", "bob", "carol")),
            f"ztm get endpoints: rc {r.returncode} {r.stdout!r} {r.stderr!r}")
    r = hc.ztm(hub, "invite", "dave")
    F.check(r.returncode == 0 and r.stdout.strip(), f"ztm invite dave: rc {r.returncode} {r.stderr}")

    # -- a session across workers, exact both ways
    early = b"sent before the accept\n"
    n_b = 2
    sa, sb, sid = offer(alice, bob, b_ev, n_b, body=early)
    n_b += 1
    j = hub.wait_for_log("relay.session_joined", session=sid)
    F.check(j["worker"] == str(wa) and j.get("acceptor_worker") == str(wb),
            f"session_joined: {j} (alice on {wa}, bob on {wb})")
    ab, ba = early + os.urandom(2 * hc.MiB), os.urandom(2 * hc.MiB + 5)
    exchange(alice, sa, bob, sb, ab, ba, x_off=len(early))
    e = hub.wait_for_log("relay.session_end", session=sid)
    F.check(e.get("bytes_ab") == str(len(ab)) and e.get("bytes_ba") == str(len(ba)) and
            e.get("reason") == "done", f"session_end: {e}")
    zt.log("across workers: 2 MiB each way exact, END_STREAM both ways")

    # -- flow control across workers: bob reads nothing at first
    sa, sb, sid = offer(alice, bob, b_ev, n_b)
    n_b += 1
    bob.streams[sb].auto_ack = False
    rss0 = zt.rss_bytes(hub.pid)
    data = os.urandom(4 * hc.MiB)
    bob_window = bob.conn.local_settings.initial_window_size
    off, last_change, last_off = 0, time.monotonic(), 0
    while time.monotonic() - last_change < 1.5:
        off = alice.send_some(sa, data, off, end_stream=False)
        alice.pump(0.01)
        bob.pump(0.01)
        if off != last_off:
            last_off, last_change = off, time.monotonic()
        zt.check(off < len(data), "alice sent everything to a reader that took nothing")
    limit = HUB_WINDOW + bob_window + 64 * 1024
    F.check(off <= limit, f"alice sent {off} bytes to a reader that took none (limit {limit})")
    F.check(alice.window(sa) == 0, f"alice's window is {alice.window(sa)}, expected 0")
    rss1 = zt.rss_bytes(hub.pid)
    F.check(rss1 - rss0 < 16 * hc.MiB, f"hub RSS grew {(rss1 - rss0) >> 20} MiB while stalled")
    zt.log(f"stalled across workers after {off} bytes; hub RSS {rss0 >> 20} -> {rss1 >> 20} MiB")
    bob.streams[sb].auto_ack = True
    bob.ack(sb)
    exchange(alice, sa, bob, sb, data, os.urandom(2 * hc.MiB), x_off=off)
    e = hub.wait_for_log("relay.session_end", session=sid)
    F.check(e.get("bytes_ab") == str(len(data)) and e.get("reason") == "done",
            f"session_end after the stall: {e}")

    # -- the accept on a third worker (bob's second connection, no Events there)
    bob2, wb2, _ = connect_where(hub, bob_c, "bob-2", lambda w: w not in (wa, wb), events=False)
    sa, sb, sid = offer(alice, bob, b_ev, n_b, acceptor=bob2)
    n_b += 1
    j = hub.wait_for_log("relay.session_joined", session=sid)
    F.check(j["worker"] == str(wa) and j.get("acceptor_worker") == str(wb2),
            f"session_joined with the accept on worker {wb2}: {j}")
    exchange(alice, sa, bob2, sb, os.urandom(hc.MiB), os.urandom(hc.MiB))
    zt.log(f"Incoming on worker {wb}, accept on worker {wb2}, opener on {wa}: exact")

    # -- revocation: bob cut on his worker, alice reset on hers
    sa, sb, sid = offer(alice, bob, b_ev, n_b)
    t_end = time.monotonic() + 0.3
    oa = ob = 0
    while time.monotonic() < t_end:
        oa = alice.send_some(sa, data, oa, end_stream=False) % len(data)
        ob = bob.send_some(sb, data, ob, end_stream=False) % len(data)
        alice.pump(0.005)
        bob.pump(0.005)
    r = hc.ztm(hub, "revoke", "bob")
    zt.check(r.returncode == 0, f"ztm revoke bob: rc {r.returncode} {r.stderr}")
    t0 = time.monotonic()
    while not (alice.streams[sa].ended and bob.closed and bob2.closed):
        if time.monotonic() - t0 > 15:
            break
        oa = alice.send_some(sa, data, oa, end_stream=False) % len(data)
        alice.pump(0.01)
        bob.pump(0.01)
        bob2.pump(0.01)
        watcher.pump(0)
    F.check(bob.closed and bob2.closed, f"bob's connections after his revocation: worker {wb} "
            f"closed={bob.closed}, worker {wb2} closed={bob2.closed}")
    F.check(alice.streams[sa].reset == CANCEL,
            f"alice's stream (worker {wa}) after bob's revocation: reset={alice.streams[sa].reset}")
    cuts = hub.logs("grpc.revoked_cut", endpoint="bob")
    F.check({c["worker"] for c in cuts} == {str(wb), str(wb2)},
            f"revoked_cut on workers {[c['worker'] for c in cuts]}, expected {wb} and {wb2}")
    e = hub.wait_for_log("relay.session_end", session=sid)
    F.check(e.get("reason") == "acceptor_reset", f"session_end after the revocation: {e}")
    zt.log(f"revoked: bob cut on workers {wb} and {wb2}, alice reset on {wa} within "
           f"{time.monotonic() - t0:.2f}s")
    watcher.wait(lambda: any(ev.type == pb.watch.WatchEvent.TYPE_PUT and
                             ev.topic == pb.watch.TOPIC_REVOCATIONS
                             for ev in watch_events(watcher, wsid, pb)), what="the revocation event")
    refused = 0
    for _ in range(8):
        try:
            b3 = hc.Agent(hub, bob_c, "bob-again")
            s3 = b3.events()
            st = b3.wait_end(s3, timeout=5)
            F.check(b3.closed, f"revoked bob's connection stayed up: Events {st.headers}")
            refused += b3.closed
            b3.close()
        except (OSError, Exception):  # noqa: BLE001 — the handshake refused: expected
            refused += 1
    F.check(refused == 8, f"revoked bob: {8 - refused} of 8 connections were not refused")
    refusals = hub.logs("tls.verify_failed")
    zt.log(f"revoked bob refused 8 times (verify_failed on workers "
           f"{sorted({e.get('worker') for e in refusals})})")

    # -- SIGTERM: Events ends UNAVAILABLE, exit 0
    carol, wc, c_ev = connect_where(hub, carol_c, "carol", lambda w: w != wa)
    hub.signal(signal.SIGTERM)
    for ag, ev in ((alice, a_ev), (carol, c_ev)):
        st = ag.wait_end(ev, timeout=15)
        F.check(st.trailers and st.trailers.get("grpc-status") == "14",
                f"{ag.name}'s Events at shutdown: {st.trailers} {st.reset}")
    for ag in (alice, carol, watcher):
        ag.wait(lambda: ag.closed or not hub.alive(), timeout=15, what="the hub's exit")
        ag.close()
    rc = hub.wait_exit(20)
    F.check(rc == 0, f"hub after SIGTERM: {zt.describe_rc(rc)}")

    # -- one data worker
    hub1 = hc.start("workers1", "--workers", "1")
    a_c, b_c = hc.enrol(hub1, "alice1"), hc.enrol(hub1, "bob1")
    a1, a1_ev, _ = hc.connect_agent(hub1, a_c, "alice1")
    b1, b1_ev, _ = hc.connect_agent(hub1, b_c, "bob1")
    F.check(worker_of(hub1, a1) == 1 and worker_of(hub1, b1) == 1, "--workers 1: not worker 1")
    sa, sb, _ = offer(a1, b1, b1_ev, 2)
    exchange(a1, sa, b1, sb, os.urandom(hc.MiB), os.urandom(hc.MiB))
    r = hc.ztm(hub1, "get", "endpoints")
    F.check(r.returncode == 0 and "alice1" in r.stdout, f"--workers 1: ztm get endpoints: {r}")
    a1.close()
    b1.close()
    hub1.stop()
    return F.done("sessions spliced across workers exact both ways with flow control (stall, RSS "
                  "flat), accept on a third worker, calls and Watch through data workers, "
                  "revocation cuts bob on his workers and resets alice on hers, SIGTERM exit 0; "
                  "--workers 1 works")


if __name__ == "__main__":
    zt.main(run, deadline=250)
