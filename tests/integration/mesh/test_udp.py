"""mesh.udp: UDP through a tunnel. bob exports a UDP echo server with
--udp, alice imports it with --udp; a Python UDP client sends datagrams of
many sizes (0 bytes to 65507, the largest an IPv4 UDP datagram can carry)
and gets each one back, byte for byte, as one datagram. Three clients at
once (three flows, one per client address) each get only their own echoes.
A UDP import and a TCP import of the same name live side by side."""
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshcommon as mc  # noqa: E402
from meshcommon import zt  # noqa: E402

SIZES = [0, 1, 2, 3, 17, 100, 512, 1199, 1200, 1201, 1472, 1500, 4096, 8191, 9000, 16384, 32768,
         60000, 65507]


def client(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((mc.LOCAL, 0))
    s.connect((mc.LOCAL, port))
    return s


def echo_once(s, data, timeout=5):
    """Sends DATA, waits for one datagram back; None on timeout."""
    s.send(data)
    s.settimeout(timeout)
    try:
        return s.recv(65535)
    except socket.timeout:
        return None


def run():
    hub, ag = mc.mesh(("alice", "bob"))
    alice, bob = ag["alice"], ag["bob"]
    echo = mc.UdpEcho()
    bob.export("dns", echo.port, udp=True)
    port = alice.import_("dns", udp=True)
    zt.log(f"udp: bob exports 127.0.0.1:{echo.port}/udp, alice imports on {port}/udp")
    t = [t for t in alice.tunnels() if t["name"] == "dns"][0]
    zt.check(t["protocol"] == "udp", f"ztm tunnel ls shows the import as {t['protocol']}, "
             "expected udp")

    # the first datagram of a flow waits for the route; a lost one is retried
    s = client(port)
    first = b"first-" + os.urandom(8).hex().encode()
    got = None
    for attempt in range(10):
        got = echo_once(s, first, timeout=3)
        if got is not None:
            break
        zt.log(f"udp: no echo of the first datagram (attempt {attempt + 1})")
    zt.check(got == first, f"first datagram: got {got!r}, expected {first!r}")

    # sizes, one at a time: every echo exact, as one datagram
    bad = []
    for n in SIZES:
        data = os.urandom(n)
        got = echo_once(s, data)
        if got != data:
            bad.append(f"{n} bytes -> " + ("nothing" if got is None else
                                           f"{len(got)} bytes{' (differ)' if len(got) == n else ''}"))
    zt.check(not bad, f"UDP echoes through the tunnel wrong: {bad}")
    zt.log(f"udp: {len(SIZES)} sizes from 0 to 65507 bytes echoed exactly")

    # three clients at once, 40 datagrams each, each gets only its own
    results = {}

    def flow(i):
        c = client(port)
        mine = []
        try:
            for k in range(40):
                data = f"client{i}-{k}-".encode() + os.urandom(1 + (k * 97) % 3000)
                got = None
                for _ in range(3):  # a flow's first datagram may wait for its route
                    got = echo_once(c, data)
                    if got is not None:
                        break
                if got != data:
                    mine.append(f"#{k}: {None if got is None else got[:16]!r}")
        finally:
            c.close()
        results[i] = mine

    ts = [threading.Thread(target=flow, args=(i,)) for i in range(3)]
    for th in ts:
        th.start()
    for th in ts:
        th.join(120)
    errs = {i: r for i, r in results.items() if r}
    zt.check(len(results) == 3 and not errs, f"concurrent UDP flows: wrong echoes {errs}")
    zt.log("udp: 3 concurrent flows x 40 datagrams exact")

    # a TCP service of the same name is another tunnel
    tcp = mc.echo_server()
    bob.export("dns", tcp.port)
    tport = alice.import_("dns")
    mc.wait_carries(tport, what="dns/tcp")
    data = os.urandom(4096)
    zt.check(echo_once(s, data) == data, "UDP echo after adding dns/tcp differs")
    s.close()
    kinds = sorted((t["direction"], t["protocol"]) for t in alice.tunnels() + bob.tunnels()
                   if t["name"] == "dns")
    zt.check(kinds == [("export", "tcp"), ("export", "udp"), ("import", "tcp"),
                       ("import", "udp")], f"tunnels named dns: {kinds}")
    zt.check(echo.count >= len(SIZES) + 120, f"the UDP echo server saw {echo.count} datagrams")
    for a in (alice, bob):
        a.stop()
    hub.stop()
    echo.close()
    mc.check_all_sanitizers()
    return f"{len(SIZES)} sizes (0..65507 B) exact, 3 flows x 40 exact, udp+tcp side by side"


if __name__ == "__main__":
    zt.main(run, deadline=240)
