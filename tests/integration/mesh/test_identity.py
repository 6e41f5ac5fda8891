"""mesh.identity: who may do what comes from verified certificates only.

One hub; alice, bob, carol joined and up.
  - allow list: alice exports `priv --allow bob`. bob's import carries
    traffic; carol's does not: carol's local connection is closed with no
    data, carol logs tunnel.refused status=403 naming the allow list, alice
    logs tunnel.denied caller=carol and counts the refusal.
  - a name claimed: `ztm join TOKEN --as bob` with eve's invite exits 2 with
    one line saying whose invite it is; nothing is written; the token still
    works for eve.
  - a certificate swapped: carol's cert.pem replaced by bob's (carol keeps
    her own key): her agent refuses the pair (tls.config_error
    KEY_VALUES_MISMATCH naming key.pem, agent.mesh_skipped), never dials
    the hub as anyone; `ztm status` lists no mesh but says that the joined
    one was not loaded (and does not ask her to join).
  - a hub that is not a hub: dave's mesh.conf points at a TLS server (`ztm
    h2-test server`) presenting (1) carol's real agent certificate: refused
    at the handshake (wrong_name: agent certificates carry no IP/DNS
    names); (2) a certificate of role agent that the mesh CA signed with
    IP 127.0.0.1 in it (made here with the CA key from the hub's store):
    refused with hublink.not_a_hub peer_role=agent. dave never goes up.
  - revocation: `ztm revoke bob` while a 50 MiB transfer runs through bob's
    export: the transfer is cut (reset or short EOF, never completes), bob's
    agent loses the hub and cannot come back (the hub logs its handshakes
    refused as revoked; bob's status is not up)."""
import datetime
import ipaddress
import os
import re
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshcommon as mc  # noqa: E402
from meshcommon import zt  # noqa: E402

MiB = mc.MiB


def expect_closed(port, what, timeout=20):
    """Connects, sends a little, expects the connection closed with no
    data (EOF or reset); returns how."""
    try:
        s = zt.connect(port, timeout=timeout)
    except ConnectionResetError:
        # accepted and reset before connect() looked at the socket's state
        return "reset"
    try:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    except OSError:
        pass
    s.settimeout(timeout)
    try:
        d = s.recv(65536)
        how = "EOF" if d == b"" else None
    except ConnectionResetError:
        d, how = b"", "reset"
    except socket.timeout:
        zt.fail(f"{what}: the connection was not closed within {timeout}s")
    finally:
        s.close()
    zt.check(d == b"", f"{what}: got {len(d)} bytes ({d[:40]!r}), expected the connection closed")
    return how


def allow_list(hub, alice, bob, carol, echo):
    alice.export("priv", echo.port, allow=["bob"])
    t = [t for t in alice.tunnels() if t["name"] == "priv"][0]
    zt.check(t["allow"] == ["bob"], f"ztm tunnel ls shows allow={t['allow']}, expected ['bob']")
    bport = bob.import_("priv", via="alice")
    mc.wait_carries(bport, what="bob's import of priv (bob is allowed)")
    cport = carol.import_("priv", via="alice")
    am, cm = alice.mark(), carol.mark()
    how = expect_closed(cport, "carol's import of priv (not in the allow list)")
    ev = carol.wait_for_log("tunnel.refused", after=cm, service="priv", timeout=20)
    zt.check(ev.get("status") == "403" and "allow list" in ev.get("error", ""),
             f"carol's tunnel.refused does not say 403 / allow list: {ev}")
    den = alice.wait_for_log("tunnel.denied", after=am, service="priv", timeout=20)
    zt.check(den.get("caller") == "carol", f"alice's tunnel.denied names caller={den.get('caller')}, "
             "expected carol")
    t = [t for t in alice.tunnels() if t["name"] == "priv"][0]
    zt.check(t["connections_refused"] >= 1, f"alice's export counts {t['connections_refused']} "
             "refused connections, expected >= 1")
    t = [t for t in carol.tunnels() if t["name"] == "priv"][0]
    zt.check(t["connections_refused"] >= 1, f"carol's import counts {t['connections_refused']} "
             "refused connections, expected >= 1 (the exporter refused one)")
    # bob still gets through after carol's refusal
    data = os.urandom(256 << 10)
    zt.check(mc.roundtrip(bport, data) == data, "bob's echo through priv differs")
    zt.log(f"allow list: bob through, carol refused ({how}; carol: {ev.get('error')!r})")


def claimed_name(hub):
    eve = mc.Agent("eve")
    tok = hub.invite("eve")
    rc, out, err = eve.cli("join", tok, "--as", "bob")
    lines = err.strip().splitlines()
    zt.check(rc == 2, f"ztm join --as bob with eve's invite: exit {rc}, expected 2: {err!r}")
    zt.check(len(lines) == 1 and lines[0].startswith("ztm join: error: ") and "'eve'" in lines[0]
             and "bob" in lines[0],
             f"ztm join --as bob with eve's invite: expected one line naming both names, got {lines}")
    zt.check(not os.path.exists(eve.mesh_dir()), f"a refused join left {eve.mesh_dir()} behind")
    rc, out, err = eve.cli("join", tok, "--as", "eve")
    zt.check(rc == 0, f"the same token with --as eve: exit {rc}: {err.strip()} (the refused "
             "attempt must not have used it)")
    zt.log(f"claimed name: {lines[0]!r}; the token then worked for eve")


def swapped_cert(hub, bob, carol):
    carol.stop()
    shutil.copy(os.path.join(bob.mesh_dir(), "cert.pem"), os.path.join(carol.mesh_dir(), "cert.pem"))
    hm = hub.mark()
    carol.start()
    ev = carol.wait_for_log("tls.config_error", timeout=10)
    zt.check("KEY_VALUES_MISMATCH" in ev.get("error", "") and ev.get("file", "").endswith("key.pem"),
             f"carol's agent with bob's certificate: tls.config_error does not name the key "
             f"mismatch: {ev}")
    sk = carol.wait_for_log("agent.mesh_skipped", timeout=10, mesh="mesh")
    time.sleep(1.5)
    zt.check(not carol.logs("agent.hub_up") and not carol.logs("link.open"),
             "carol's agent dialled out with a certificate that is not hers")
    st = carol.status()
    zt.check(st["meshes"] == [], f"carol's status lists meshes {st['meshes']} with a swapped cert")
    text = carol.ok("status")
    zt.check("mesh mesh: joined" in text and "not loaded" in text and "not in any mesh yet"
             not in text, f"carol's ztm status does not say her mesh was not loaded: {text!r}")
    opened = [e for e in hub.logs("relay.events_open", after=hm) if e.get("endpoint") in
              ("bob", "carol")]
    zt.check(not opened, f"the hub registered {opened} after carol's swap")
    zt.log(f"swapped cert: refused ({sk.get('error')!r})")


def ca_key_from_store(hub):
    """The mesh CA's private key, from the hub's store (the embedded store
    keeps it as PEM)."""
    db = mc.read(os.path.join(hub.state, "store.db"))
    m = re.search(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----\n?", db, re.S)
    zt.check(m, "no CA private key (PEM) in the hub's store.db")
    return m.group(0)


def forged_agent_cert(hub, d):
    """A certificate the mesh CA signs, role agent, with IP 127.0.0.1 (which
    the CA itself gives hubs only): what a hub must not be."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    ca_key = serialization.load_pem_private_key(ca_key_from_store(hub), None)
    ca = x509.load_pem_x509_certificate(mc.read(os.path.join(hub.state, "ca.pem")))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(f"ztm://{hub.mesh_id}/agent/" + os.urandom(16).hex()),
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
    cpath, kpath = os.path.join(d, "mallory.pem"), os.path.join(d, "mallory.key")
    mc.write(cpath, cert.public_bytes(serialization.Encoding.PEM))
    mc.write(kpath, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return cpath, kpath


def fake_hub(cert, key, ca, name):
    srv = mc.Daemon([zt.ztm_bin(), "h2-test", "server", "--listen", "127.0.0.1:0", "--cert", cert,
                     "--key", key, "--ca", ca], name=name)
    return srv, srv.wait_for_log("h2test.listen", timeout=20)["addr"]


def point_at(agent, addr):
    conf = os.path.join(agent.mesh_dir(), "mesh.conf")
    text = mc.read(conf, "r")
    zt.check(re.search(r"^hub=", text, re.M), f"no hub= line in {conf}: {text!r}")
    mc.write(conf, re.sub(r"^hub=.*$", f"hub={addr}", text, flags=re.M))


def not_a_hub(hub, carol_cert, carol_key):
    dave = mc.Agent("dave")
    dave.join(hub)
    ca = os.path.join(dave.mesh_dir(), "ca.pem")
    # (1) carol's real certificate: no name the agent dialled
    srv, addr = fake_hub(carol_cert, carol_key, ca, "fake-hub-carol")
    point_at(dave, addr)
    dave.start()
    ev = dave.wait_for_log("hublink.down", timeout=20)
    zt.check("wrong_name" in ev.get("why", ""), f"a server with an agent's certificate: the agent "
             f"logged {ev}, expected a refusal for the name (wrong_name)")
    dave.wait_for_log("hublink.down", timeout=20, after=dave.mark())  # and again after backoff
    zt.check(not dave.logs("agent.hub_up"), "dave went up with a server holding carol's cert")
    zt.check(dave.hub_state() != "up", "dave's status says up")
    zt.log(f"fake hub (carol's cert): refused, {ev.get('why')!r}")
    dave.stop()
    srv.kill()
    # (2) a mesh-CA certificate of role agent that does carry 127.0.0.1
    cert, key = forged_agent_cert(hub, mc.subdir("forged"))
    srv, addr = fake_hub(cert, key, ca, "fake-hub-forged")
    point_at(dave, addr)
    dave.start()
    nah = dave.wait_for_log("hublink.not_a_hub", timeout=20)
    zt.check(nah.get("peer_role") == "agent" and nah.get("peer_name") == "mallory" and
             nah.get("peer_mesh") == hub.mesh_id,
             f"hublink.not_a_hub does not name the peer's role/name/mesh: {nah}")
    down = dave.wait_for_log("hublink.down", timeout=20)
    zt.check("not_a_hub" in down.get("why", ""), f"dave's hublink.down: {down}")
    dave.wait_for_log("hublink.not_a_hub", timeout=20, after=dave.mark())  # retried, refused again
    ms = dave.mesh_status()
    zt.check(ms["hub_state"] != "up" and "not_a_hub" in ms["last_error"],
             f"dave's status: hub_state={ms['hub_state']} last_error={ms['last_error']!r}")
    zt.check(not dave.logs("agent.hub_up"), "dave went up with a server that is not a hub")
    zt.log(f"fake hub (mesh CA, role agent, IP SAN): not_a_hub; status last_error="
           f"{ms['last_error']!r}")
    dave.stop()
    srv.kill()


def revocation(hub, alice, bob):
    echo = mc.echo_server()
    bob.export("bulk", echo.port)
    port = alice.import_("bulk", via="bob")
    mc.wait_carries(port, what="bulk")
    push = mc.Pusher(port, 50 * MiB, rate=8 * MiB)
    zt.wait_until(lambda: push.received >= 4 * MiB or push.done.is_set(), 60,
                  "the 50 MiB transfer to get going")
    zt.check(not push.done.is_set(), f"the transfer ended before the revocation: {push.result}")
    hm, bm = hub.mark(), bob.mark()
    rc, out, err = hub.cli("revoke", "bob")
    zt.check(rc == 0, f"ztm revoke bob: rc {rc}: {err.strip()}")
    at = push.received
    res = push.wait(60)
    zt.check(res[0] == "error", f"the transfer through revoked bob completed: {res} "
             f"(received {push.received} of {50 * MiB})")
    zt.check(push.received < 50 * MiB, f"all 50 MiB came back after the revocation")
    zt.log(f"revoked at {at >> 20} MiB: transfer cut at {push.received >> 20} MiB ({res[1]})")
    # bob is cut off and stays out
    bob.wait_for_log("agent.hub_down", after=bm, timeout=20)
    ref = hub.wait_for_log("tls.verify_failed", after=hm, timeout=30, reason="revoked")
    zt.check(ref.get("role") == "server", f"the hub's refusal: {ref}")
    hub.wait_for_log("tls.verify_failed", after=hub.mark(), timeout=30, reason="revoked")
    st = bob.mesh_status()
    zt.check(st["hub_state"] != "up", f"revoked bob's status says hub_state={st['hub_state']}")
    # the hub answers a revoked certificate with the access_denied alert: the
    # agent's status must say so, not only "a fatal alert"
    zt.check("access denied" in st["last_error"], f"revoked bob's status last_error="
             f"{st['last_error']!r} does not name the hub's refusal (access denied)")
    zt.check(not bob.logs("agent.hub_up", after=bm), "revoked bob's agent came back up")
    # and nobody reaches bob's export any more
    how = expect_closed(port, "alice's import via revoked bob")
    zt.log(f"revoked bob: hub refuses its handshakes (revoked), status {st['hub_state']} "
           f"({st['last_error']!r}); alice's import now {how}")
    echo.close()


def run():
    hub, ag = mc.mesh(("alice", "bob", "carol"))
    alice, bob, carol = ag["alice"], ag["bob"], ag["carol"]
    echo = mc.echo_server()
    allow_list(hub, alice, bob, carol, echo)
    claimed_name(hub)
    carol_cert = os.path.join(mc.subdir("carol-orig"), "cert.pem")
    shutil.copy(os.path.join(carol.mesh_dir(), "cert.pem"), carol_cert)
    carol_key = os.path.join(carol.mesh_dir(), "key.pem")
    not_a_hub(hub, carol_cert, carol_key)
    swapped_cert(hub, bob, carol)
    revocation(hub, alice, bob)
    echo.check()
    for a in (alice, bob, carol):
        a.stop()
    hub.stop()
    mc.check_all_sanitizers()
    return ("allow list enforced; --as mismatch exit 2; swapped cert refused; agent cert as hub "
            "refused (wrong_name, not_a_hub); revoked bob cut mid-transfer and kept out")


if __name__ == "__main__":
    zt.main(run, deadline=280)
