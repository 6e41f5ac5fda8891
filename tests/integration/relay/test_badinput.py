#!/usr/bin/env python3
"""relay.badinput: bad usage and bad input. Each case below exits with code
2 within 5 s, with exactly one line on stderr, starting with
`ztm relay: error:` and naming the bad value (the contract). Also:
`ztm bogus` exits 2; `ztm relay --help` (and -h) exits 0 with a usage that
lists every option on stdout; `ztm version` prints `ztm X.Y.Z`."""
import os
import re
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

L = ["--listen", "127.0.0.1:0"]
T = ["--to", "127.0.0.1:9"]

OPTIONS = ["--listen", "--to", "--workers", "--max-conns", "--idle-timeout", "--connect-timeout",
           "--drain-timeout", "--buffer-size", "--log-level", "--log-format", "--help"]


def names(line, value):
    """The value appears in the line as a whole token."""
    return re.search(r"(?<![0-9A-Za-z.])" + re.escape(value) + r"(?![0-9A-Za-z])", line)


def run():
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no SO_REUSEPORT
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    busy_port = busy.getsockname()[1]

    cases = [  # (what, args, the bad value the message must name)
        ("unknown flag --bogus", [*L, *T, "--bogus"], "--bogus"),
        ("missing --to", [*L], "--to"),
        ("missing --listen", [*T], "--listen"),
        ("--listen without a port", ["--listen", "127.0.0.1", *T], "127.0.0.1"),
        ("--listen port 99999", ["--listen", "127.0.0.1:99999", *T], "99999"),
        ("--listen port abc", ["--listen", "127.0.0.1:abc", *T], "abc"),
        ("--to 300.1.1.1:80", [*L, "--to", "300.1.1.1:80"], "300.1.1.1"),
        ("--to an unresolvable host", [*L, "--to", "nosuchhost.invalid:80"], "nosuchhost.invalid"),
        ("--workers 0", [*L, *T, "--workers", "0"], "0"),
        ("--workers abc", [*L, *T, "--workers", "abc"], "abc"),
        ("--idle-timeout -1", [*L, *T, "--idle-timeout", "-1"], "-1"),
        ("--buffer-size 10", [*L, *T, "--buffer-size", "10"], "10"),
        ("--listen on a port in use", ["--listen", f"127.0.0.1:{busy_port}", *T], str(busy_port)),
    ]
    bad = []
    for what, args, value in cases:
        rc, out, err, took = zt.run_ztm(["relay", *args], timeout=5)
        shown = f"`ztm relay {' '.join(args)}`"
        if rc is None:
            bad.append(f"{what}: {shown} did not exit within 5s; stderr {err[:3]}")
            continue
        problems = []
        if rc != 2:
            problems.append(f"exit {zt.describe_rc(rc)}, expected 2")
        if len(err) != 1:
            problems.append(f"{len(err)} stderr lines, expected exactly 1: {err[:5]}")
        elif not err[0].startswith("ztm relay: error:"):
            problems.append(f"stderr line does not start with 'ztm relay: error:': {err[0]!r}")
        elif not names(err[0], value):
            problems.append(f"stderr line does not name {value!r}: {err[0]!r}")
        if problems:
            bad.append(f"{what}: {shown}: " + "; ".join(problems))
        else:
            zt.log(f"ok   {what}: {err[0]}")
    busy.close()

    rc, out, err, _ = zt.run_ztm(["bogus"])
    if rc != 2:
        bad.append(f"`ztm bogus`: {zt.describe_rc(rc)}, expected exit 2")

    for flag in ("--help", "-h"):
        rc, out, err, _ = zt.run_ztm(["relay", flag])
        text = "\n".join(out)
        missing = [o for o in OPTIONS if o not in text]
        if rc != 0:
            bad.append(f"`ztm relay {flag}`: {zt.describe_rc(rc)}, expected exit 0")
        elif not re.search(r"usage", text, re.I) or missing:
            bad.append(f"`ztm relay {flag}`: stdout is not a usage listing the options "
                       f"(missing {missing}): {out[:3]}")

    rc, out, err, _ = zt.run_ztm(["version"])
    if rc != 0 or len(out) != 1 or not re.fullmatch(r"ztm \d+\.\d+\.\d+", out[0]):
        bad.append(f"`ztm version`: {zt.describe_rc(rc)}, stdout {out}; expected exit 0 and "
                   f"one line 'ztm X.Y.Z'")

    zt.check(not bad, f"{len(bad)} bad-input checks failed:\n  " + "\n  ".join(bad))
    return (f"{len(cases)} bad inputs exit 2 with one 'ztm relay: error:' line naming the value; "
            "ztm bogus -> 2; relay --help/-h -> usage, 0; version -> ztm X.Y.Z")


zt.main(run)
