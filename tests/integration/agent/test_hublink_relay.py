#!/usr/bin/env python3
"""Relay streams through a real `ztm hub`: two hub links (drivers alice and
bob) come up (Hello on Events); alice opens a session to bob, bob gets
Incoming and accepts; the bytes each sends (a seeded pattern, then EOF)
arrive at the other end exact (count and SHA-256), both ways at once, and
both streams end cleanly (on_eof, then on_close without error). Then with a
reader that hands credit back late (flow control end to end), an open to an
endpoint that is not connected (on_close with the hub's ztm-error), and the
hub killed under a live session (on_close "link down", then backoff and up
again when the hub is back)."""
import os
import sys

import hlcommon as hl
from hlcommon import zt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hub"))
import hubcommon  # noqa: E402

MiB = 1 << 20


def relay_pair(hub, alice_creds, bob_creds, a_send, b_send, *bob_args, tag=""):
    bob = hl.Driver([hub.addr], hub.mesh, bob_creds, "--accept", "--send", b_send, "--seed", 2,
                    *bob_args, name=f"bob{tag}")
    bob.wait_line(rf"^state up hub={hub.addr}")
    alice = hl.Driver([hub.addr], hub.mesh, alice_creds, "--open", "bob", "--send", a_send,
                      "--seed", 1, name=f"alice{tag}")
    alice.wait_line(rf"^state up hub={hub.addr}")
    bob.wait_line(r"^incoming session=\d+ from=alice$")
    for d, got, seed in ((alice, b_send, 2), (bob, a_send, 1)):
        d.wait_line(r"^relay joined$")
        _, m = d.wait_line(r"^relay eof received=(\d+) sha256=(\w+)", timeout=60)
        zt.check(int(m.group(1)) == got and m.group(2) == hl.sha256_pattern(got, seed),
                 f"{d.name}: received {m.group(1)} bytes sha256 {m.group(2)}, expected {got} "
                 f"bytes of seed {seed}")
        _, m = d.wait_line(r'^relay closed reason="(.*)" error=(\d) sent=(\d+) received=(\d+)')
        sent = a_send if d is alice else b_send
        zt.check(m.group(2) == "0" and int(m.group(3)) == sent and int(m.group(4)) == got,
                 f"{d.name}: {d.lines('relay closed')}, expected a clean end, sent {sent}")
    return alice, bob


def scenario():
    hub = hubcommon.start("hub")
    alice_creds = hl.agent_creds(hub, "alice")
    bob_creds = hl.agent_creds(hub, "bob")

    alice, bob = relay_pair(hub, alice_creds, bob_creds, 5 * MiB + 123, 3 * MiB + 7)
    alice.stop()
    bob.stop()
    zt.log("alice -> bob 5 MiB, bob -> alice 3 MiB at once: exact both ways, clean ends")

    alice, bob = relay_pair(hub, alice_creds, bob_creds, 4 * MiB, 64 * 1024,
                            "--consume-delay", 20, tag="-slow")
    alice.stop()
    bob.stop()
    zt.log("bob hands credit back 20 ms late: 4 MiB still exact")

    alice = hl.Driver([hub.addr], hub.mesh, alice_creds, "--open", "carol", "--send", 1000,
                      "--seed", 1, name="alice-carol")
    _, m = alice.wait_line(r'^relay closed reason="(.*)" error=(\d)')
    zt.check(m.group(2) == "1" and "carol" in m.group(1) and "hub answered" not in m.group(1),
             f"open to carol: {alice.lines('relay closed')}, expected the hub's ztm-error")
    zt.log(f"open to an endpoint not connected: on_close({m.group(1)!r}, error)")
    alice.stop()

    # The hub dies under a live session (bob reads nothing back: credit held).
    bob = hl.Driver([hub.addr], hub.mesh, bob_creds, "--accept", "--send", 0, "--seed", 2,
                    "--consume-delay", 600000, "--backoff-min", 100, "--backoff-max", 400,
                    name="bob-kill")
    bob.wait_line(r"^state up")
    alice = hl.Driver([hub.addr], hub.mesh, alice_creds, "--open", "bob", "--send", 64 * MiB,
                      "--seed", 1, "--backoff-min", 100, "--backoff-max", 400, name="alice-kill")
    alice.wait_line(r"^relay joined$")
    bob.wait_line(r"^relay joined$")
    hub.kill9()
    down = {}
    for d in (alice, bob):
        _, m = d.wait_line(r'^relay closed reason="(.*)" error=(\d)')
        zt.check(m.group(1) == "link down" and m.group(2) == "1",
                 f"{d.name}: {d.lines('relay closed')}, expected link down")
        down[d.name], _ = d.wait_line(r"^state backoff")
    hub2 = hubcommon.Hub(hub.state, hub.config_dir, listen=hub.addr)
    for d in (alice, bob):
        d.wait_line(rf"^state up hub={hub2.addr}", after=down[d.name], timeout=30)
    alice.stop()
    bob.stop()
    hub2.stop()
    zt.log("hub killed: both streams closed (link down), links back up after the restart")
    return ("relay both ways exact with clean ends; slow reader exact; unknown peer -> hub's "
            "ztm-error; hub killed -> link down, reconnect")


if __name__ == "__main__":
    zt.main(scenario, deadline=250)
