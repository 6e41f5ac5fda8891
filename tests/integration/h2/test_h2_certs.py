#!/usr/bin/env python3
"""Certificate failures on ztm's mutual TLS, both ways: a client whose
certificate is from a foreign CA, expired, not yet valid, or lacks the
clientAuth usage is refused by the server with the reason logged; and our
client refuses a server certificate with the same faults. Nothing is served
in any of these cases.

Usage: test_h2_certs.py CERTDIR"""
import h2common as hc
from h2common import zt

CASES = [  # (certificate prefix, the reason the verifier must name)
    ("foreign", "unknown_ca"),
    ("expired", "expired"),
    ("notyet", "not_yet_valid"),
    ("wrongeku", "wrong_key_usage"),
]


def scenario():
    srv = hc.Server(*hc.tls_args())
    for prefix, reason in CASES:
        rc, res, err = hc.client(srv.port, *hc.tls_args(f"{prefix}-client"), "--sni", "localhost",
                                 "--timeout", "20")
        zt.check(rc != 0 and res.get("result") != "ok",
                 f"client with the {prefix} certificate was served: rc {rc} {res}")
        srv.wait_for_log("tls.verify_failed", reason=reason)
        zt.log(f"server refused a {prefix} client certificate: reason={reason}")
    # Our client checks the server's name against its certificate.
    rc, res, err = hc.client(srv.port, *hc.tls_args("client"), "--sni", "wrong.example",
                             "--timeout", "20")
    zt.check(rc != 0 and "reason=wrong_name" in err,
             f"our client accepted a certificate not made for wrong.example: rc {rc} {res} {err[-500:]}")
    zt.log("client refused a server certificate for another name: reason=wrong_name")
    # The server still serves good clients.
    rc, res, err = hc.client(srv.port, *hc.tls_args("client"), "--sni", "localhost",
                             "--get-size", "12345")
    zt.check(rc == 0 and res.get("result") == "ok", f"a good client after the refusals: {rc} {res} {err}")
    srv.stop()

    for prefix, reason in CASES:
        bad = hc.Server(*hc.tls_args(f"{prefix}-server"))
        rc, res, err = hc.client(bad.port, *hc.tls_args("client"), "--sni", "localhost",
                                 "--timeout", "20")
        zt.check(rc != 0 and res.get("result") != "ok",
                 f"our client accepted a {prefix} server certificate: rc {rc} {res}")
        zt.check(f"reason={reason}" in err,
                 f"our client did not name reason={reason} for the {prefix} server:\n{err[-800:]}")
        bad.stop()
        zt.log(f"client refused a {prefix} server certificate: reason={reason}")
    return ("foreign CA, expired, not yet valid, wrong EKU: refused both ways with the reason logged; "
            "a server certificate for another name refused (wrong_name)")


if __name__ == "__main__":
    zt.main(scenario, deadline=200)
