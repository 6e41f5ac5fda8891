#!/usr/bin/python3
"""cp.tokens: joining with bad tokens and bad certificate requests. Each is
refused with the right status and a message, and changes nothing: the
store view (ListEndpoints and Services.List, versions included) is the
same before and after, and the invite a refused Join named is still
usable by its invitee afterwards (a refusal never spends it).

  tokens    reused (UNAUTHENTICATED, "used"); expired (Invite ttl 1 s, then
            wait: UNAUTHENTICATED; also with the token's expiry field moved
            on, check bytes recomputed); one character flipped (INVALID_ARGUMENT
            or UNAUTHENTICATED); a forged secret, or the role/name/pin/mesh
            altered with the check bytes recomputed (UNAUTHENTICATED); a
            token of another mesh's controller (UNAUTHENTICATED); not a
            token at all / empty (INVALID_ARGUMENT)
  CSRs      signature that does not verify, garbage, a P-384 key
            (INVALID_ARGUMENT); another name (PERMISSION_DENIED); a higher
            role than the invite's — SAN URI ztm://mesh/admin/ID asked for
            with an agent token (PERMISSION_DENIED; must not yield an admin
            certificate)
  Renew     a CSR for another name, or asking for admin (PERMISSION_DENIED),
            and the endpoint keeps its certificate
  Invite    argument checks: ttl < 0 or > 30 days, bad name, role hub
            (INVALID_ARGUMENT); a name in use (ALREADY_EXISTS)
  success   an admin-role invite joins as admin; tokens refused above still
            join afterwards."""
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpcommon as cp  # noqa: E402

zt = cp.zt
grpc = cp.grpc
SC = grpc.StatusCode


def run():
    pb = cp.protos()
    F = cp.Findings()
    ctl = cp.start("ctl")
    admin = ctl.client(ctl.admin_creds())
    ca_cert = cp.x509.load_pem_x509_certificate(ctl.ca_pem())

    def invite(name, **kw):
        return admin.ok("Mesh/Invite", pb.mesh.InviteRequest(name=name, **kw), what=f"Invite {name}")

    def refused(what, token, name, codes, csr=None, key=None, words=()):
        """Join must answer one of CODES and change nothing."""
        before = cp.store_view(admin)
        code, j, details = cp.join(ctl, token, name, key=key, csr=csr)
        after = cp.store_view(admin)
        ok = F.check(code in codes, f"{what}: Join answered {code.name} ({details!r}), expected "
                     f"{' or '.join(c.name for c in codes)}")
        if not ok and j is not None:
            uri = cp.san_uri(j.cert)
            F.check(False, f"{what}: Join issued a certificate instead: CN "
                    f"{cp.cert_cn(j.cert)!r}, SAN URI {uri!r}, endpoint role "
                    f"{pb.types.Role.Name(j.resp.endpoint.role)}"
                    + (" — an ESCALATION" if "/admin/" in str(uri) else
                       " (the requested role was ignored, not refused)"))
        if code != SC.OK:
            F.check(details, f"{what}: refusal without a message")
            for w in words:
                F.check(w in details.lower(), f"{what}: message {details!r} does not say {w!r}")
            F.check(after == before, f"{what}: the refused Join changed the store: "
                    + cp.describe_view_change(before, after))
        zt.log(f"{what}: {code.name} {details!r}")
        return code

    def still_joins(what, token, name):
        code, j, details = cp.join(ctl, token, name)
        F.check(code == SC.OK, f"{what}: after the refusals the invite for {name} no longer "
                f"joins: {code.name} ({details!r})")
        return j

    # ---- reused --------------------------------------------------------------------------
    inv = invite("reuse")
    code, j1, details = cp.join(ctl, inv.token, "reuse")
    zt.check(code == SC.OK, f"first Join: {code.name} {details!r}")
    refused("reused token", inv.token, "reuse", [SC.UNAUTHENTICATED], words=("used",))
    refused("reused token, other key and empty CN", inv.token, None, [SC.UNAUTHENTICATED],
            csr=cp.csr_pem(cp.new_key(), None))

    # ---- expired -------------------------------------------------------------------------
    inv = invite("late", ttl_seconds=1)
    F.check(inv.expires_time <= time.time() + 2, f"Invite ttl 1: expires_time "
            f"{inv.expires_time - time.time():.0f}s from now")
    while time.time() < inv.expires_time + 1.2:
        time.sleep(0.2)
    refused("expired token", inv.token, "late", [SC.UNAUTHENTICATED], words=("expired",))
    # the expiry in the token is for the joiner's information: moving it
    # (check bytes recomputed) does not revive the invite
    later = dict(cp.token_decode(inv.token), expires=inv.expires_time + 86400 * 365)
    refused("expired token with its expiry moved a year on", cp.token_encode(later), "late",
            [SC.UNAUTHENTICATED])

    # ---- tampered / forged ----------------------------------------------------------------
    inv = invite("target")
    tok = inv.token
    body = tok[5:]
    mid = 5 + len(body) // 2   # inside the secret
    flipped = tok[:mid] + ("A" if tok[mid] != "A" else "B") + tok[mid + 1:]
    refused("one character flipped", flipped, "target",
            [SC.INVALID_ARGUMENT, SC.UNAUTHENTICATED], words=("token",))
    refused("last character flipped", tok[:-1] + ("A" if tok[-1] != "A" else "B"), "target",
            [SC.INVALID_ARGUMENT, SC.UNAUTHENTICATED], words=("token",))
    refused("token cut short", tok[:-6], "target", [SC.INVALID_ARGUMENT, SC.UNAUTHENTICATED])
    refused("not a token", "hello", "target", [SC.INVALID_ARGUMENT, SC.UNAUTHENTICATED])
    refused("empty token", "", "target", [SC.INVALID_ARGUMENT, SC.UNAUTHENTICATED])
    d = cp.token_decode(tok)
    forged = dict(d, secret=bytes(32))
    refused("forged secret (check bytes right)", cp.token_encode(forged), "target",
            [SC.UNAUTHENTICATED])
    esc = dict(d, role=3)  # ROLE_ADMIN
    refused("token role agent -> admin (check bytes right)", cp.token_encode(esc), "target",
            [SC.UNAUTHENTICATED])
    renamed = dict(d, name="admin2")
    refused("token name changed (check bytes right)", cp.token_encode(renamed), "admin2",
            [SC.UNAUTHENTICATED])
    other_pin = dict(d, pin="00" * 32)
    refused("token pin changed", cp.token_encode(other_pin), "target", [SC.UNAUTHENTICATED])
    other_mesh = dict(d, mesh="other")
    refused("token mesh changed", cp.token_encode(other_mesh), "target", [SC.UNAUTHENTICATED])
    # a genuine token of another mesh's controller
    other = cp.start("other", "--mesh", "othermesh")
    oadmin = other.client(other.admin_creds())
    oinv = oadmin.ok("Mesh/Invite", pb.mesh.InviteRequest(name="target"))
    refused("a token of another controller", oinv.token, "target", [SC.UNAUTHENTICATED])
    oadmin.close()
    other.stop()

    # ---- bad certificate requests ----------------------------------------------------------
    key = cp.new_key()
    refused("CSR signature does not verify", tok, "target", [SC.INVALID_ARGUMENT],
            csr=cp.csr_bad_signature(key, "target"))
    refused("CSR garbage", tok, "target", [SC.INVALID_ARGUMENT], csr="-----BEGIN CERTIFICATE "
            "REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    refused("CSR empty", tok, "target", [SC.INVALID_ARGUMENT], csr="")
    p384 = cp.ec.generate_private_key(cp.ec.SECP384R1())
    refused("CSR with a P-384 key", tok, "target", [SC.INVALID_ARGUMENT],
            csr=cp.csr_pem(p384, "target"))
    refused("CSR for another name", tok, "target", [SC.PERMISSION_DENIED],
            csr=cp.csr_pem(key, "admin"))
    refused("CSR for another name (the invitee's name as a prefix)", tok, "target",
            [SC.PERMISSION_DENIED], csr=cp.csr_pem(key, "target-x"))
    # every refusal above left the invite usable
    jt = still_joins("tampered tokens and bad CSRs", tok, "target")

    # ---- role escalation through the CSR (each with its own agent invite) ---------------------
    admin_id = ctl.admin_creds().endpoint_id()
    for i, (what, uri) in enumerate((
            ("CSR asking for the admin role (SAN URI ztm://mesh/admin/ID)",
             f"ztm://mesh/admin/{'ab' * 16}"),
            ("CSR asking for the admin's identity (SAN URI of the admin)",
             f"ztm://mesh/admin/{admin_id}"))):
        name = f"esc{i}"
        esc_tok = invite(name).token
        ekey = cp.new_key()
        code = refused(what, esc_tok, name, [SC.PERMISSION_DENIED], key=ekey,
                       csr=cp.csr_pem(ekey, name, san_uris=[uri]))
        if code == SC.OK:
            e = admin.ok("Mesh/GetEndpoint", pb.mesh.GetEndpointRequest(name=name))
            F.check(e.role == pb.types.ROLE_AGENT and e.id != admin_id,
                    f"{what}: ESCALATION: the endpoint is {e}")
    if jt is not None:
        F.check(cp.san_uri(jt.cert) == f"ztm://mesh/agent/{jt.id}" and
                jt.resp.endpoint.role == pb.types.ROLE_AGENT,
                f"target joined with {cp.san_uri(jt.cert)}, expected role agent")
        F.check(cp.signed_by(jt.cert, ca_cert), "target's certificate not from the mesh CA")

    # ---- Renew: another name, higher role --------------------------------------------------
    if jt is not None:
        agent = ctl.client(jt.creds)
        for what, csr in (
                ("Renew with a CSR for another name", cp.csr_pem(cp.new_key(), "admin")),
                ("Renew with a CSR asking for admin",
                 cp.csr_pem(cp.new_key(), "target", san_uris=[f"ztm://mesh/admin/{jt.id}"])),
                ("Renew with a CSR whose signature does not verify",
                 cp.csr_bad_signature(cp.new_key(), "target"))):
            before = cp.store_view(admin)
            code, r, details = agent.call("Mesh/Renew", pb.mesh.RenewRequest(csr_pem=csr))
            want = SC.INVALID_ARGUMENT if "signature" in what else SC.PERMISSION_DENIED
            F.check(code == want, f"{what}: {code.name} ({details!r}), expected {want.name}")
            if r is not None:
                rc = cp.x509.load_pem_x509_certificate(r.certificate_pem.encode())
                uri = cp.san_uri(rc)
                F.check(False, f"{what}: a certificate was issued instead: CN {cp.cert_cn(rc)!r} "
                        f"URI {uri!r}" + (" — an ESCALATION" if "/admin/" in str(uri) or
                                          cp.cert_cn(rc) != "target" else
                                          " (the request's role was ignored, not refused)"))
                continue
            after = cp.store_view(admin)
            F.check(after == before, f"{what}: the refused Renew changed the store: "
                    + cp.describe_view_change(before, after))
        agent.close()

    # ---- Invite argument checks --------------------------------------------------------------
    before = cp.store_view(admin)
    for what, req, want in (
            ("ttl -1", pb.mesh.InviteRequest(name="x1", ttl_seconds=-1), SC.INVALID_ARGUMENT),
            ("ttl 31 days", pb.mesh.InviteRequest(name="x2", ttl_seconds=31 * 86400),
             SC.INVALID_ARGUMENT),
            ("a name with a space", pb.mesh.InviteRequest(name="a b"), SC.INVALID_ARGUMENT),
            ("an empty name", pb.mesh.InviteRequest(name=""), SC.INVALID_ARGUMENT),
            ("role hub", pb.mesh.InviteRequest(name="x3", role=pb.types.ROLE_HUB),
             SC.INVALID_ARGUMENT),
            ("a name in use", pb.mesh.InviteRequest(name="target"), SC.ALREADY_EXISTS),
            ("the admin's name", pb.mesh.InviteRequest(name="admin"), SC.ALREADY_EXISTS)):
        code, _, details = admin.call("Mesh/Invite", req)
        F.check(code == want, f"Invite with {what}: {code.name} ({details!r}), "
                f"expected {want.name}")
    after = cp.store_view(admin)
    F.check(after == before, "refused Invites changed the store: "
            + cp.describe_view_change(before, after))

    # ---- an admin-role invite joins as admin -------------------------------------------------
    inv = invite("ops", role=pb.types.ROLE_ADMIN)
    F.check(cp.token_decode(inv.token)["role"] == 3, "admin invite token role is not admin")
    code, jo, details = cp.join(ctl, inv.token, "ops")
    F.check(code == SC.OK, f"Join with an admin invite: {code.name} ({details!r})")
    if jo is not None:
        F.check(cp.san_uri(jo.cert) == f"ztm://mesh/admin/{jo.id}",
                f"admin joiner got {cp.san_uri(jo.cert)}")
        ops = ctl.client(jo.creds)
        i2 = ops.call("Mesh/Invite", pb.mesh.InviteRequest(name="by-ops"))
        F.check(i2[0] == SC.OK, f"the joined admin cannot Invite: {i2[0].name} {i2[2]!r}")
        ops.close()

    F.check(not ctl.conn_errors(), f"the server dropped connections: {ctl.conn_errors()[:3]}")
    admin.close()
    ctl.stop()
    return F.done("reused/expired/tampered/forged tokens, bad CSRs and role escalation "
                  "refused with the right status; store unchanged; invites not spent")


if __name__ == "__main__":
    zt.main(run, deadline=250)
