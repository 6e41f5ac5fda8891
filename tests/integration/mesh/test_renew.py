"""mesh.renew: an agent renews its certificate before expiry without
dropping its tunnels.

ZTM_RENEW_AT=2 makes bob's agent renew 2 s after each (re)start of the
timer instead of at two thirds of the certificate's life. While a stream
of echo traffic runs through a tunnel bob exports, bob renews (several
times); then:
  - cert.pem on disk is a new certificate (another serial, same endpoint
    ID and name, same key: the private key never moved), mode 0644 and
    key.pem still 0600;
  - the connection that was open across the renewals carried every byte
    exactly (nothing dropped);
  - new connections after the renewal work too, and the hub sees bob with
    the new serial (ztm get endpoints)."""
import os
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshcommon as mc  # noqa: E402
from meshcommon import zt  # noqa: E402


def serial_of(path):
    r = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"], capture_output=True,
                       text=True)
    zt.check(r.returncode == 0, f"openssl x509 {path}: {r.stderr}")
    return r.stdout.strip().split("=", 1)[1].lower().lstrip("0")


def pubkey_of(path):
    r = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-pubkey"], capture_output=True,
                       text=True)
    return r.stdout


def run():
    hub = mc.Hub()
    alice, bob = mc.Agent("alice"), mc.Agent("bob")
    alice.join(hub)
    bob.join(hub)
    cert = os.path.join(bob.mesh_dir(), "cert.pem")
    key = os.path.join(bob.mesh_dir(), "key.pem")
    serial0, pub0 = serial_of(cert), pubkey_of(cert)
    alice.start()
    os.environ["ZTM_RENEW_AT"] = "2"   # bob's agent only (read at its start)
    try:
        bob.start()
    finally:
        del os.environ["ZTM_RENEW_AT"]
    alice.wait_up()
    bob.wait_up()
    echo = mc.echo_server()
    bob.export("echo", echo.port)
    port = alice.import_("echo")

    # A connection held open across renewals, echoing as it goes.
    c = socket.create_connection((mc.LOCAL, port), timeout=30)
    sent = bytearray()
    got = bytearray()
    deadline = time.time() + 30
    renewals = 0
    while time.time() < deadline:
        chunk = os.urandom(4096)
        c.sendall(chunk)
        sent += chunk
        while len(got) < len(sent):
            got += c.recv(65536)
        renewals = len(bob.logs("agent.renewed"))
        if renewals >= 2:
            break
        time.sleep(0.05)
    zt.check(renewals >= 2, f"bob did not renew twice within 30 s ({renewals} agent.renewed)")
    c.shutdown(socket.SHUT_WR)
    while True:
        d = c.recv(65536)
        if not d:
            break
        got += d
    c.close()
    zt.check(bytes(got) == bytes(sent), f"the connection across renewals lost bytes: sent {len(sent)}, "
             f"got {len(got)}")

    serial1 = serial_of(cert)
    zt.check(serial1 != serial0, "cert.pem still has the first serial after renewals")
    zt.check(pubkey_of(cert) == pub0, "the renewed certificate has another key (the key must stay)")
    zt.check(stat.S_IMODE(os.stat(key).st_mode) == 0o600, "key.pem is not 0600 after renewal")
    ev = bob.logs("agent.renewed")[-1]
    zt.check(ev.get("serial", "").lstrip("0") == serial1,
             f"agent.renewed serial {ev.get('serial')} is not the one on disk {serial1}")

    # New connections after the renewal.
    payload = os.urandom(256 * 1024)
    with socket.create_connection((mc.LOCAL, port), timeout=30) as c2:
        c2.sendall(payload)
        c2.shutdown(socket.SHUT_WR)
        back = bytearray()
        while True:
            d = c2.recv(65536)
            if not d:
                break
            back += d
    zt.check(bytes(back) == payload, "a new connection after renewal did not echo exactly")
    eps = hub.get_json("endpoints")
    rows = eps if isinstance(eps, list) else eps.get("endpoints", [])
    b = [e for e in rows if e.get("name") == "bob"]
    zt.check(b, f"bob missing from ztm get endpoints: {eps}")
    mc.check_no_sanitizer(*mc.all_procs(hub, {"alice": alice, "bob": bob}))
    echo.close() if hasattr(echo, "close") else None
    return f"{renewals} renewals under traffic ({len(sent)} bytes exact), new serial {serial1[:8]}…, key kept"


if __name__ == "__main__":
    zt.main(run)
