#!/usr/bin/env python3
"""The hub link trusts a server only if its verified certificate says
"hub of our mesh" (ztm_identity_from_cert: role hub, mesh = ours). With a
CA of our own (python3-cryptography) that both ends trust, so that TLS
itself passes, the driver meets `ztm h2-test server`s presenting: an agent
certificate of our mesh, a hub certificate of another mesh -> refused with
not_a_hub (logged with the peer's role and mesh) and retried with backoff;
a hub certificate of our mesh -> accepted (the link goes on to the Events
call, which this server cannot answer)."""
import datetime
import ipaddress
import os
import time
import uuid

import hlcommon as hl
from hlcommon import cp, zt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import ipaddress


def leaf(ca_key, ca_cert, cn, mesh, role, d):
    """A certificate shaped like the mesh CA's (CN, one ztm:// URI, IP SAN
    127.0.0.1, server+client auth), written to D/CN.pem and D/CN.key."""
    key = cp.new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    uri = f"ztm://{mesh}/{role}/{uuid.uuid4().hex}"
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(uri),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cp_, kp = os.path.join(d, f"{cn}.pem"), os.path.join(d, f"{cn}.key")
    with open(cp_, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(kp, "wb") as f:
        f.write(cp.key_pem(key))
    return cp_, kp


class H2Server(zt.Proc):
    def __init__(self, cert, key, ca, name):
        self.events = []
        super().__init__([zt.ztm_bin(), "h2-test", "server", "--listen", "127.0.0.1:0",
                          "--cert", cert, "--key", key, "--ca", ca], name=name)
        end = time.monotonic() + 30
        while True:
            evs = [e for e in self.events if e.get("event") == "h2test.listen"]
            if evs:
                self.addr = evs[0]["addr"]
                return
            zt.check(self.alive() and time.monotonic() < end,
                     f"{name}: no h2test.listen; stderr {self.err[-5:]}")
            time.sleep(0.05)

    def _on_err_line(self, line):
        ev = zt.parse_log_line(line)
        if ev is not None:
            self.events.append(ev)


def scenario():
    d = cp.subdir("certs")
    ca_key, ca_cert = cp.foreign_ca("mesh")
    ca = os.path.join(d, "ca.pem")
    with open(ca, "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    me = (*leaf(ca_key, ca_cert, "alice", "mesh", "agent", d), ca)
    cases = [("agent-of-mesh", "mesh", "agent", True),
             ("hub-of-other", "other", "hub", True),
             ("hub-of-mesh", "mesh", "hub", False)]
    for cn, mesh, role, refused in cases:
        cert, key = leaf(ca_key, ca_cert, cn, mesh, role, d)
        srv = H2Server(cert, key, ca, name=f"h2-{cn}")
        drv = hl.Driver([srv.addr], "mesh", me, "--backoff-min", 100, "--backoff-max", 400,
                        name=f"driver-{cn}")
        whys = []
        j = -1
        for _ in range(2):
            j, m = drv.wait_line(r'^state backoff hub=\S+ why="(.*)"', after=j + 1)
            whys.append(m.group(1))
        logged = drv.logs("hublink.not_a_hub")
        if refused:
            zt.check(whys == ["not_a_hub"] * 2, f"{cn}: whys {whys}, expected not_a_hub twice")
            zt.check(logged and logged[0].get("peer_role") == role and
                     logged[0].get("peer_mesh") == mesh and logged[0].get("peer_name") == cn,
                     f"{cn}: hublink.not_a_hub log {logged[:1]}")
            zt.log(f"{cn}: refused (not_a_hub, peer_role={role} peer_mesh={mesh}), retried")
        else:
            zt.check(not logged and all(w != "not_a_hub" and w.startswith("events:")
                                        for w in whys),
                     f"{cn}: a hub of our mesh was refused: {whys} {logged[:1]}")
            zt.log(f"{cn}: accepted; the link went on to Events ({whys[0]})")
        zt.check(not drv.lines("state up"), f"{cn}: the link came up: {drv.out}")
        drv.stop()
        srv.kill()
    return "agent of our mesh, hub of another mesh: not_a_hub, retried; hub of our mesh: accepted"


if __name__ == "__main__":
    zt.main(scenario, deadline=150)
