#!/usr/bin/env python3
"""ztm's HTTP/2 over mutual TLS 1.3 against real clients: curl --http2 with
a client certificate (exact bytes both ways) and without one (refused,
reason logged); nghttp with 100 concurrent streams; openssl s_client (TLS 1.3
with ALPN h2; TLS 1.2 refused); h2load 10 clients x 100 streams with zero
failures; and ztm's own client, many streams, every byte checked.

Usage: test_h2_clients.py CERTDIR"""
import hashlib
import os
import re
import subprocess
import tempfile

import h2common as hc
from h2common import zt

CA, CCERT, CKEY = hc.cert("ca.pem"), hc.cert("client.pem"), hc.cert("client.key")


def run(cmd, timeout=60, **kw):
    return subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)


def scenario():
    srv = hc.Server(*hc.tls_args())
    url = f"https://localhost:{srv.port}"

    # curl with a client certificate: GET exact, POST echo exact.
    n = 3 * 1024 * 1024 + 17
    r = run(["curl", "-sS", "--http2", "--cacert", CA, "--cert", CCERT, "--key", CKEY,
             "-o", "-", "-w", "%{http_version} %{http_code}", f"{url}/bytes/{n}"])
    zt.check(r.returncode == 0, f"curl GET failed: {r.stderr.decode()}")
    body, meta = r.stdout[:-5], r.stdout[-5:].decode(errors="replace")
    zt.check(meta == "2 200", f"curl: HTTP version/status {meta!r}, expected '2 200'")
    zt.check(body == hc.pattern(n), f"curl GET /bytes/{n}: {len(body)} bytes, not the pattern")
    with tempfile.NamedTemporaryFile() as f:
        data = os.urandom(5 * 1024 * 1024 + 3)
        f.write(data)
        f.flush()
        r = run(["curl", "-sS", "--http2", "--cacert", CA, "--cert", CCERT, "--key", CKEY,
                 "--data-binary", f"@{f.name}", f"{url}/echo"])
        zt.check(r.returncode == 0 and hashlib.sha256(r.stdout).digest() == hashlib.sha256(data).digest(),
                 f"curl POST echo of {len(data)} bytes came back as {len(r.stdout)} bytes "
                 f"(rc {r.returncode}): {r.stderr.decode()[-300:]}")
    zt.log("curl with a client certificate: GET 3 MiB and POST 5 MiB exact")

    # curl without a client certificate: refused during the handshake.
    r = run(["curl", "-sS", "--http2", "--cacert", CA, f"{url}/"])
    zt.check(r.returncode != 0 and r.stdout == b"", f"curl without a certificate got rc {r.returncode}, "
             f"body {r.stdout[:80]!r}")
    srv.wait_for_log("tls.verify_failed", reason="no_certificate")
    zt.log("curl without a client certificate: refused, logged reason=no_certificate")

    # nghttp: 100 concurrent streams, all 200 with the right size; one body exact.
    r = run(["nghttp", "-n", "-s", "-m", "100", "--cert", CCERT, "--key", CKEY,
             f"{url}/bytes/10000"])
    out = r.stdout.decode()
    oks = re.findall(r"\s200\s+9K\s+/bytes/10000", out)
    zt.check(r.returncode == 0 and len(oks) == 100,
             f"nghttp -m 100: rc {r.returncode}, {len(oks)} of 100 responses 200/9K:\n{out[-800:]}")
    r = run(["nghttp", "--cert", CCERT, "--key", CKEY, f"{url}/bytes/70001"])
    zt.check(r.stdout == hc.pattern(70001), f"nghttp body: {len(r.stdout)} bytes, not the pattern")
    zt.log("nghttp: 100 concurrent streams all 200, a 70001-byte body exact")

    # openssl s_client: TLS 1.3 + ALPN h2; TLS 1.2 refused.
    r = run(["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}", "-alpn", "h2",
             "-cert", CCERT, "-key", CKEY, "-CAfile", CA], input=b"")
    out = r.stdout.decode(errors="replace")
    zt.check("ALPN protocol: h2" in out and re.search(r"TLSv1\.3", out),
             f"openssl s_client: no TLS 1.3 + ALPN h2:\n{out[-600:]}")
    r = run(["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}", "-alpn", "h2",
             "-tls1_2", "-cert", CCERT, "-key", CKEY, "-CAfile", CA], input=b"")
    out = (r.stdout + r.stderr).decode(errors="replace")
    zt.check("protocol version" in out or "alert" in out.lower(),
             f"openssl s_client -tls1_2 was not refused:\n{out[-600:]}")
    zt.log("openssl s_client: TLS 1.3 + ALPN h2 agreed; -tls1_2 refused (protocol_version)")

    # ztm's own client: many streams, every byte checked, both directions.
    rc, res, err = hc.client(srv.port, "--cert", CCERT, "--key", CKEY, "--ca", CA, "--sni",
                             "localhost", "--requests", "200", "--streams", "50",
                             "--get-size", "1000000")
    zt.check(rc == 0 and res.get("result") == "ok" and res.get("received") == str(200 * 1000000),
             f"ztm client GET: rc {rc} {res} {err[-500:]}")
    zt.check(res.get("record_layer") in ("user", "kernel"), f"record_layer {res.get('record_layer')}")
    rc, res, err = hc.client(srv.port, "--cert", CCERT, "--key", CKEY, "--ca", CA, "--sni",
                             "localhost", "--requests", "8", "--streams", "4",
                             "--post-size", "20000000")
    zt.check(rc == 0 and res.get("result") == "ok" and res.get("received") == str(8 * 20000000),
             f"ztm client POST echo: rc {rc} {res} {err[-500:]}")
    zt.log("ztm client: 200 x 1 MB GET over 50 streams, 8 x 20 MB echoed, all exact")

    # h2load needs a server that lets clients without certificates in.
    open_srv = hc.Server(*hc.tls_args(), "--client-cert", "optional")
    r = run(["h2load", "-n", "20000", "-c", "10", "-m", "100",
             f"https://localhost:{open_srv.port}/bytes/100"], timeout=120)
    out = r.stdout.decode()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    zt.check(m and m.group(4) == "20000" and m.group(5) == "0" and m.group(6) == "0",
             f"h2load: {m.group(0) if m else out[-600:]}")
    zt.check("TLSv1.3" in out and "h2" in out, f"h2load did not use TLS 1.3 / h2:\n{out[:600]}")
    zt.log("h2load -n 20000 -c 10 -m 100: 20000 succeeded, 0 failed, TLS 1.3")

    srv.stop()
    open_srv.stop()
    return ("curl (mTLS, no cert refused), nghttp 100 streams, openssl s_client (1.3 ok, 1.2 refused), "
            "h2load 20000/20000, ztm client 200 MB GET + 160 MB echo exact")


if __name__ == "__main__":
    zt.main(scenario, deadline=250)
