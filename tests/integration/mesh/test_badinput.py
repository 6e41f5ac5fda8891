"""mesh.badinput: bad input to the agent and its CLI.
  - every agent command with bad usage or a bad value: exit 2 and exactly
    one line on stderr, "ztm CMD: error: ...", naming the bad value, nothing
    on stdout; the agent's tunnels are unchanged afterwards;
  - `ztm status` (and tunnel ls) with no agent running: exit 1, one line
    saying no agent runs and how to start one;
  - the agent's API socket: mode 0600; garbage bytes (random, HTTP/1.1, a
    cut HTTP/2 preface) are answered with a clean close and the agent keeps
    serving; a stock grpcio client over the Unix socket gets OK for Status,
    INVALID_ARGUMENT for a malformed AddTunnelRequest (bytes that are not
    protobuf, a missing spec, no direction), UNIMPLEMENTED for an unknown
    method;
  - a second agent on the same state dir exits 2 with one line saying
    another agent runs there, and the first one keeps its socket and serves;
  - an agent killed with -9 leaves its socket: `ztm status` exits 1 with
    one line saying nobody answers on it; the next agent starts over it;
  - a damaged tunnels.conf: each bad line is skipped with
    agent.tunnel_skipped (file, line number, why), the good lines load and
    carry traffic."""
import os
import re
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshcommon as mc  # noqa: E402
from meshcommon import zt  # noqa: E402

import grpc  # noqa: E402  (Debian's python3-grpcio)


def one_line_error(cmd, rc, out, err, want_rc, must=()):
    """None if the result is exit WANT_RC, nothing on stdout and one line
    'ztm CMD: error: ...' holding every string in MUST; else what is wrong."""
    lines = err.strip().splitlines()
    if rc != want_rc:
        return f"exit {rc}, expected {want_rc} (stderr {err.strip()!r})"
    if out.strip():
        return f"printed on stdout: {out.strip()[:120]!r}"
    if len(lines) != 1 or not lines[0].startswith(f"ztm {cmd}: error: "):
        return f"stderr is not one 'ztm {cmd}: error: ...' line: {lines}"
    missing = [m for m in must if m not in lines[0]]
    if missing:
        return f"the error line does not name {missing}: {lines[0]!r}"
    return None


def cli_errors(alice, busy_port):
    # (argv, the command word in the message, strings the line must hold)
    L = "--listen"
    usage = [
        (["tunnel"], "tunnel", ["export, import, ls or rm"]),
        (["tunnel", "export"], "tunnel", ["NAME"]),
        (["tunnel", "import"], "tunnel", ["NAME"]),
        (["tunnel", "export", "web"], "tunnel", ["--to"]),
        (["tunnel", "import", "web"], "tunnel", ["--listen"]),
        (["tunnel", "frob", "web"], "tunnel", ["'frob'"]),
        (["tunnel", "export", "web", "extra", "--to", "127.0.0.1:1"], "tunnel", ["NAME"]),
        (["tunnel", "import", "web", L, "notaport"], "tunnel", ["'notaport'"]),
        (["tunnel", "import", "web", L, "99999"], "tunnel", ["'99999'", "range"]),
        (["tunnel", "import", "web", L, "127.0.0.1:"], "tunnel", ["'127.0.0.1:'"]),
        (["tunnel", "import", "web", L, "300.1.1.1:80"], "tunnel", ["'300.1.1.1:80'"]),
        (["tunnel", "import", "web", L, str(busy_port)], "tunnel", [str(busy_port), "in use"]),
        (["tunnel", "import", "web", L], "tunnel", ["--listen", "value"]),
        (["tunnel", "export", "Bad Name!", "--to", "127.0.0.1:1"], "tunnel", ["'Bad Name!'"]),
        (["tunnel", "export", "web/x", "--to", "127.0.0.1:1"], "tunnel", ["'web/x'"]),
        (["tunnel", "export", "x" * 64, "--to", "127.0.0.1:1"], "tunnel", ["x" * 64]),
        (["tunnel", "export", "-web", "--to", "127.0.0.1:1"], "tunnel", ["'-w'"]),
        (["tunnel", "export", "web", "--to", "127.0.0.1"], "tunnel", ["'127.0.0.1'", "port"]),
        (["tunnel", "export", "web", "--to", "nosuchhost.invalid:80"], "tunnel",
         ["'nosuchhost.invalid:80'"]),
        (["tunnel", "export", "web", "--to", "127.0.0.1:1", "--allow", "Bad!"], "tunnel",
         ["'Bad!'"]),
        (["tunnel", "export", "web", "--to", "127.0.0.1:1", "--allow", ","], "tunnel",
         ["--allow"]),
        (["tunnel", "export", "web", "--to", "127.0.0.1:1", L, "5"], "tunnel", ["--listen"]),
        (["tunnel", "import", "web", L, "0", "--to", "x:1"], "tunnel", ["--to"]),
        (["tunnel", "import", "web", L, "0", "--via", "Bad!"], "tunnel", ["'Bad!'"]),
        (["tunnel", "export", "web", "--to", "127.0.0.1:1", "--mesh", "unknown"], "tunnel",
         ["'unknown'"]),
        (["tunnel", "import", "web", L, "0", "--mesh", "unknown"], "tunnel", ["'unknown'"]),
        (["tunnel", "ls", "--mesh", "unknown"], "tunnel", ["'unknown'"]),
        (["tunnel", "ls", "extra"], "tunnel", ["'extra'"]),
        (["tunnel", "ls", "-o", "yaml"], "tunnel", ["'yaml'"]),
        (["tunnel", "rm"], "tunnel", ["rm export|import NAME"]),
        (["tunnel", "rm", "sideways", "web"], "tunnel", ["rm export|import NAME"]),
        (["tunnel", "rm", "import", "nosuch"], "tunnel", ["nosuch"]),
        (["tunnel", "export", "web", "--bogus"], "tunnel", ["'--bogus'"]),
        (["status", "extra"], "status", ["'extra'"]),
        (["status", "-o", "yaml"], "status", ["'yaml'"]),
        (["status", "--bogus"], "status", ["'--bogus'"]),
        (["leave"], "leave", ["MESH"]),
        (["leave", "nosuch"], "leave", ["'nosuch'"]),
        (["agent", "--bogus"], "agent", ["'--bogus'"]),
        (["agent", "--ktls", "maybe"], "agent", ["'maybe'"]),
        (["agent", "--drain-timeout", "-1"], "agent", ["'-1'"]),
        (["agent", "extra"], "agent", ["'extra'"]),
    ]
    before = alice.tunnels()
    conf = os.path.join(alice.mesh_dir(), "tunnels.conf")
    conf_before = mc.read(conf) if os.path.exists(conf) else None
    bad = []
    for argv, cmd, must in usage:
        rc, out, err = alice.cli(*argv, timeout=15)
        why = one_line_error(cmd, rc, out, err, 2, must)
        if why:
            bad.append(f"ztm {' '.join(argv)}: {why}")
    # an export that exists already
    alice.ok("tunnel", "export", "dup", "--to", "127.0.0.1:1")
    rc, out, err = alice.cli("tunnel", "export", "dup", "--to", "127.0.0.1:2")
    why = one_line_error("tunnel", rc, out, err, 2, ["dup", "exists"])
    if why:
        bad.append(f"a second export of dup: {why}")
    alice.ok("tunnel", "rm", "export", "dup")
    zt.check(not bad, f"{len(bad)} bad-input case(s) not answered with exit 2 and one clear "
             "line:\n    " + "\n    ".join(bad))
    after = alice.tunnels()
    zt.check(after == before, f"bad input changed the tunnels: {before} -> {after}")
    if conf_before is not None:
        zt.check(mc.read(conf) == conf_before, "bad input changed tunnels.conf")
    zt.log(f"{len(usage) + 1} bad command lines: exit 2, one line each; tunnels unchanged")
    return len(usage) + 1


def no_agent():
    lone = mc.Agent("lone")
    bad = []
    for argv, cmd in ((["status"], "status"), (["tunnel", "ls"], "tunnel"),
                      (["tunnel", "import", "web", "--listen", "0"], "tunnel"),
                      (["leave", "mesh"], "leave")):
        rc, out, err = lone.cli(*argv, timeout=15)
        why = one_line_error(cmd, rc, out, err, 1, ["no agent is running", lone.state,
                                                    "ztm agent"])
        if why:
            bad.append(f"ztm {' '.join(argv)} with no agent: {why}")
    zt.check(not bad, "\n    ".join(bad))
    zt.log("no agent running: exit 1, 'no agent is running for DIR (start one: ztm agent)'")


def garbage(alice, sock):
    st = os.stat(sock)
    zt.check(stat.S_ISSOCK(st.st_mode), f"{sock} is not a socket")
    zt.check(stat.S_IMODE(st.st_mode) == 0o600, f"{sock} has mode {oct(stat.S_IMODE(st.st_mode))}, "
             "expected 0600")
    dmode = stat.S_IMODE(os.stat(alice.state).st_mode)
    zt.check(dmode & 0o077 == 0, f"the state dir has mode {oct(dmode)}: others can reach it")
    pid = alice.proc.pid
    cases = [("random bytes", os.urandom(4096)),
             ("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
             ("a cut HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM"),
             ("preface + garbage frame", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512)),
             ("nothing", b"")]
    for what, data in cases:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sock)
        if data:
            s.sendall(data)
        if what in ("nothing", "a cut HTTP/2 preface"):
            s.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
                zt.check(len(got) < 1 << 20, f"{what}: the agent keeps sending")
        except socket.timeout:
            zt.fail(f"{what} on the API socket: not closed within 10 s")
        except ConnectionResetError:
            pass
        s.close()
        zt.check(alice.proc.alive(), f"the agent died after {what} on its socket")
        st = alice.status()
        zt.check(st["pid"] == pid, f"status after {what}: pid {st['pid']}")
    zt.log(f"API socket 0600; {len(cases)} kinds of garbage: closed, the agent keeps serving")


def agent_pb():
    out = mc.subdir("pb")
    r = subprocess.run(["protoc", "-I", os.path.join(zt.REPO, "proto"), "--python_out", out,
                        "ztm/v1/agent.proto"], capture_output=True, text=True)
    zt.check(r.returncode == 0, f"protoc agent.proto: {r.stderr}")
    sys.path.insert(0, out)
    from ztm.v1 import agent_pb2
    return agent_pb2


def grpc_calls(alice, sock):
    pb = agent_pb()
    ch = grpc.insecure_channel("unix:" + sock, options=[("grpc.enable_retries", 0)])

    def call(method, req, resp_cls=None, raw=False):
        mc_ = ch.unary_unary(f"/ztm.v1.Agent/{method}" if not method.startswith("/") else method,
                             request_serializer=(lambda b: b) if raw else
                             (lambda m: m.SerializeToString()),
                             response_deserializer=(resp_cls.FromString if resp_cls else None))
        try:
            return grpc.StatusCode.OK, mc_(req, timeout=15), ""
        except grpc.RpcError as e:
            return e.code(), None, e.details() or ""

    code, resp, det = call("Status", pb.AgentStatusRequest(), pb.AgentStatusResponse)
    zt.check(code == grpc.StatusCode.OK and resp.pid == alice.proc.pid and
             [m.name for m in resp.meshes] == ["mesh"],
             f"grpcio Status over the Unix socket: {code.name} {det!r} {resp}")
    bad = []
    cases = [
        ("bytes that are not protobuf", b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
        ("a truncated field", b"\x0a\x80\x80\x80\x80\x0f\x01", grpc.StatusCode.INVALID_ARGUMENT),
        ("no spec", pb.AddTunnelRequest().SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT),
        ("no direction", pb.AddTunnelRequest(spec=pb.TunnelSpec(
            name="web", target="127.0.0.1:1")).SerializeToString(),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("direction 7", pb.AddTunnelRequest(spec=pb.TunnelSpec(
            name="web", direction=7, target="127.0.0.1:1")).SerializeToString(),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("an import without listen", pb.AddTunnelRequest(spec=pb.TunnelSpec(
            name="web", direction=pb.TUNNEL_IMPORT)).SerializeToString(),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("17 allow entries", pb.AddTunnelRequest(spec=pb.TunnelSpec(
            name="web", direction=pb.TUNNEL_EXPORT, target="127.0.0.1:1",
            allow=[f"e{i}" for i in range(17)])).SerializeToString(),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for what, body, want in cases:
        code, _, det = call("AddTunnel", body, raw=True)
        if code != want:
            bad.append(f"AddTunnel with {what}: {code.name} ({det!r}), expected {want.name}")
        elif not det:
            bad.append(f"AddTunnel with {what}: {code.name} without a message")
    for path in ("/ztm.v1.Agent/Frob", "/ztm.v1.Nope/Status", "/grpc.health.v1.Health/Check"):
        code, _, det = call(path, b"", raw=True)
        if code != grpc.StatusCode.UNIMPLEMENTED:
            bad.append(f"{path}: {code.name} ({det!r}), expected UNIMPLEMENTED")
    code, _, det = call("Leave", b"\xff", raw=True)
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        bad.append(f"Leave with garbage: {code.name} ({det!r}), expected INVALID_ARGUMENT")
    ch.close()
    zt.check(not bad, "\n    ".join(bad))
    zt.check(alice.tunnels() == [], f"malformed calls added tunnels: {alice.tunnels()}")
    zt.log(f"grpcio over the Unix socket: Status OK, {len(cases)} malformed AddTunnel "
           "INVALID_ARGUMENT, unknown methods UNIMPLEMENTED")


def second_agent(alice, sock):
    rc, out, err = alice.cli("agent", timeout=20)
    why = one_line_error("agent", rc, out, err, 2, [alice.state, "another agent"])
    zt.check(why is None, f"a second agent on the same state dir: {why}")
    zt.check(os.path.exists(sock), "the refused second agent removed the first one's socket")
    zt.check(alice.status()["pid"] == alice.proc.pid, "the first agent stopped answering")
    zt.log(f"second agent: {err.strip()!r}")


def damaged_conf(hub, alice, bob):
    echo = mc.echo_server()
    bob.export("bobsvc", echo.port)
    # a dead agent's socket is left behind: the CLI says nobody answers, and
    # the next agent takes the socket over
    alice.proc.kill9()
    sock = os.path.join(alice.state, "agent.sock")
    zt.check(os.path.exists(sock), "no socket file left after kill -9 (test assumption)")
    rc, out, err = alice.cli("status", timeout=20)
    why = one_line_error("status", rc, out, err, 1, [sock, "does not answer", "ztm agent"])
    zt.check(why is None, f"ztm status with a dead agent's socket: {why}")
    zt.log(f"dead agent: {err.strip()!r}")
    iport = mc.free_port()
    lines = [
        "# ztm tunnels of mesh mesh (edited by hand)",                   # 1
        f"export good tcp 127.0.0.1:{echo.port}",                        # 2 ok
        "this line is garbage",                                          # 3
        "export Bad!name tcp 127.0.0.1:1",                               # 4
        "export sctpsvc sctp 127.0.0.1:1",                               # 5
        "import noaddr tcp",                                             # 6
        "export badallow tcp 127.0.0.1:1 allow=Bad!",                    # 7
        "import badvia tcp 0 via=",                                      # 8
        "export extra tcp 127.0.0.1:1 colour=blue",                      # 9
        "export noport tcp 127.0.0.1",                                   # 10
        "import badlisten tcp 127.0.0.1:99999",                          # 11
        "",                                                              # 12
        f"import bobsvc tcp {iport}",                                    # 13 ok
        "export good tcp 127.0.0.1:2",                                   # 14 duplicate
    ]
    want_skipped = {3, 4, 5, 6, 7, 8, 9, 10, 11, 14}
    raw = ("\n".join(lines) + "\n").encode() + b"\xff\xfe\x00junk\n" + b"y" * 5000 + b"\n"
    mc.write(os.path.join(alice.mesh_dir(), "tunnels.conf"), raw)
    alice.start()
    alice.wait_up()
    skipped = alice.logs("agent.tunnel_skipped")
    got = {int(e.get("line", "0")) for e in skipped}
    want_skipped |= {15, 16}   # the binary junk; the 5000-byte line, skipped whole
    zt.check(got == want_skipped and len(skipped) == len(want_skipped),
             f"agent.tunnel_skipped for lines {sorted(got)} ({len(skipped)} lines), expected "
             f"{sorted(want_skipped)} once each (a too long line is skipped whole, not read "
             "as several)")
    by_line = {int(e["line"]): e.get("error", "") for e in skipped}
    for n, word in ((3, "'this'"), (4, "'Bad!name'"), (5, "'sctp'"), (6, "no address"),
                    (7, "'Bad!'"), (8, "'via='"), (9, "'colour=blue'"), (10, "'127.0.0.1'"),
                    (11, "99999"), (14, "exists already"), (16, "longer than")):
        zt.check(word in by_line[n], f"tunnels.conf line {n}: the warning does not name {word}: "
                 f"{by_line[n]!r}")
    zt.check(all(e.get("error") and e.get("file", "").endswith("tunnels.conf") for e in skipped),
             f"a tunnel_skipped line without file= or error=: {skipped[:3]}")
    for e in skipped:
        zt.check(e.get("level") == "warn", f"tunnel_skipped is not a warning: {e}")
    have = sorted((t["direction"], t["name"]) for t in alice.tunnels())
    zt.check(have == [("export", "good"), ("import", "bobsvc")],
             f"tunnels loaded from the damaged file: {have}")
    zt.check(alice.import_port("bobsvc") == iport, "the import did not come back on its port")
    alice.wait_for_log("agent.published", service="good")
    mc.wait_carries(iport, what="alice's import of bobsvc from the damaged file")
    gport = bob.import_("good")
    mc.wait_carries(gport, what="bob's import of alice's export good from the damaged file")
    zt.log(f"damaged tunnels.conf: {len(skipped)} lines skipped with warnings "
           f"(e.g. line 4: {[e['error'] for e in skipped if e.get('line') == '4']}); "
           "the 2 good ones carry traffic")
    echo.check()


def run():
    no_agent()
    hub, ag = mc.mesh(("alice", "bob"))
    alice, bob = ag["alice"], ag["bob"]
    busy = mc.echo_server()
    n = cli_errors(alice, busy.port)
    sock = os.path.join(alice.state, "agent.sock")
    garbage(alice, sock)
    grpc_calls(alice, sock)
    second_agent(alice, sock)
    damaged_conf(hub, alice, bob)
    for a in (alice, bob):
        a.stop()
    hub.stop()
    mc.check_all_sanitizers()
    return (f"{n} bad command lines exit 2 with one line; no agent exit 1; socket 0600, garbage "
            "closed; grpcio INVALID_ARGUMENT/UNIMPLEMENTED; second agent refused; damaged "
            "tunnels.conf lines skipped")


if __name__ == "__main__":
    zt.main(run, deadline=240)
