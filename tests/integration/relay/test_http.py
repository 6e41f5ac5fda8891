#!/usr/bin/env python3
"""relay.http: `python3 -m http.server` behind the relay; curl through the
relay fetches a 3 MiB random file and a small index; bytes compared exactly."""
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402


def curl(url, out):
    r = subprocess.run(["curl", "-sS", "--fail", "--noproxy", "*", "--max-time", "60",
                        "-o", out, url], capture_output=True, text=True, timeout=90)
    zt.check(r.returncode == 0, f"curl {url} failed (exit {r.returncode}): {r.stderr.strip()}")


def run():
    with tempfile.TemporaryDirectory(prefix="ztm-relay-http-") as tmp:
        www = os.path.join(tmp, "www")
        os.mkdir(www)
        big = os.urandom(3 * zt.MiB)
        index = b"<!doctype html><title>ztm</title><p>hello through the relay</p>\n"
        with open(os.path.join(www, "big.bin"), "wb") as f:
            f.write(big)
        with open(os.path.join(www, "index.html"), "wb") as f:
            f.write(index)

        srv = zt.spawn([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                        "--directory", www], name="http.server")
        m = srv.wait_out(r"Serving HTTP on \S+ port (\d+)", timeout=30)
        target_port = int(m.group(1))
        zt.log(f"http.server on port {target_port}")

        relay = zt.Relay(target_port)
        base = f"http://127.0.0.1:{relay.port}"

        got_big = os.path.join(tmp, "big.out")
        curl(f"{base}/big.bin", got_big)
        with open(got_big, "rb") as f:
            data = f.read()
        zt.check(len(data) == len(big), f"big.bin: got {len(data)} bytes, expected {len(big)}")
        zt.check(data == big, "big.bin: bytes differ from the served file")

        got_idx = os.path.join(tmp, "index.out")
        curl(f"{base}/", got_idx)
        with open(got_idx, "rb") as f:
            data = f.read()
        zt.check(data == index, f"index: got {data[:200]!r}, expected {index!r}")

        # Both fetches were relayed and logged (http.server closes after each).
        closes = relay.wait_for_log("conn.close", count=2)
        zt.check(any(int(c.get("down", "0")) >= len(big) for c in closes),
                 f"no conn.close with down >= {len(big)}: {closes}")
        relay.stop()
        zt.check(relay.logs("relay.stop"), "no event=relay.stop logged")
        srv.kill()
        return f"3 MiB file and index fetched by curl through the relay, bytes exact"


zt.main(run)
