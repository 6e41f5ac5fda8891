#!/usr/bin/env python3
"""The hub link against a bare `ztm controller` (no Relay service, so the
driver runs with --allow-no-events): it fails over from a dead first hub to
the controller, comes up over mTLS, calls Services.List (OK); when the
controller is killed (-9) it backs off (delays doubling from --backoff-min
to --backoff-max, each within +-50%) cycling the two hubs, and when the
controller is back (same state, same port) it is up again and the call
succeeds again. Without --allow-no-events the link does not come up: the
Events call answers UNIMPLEMENTED, the link closes and backs off."""
import time

import hlcommon as hl
from hlcommon import cp, zt

LIST = "/ztm.v1.Services/List"
BMIN, BMAX = 200, 1600


def check_backoff(drv):
    """Each logged delay is its base (BMIN doubling to BMAX) +-50%."""
    delays = [int(e["delay_ms"]) for e in drv.logs("hublink.backoff")]
    zt.check(len(delays) >= 4, f"only {len(delays)} backoffs logged: {delays}")
    base = BMIN
    for i, d in enumerate(delays):
        zt.check(base // 2 <= d <= base * 3 // 2 + 1,
                 f"backoff {i}: {d} ms, expected {base} ms +-50% (all: {delays})")
        base = min(base * 2, BMAX)
    zt.check(any(d > BMIN * 3 // 2 for d in delays), f"the delay never grew: {delays}")
    return delays


def scenario():
    ctl = cp.start("ctl")
    creds = hl.agent_creds(ctl, "alice")
    sock, dead = zt.reserve_port()
    dead_hub = f"127.0.0.1:{dead}"
    drv = hl.Driver([dead_hub, ctl.addr], ctl.mesh, creds, "--allow-no-events", "--call", LIST,
                    "--backoff-min", BMIN, "--backoff-max", BMAX)
    i, m = drv.wait_line(rf'^state backoff hub={dead_hub} why="(.*)"')
    zt.check("refused" in m.group(1).lower(), f"dead hub: why {m.group(1)!r}")
    i, _ = drv.wait_line(rf"^state up hub={ctl.addr} record_layer=(user|kernel)", after=i)
    i, m = drv.wait_line(rf"^reply path={LIST} status=(\S+)", after=i)
    zt.check(m.group(1) == "OK", f"Services.List: {drv.out[i]}")
    zt.log(f"failed over from {dead_hub} to {ctl.addr}, up, Services.List OK")

    ctl.kill9()
    i, m = drv.wait_line(rf'^state backoff hub={ctl.addr} why="(.*)"', after=i)
    zt.log(f"controller killed: backoff ({m.group(1)})")
    # Down long enough for a few doublings, through both hubs.
    i, _ = drv.wait_line(rf"^state backoff hub={dead_hub}", after=i)
    i, _ = drv.wait_line(rf"^state backoff hub={ctl.addr}", after=i)
    time.sleep(1.0)
    zt.check(not drv.lines("state up") or len(drv.lines("state up")) == 1,
             f"up while the controller is down: {drv.lines('state up')}")
    ctl2 = cp.Controller(ctl.state, ctl.config_dir, listen=ctl.addr)
    i, _ = drv.wait_line(rf"^state up hub={ctl.addr}", after=i, timeout=30)
    i, m = drv.wait_line(rf"^reply path={LIST} status=(\S+)", after=i)
    zt.check(m.group(1) == "OK", f"Services.List after the restart: {drv.out[i]}")
    delays = check_backoff(drv)
    zt.log(f"controller back: up again, Services.List OK; backoffs {delays} ms")
    drv.stop()

    # The real behaviour: no Events service, no link.
    drv2 = hl.Driver([ctl2.addr], ctl.mesh, creds, "--call", LIST, "--backoff-min", 100,
                     "--backoff-max", 400, name="driver-strict")
    j = -1
    for _ in range(3):
        j, m = drv2.wait_line(r'^state backoff hub=\S+ why="(.*)"', after=j + 1)
        zt.check("UNIMPLEMENTED" in m.group(1), f"strict: why {m.group(1)!r}")
    zt.check(not drv2.lines("state up") and not drv2.lines("reply"),
             f"strict driver came up against a controller: {drv2.out}")
    drv2.stop()
    ctl2.stop()
    sock.close()
    return ("failover to the live hub, up, Services.List OK; kill -9 -> backoff doubling with "
            "jitter across both hubs; restart -> up, OK again; Events UNIMPLEMENTED -> no link")


if __name__ == "__main__":
    zt.main(scenario, deadline=150)
