"""mesh.traffic: real TCP traffic through a tunnel (alice imports what bob
exports, through the hub):
  - curl to python3 -m http.server behind bob: a page and a 4 MiB random
    file, exact bytes (SHA-256);
  - iperf3 -t 2 through a tunnel: exits 0 and moved bytes both ends saw;
  - 100 concurrent connections x 1 MiB random each way to an echo server,
    SHA-256 of every echo checked;
  - half-close: the client sends, shuts down its write side, and still gets
    the server's whole reply, which the server sends only after EOF;
  - a refused target (nothing listens at the export's --to): the importer's
    connection is closed with no data, the importer logs tunnel.refused
    status=502 and the exporter tunnel.connect_failed; the tunnel keeps
    serving afterwards;
  - `ztm tunnel rm import` closes the port; `ztm leave mesh` deletes the
    mesh's folder and closes its imports."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshcommon as mc  # noqa: E402
from meshcommon import zt  # noqa: E402

MiB = mc.MiB


def http_part(alice, bob):
    www = mc.subdir("www")
    page = b"<html><body><h1>ztm mesh</h1>" + os.urandom(16).hex().encode() + b"</body></html>\n"
    mc.write(os.path.join(www, "index.html"), page)
    blob = os.urandom(4 * MiB)
    mc.write(os.path.join(www, "blob.bin"), blob)
    srv = mc.HttpDir(www)
    bob.export("web", srv.port)
    port = alice.import_("web")
    zt.log(f"web: bob exports 127.0.0.1:{srv.port}, alice imports on {port}")
    rc, body = mc.curl(port, "/index.html")
    zt.check(rc == 0, f"curl through the tunnel: exit {rc}")
    zt.check(body == page, f"the page through the tunnel differs: {len(body)} bytes, "
             f"expected {len(page)}: {body[:80]!r}")
    out = os.path.join(mc.tmpdir(), "blob.out")
    rc, _ = mc.curl(port, "/blob.bin", out=out)
    zt.check(rc == 0, f"curl of the 4 MiB file: exit {rc}")
    got = mc.read(out)
    zt.check(len(got) == len(blob), f"4 MiB file: got {len(got)} bytes, expected {len(blob)}")
    zt.check(zt.sha256(got) == zt.sha256(blob), "4 MiB file: SHA-256 differs")
    # the importer's view of it
    t = [t for t in alice.tunnels() if t["name"] == "web"][0]
    zt.check(t["connections_total"] >= 2, f"ztm tunnel ls counts {t['connections_total']} "
             "connections on the import, expected >= 2")
    return f"http page + 4 MiB exact"


def iperf_part(alice, bob):
    sport = mc.free_port()
    srv = zt.spawn(["iperf3", "-s", "-1", "-B", mc.LOCAL, "-p", str(sport)], name="iperf3-s")
    zt.wait_until(lambda: subprocess.run(["ss", "-ltnH", f"sport = :{sport}"], capture_output=True,
                                         text=True).stdout.strip() != "", 10,
                  "iperf3 -s to listen")
    bob.export("iperf", sport)
    port = alice.import_("iperf")
    r = subprocess.run(["iperf3", "-c", mc.LOCAL, "-p", str(port), "-t", "2", "-J"],
                       capture_output=True, text=True, timeout=60)
    zt.check(r.returncode == 0, f"iperf3 -c through the tunnel: exit {r.returncode}: "
             f"{r.stdout[-400:]} {r.stderr[-400:]}")
    res = json.loads(r.stdout)
    sent = res["end"]["sum_sent"]["bytes"]
    recv = res["end"]["sum_received"]["bytes"]
    zt.check(sent > 0 and recv > 0, f"iperf3 moved sent={sent} received={recv} bytes")
    rc = srv.wait_exit(20)
    zt.check(rc == 0, f"iperf3 -s (one-off) {zt.describe_rc(rc)}")
    zt.log(f"iperf3: {sent} bytes sent, {recv} received in 2 s")
    return f"iperf3 {recv >> 20} MiB"


def concurrent_part(alice, bob, echo_port, n=100, size=MiB):
    port = alice.import_port("echo")
    results = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        data = os.urandom(size)
        try:
            s = zt.connect(port, timeout=120)
            barrier.wait(30)
            err = []

            def send():
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                except OSError as e:
                    err.append(e)

            t = threading.Thread(target=send, daemon=True)
            t.start()
            nbytes, digest, _ = zt.recv_until_eof(s)
            t.join(120)
            s.close()
            if err:
                results[i] = f"send: {err[0]}"
            elif nbytes != size or digest != zt.sha256(data):
                results[i] = f"echo {nbytes} bytes, SHA-256 {'ok' if digest == zt.sha256(data) else 'differs'}"
            else:
                results[i] = "ok"
        except Exception as e:  # noqa: BLE001
            results[i] = f"{type(e).__name__}: {e}"

    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(200)
    bad = [(i, r) for i, r in enumerate(results) if r != "ok"]
    zt.check(not bad, f"{len(bad)} of {n} concurrent connections failed, e.g. {bad[:5]}")
    return f"{n} x {size >> 20} MiB echo exact"


def halfclose_part(alice, bob):
    """The server reads to EOF, then answers with the SHA-256 of what it read
    and 2 MiB more; the client's half-closed connection must get all of it."""
    tail = os.urandom(2 * MiB)

    def handler(conn):
        n, digest, _ = zt.recv_until_eof(conn)
        conn.sendall(f"{n} {digest}\n".encode() + tail)

    srv = zt.TcpServer(handler, name="halfclose-target")
    bob.export("half", srv.port)
    port = alice.import_("half")
    mc.wait_carries(port, what="half", probe=lambda: mc.try_roundtrip(port, b"x") is not None)
    data = os.urandom(3 * MiB)
    s = zt.connect(port, timeout=60)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    _, _, got = zt.recv_until_eof(s, keep=True)
    s.close()
    want = f"{len(data)} {zt.sha256(data)}\n".encode() + tail
    zt.check(got[:len(want) - len(tail)] == want[:len(want) - len(tail)],
             f"half-close: the server's answer is {got[:80]!r}, expected {want[:80]!r} "
             "(it did not see our EOF, or saw other bytes)")
    zt.check(got == want, f"half-close: got {len(got)} bytes back, expected {len(want)} (the "
             "reply sent after our FIN was cut short or differs)")
    srv.check()
    srv.close()
    return "half-close exact"


def refused_part(alice, bob):
    hold, dead = zt.reserve_port()  # bound, never listening: connect is refused
    bob.export("dead", dead)
    port = alice.import_("dead")
    am, bm = alice.mark(), bob.mark()
    s = zt.connect(port, timeout=20)
    s.sendall(b"hello?")
    s.settimeout(20)
    try:
        d = s.recv(65536)
        how = "EOF" if d == b"" else f"{len(d)} bytes"
    except ConnectionResetError:
        d, how = b"", "reset"
    except socket.timeout:
        zt.fail("refused target: the importer's connection was not closed within 20 s")
    s.close()
    zt.check(d == b"", f"refused target: got {how} from the importer, expected the connection "
             "closed with no data")
    ev = alice.wait_for_log("tunnel.refused", after=am, service="dead", timeout=20)
    zt.check(ev.get("status") == "502", f"importer's tunnel.refused has status={ev.get('status')}, "
             f"expected 502: {ev}")
    zt.check("refused" in ev.get("error", "").lower(), f"tunnel.refused error= does not say the "
             f"target refused: {ev}")
    ev2 = bob.wait_for_log("tunnel.connect_failed", after=bm, service="dead", timeout=20)
    zt.check(ev2.get("to") == f"127.0.0.1:{dead}", f"exporter's tunnel.connect_failed to= "
             f"{ev2.get('to')}, expected 127.0.0.1:{dead}")
    t = [t for t in alice.tunnels() if t["name"] == "dead"][0]
    zt.log(f"refused: importer saw {how}; alice: {ev.get('error')!r}; bob: {ev2.get('error')!r}; "
           f"ls refused={t['connections_refused']}")
    hold.close()
    return f"refused target -> {how} + tunnel.refused 502"


def refused_connect(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


def rm_and_leave(alice, eport):
    """`ztm tunnel rm import` closes the port and drops the line from
    tunnels.conf; `ztm leave mesh` stops everything of the mesh and deletes
    its folder (key included)."""
    port = alice.import_port("web")
    out = alice.ok("tunnel", "rm", "import", "web")
    zt.check(out.strip() == "removed import web/tcp", f"ztm tunnel rm printed {out!r}")
    zt.check(refused_connect(port), f"the removed import still accepts on {port}")
    conf = mc.read(os.path.join(alice.mesh_dir(), "tunnels.conf"), "r")
    zt.check("import web " not in conf and "import echo " in conf,
             f"tunnels.conf after rm: {conf!r}")
    zt.check("web" not in [t["name"] for t in alice.tunnels()], "ztm tunnel ls still lists web")
    d = alice.mesh_dir()
    out = alice.ok("leave", "mesh")
    zt.check(out.strip() == "left mesh mesh", f"ztm leave printed {out!r}")
    zt.check(not os.path.exists(d), f"ztm leave left {d} behind")
    zt.check(alice.status()["meshes"] == [], "alice's status still lists a mesh after leave")
    zt.check(refused_connect(eport), "the echo import still accepts after leave")
    return "rm import closes its port; leave deletes the mesh"


def run():
    hub, ag = mc.mesh(("alice", "bob"))
    alice, bob = ag["alice"], ag["bob"]
    echo = mc.echo_server()
    bob.export("echo", echo.port)
    eport = alice.import_("echo")
    mc.wait_carries(eport, what="echo tunnel")
    parts = [http_part(alice, bob), iperf_part(alice, bob),
             concurrent_part(alice, bob, echo.port), halfclose_part(alice, bob),
             refused_part(alice, bob)]
    # the echo tunnel still carries traffic after all that
    data = os.urandom(MiB)
    zt.check(mc.roundtrip(eport, data) == data, "echo through the tunnel after the refusal differs")
    echo.check()
    parts.append(rm_and_leave(alice, eport))
    for a in (alice, bob):
        a.stop()
    hub.stop()
    mc.check_all_sanitizers()
    return "; ".join(parts)


if __name__ == "__main__":
    zt.main(run, deadline=280)
