#!/usr/bin/env python3
"""`ztm join TOKEN`, the joiner written in C on our own stack: it makes its
key locally, connects with server-only TLS, trusts the hub only if the CA
in its chain has the token's pin, and keeps cert/key/CA (key 0600). Then:
the token cannot be used twice; a token pointing at a server of another
mesh (pin mismatch) is refused during the TLS handshake, before the secret
is sent, and the invite stays usable; bad tokens and arguments exit 2."""
import os
import subprocess

import cpcommon as cp
from cpcommon import zt


def run(*args, env=None, timeout=60):
    return subprocess.run([zt.ztm_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def scenario():
    ctl = cp.start("join")
    env = dict(os.environ, ZTM_CONFIG_DIR=ctl.config_dir)
    tok = run("invite", "laptop", env=env).stdout.strip()
    state = cp.subdir("agent")
    r = run("join", tok, "--state", state, env=env)
    zt.check(r.returncode == 0 and "joined mesh" in r.stdout, f"join: rc {r.returncode} {r.stdout} {r.stderr}")
    d = os.path.join(state, "meshes", ctl.mesh)
    for f in ("key.pem", "cert.pem", "ca.pem", "mesh.conf"):
        zt.check(os.path.exists(os.path.join(d, f)), f"join did not write {f}")
    mode = os.stat(os.path.join(d, "key.pem")).st_mode & 0o777
    zt.check(mode == 0o600, f"key.pem mode {oct(mode)}, expected 0600")
    cert = open(os.path.join(d, "cert.pem"), "rb").read()
    from cryptography import x509
    c = x509.load_pem_x509_certificate(cert)
    uris = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    zt.check(len(uris) == 1 and uris[0].startswith(f"ztm://{ctl.mesh}/agent/"), f"SAN URIs {uris}")
    zt.check(c.subject.rfc4514_string() == "CN=laptop", f"subject {c.subject.rfc4514_string()}")
    eid = uris[0].rsplit("/", 1)[1]
    r = run("get", "endpoints", "-o", "json", env=env)
    zt.check(f'"id": "{eid}"' in r.stdout and '"name": "laptop"' in r.stdout,
             f"the new endpoint is not listed: {r.stdout}")
    zt.log(f"joined as laptop ({eid}): cert/key/CA written, key 0600, listed by the controller")

    r = run("join", tok, "--state", cp.subdir("agent2"), env=env)
    zt.check(r.returncode == 1 and "already used" in r.stderr, f"reused token: rc {r.returncode} {r.stderr}")

    # Another mesh's controller on the same address: the pin does not match.
    tok2 = run("invite", "desk", env=env).stdout.strip()
    port = ctl.port
    ctl.stop()
    other = cp.Controller(os.path.join(cp.subdir("other"), "state"), os.path.join(cp.subdir("other"), "cfg"),
                          listen=f"127.0.0.1:{port}")
    r = run("join", tok2, "--state", cp.subdir("agent3"), env=env)
    zt.check(r.returncode == 1 and "not joined" in r.stderr, f"pin mismatch: rc {r.returncode} {r.stderr}")
    zt.check(not os.path.exists(os.path.join(cp.subdir("agent3"), "meshes")), "a refused join left files")
    zt.check(not other.logs("endpoint.joined") and not any(e.get("event") == "grpc.call" for e in other.events),
             f"the other controller saw a call: {other.events[-5:]}")
    other.stop()
    zt.log("a token for mesh A against mesh B's server: refused in the handshake (wrong_ca_pin), no call made")

    # The invite is still good with the right controller.
    ctl2 = cp.Controller(ctl.state, ctl.config_dir, listen=f"127.0.0.1:{port}")
    r = run("join", tok2, "--state", cp.subdir("agent4"), env=env)
    zt.check(r.returncode == 0, f"the unused invite after the refused attempt: rc {r.returncode} {r.stderr}")
    ctl2.stop()

    for args, what in [(["join"], "no token"), (["join", "garbage"], "not a token"),
                       (["join", tok2[:-3], "--state", cp.subdir("a5")], "truncated"),
                       (["join", tok2, "--as", "other", "--state", cp.subdir("a6")], "--as mismatch"),
                       (["join", tok2, "--mesh", "Bad_Name", "--state", cp.subdir("a7")], "bad --mesh")]:
        r = run(*args, env=env)
        zt.check(r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("ztm join: error:"),
                 f"{what}: rc {r.returncode} {r.stderr!r}")
    return ("join writes key (0600)/cert/CA, endpoint listed; reuse refused; wrong-pin server refused "
            "before the secret is sent; invite still usable after; bad tokens/args exit 2")


if __name__ == "__main__":
    zt.main(scenario, deadline=200)
