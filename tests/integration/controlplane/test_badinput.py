#!/usr/bin/python3
"""cp.badinput: `ztm controller` on bad command lines and bad state.

  usage     no --state; bad --listen (no port, port 99999, port abc, a host
            that is not an address); bad --mesh (upper case, '_', empty);
            bad --name; unknown option; an extra argument; --log-level
            nonsense: each exits 2 within 10 s with exactly one stderr line
            `ztm controller: error: ...` naming the bad value, and makes no
            state directory
  --help    exits 0 and lists every option on stdout
  busy      --listen on a port in use: exit 2, one line naming the port
  locked    a second controller on the state dir of a running one: exit 2
            with a clear line ("in use"), and the first keeps serving
  damaged   store.db replaced by garbage, or cut short (torn), or emptied:
            exits non-zero with an error line and a line naming the file
            (the path of store.db), never logs
            controller.listen, never makes a new CA, and leaves the file as
            it was (never starts empty over it)
  SIGTERM   a healthy controller exits 0
"""
import hashlib
import os
import re
import shutil
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpcommon as cp  # noqa: E402

zt = cp.zt
grpc = cp.grpc

OPTIONS = ["--state", "--listen", "--name", "--mesh", "--drain-timeout", "--log-level",
           "--log-format"]


def names(line, value):
    return re.search(r"(?<![0-9A-Za-z.])" + re.escape(value) + r"(?![0-9A-Za-z])", line)


def run_ctl(args, config, timeout=10):
    env = dict(os.environ, ZTM_CONFIG_DIR=config)
    p = zt.Proc([zt.ztm_bin(), "controller", *args], name="ztm controller " + " ".join(args),
                env=env)
    rc = p.wait_exit(timeout)
    if rc is None:
        p.kill()
        p.wait_exit(5)
    with p.cond:
        return rc, list(p.out), list(p.err)


def health(ctl):
    c = ctl.client(None)
    code, r, details = c.call("Health/Check", cp.protos().health.HealthCheckRequest(), timeout=10)
    c.close()
    return code


def run():
    F = cp.Findings()
    base = cp.subdir("bad")
    config = os.path.join(base, "config")
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    busy_port = busy.getsockname()[1]

    def st(name):
        return os.path.join(base, name)

    L = ["--listen", "127.0.0.1:0"]
    cases = [  # (what, args, bad value the line must name, state dir that must not appear)
        ("no --state", [*L], "--state", None),
        ("--listen without a port", ["--state", st("s1"), "--listen", "127.0.0.1"], "127.0.0.1",
         st("s1")),
        ("--listen port 99999", ["--state", st("s2"), "--listen", "127.0.0.1:99999"], "99999",
         st("s2")),
        ("--listen port abc", ["--state", st("s3"), "--listen", "127.0.0.1:abc"], "abc",
         st("s3")),
        ("--listen 300.1.1.1:80", ["--state", st("s4"), "--listen", "300.1.1.1:80"], "300.1.1.1",
         st("s4")),
        ("--mesh Upper", ["--state", st("s5"), *L, "--mesh", "Upper"], "Upper", st("s5")),
        ("--mesh a_b", ["--state", st("s6"), *L, "--mesh", "a_b"], "a_b", st("s6")),
        ("--mesh ''", ["--state", st("s7"), *L, "--mesh", ""], "--mesh", st("s7")),
        ("--mesh -x", ["--state", st("s7b"), *L, "--mesh", "-x"], "-x", st("s7b")),
        ("--name with a space", ["--state", st("s8"), *L, "--name", "a b"], "--name", st("s8")),
        ("unknown option", ["--state", st("s9"), *L, "--bogus"], "--bogus", st("s9")),
        ("extra argument", ["--state", st("s10"), *L, "extra"], "extra", st("s10")),
        ("--log-level loud", ["--state", st("s11"), *L, "--log-level", "loud"], "loud",
         st("s11")),
        ("--drain-timeout -1", ["--state", st("s12"), *L, "--drain-timeout", "-1"], "-1",
         st("s12")),
        ("--state without a value", ["--state"], "--state", None),
    ]
    for what, args, value, sdir in cases:
        rc, out, err = run_ctl(args, config)
        shown = f"`ztm controller {' '.join(args)}`"
        if rc is None:
            F.check(False, f"{what}: {shown} did not exit within 10s")
            continue
        F.check(rc == 2, f"{what}: {shown} {zt.describe_rc(rc)}, expected exit 2; stderr {err[:3]}")
        F.check(len(err) == 1, f"{what}: {len(err)} stderr lines, expected 1: {err[:5]}")
        if err:
            F.check(err[0].startswith("ztm controller: error: "),
                    f"{what}: stderr {err[0]!r} does not start with 'ztm controller: error: '")
            F.check(names(err[0], value), f"{what}: stderr {err[0]!r} does not name {value!r}")
        if sdir:
            F.check(not os.path.exists(sdir), f"{what}: the state dir {sdir} was created")
    F.check(not os.path.exists(config), f"bad command lines wrote {config}")

    rc, out, err = run_ctl(["--help"], config)
    F.check(rc == 0, f"--help: {zt.describe_rc(rc)}, expected exit 0")
    text = "\n".join(out)
    for o in OPTIONS:
        F.check(o in text, f"--help does not list {o}")

    # ---- a port in use ----------------------------------------------------------------------
    rc, out, err = run_ctl(["--state", st("busy"), "--listen", f"127.0.0.1:{busy_port}"], config)
    F.check(rc == 2, f"port in use: {zt.describe_rc(rc)}, expected exit 2; {err[-3:]}")
    errs = [l for l in err if "error" in l]
    F.check(len(errs) == 1 and names(errs[0], str(busy_port)) and "in use" in errs[0],
            f"port in use: error lines {errs}, expected one naming {busy_port} and 'in use'")
    busy.close()

    # ---- a locked state dir -----------------------------------------------------------------------
    state = st("locked")
    first = cp.Controller(state, config)
    before = hashlib.sha256(cp.read(os.path.join(state, "store.db"))).hexdigest()
    t0 = time.monotonic()
    rc, out, err = run_ctl(["--state", state, *L], config)
    F.check(rc == 2, f"locked state dir: second controller {zt.describe_rc(rc)}, expected exit 2")
    errs = [l for l in err if "error" in l]
    F.check(len(errs) == 1 and state in errs[0] and "in use" in errs[0],
            f"locked state dir: error lines {errs}, expected one naming {state} and 'in use'")
    F.check(not any(zt.parse_log_line(l) and zt.parse_log_line(l).get("event") ==
                    "controller.listen" for l in err), "the second controller listened")
    F.check(time.monotonic() - t0 < 10, "the second controller did not exit at once")
    F.check(first.alive() and health(first) == grpc.StatusCode.OK,
            "the first controller stopped serving after the second one tried its state dir")
    F.check(hashlib.sha256(cp.read(os.path.join(state, "store.db"))).hexdigest() == before,
            "the second controller changed store.db")
    first.stop()

    # ---- a damaged store.db -------------------------------------------------------------------------
    good = cp.read(os.path.join(state, "store.db"))
    damages = [
        ("garbage", os.urandom(4096)),
        ("text", b"hello, this is not a store\n" * 10),
        ("cut short (torn)", good[:len(good) // 2]),
        ("last byte changed", good[:-1] + bytes([good[-1] ^ 0xff])),
        ("a byte in the middle changed", good[:len(good) // 2] +
         bytes([good[len(good) // 2] ^ 0x01]) + good[len(good) // 2 + 1:]),
        ("empty", b""),
    ]
    for what, data in damages:
        sdir = st(f"damaged-{len(data)}-{what.split()[0]}")
        shutil.copytree(state, sdir)
        path = os.path.join(sdir, "store.db")
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        rc, out, err = run_ctl(["--state", sdir, *L], config, timeout=15)
        evs = [zt.parse_log_line(l) for l in err]
        F.check(rc not in (None, 0), f"store.db {what}: {zt.describe_rc(rc)}, expected a "
                "non-zero exit")
        F.check(not any(e and e.get("event") == "controller.listen" for e in evs),
                f"store.db {what}: the controller started serving")
        F.check(not any(e and e.get("event") in ("ca.created", "controller.ca_created")
                        for e in evs), f"store.db {what}: the controller made a new CA")
        F.check(any(path in l for l in err),
                f"store.db {what}: no stderr line names the file {path}: {err[-4:]}")
        F.check(any(l.startswith("ztm controller: error: ") for l in err),
                f"store.db {what}: no 'ztm controller: error:' line: {err[-4:]}")
        F.check(cp.read(path) == data, f"store.db {what}: the file was changed")
    # the untouched copy still starts, with its CA
    again = cp.Controller(state, config)
    F.check(again.pin == first.pin, "the good state dir came back with another CA")
    again.stop()
    return F.done("bad usage exits 2 with one line; busy port, locked state dir and a damaged "
                  "store.db refused")


if __name__ == "__main__":
    zt.main(run, deadline=200)
