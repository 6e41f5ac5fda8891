#!/usr/bin/env python3
"""TLS over real loopback sockets with ztm-tlsprobe (user-space record layer
on this host's kernel; the kernel path runs under QEMU: tests/integration/ktls).

Usage: test_tls_probe.py PROBE CERTDIR [case...]
Cases: transfer chacha keyupdate echo refusals ktls_modes
"""
import re
import subprocess
import sys

PROBE, CERTS = sys.argv[1], sys.argv[2]
failures = []


def run_pair(*args, timeout=120):
    cmd = [PROBE, "pair", "--certs", CERTS, "--timeout", "60", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    sides = {}
    for line in p.stdout.splitlines():
        if line.startswith("tlsprobe side="):
            kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
            sides[kv["side"]] = kv
    return p, sides


def check(cond, what, p=None):
    if cond:
        print(f"ok   {what}")
        return True
    print(f"FAIL {what}")
    if p is not None:
        print("  command:", " ".join(p.args))
        print("  stdout:", p.stdout.strip().replace("\n", "\n          "))
        print("  stderr:", p.stderr.strip()[-3000:].replace("\n", "\n          "))
    failures.append(what)
    return False


def case_transfer():
    """16 MiB each way in user space; SHA-256 equal both ends; exact bytes."""
    p, s = run_pair("--bytes", "16M", "--ktls", "off")
    ok = p.returncode == 0 and "RESULT ok" in p.stdout
    if ok:
        ok = (s["server"]["sent_sha256"] == s["client"]["recv_sha256"]
              and s["client"]["sent_sha256"] == s["server"]["recv_sha256"]
              and s["server"]["recv_exact"] == "1" and s["client"]["recv_exact"] == "1"
              and s["server"]["sent"] == s["client"]["recv"] == str(16 << 20)
              and s["server"]["ktls_tx"] == s["server"]["ktls_rx"] == "0")
    check(ok, "16 MiB each way, user space, SHA-256 matches both ends", p)


def case_chacha():
    """A client without AES-NI makes BoringSSL pick ChaCha20-Poly1305."""
    p, s = run_pair("--bytes", "2M", "--ktls", "off", "--client-noaes")
    check(p.returncode == 0 and s.get("server", {}).get("cipher") == "TLS_CHACHA20_POLY1305_SHA256",
          "ChaCha20-Poly1305 negotiated and 2 MiB moved", p)


def case_keyupdate():
    """User space on both sides follows a KeyUpdate mid-stream."""
    p, s = run_pair("--bytes", "4M", "--ktls", "off", "--client-key-update-at", "1M")
    check(p.returncode == 0 and "RESULT ok" in p.stdout, "KeyUpdate mid-stream in user space", p)


def case_echo():
    p, s = run_pair("--bytes", "3M", "--ktls", "off", "--server-echo", "--server-bytes", "0",
                    "--server-expect", "3M", "--client-peer-echo")
    check(p.returncode == 0 and "RESULT ok" in p.stdout, "echo: 3 MiB out and back", p)


def case_refusals():
    """Each certificate failure, each direction, over sockets: the refusing
    side names the reason, the other side gets the alert."""
    for bad, reason in (("expired", "expired"), ("notyet", "not_yet_valid"),
                        ("foreign", "unknown_ca"), ("wrongeku", "wrong_key_usage")):
        for refuser, other in (("server", "client"), ("client", "server")):
            p, s = run_pair("--ktls", "off", f"--{other}-cert", f"{bad}-{other}",
                            f"--{refuser}-expect-close", "verify",
                            f"--{other}-expect-close", "peer_alert")
            ok = (p.returncode == 0 and s.get(refuser, {}).get("verify_reason") == reason
                  and s.get(other, {}).get("alert", "-1") != "-1")
            if ok:
                ok = re.search(rf"event=tls.verify_failed role={refuser} reason={reason} ",
                               p.stderr) is not None
            check(ok, f"{other} presents {bad}-{other}: {refuser} refuses with reason={reason}", p)


def case_ktls_modes():
    """--ktls auto falls back to user space when the kernel lacks kTLS (this
    host: ENOENT); --ktls on then fails the connection with a named reason."""
    p, s = run_pair("--bytes", "1M", "--ktls", "auto")
    if not check(p.returncode == 0 and "RESULT ok" in p.stdout, "--ktls auto: 1 MiB moved", p):
        return
    in_kernel = s["server"]["ktls_tx"] == "1"
    if in_kernel:
        check(s["client"]["ktls_rx"] == "1", "--ktls auto: this kernel has kTLS, both sides use it", p)
        p, s = run_pair("--bytes", "1M", "--ktls", "on")
        check(p.returncode == 0, "--ktls on: kernel both sides", p)
        return
    check("fallback=\"kernel has no TLS ULP" in p.stderr,
          "--ktls auto: falls back to user space and logs why", p)
    p, s = run_pair("--bytes", "1M", "--ktls", "on", "--expect-close", "ktls_unavailable")
    check(p.returncode == 0 and "event=tls.ktls_failed" in p.stderr,
          "--ktls on without kernel TLS: connection fails with ktls_unavailable", p)
    p, s = run_pair("--bytes", "1M", "--server-ktls", "auto", "--client-ktls", "off")
    check(p.returncode == 0, "--ktls auto against --ktls off", p)


CASES = {n[5:]: f for n, f in globals().items() if n.startswith("case_")}
for name in sys.argv[3:] or CASES:
    CASES[name]()
print("FAILED: " + ", ".join(failures) if failures else "all passed")
sys.exit(1 if failures else 0)
