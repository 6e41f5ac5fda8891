#!/usr/bin/env python3
"""Real clients (curl, openssl s_client; OpenSSL inside) against the
ztm-tlsprobe server: TLS 1.3 + ALPN h2 with a client certificate; refused
without one; TLS 1.2 refused. The probe server speaks no HTTP/2 yet (the h2
layer comes later): it completes the handshake and closes with close_notify,
which is enough to see what was negotiated.

Usage: test_tls_interop.py PROBE CERTDIR
"""
import os
import re
import subprocess
import sys
import tempfile
import time

PROBE, CERTS = sys.argv[1], sys.argv[2]
CA, CERT, KEY = (os.path.join(CERTS, f) for f in ("ca.pem", "client.pem", "client.key"))
failures = []


def check(cond, what, detail=""):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
        if detail:
            print("  " + detail.strip()[-3000:].replace("\n", "\n  "))
    return cond


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, **kw)


clients = [
    ("curl --http2 with a client certificate",
     ["curl", "-sv", "--http2", "--max-time", "10", "--cacert", CA, "--cert", CERT, "--key", KEY]),
    ("curl --http2 without a client certificate",
     ["curl", "-sv", "--http2", "--max-time", "10", "--cacert", CA]),
    ("openssl s_client -alpn h2",
     ["openssl", "s_client", "-alpn", "h2", "-CAfile", CA, "-cert", CERT, "-key", KEY,
      "-verify_return_error"]),
    ("openssl s_client -tls1_2",
     ["openssl", "s_client", "-tls1_2", "-CAfile", CA, "-cert", CERT, "-key", KEY]),
]

with tempfile.TemporaryDirectory() as tmp:
    port_file = os.path.join(tmp, "port")
    server = subprocess.Popen(
        [PROBE, "server", "--certs", CERTS, "--listen", "127.0.0.1:0", "--port-file", port_file,
         "--count", str(len(clients)), "--ktls", "off", "--bytes", "0", "--expect-close", "any",
         "--timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if os.path.exists(port_file) or server.poll() is not None:
            break
        time.sleep(0.05)
    if not os.path.exists(port_file):
        out, err = server.communicate()
        check(False, "probe server started", out + err)
        sys.exit(1)
    port = open(port_file).read().strip()

    results = []
    for name, cmd in clients:
        if cmd[0] == "curl":
            cmd = cmd + [f"https://localhost:{port}/", "-o", "/dev/null"]
        else:
            cmd = cmd + ["-connect", f"127.0.0.1:{port}"]
        results.append((name, run(cmd, stdin=subprocess.DEVNULL)))
    try:
        out, err = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        out, err = server.communicate()
    lines = [l for l in out.splitlines() if l.startswith("tlsprobe side=server")]
    srv = [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', l)) for l in lines]
    logs = err

(n0, c0), (n1, c1), (n2, c2), (n3, c3) = results
check(len(srv) == 4, "the server saw four connections", out + err)
srv += [{}] * (4 - len(srv))

check("SSL connection using TLSv1.3" in c0.stderr and "ALPN: server accepted h2" in c0.stderr
      and srv[0].get("verify_reason") == "-" and srv[0].get("cipher", "").startswith("TLS_"),
      n0 + ": TLS 1.3, ALPN h2, mutual auth", c0.stderr)

check(c1.returncode != 0 and srv[1].get("verify_reason") == "no_certificate"
      and "event=tls.verify_failed role=server reason=no_certificate" in logs,
      n1 + ": refused, server logs reason=no_certificate", c1.stderr + logs)

check(re.search(r"New, TLSv1\.3, Cipher is TLS_", c2.stdout) is not None
      and "ALPN protocol: h2" in c2.stdout and "Verify return code: 0 (ok)" in c2.stdout
      and srv[2].get("verify_reason") == "-",
      n2 + ": TLSv1.3, ALPN h2, server verified", c2.stdout + c2.stderr)

check(c3.returncode != 0 and "alert protocol version" in c3.stderr
      and "reason=protocol_version" in logs,
      n3 + ": refused (protocol_version)", c3.stdout + c3.stderr + logs)

print("FAILED: " + ", ".join(failures) if failures else "all passed")
sys.exit(1 if failures else 0)
