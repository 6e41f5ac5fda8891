#!/usr/bin/python3
"""cp.watch: Watch.Subscribe from a stock gRPC client.

  snapshot  after_version 0: RESET at V, every existing endpoint and service
            as a PUT carrying V (the same objects ListEndpoints/Services.List
            show), SYNCED at V
  live      Join, Publish, Revoke, Unpublish, Hubs.Register each produce
            their events in the order of the calls, with versions that go
            up by one (a subscriber of every topic sees every version);
            Publish/Revoke responses carry the version of their last event;
            Invite (not a watched object) produces none
  resume    a subscriber disconnects at version L; more changes happen; a new
            Subscribe(after_version=L) gets exactly the events after L — the
            same bytes a subscriber that stayed connected got, nothing
            missed, nothing repeated, no RESET — and then nothing more
  filters   topics=[SERVICES] gets only service events; after_version ahead
            of the store gets a RESET snapshot; after_version = current gets
            only what comes next
  revoked   a watcher whose certificate is revoked is cut off with
            UNAUTHENTICATED (and a revoked identity cannot subscribe)"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpcommon as cp  # noqa: E402

zt = cp.zt
grpc = cp.grpc
SC = grpc.StatusCode


def run():
    pb = cp.protos()
    F = cp.Findings()
    W = pb.watch.WatchEvent
    T = pb.types
    ctl = cp.start("ctl")
    admin = ctl.client(ctl.admin_creds())

    def show(evs):
        return [(e.version,) + cp.ev_key(pb, e) for e in evs]

    # ---- existing state ---------------------------------------------------------------------
    w1 = cp.invite_and_join(ctl, admin, "w1")
    cp.invite_and_join(ctl, admin, "w2")
    c1 = ctl.client(w1.creds)
    c1.ok("Services/Publish", pb.services.PublishRequest(name="svc1", weight=3))
    eps, v_list = admin.list_endpoints()
    svcs = admin.ok("Services/List", pb.services.ListServicesRequest())

    # ---- snapshot from version 0 -----------------------------------------------------------------
    def snapshot(watcher, what):
        first = watcher.next(what=f"{what}: RESET")
        F.check(first.type == W.TYPE_RESET, f"{what}: first event {show([first])}, expected RESET")
        puts = []
        while True:
            e = watcher.next(what=f"{what}: snapshot")
            if e.type == W.TYPE_SYNCED:
                break
            puts.append(e)
        F.check(e.version == first.version, f"{what}: SYNCED at {e.version}, RESET at "
                f"{first.version}")
        F.check(all(p.type == W.TYPE_PUT and p.version == first.version for p in puts),
                f"{what}: snapshot entries are not PUTs at the RESET's version: {show(puts)}")
        return first.version, puts

    w0 = cp.Watcher(admin, 0, name="w0")
    v, puts = snapshot(w0, "Subscribe(0)")
    F.check(v == v_list, f"snapshot version {v}, ListEndpoints said {v_list} (nothing changed "
            "between)")
    snap_eps = {p.endpoint.id: p.endpoint for p in puts if p.WhichOneof("object") == "endpoint"}
    F.check(set(snap_eps) == {e.id for e in eps},
            f"snapshot endpoints {sorted(e.name for e in snap_eps.values())}, ListEndpoints "
            f"{sorted(e.name for e in eps)}")
    for e in eps:
        if e.id in snap_eps:
            F.check(snap_eps[e.id] == e, f"snapshot endpoint {e.name} differs from "
                    f"ListEndpoints': {snap_eps[e.id]} vs {e}")
    snap_svcs = [p.service for p in puts if p.WhichOneof("object") == "service"]
    F.check([s.name for s in snap_svcs] == [s.name for s in svcs.services] and
            all(p.topic == pb.watch.TOPIC_ENDPOINTS for p in puts
                if p.WhichOneof("object") == "endpoint") and
            all(p.topic == pb.watch.TOPIC_SERVICES for p in puts
                if p.WhichOneof("object") == "service"),
            f"snapshot services {[s.name for s in snap_svcs]}, Services.List "
            f"{[s.name for s in svcs.services]}")
    # a reference subscriber that stays connected throughout
    ref = cp.Watcher(admin, 0, name="ref")
    snapshot(ref, "reference Subscribe(0)")

    # ---- live events, in order ---------------------------------------------------------------------
    last = v

    def expect_events(what, n, checks):
        """N events on w0, versions last+1.., each checked by CHECKS[i](ev)."""
        nonlocal last
        evs = w0.take(n, what=what)
        F.check([e.version for e in evs] == list(range(last + 1, last + 1 + n)),
                f"{what}: versions {[e.version for e in evs]}, expected {last + 1}..{last + n} "
                f"(events {show(evs)})")
        for e, (desc, ok) in zip(evs, checks):
            F.check(ok(e), f"{what}: event {show([e])} is not {desc}")
        last = evs[-1].version if evs else last
        return evs

    inv = admin.ok("Mesh/Invite", pb.mesh.InviteRequest(name="n3"))
    extra = w0.quiet(0.7)
    F.check(extra == [], f"Invite produced watch events: {show(extra)}")
    code, j3, details = cp.join(ctl, inv.token, "n3")
    zt.check(code == SC.OK, f"Join n3: {code.name} {details!r}")
    expect_events("Join n3", 1, [("PUT endpoint n3", lambda e: e.type == W.TYPE_PUT and
                                  e.topic == pb.watch.TOPIC_ENDPOINTS and
                                  e.endpoint.id == j3.id and e.endpoint.name == "n3" and
                                  not e.endpoint.revoked)])
    c3 = ctl.client(j3.creds)
    pr = c3.ok("Services/Publish", pb.services.PublishRequest(name="svc1", weight=1))
    evs = expect_events("n3 Publish svc1", 1, [(
        "PUT service svc1 with exporters w1 and n3",
        lambda e: e.type == W.TYPE_PUT and e.topic == pb.watch.TOPIC_SERVICES and
        e.service.name == "svc1" and {x.endpoint_id for x in e.service.exporters} ==
        {w1.id, j3.id})])
    F.check(pr.version == evs[-1].version, f"PublishResponse.version {pr.version}, its event "
            f"has {evs[-1].version}")
    rr = admin.ok("Mesh/Revoke", pb.mesh.RevokeRequest(endpoint_id=j3.id, reason="watch"))
    evs = w0.take(2, what="Revoke n3")
    F.check([e.version for e in evs] == [last + 1, last + 2],
            f"Revoke n3: versions {[e.version for e in evs]}, expected {last + 1}, {last + 2}")
    last = evs[-1].version
    revs = [e for e in evs if e.WhichOneof("object") == "revocation"]
    epev = [e for e in evs if e.WhichOneof("object") == "endpoint"]
    F.check(len(revs) == 1 and revs[0].type == W.TYPE_PUT and
            revs[0].topic == pb.watch.TOPIC_REVOCATIONS and
            cp.serial_eq(revs[0].revocation.serial, j3.cert) and
            revs[0].revocation.endpoint_id == j3.id,
            f"Revoke n3: no PUT revocation of serial {cp.serial_hex(j3.cert)}: {show(evs)}")
    F.check(len(epev) == 1 and epev[0].endpoint.id == j3.id and epev[0].endpoint.revoked,
            f"Revoke n3: no PUT of endpoint n3 with revoked=true: {show(evs)}")
    F.check(rr.version == last, f"RevokeResponse.version {rr.version}, its last event {last}")
    c3.close()

    # ---- disconnect at L, changes, resume from L ------------------------------------------------------
    L = last
    w0.cancel()
    zt.log(f"w0 disconnected at version {L}")
    j4 = cp.invite_and_join(ctl, admin, "n4")
    c4 = ctl.client(j4.creds)
    c4.ok("Services/Publish", pb.services.PublishRequest(name="svc2",
                                                         protocol=T.PROTOCOL_UDP))
    c1.ok("Services/Unpublish", pb.services.UnpublishRequest(name="svc1"))
    admin.ok("Services/SetPolicy", pb.services.SetPolicyRequest(
        name="svc2", protocol=T.PROTOCOL_UDP, lb_policy=T.LB_POLICY_CONSISTENT_HASH))
    hub = ctl.client(ctl.hub_creds())
    hub.ok("Hubs/Register", pb.hubs.RegisterHubRequest(addresses=[f"127.0.0.1:{ctl.port}"]))
    admin.ok("Mesh/Revoke", pb.mesh.RevokeRequest(endpoint_name="w2"))
    _, v_now = admin.list_endpoints()
    missed_n = v_now - L
    F.check(missed_n >= 7, f"only {missed_n} versions after L={L} for 7+ changes")
    # the reference subscriber got them all
    ref_all = ref.take(L - v + missed_n, what="reference: every live event")
    ref_missed = [e for e in ref_all if e.version > L]
    F.check([e.version for e in ref_missed] == list(range(L + 1, v_now + 1)),
            f"reference subscriber versions after L: {[e.version for e in ref_missed]}, "
            f"expected {L + 1}..{v_now}")
    w_res = cp.Watcher(admin, L, name="resumed")
    got = w_res.take(len(ref_missed), what="resumed: the missed events")
    F.check(all(e.type != W.TYPE_RESET for e in got), f"resume from {L} (in the feed) sent a "
            f"RESET: {show(got)}")
    F.check([e.version for e in got] == [e.version for e in ref_missed],
            f"resumed versions {[e.version for e in got]}, the connected subscriber saw "
            f"{[e.version for e in ref_missed]}")
    F.check([e.SerializeToString(deterministic=True) for e in got] ==
            [e.SerializeToString(deterministic=True) for e in ref_missed],
            "resumed events differ from the connected subscriber's: "
            f"{show(got)} vs {show(ref_missed)}")
    more = w_res.quiet(1.0)
    F.check(more == [], f"resumed stream repeated or invented events: {show(more)}")
    kinds = [cp.ev_key(pb, e)[:3] for e in got]
    for want in (("TYPE_PUT", "TOPIC_ENDPOINTS", "endpoint"),
                 ("TYPE_PUT", "TOPIC_SERVICES", "service"),
                 ("TYPE_PUT", "TOPIC_HUBS", "hub"),
                 ("TYPE_PUT", "TOPIC_REVOCATIONS", "revocation")):
        F.check(want in kinds, f"no {want} among the missed events {show(got)}")

    # the next change reaches both
    admin.ok("Mesh/Revoke", pb.mesh.RevokeRequest(endpoint_name="n4"))
    a = w_res.take(2, what="resumed: live after catching up")
    b = ref.take(2, what="reference: live")
    F.check([e.SerializeToString() for e in a] == [e.SerializeToString() for e in b] and
            a[0].version == v_now + 1, f"after catching up: {show(a)} vs {show(b)}")
    v_now = b[-1].version

    # ---- topic filter; resume from the future; resume at the head ----------------------------------------
    ws = cp.Watcher(admin, L, topics=[pb.watch.TOPIC_SERVICES], name="services-only")
    want = [e for e in ref_missed + b if e.topic == pb.watch.TOPIC_SERVICES]
    gs = ws.take(len(want), what="services-only: missed service events")
    F.check([e.SerializeToString() for e in gs] == [e.SerializeToString() for e in want],
            f"topics=[SERVICES] from {L}: {show(gs)}, expected {show(want)}")
    F.check(ws.quiet(0.7) == [], "topics=[SERVICES] sent more than the service events")
    ws.cancel()
    wf = cp.Watcher(admin, v_now + 1000, name="future")
    e = wf.next(what="future: first event")
    F.check(e.type == W.TYPE_RESET, f"Subscribe(after_version={v_now + 1000}) beyond the store: "
            f"first event {show([e])}, expected RESET")
    wf.cancel()
    wh = cp.Watcher(admin, v_now, name="head")
    F.check(wh.quiet(0.7) == [], "Subscribe(after_version=current) sent events before a change")
    c1.ok("Services/Publish", pb.services.PublishRequest(name="svc3"))
    e = wh.next(what="head: the next change")
    F.check(e.version == v_now + 1 and e.service.name == "svc3",
            f"Subscribe(after_version=current): got {show([e])}, expected svc3 at {v_now + 1}")
    wh.cancel()
    w_res.cancel()

    # ---- a watcher whose certificate is revoked is cut off ---------------------------------------------------
    j5 = cp.invite_and_join(ctl, admin, "n5")
    c5 = ctl.client(j5.creds)
    w5 = cp.Watcher(c5, 0, name="n5-watch")
    snapshot(w5, "n5 Subscribe(0)")
    admin.ok("Mesh/Revoke", pb.mesh.RevokeRequest(endpoint_name="n5"))
    code, details, evs = w5.wait_end(timeout=15)
    F.check(code == SC.UNAUTHENTICATED, f"revoked watcher: stream ended with "
            f"{code.name if code else code} ({details!r}), expected UNAUTHENTICATED")
    F.check(all(e.WhichOneof("object") != "endpoint" or e.endpoint.id != j5.id or
                e.endpoint.revoked for e in evs), f"revoked watcher got {show(evs)}")
    code, _, details = c5.first_stream_status("Watch/Subscribe", pb.watch.SubscribeRequest())
    refused = cp.tls_refusal(ctl.port, ctl.ca_pem(), j5.creds) if code == SC.UNAVAILABLE else None
    F.check(code == SC.UNAUTHENTICATED or refused, f"revoked identity Subscribe: {code.name} "
            f"({details!r}), expected UNAUTHENTICATED or a refusal at the TLS handshake")
    # the admin's reference stream is unaffected
    e = ref.next(what="reference after n5's revocation")
    F.check(e.type == W.TYPE_PUT, f"reference after n5: {show([e])}")
    F.check(not ctl.conn_errors(), f"the server dropped connections: {ctl.conn_errors()[:3]}")
    ref.cancel()
    for c in (admin, c1, c4, c5, hub):
        c.close()
    ctl.stop()
    return F.done(f"snapshot at {v}, live events in order, resume from {L} got "
                  f"{len(got)} events exactly, revoked watcher cut off")


if __name__ == "__main__":
    zt.main(run, deadline=200)
