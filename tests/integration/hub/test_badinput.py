"""`ztm hub` on the command line: bad input exits 2 with one line naming
the input (missing --state, bad --listen, bad --name, bad --accept-timeout,
an unknown option, a busy port); --help and `ztm help` describe it; a good
start prints the ready line (address, advertised name) and how to invite
the first endpoint; --name HOST:PORT is what invite tokens carry."""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hubcommon as hc  # noqa: E402
from hubcommon import cp, zt  # noqa: E402


def run():
    F = cp.Findings()
    # Never the user's own CLI config: every ztm started here gets ours.
    os.environ["ZTM_CONFIG_DIR"] = cp.subdir("config")
    st = cp.subdir("bad-state")
    cases = [
        (["hub"], "--state"),
        (["hub", "--listen", "127.0.0.1:0"], "--state"),
        (["hub", "--state", st, "--listen", "nowhere"], "--listen 'nowhere'"),
        (["hub", "--state", st, "--listen", "127.0.0.1:99999"], "--listen '127.0.0.1:99999'"),
        (["hub", "--state", st, "--name", "a:b"], "--name 'a:b'"),
        (["hub", "--state", st, "--name", "host:0"], "--name 'host:0'"),
        (["hub", "--state", st, "--name", "a b"], "--name 'a b'"),
        (["hub", "--state", st, "--accept-timeout", "0"], "--accept-timeout '0'"),
        (["hub", "--state", st, "--accept-timeout", "soon"], "--accept-timeout 'soon'"),
        (["hub", "--state", st, "--mesh", "Bad_Mesh"], "--mesh 'Bad_Mesh'"),
        (["hub", "--state", st, "--bogus"], "--bogus"),
        (["hub", "--state", st, "extra"], "extra"),
        (["controller", "--state", st, "--accept-timeout", "1"], "--accept-timeout"),
        (["controller", "--state", st, "--name", "host:7443"], "--name 'host:7443'"),
    ]
    for args, names in cases:
        rc, out, err, _ = zt.run_ztm(args, timeout=10)
        cmd = args[0]
        F.check(rc == 2 and len(err) == 1 and err[0].startswith(f"ztm {cmd}: error:") and names in err[0],
                f"ztm {' '.join(args)}: rc {rc}, stderr {err} (expected exit 2 and one line naming {names})")
    F.check(not os.listdir(st), f"bad command lines left files in the state dir: {os.listdir(st)}")

    rc, out, err, _ = zt.run_ztm(["hub", "--help"])
    text = "\n".join(out)
    F.check(rc == 0 and "--name HOST[:PORT]" in text and "ztm invite" in text and not err,
            f"ztm hub --help: rc {rc}: {text[:200]!r} {err}")
    rc, out, err, _ = zt.run_ztm(["help"])
    F.check(rc == 0 and any(line.split()[:1] == ["hub"] for line in out), f"ztm help: {out}")

    # A good start: ready line and the hint; --name HOST:PORT is advertised.
    hub = hc.start("good", "--name", "localhost:7999")
    ev = hub.wait_for_log("hub.listen")
    F.check(ev.get("advertise") == "localhost:7999" and ev.get("addr", "").startswith("127.0.0.1:"),
            f"hub.listen: {ev}")
    nxt = hub.wait_for_log("hub.next")
    F.check("ztm invite NAME" in nxt.get("msg", ""), f"hub.next: {nxt}")
    pb = cp.protos()
    admin = hub.client(hub.admin_creds())
    inv = admin.ok("Mesh/Invite", pb.mesh.InviteRequest(name="x1"))
    F.check(cp.token_decode(inv.token)["hubs"] == ["localhost:7999"],
            f"invite token hubs: {cp.token_decode(inv.token)['hubs']}")
    admin.close()

    hub.stop()

    # A port some other program listens on: busy.
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    addr = f"127.0.0.1:{busy.getsockname()[1]}"
    rc, out, err, _ = zt.run_ztm(["hub", "--state", cp.subdir("busy"), "--listen", addr], timeout=10)
    F.check(rc == 2 and err and "already in use" in err[-1] and addr in err[-1],
            f"busy port: rc {rc} {err[-2:]}")
    busy.close()
    return F.done(f"{len(cases)} bad command lines exit 2 with one line; --help; ready line, "
                  "invite hint, --name HOST:PORT in tokens; busy port")


if __name__ == "__main__":
    zt.main(run)
