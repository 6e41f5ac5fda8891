"""mesh.faults: crashes and restarts.
  - kill -9 the hub while 50 MiB go through a tunnel: the transfer fails
    promptly (reset or short EOF; it never hangs or completes);
  - the hub restarted on the same state dir and port, with the agents
    paused (SIGSTOP) so that they cannot publish anything again: `ztm get
    endpoints` still lists alice and bob, `ztm get services` still has the
    export; then the agents go on (SIGCONT), their hub links come back up
    (hub_state up, within 30 s) and the tunnel carries exact bytes again;
  - an agent restarted (SIGTERM, exit 0, start again), importer and then
    exporter: the tunnels come back from tunnels.conf (same ports) and
    carry exact bytes;
  - one agent in two meshes: a second hub with --mesh other, alice joins it
    with --mesh other; a tunnel in each mesh, both carry exact bytes; a
    tunnel command without --mesh is refused (exit 2) naming --mesh."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshcommon as mc  # noqa: E402
from meshcommon import zt  # noqa: E402

MiB = mc.MiB


def exact(port, what, size=MiB):
    data = os.urandom(size)
    got = mc.roundtrip(port, data)
    zt.check(got == data, f"{what}: {len(got)} bytes back of {size}, or different bytes")


def hub_crash(hub, alice, bob, port):
    push = mc.Pusher(port, 50 * MiB, rate=10 * MiB)
    zt.wait_until(lambda: push.received >= 4 * MiB or push.done.is_set(), 60,
                  "the transfer to get going")
    zt.check(not push.done.is_set(), f"the transfer ended before the crash: {push.result}")
    am = alice.mark()
    t0 = time.monotonic()
    hub.kill9()
    res = push.wait(30)
    took = time.monotonic() - t0
    zt.check(res[0] == "error", f"the transfer went on through a dead hub: {res}")
    zt.log(f"hub killed at {push.sent >> 20} MiB sent: transfer failed after {took:.1f}s "
           f"({res[1]}; {push.received >> 20} MiB back)")
    alice.wait_for_log("agent.hub_down", after=am, timeout=20)


def hub_restart(hub, alice, bob, port):
    marks = {a.name: a.mark() for a in (alice, bob)}
    for a in (alice, bob):
        os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        hub.start()
        eps = {e["name"] for e in hub.get_json("endpoints")}
        zt.check({"alice", "bob"} <= eps, f"after kill -9 and restart, ztm get endpoints lists "
                 f"{sorted(eps)}: alice or bob lost")
        svcs = hub.get_json("services")
        names = {(s.get("name"), s.get("protocol")) for s in svcs}
        zt.check(any(n == "echo" for n, _ in names), f"after kill -9 and restart, ztm get services "
                 f"lists {sorted(names)}: the export echo was lost")
        zt.log(f"restarted hub has endpoints {sorted(eps)} and services {sorted(names)} "
               "before any agent reconnected")
    finally:
        for a in (alice, bob):
            os.kill(a.proc.pid, signal.SIGCONT)
    t0 = time.monotonic()
    for a in (alice, bob):
        a.wait_up(after=marks[a.name], timeout=30)
    zt.wait_until(lambda: alice.hub_state() == "up" and bob.hub_state() == "up", 30,
                  "both agents' status hub_state up")
    zt.log(f"agents back up {time.monotonic() - t0:.1f}s after SIGCONT")
    mc.wait_carries(port, what="echo after the hub restart")
    exact(port, "echo after the hub restart", 4 * MiB)
    st = alice.mesh_status()
    zt.check(st["hub_connects"] >= 2, f"alice's hub_connects {st['hub_connects']} after a restart")


def agent_restart(hub, alice, bob, port):
    before_a, before_b = alice.tunnels(), bob.tunnels()
    for a, before in ((alice, before_a), (bob, before_b)):
        a.stop()   # SIGTERM: exit 0
        m0 = 0
        a.start()
        a.wait_up(after=m0)
        after = a.tunnels()
        key = lambda t: (t["direction"], t["name"], t["protocol"], t.get("to"), t.get("listen"))  # noqa
        zt.check(sorted(map(key, after)) == sorted(map(key, before)),
                 f"{a.name}'s tunnels after a restart: {sorted(map(key, after))}, "
                 f"before: {sorted(map(key, before))}")
        if a is bob:
            a.wait_for_log("agent.published", service="echo")
        mc.wait_carries(port, what=f"echo after restarting {a.name}")
        exact(port, f"echo after restarting {a.name}", 2 * MiB)
        zt.log(f"{a.name} restarted: {len(after)} tunnels back from tunnels.conf, echo exact")


def two_meshes(alice, carol_echo):
    other = mc.Hub(name="hub-other", mesh="other")
    zt.check(other.mesh_id == "other", f"second hub's mesh is {other.mesh_id}, expected other")
    carol = mc.Agent("carol")
    carol.join(other, mesh="other")
    carol.start()
    carol.wait_up("other")
    am = alice.mark()
    out = alice.join(other, mesh="other")   # the running agent picks it up (Reload)
    alice.wait_up("other", after=am)
    meshes = {m["name"]: m for m in alice.status()["meshes"]}
    zt.check(set(meshes) == {"mesh", "other"}, f"alice's status shows meshes {sorted(meshes)}")
    zt.check(meshes["other"]["mesh_id"] == "other" and meshes["mesh"]["mesh_id"] == "mesh",
             f"alice's mesh ids: {[(k, v['mesh_id']) for k, v in meshes.items()]}")
    # without --mesh, the agent cannot tell which mesh is meant
    rc, _, err = alice.cli("tunnel", "import", "svc2", "--listen", "0")
    zt.check(rc == 2 and err.startswith("ztm tunnel: error: ") and "--mesh" in err,
             f"tunnel import without --mesh in two meshes: rc {rc} {err!r}")
    carol.export("svc2", carol_echo.port, mesh="other")
    p2 = alice.import_("svc2", mesh="other")
    p1 = alice.import_port("echo", mesh="mesh")
    mc.wait_carries(p2, what="svc2 in mesh other")
    exact(p1, "echo in mesh 'mesh'", MiB)
    exact(p2, "svc2 in mesh 'other'", MiB)
    # the meshes are apart: mesh 'mesh' has no svc2
    p3 = alice.import_("svc2", mesh="mesh")
    got = mc.try_roundtrip(p3, b"hello", timeout=10)
    zt.check(not got, f"svc2 of mesh other answered through mesh 'mesh': {got!r}")
    zt.log("two meshes: a tunnel in each carries exact bytes; svc2 is not reachable across")
    carol.stop()
    return other


def run():
    hub, ag = mc.mesh(("alice", "bob"))
    alice, bob = ag["alice"], ag["bob"]
    echo = mc.echo_server()
    bob.export("echo", echo.port)
    port = alice.import_("echo", listen=mc.free_port())
    mc.wait_carries(port, what="echo")
    hub_crash(hub, alice, bob, port)
    # the cut transfer's handler sees a reset, when bob notices: expected
    echo.join(30)
    with echo._lock:
        echo.errors.clear()
    hub_restart(hub, alice, bob, port)
    agent_restart(hub, alice, bob, port)
    other = two_meshes(alice, mc.echo_server())
    for a in (alice, bob):
        a.stop()
    other.stop()
    hub.stop()
    echo.check()
    mc.check_all_sanitizers()
    return ("hub kill -9 cut the transfer; restart kept endpoints+services, agents back up, exact "
            "bytes; agent restarts kept tunnels; one agent in two meshes")


if __name__ == "__main__":
    zt.main(run, deadline=280)
