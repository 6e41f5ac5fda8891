"""mesh.secrecy: the hub relays ciphertext it cannot read.

The hub runs with SSLKEYLOGFILE (its TLS layer appends every connection's
secrets, NSS format), so the outer layer, agent <-> hub mutual TLS, can be
decrypted from a capture. tshark captures loopback traffic on the hub's
port while a random marker (64 hex characters) goes alice -> bob -> alice
through a tunnel (to an echo server behind bob), many times. Then:
  (a) the capture decrypted with the hub's key log shows the agents' HTTP/2
      requests to the hub (:path /ztm.v1.Relay/Events and /ztm.relay/open,
      /ztm.relay/accept) and the relayed DATA: the key log works, the
      outer layer is open to us as it is to the hub;
  (b) the marker, as text or in hex, is nowhere: not in the raw capture,
      not in the decrypted HTTP/2 DATA (the relayed bytes are the agents'
      own end-to-end TLS), not in tshark's full decrypted dissection.
Skips (exit 77) when tshark is missing or cannot capture on lo."""
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshcommon as mc  # noqa: E402
from meshcommon import zt  # noqa: E402


def start_capture(port, path):
    """tshark on lo for tcp port PORT into PATH; waits until it captures.
    Skips if it cannot."""
    if not shutil.which("tshark"):
        zt.skip("tshark is not installed (deploy/install-deps installs it)")
    cap = zt.spawn(["tshark", "-n", "-i", "lo", "-f", f"tcp port {port}", "-w", path],
                   name="tshark-capture")
    end = time.monotonic() + 20
    while True:
        with cap.cond:
            err = "\n".join(cap.err)
        if "Capturing on" in err:
            break
        if not cap.alive() or time.monotonic() > end:
            cap.kill()
            zt.skip(f"tshark cannot capture on lo (needs root or CAP_NET_RAW/dumpcap rights): "
                    f"{err.strip()[-300:] or 'no output'}")
        time.sleep(0.05)
    # "Capturing on" is printed as the capture starts; give the BPF filter a
    # moment to be in place before the first packet that matters.
    time.sleep(0.5)
    return cap


def stop_capture(cap, path):
    time.sleep(1.0)  # the last packets reach the capture buffer
    cap.signal(signal.SIGINT)
    rc = cap.wait_exit(20)
    zt.check(rc is not None, "tshark did not stop on SIGINT")
    zt.check(os.path.getsize(path) > 0, f"tshark wrote nothing to the capture (rc {rc})")


def tshark(*args, timeout=120):
    r = subprocess.run(["tshark", "-n", *args], capture_output=True, timeout=timeout)
    zt.check(r.returncode == 0, f"tshark {' '.join(args)}: exit {r.returncode}: "
             f"{r.stderr.decode(errors='replace')[-500:]}")
    return r.stdout


def run():
    keylog = os.path.join(mc.tmpdir(), "keys.log")
    hub = mc.Hub(env_extra={"SSLKEYLOGFILE": keylog})
    ev = hub.wait_for_log("tls.keylog_enabled", timeout=10)
    zt.log(f"hub logs tls.keylog_enabled path={ev.get('path')}")
    pcap = os.path.join(mc.tmpdir(), "hub.pcapng")
    cap = start_capture(hub.port, pcap)

    _, ag = mc.mesh(("alice", "bob"), hub=hub)
    alice, bob = ag["alice"], ag["bob"]
    echo = mc.echo_server()
    bob.export("secret", echo.port)
    port = alice.import_("secret")
    mc.wait_carries(port, what="secret")
    marker = os.urandom(32).hex().encode()   # 64 hex characters
    payload = (b"MARK:" + marker + b"\n") * 200  # ~14 KB, the marker 200 times
    rounds = 10
    for _ in range(rounds):
        got = mc.roundtrip(port, payload)
        zt.check(got == payload, "the marker did not come back exactly through the tunnel")
    zt.log(f"sent the marker {rounds * 200} times each way through the tunnel")
    stop_capture(cap, pcap)

    # the secrets the hub wrote
    keys = mc.read(keylog).decode()
    labels = {line.split()[0] for line in keys.splitlines() if line.strip()}
    zt.check({"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels,
             f"the key log has no TLS 1.3 traffic secrets: labels {sorted(labels)}")

    # (b) raw capture: neither the marker nor its hex
    raw = mc.read(pcap)
    marker_hex = marker.hex().encode()
    zt.check(marker not in raw and marker_hex not in raw,
             "the marker is in the raw capture: bytes crossed the hub's port in the clear")

    # (a) decrypted with the hub's key log: the agents' requests are visible
    ko = f"tls.keylog_file:{keylog}"
    paths = tshark("-r", pcap, "-o", ko, "-Y", "http2.header", "-T", "fields",
                   "-e", "http2.headers.path").decode().split()
    paths = {p for line in paths for p in line.split(",")}
    zt.log(f"decrypted :path values: {sorted(paths)}")
    for want in ("/ztm.v1.Relay/Events", "/ztm.relay/open", "/ztm.relay/accept"):
        zt.check(want in paths, f"decrypted capture shows no :path {want} (seen: {sorted(paths)}): "
                 "the key log did not decrypt the agent-hub connections")
    # ... and the relayed bytes: DATA frames of the session streams
    data_hex = tshark("-r", pcap, "-o", ko, "-Y", "http2.type == 0", "-T", "fields",
                      "-e", "http2.data.data").decode().split()
    relayed = b"".join(bytes.fromhex(h.replace(":", "")) for line in data_hex
                       for h in line.split(",") if h)
    total = rounds * len(payload) * 2
    zt.log(f"decrypted HTTP/2 DATA: {len(relayed)} bytes (the tunnel moved {total} plaintext)")
    zt.check(len(relayed) >= total, f"decrypted HTTP/2 DATA holds {len(relayed)} bytes, less than "
             f"the {total} the tunnel carried: the relayed streams were not decrypted")
    # a positive control: what the agents tell the hub itself (gRPC over the
    # outer layer) is plain in the same DATA, e.g. the service name published
    zt.check(b"secret" in relayed, "the decrypted DATA lacks the published service name "
             "'secret': the search for plaintext would not find it either")
    zt.check(marker not in relayed and marker_hex not in relayed,
             "the marker is in the decrypted HTTP/2 DATA: the hub could read the tunnel")
    # (b) everything tshark can show of the decrypted capture
    full = tshark("-r", pcap, "-o", ko, "-V", "-x")
    zt.check(b"/ztm.relay/open" in full, "the full decrypted dissection lacks /ztm.relay/open")
    flat = full.replace(b" ", b"").lower()
    zt.check(marker not in full and marker_hex not in flat,
             "the marker is in tshark's decrypted dissection of the capture")
    for a in (alice, bob):
        a.stop()
    hub.stop()
    mc.check_all_sanitizers()
    return (f"key log decrypts the hub link ({len(paths)} :paths, {len(relayed)} B of DATA); "
            f"marker absent from raw and decrypted capture")


if __name__ == "__main__":
    zt.main(run, deadline=240)
