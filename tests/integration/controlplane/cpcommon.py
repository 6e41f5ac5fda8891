"""Shared pieces of the control-plane integration tests (cp.*).

What is here:
  protos()       protoc-generated Python modules of proto/ (made once per
                 test run in a temp dir; health_pb2 loaded by file path
                 because grpcio owns the `grpc` package name)
  Controller     `ztm controller --state DIR --listen 127.0.0.1:0`, waited
                 for; .port, .pin (hex), .state, .config_dir; stop() by
                 SIGTERM (exit 0), kill9(); admin/hub credentials on disk
  Creds, Client  a stock grpcio channel over TLS (target localhost:PORT)
                 with or without a client certificate; call() returns
                 (status, response, details) for any method by short name
                 ("Mesh/Invite"); raw request bytes are allowed
  Watcher        Watch.Subscribe in a background thread, events in a queue
  RawH2          a raw HTTP/2 client (python3-h2 over ssl) for the cases a
                 stock client will not send: wrong content-type, compressed
                 flag, truncated or oversized prefixes, headers and then
                 nothing
  keys and CSRs  python3-cryptography: P-256 keys, CSRs (optionally with a
                 SAN URI, or with a broken signature), a foreign CA
  tokens         decode/encode of the invite token format (controlplane/ca/
                 token.h) to tamper with it field by field
  Findings       soft checks: a test records every contract violation it
                 sees and fails once at the end with all of them

Every test imports this with the harness (../ztmtest.py) and ends with
zt.main(run).
"""
import base64
import hashlib
import importlib.util
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

import grpc  # noqa: E402  (Debian's python3-grpcio)
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

REPO = zt.REPO
PROTO_DIR = os.path.join(REPO, "proto")
MiB = 1 << 20

# ---- temp dirs ------------------------------------------------------------------


_TMP = None


def tmpdir():
    """A per-test temp dir, removed at exit."""
    global _TMP
    if _TMP is None:
        _TMP = tempfile.TemporaryDirectory(prefix="ztm-cp-")
    return _TMP.name


def subdir(name):
    p = os.path.join(tmpdir(), name)
    os.makedirs(p, exist_ok=True)
    return p


# ---- generated messages -------------------------------------------------------------

_PB = None


class _NS:
    pass


def protos():
    """Namespace with mesh_pb2, services_pb2, watch_pb2, hubs_pb2, types_pb2,
    health_pb2, generated from proto/ by protoc at test time."""
    global _PB
    if _PB is not None:
        return _PB
    out = subdir("pb")
    files = ["ztm/v1/types.proto", "ztm/v1/mesh.proto", "ztm/v1/services.proto",
             "ztm/v1/watch.proto", "ztm/v1/hubs.proto", "ztm/v1/records.proto",
             "grpc/health/v1/health.proto"]
    r = subprocess.run(["protoc", "-I", PROTO_DIR, "--python_out", out, *files],
                       capture_output=True, text=True)
    zt.check(r.returncode == 0, f"protoc failed: {r.stderr}")
    sys.path.insert(0, out)
    from ztm.v1 import hubs_pb2, mesh_pb2, services_pb2, types_pb2, watch_pb2
    spec = importlib.util.spec_from_file_location(
        "health_pb2", os.path.join(out, "grpc/health/v1/health_pb2.py"))
    health_pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_pb2)
    ns = _NS()
    ns.mesh, ns.services, ns.watch, ns.hubs = mesh_pb2, services_pb2, watch_pb2, hubs_pb2
    ns.types, ns.health = types_pb2, health_pb2
    ns.methods = {
        "Mesh/Invite": ("/ztm.v1.Mesh/Invite", mesh_pb2.InviteResponse, False),
        "Mesh/Join": ("/ztm.v1.Mesh/Join", mesh_pb2.JoinResponse, False),
        "Mesh/Renew": ("/ztm.v1.Mesh/Renew", mesh_pb2.RenewResponse, False),
        "Mesh/Revoke": ("/ztm.v1.Mesh/Revoke", mesh_pb2.RevokeResponse, False),
        "Mesh/ListEndpoints": ("/ztm.v1.Mesh/ListEndpoints", mesh_pb2.ListEndpointsResponse, False),
        "Mesh/GetEndpoint": ("/ztm.v1.Mesh/GetEndpoint", types_pb2.Endpoint, False),
        "Services/Publish": ("/ztm.v1.Services/Publish", services_pb2.PublishResponse, False),
        "Services/Unpublish": ("/ztm.v1.Services/Unpublish", services_pb2.UnpublishResponse,
                               False),
        "Services/List": ("/ztm.v1.Services/List", services_pb2.ListServicesResponse, False),
        "Services/SetPolicy": ("/ztm.v1.Services/SetPolicy", services_pb2.SetPolicyResponse,
                               False),
        "Hubs/Register": ("/ztm.v1.Hubs/Register", hubs_pb2.RegisterHubResponse, False),
        "Hubs/Heartbeat": ("/ztm.v1.Hubs/Heartbeat", hubs_pb2.HubHeartbeatResponse, False),
        "Hubs/List": ("/ztm.v1.Hubs/List", hubs_pb2.ListHubsResponse, False),
        "Watch/Subscribe": ("/ztm.v1.Watch/Subscribe", watch_pb2.WatchEvent, True),
        "Health/Check": ("/grpc.health.v1.Health/Check", health_pb2.HealthCheckResponse, False),
        "Health/Watch": ("/grpc.health.v1.Health/Watch", health_pb2.HealthCheckResponse, True),
    }
    # An empty (valid) request of each method, for "every method" sweeps.
    ns.empty_requests = {
        "Mesh/Invite": mesh_pb2.InviteRequest(name="nobody"),
        "Mesh/Join": mesh_pb2.JoinRequest(),
        "Mesh/Renew": mesh_pb2.RenewRequest(),
        "Mesh/Revoke": mesh_pb2.RevokeRequest(endpoint_name="nobody"),
        "Mesh/ListEndpoints": mesh_pb2.ListEndpointsRequest(),
        "Mesh/GetEndpoint": mesh_pb2.GetEndpointRequest(name="admin"),
        "Services/Publish": services_pb2.PublishRequest(name="svc"),
        "Services/Unpublish": services_pb2.UnpublishRequest(name="svc"),
        "Services/List": services_pb2.ListServicesRequest(),
        "Services/SetPolicy": services_pb2.SetPolicyRequest(name="svc"),
        "Hubs/Register": hubs_pb2.RegisterHubRequest(addresses=["127.0.0.1:1"]),
        "Hubs/Heartbeat": hubs_pb2.HubHeartbeatRequest(),
        "Hubs/List": hubs_pb2.ListHubsRequest(),
        "Watch/Subscribe": watch_pb2.SubscribeRequest(),
        "Health/Check": health_pb2.HealthCheckRequest(),
    }
    _PB = ns
    return ns


# ---- findings -------------------------------------------------------------------------


class Findings:
    """Soft checks: each failed one is logged at once and kept; done()
    fails the test with all of them. For contract checks that should not
    stop the rest of the test from running."""

    def __init__(self):
        self.items = []

    def check(self, cond, msg):
        if not cond:
            self.items.append(msg)
            zt.log(f"CHECK FAILED: {msg}")
        return bool(cond)

    def done(self, summary):
        if self.items:
            zt.fail(f"{len(self.items)} check(s) failed:\n  - " + "\n  - ".join(self.items))
        return summary


# ---- the controller -----------------------------------------------------------------


class Controller(zt.Proc):
    """`ztm controller --state STATE --listen LISTEN ARGS`, with
    ZTM_CONFIG_DIR=CONFIG_DIR; waits for event=controller.listen.
    .port, .addr, .pin (hex, from ca_pin=sha256:HEX), .events (parsed log)."""

    def __init__(self, state, config_dir, *args, listen="127.0.0.1:0", wait=True,
                 name="ztm-controller", timeout=30):
        self.events = []
        self.state = state
        self.config_dir = config_dir
        env = dict(os.environ)
        env["ZTM_CONFIG_DIR"] = config_dir
        super().__init__([zt.ztm_bin(), "controller", "--state", state, "--listen", listen,
                          *[str(a) for a in args]], name=name, env=env)
        self.port = None
        if wait:
            ev = self.wait_for_log("controller.listen", timeout=timeout)
            self.addr = ev["addr"]
            _, self.port = zt.split_hostport(self.addr)
            pin = ev.get("ca_pin", "")
            zt.check(pin.startswith("sha256:") and len(pin) == 7 + 64,
                     f"controller.listen has no ca_pin=sha256:HEX: {ev}")
            self.pin = pin[7:]
            self.mesh = ev.get("mesh")
            zt.log(f"controller pid {self.pid} on {self.addr} (state {state})")

    def _on_err_line(self, line):
        ev = zt.parse_log_line(line)
        if ev is not None:
            self.events.append(ev)

    def logs(self, event, **fields):
        with self.cond:
            return [e for e in self.events if e.get("event") == event
                    and all(e.get(k) == str(v) for k, v in fields.items())]

    def wait_for_log(self, event, timeout=30, **fields):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e.get("event") == event and all(e.get(k) == str(v)
                                                       for k, v in fields.items()):
                        return e
                if not self._threads[1].is_alive():
                    zt.fail(f"{self.name} exited ({zt.describe_rc(self.popen.poll())}) without "
                            f"logging event={event}; stderr: {self.err[-5:]}")
                left = end - time.monotonic()
                if left <= 0:
                    zt.fail(f"{self.name}: no event={event} {fields} within {timeout}s")
                self.cond.wait(min(left, 0.2))

    def stop(self, timeout=60):
        """SIGTERM by PID: drains and exits 0."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        rc = self.wait_exit(timeout)
        zt.check(rc is not None, f"{self.name} (pid {self.pid}) did not exit within {timeout}s "
                 "of SIGTERM")
        zt.check(rc == 0, f"{self.name} {zt.describe_rc(rc)} after SIGTERM, expected exit 0")
        return rc

    def kill9(self):
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        rc = self.wait_exit(20)
        zt.check(rc is not None, f"{self.name} did not die of SIGKILL")
        return rc

    # -- credentials on disk
    def ca_pem(self):
        return read(os.path.join(self.config_dir, "ca.pem"))

    def admin_creds(self):
        return Creds(read(os.path.join(self.config_dir, "admin.pem")),
                     read(os.path.join(self.config_dir, "admin.key")))

    def hub_creds(self):
        """The controller's own certificate (role hub), from its state dir."""
        return Creds(read(os.path.join(self.state, "controller.pem")),
                     read(os.path.join(self.state, "controller.key")))

    def client(self, creds=None, root=None):
        c = Client(self.port, root if root is not None else self.ca_pem(), creds)
        c.ctl = self
        return c

    def conn_errors(self):
        """The server's own words on connections it dropped (for messages)."""
        return [" ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "level", "worker"))
                for e in self.events if e.get("event") in ("h2.protocol_error", "grpc.conn_error")]


def read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def start(name="ctl", *args, **kw):
    """A controller in fresh dirs under the test's temp dir."""
    base = subdir(name)
    return Controller(os.path.join(base, "state"), os.path.join(base, "config"), *args, **kw)


# ---- grpc clients ----------------------------------------------------------------------


class Creds:
    """A client identity: certificate and key, PEM bytes."""

    def __init__(self, cert_pem, key_pem):
        self.cert_pem = cert_pem if isinstance(cert_pem, bytes) else cert_pem.encode()
        self.key_pem = key_pem if isinstance(key_pem, bytes) else key_pem.encode()

    def cert(self):
        return x509.load_pem_x509_certificate(self.cert_pem)

    def uri(self):
        return san_uri(self.cert())

    def endpoint_id(self):
        return self.uri().rsplit("/", 1)[1]


class Client:
    """A grpcio channel to localhost:PORT trusting ROOT (PEM), presenting
    CREDS (or no certificate)."""

    def __init__(self, port, root, creds=None):
        pb = protos()
        self.pb = pb
        self.ctl = None
        if creds is not None:
            cc = grpc.ssl_channel_credentials(root, creds.key_pem, creds.cert_pem)
        else:
            cc = grpc.ssl_channel_credentials(root)
        self.channel = grpc.secure_channel(f"localhost:{port}", cc, options=[
            ("grpc.enable_http_proxy", 0),
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", 16 * MiB),
            ("grpc.max_send_message_length", 16 * MiB),
        ])

    def close(self):
        self.channel.close()

    def call(self, method, req, timeout=20, raw=False, metadata=None, compression=None):
        """(grpc.StatusCode, response or None, details)."""
        path, resp_cls, streaming = self.pb.methods[method]
        zt.check(not streaming, f"{method} is streaming: use Watcher")
        ser = (lambda b: b) if raw else (lambda m: m.SerializeToString())
        mc = self.channel.unary_unary(path, request_serializer=ser,
                                      response_deserializer=resp_cls.FromString)
        try:
            resp = mc(req, timeout=timeout, metadata=metadata, compression=compression)
            return grpc.StatusCode.OK, resp, ""
        except grpc.RpcError as e:
            return e.code(), None, e.details() or ""

    def ok(self, method, req, what=None, **kw):
        """The call must succeed; returns the response."""
        code, resp, details = self.call(method, req, **kw)
        if code != grpc.StatusCode.OK:
            extra = ""
            if code == grpc.StatusCode.UNAVAILABLE and self.ctl is not None:
                time.sleep(0.2)
                errs = self.ctl.conn_errors()
                if errs:
                    extra = f"; the server logged: {errs[-3:]}"
            zt.fail(f"{what or method}: {code.name} ({details!r}), expected OK{extra}")
        return resp

    def stream(self, method, req, timeout=None):
        path, resp_cls, streaming = self.pb.methods[method]
        mc = self.channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=resp_cls.FromString)
        return mc(req, timeout=timeout)

    def first_stream_status(self, method, req, timeout=10):
        """Opens a server stream and reads until its first message or its
        end: (code, first message or None, details). OK with a message means
        the stream was accepted (it is cancelled then)."""
        it = self.stream(method, req, timeout=timeout)
        try:
            for m in it:
                it.cancel()
                return grpc.StatusCode.OK, m, ""
            return it.code(), None, it.details() or ""
        except grpc.RpcError as e:
            return e.code(), None, e.details() or ""

    # -- shortcuts
    def list_endpoints(self):
        """Every endpoint (pages followed) and the version of the first page:
        (list of Endpoint, version)."""
        pb = self.pb
        out, token, version = [], "", None
        while True:
            r = self.ok("Mesh/ListEndpoints",
                        pb.mesh.ListEndpointsRequest(page_size=1000, page_token=token))
            if version is None:
                version = r.version
            out.extend(r.endpoints)
            if not r.next_page_token:
                return out, version
            token = r.next_page_token


def store_view(admin):
    """What ListEndpoints and Services.List show, as comparable bytes: the
    endpoints (sorted by ID, presence fields left as they are), the
    services, and both versions."""
    pb = admin.pb
    eps, v = admin.list_endpoints()
    svcs = admin.ok("Services/List", pb.services.ListServicesRequest(page_size=1000))
    return ([e.SerializeToString(deterministic=True) for e in sorted(eps, key=lambda e: e.id)],
            v, [s.SerializeToString(deterministic=True) for s in svcs.services], svcs.version)


def describe_view_change(before, after):
    eb, vb, sb, svb = before
    ea, va, sa, sva = after
    parts = []
    if vb != va:
        parts.append(f"ListEndpoints version {vb} -> {va}")
    if eb != ea:
        parts.append(f"endpoints {len(eb)} -> {len(ea)} (or changed in place)")
    if sb != sa:
        parts.append(f"services {len(sb)} -> {len(sa)} (or changed in place)")
    if svb != sva:
        parts.append(f"Services.List version {svb} -> {sva}")
    return "; ".join(parts) or "no change"


# ---- watch -------------------------------------------------------------------------------


class Watcher:
    """Watch.Subscribe(after_version, topics) read in a thread. .q holds
    ("event", WatchEvent) items (heartbeats left out) and then one
    ("end", StatusCode, details)."""

    def __init__(self, client, after_version=0, topics=(), name="watch"):
        pb = client.pb
        self.name = name
        self.q = queue.Queue()
        self.events = []      # every non-heartbeat event received, in order
        self.ended = None     # (code, details) once the stream ended
        req = pb.watch.SubscribeRequest(after_version=after_version, topics=list(topics))
        self.call = client.stream("Watch/Subscribe", req)
        self.heartbeat_type = pb.watch.WatchEvent.TYPE_HEARTBEAT
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            for ev in self.call:
                if ev.type == self.heartbeat_type:
                    continue
                self.events.append(ev)
                self.q.put(("event", ev))
            self.ended = (self.call.code(), self.call.details() or "")
        except grpc.RpcError as e:
            self.ended = (e.code(), e.details() or "")
        except Exception as e:  # noqa: BLE001 — report in the queue
            self.ended = (None, f"{type(e).__name__}: {e}")
        self.q.put(("end",) + self.ended)

    def next(self, timeout=15, what="an event"):
        """The next event; fails on timeout or if the stream ended."""
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            zt.fail(f"{self.name}: no {what} within {timeout}s")
        if item[0] == "end":
            self.q.put(item)
            zt.fail(f"{self.name}: the stream ended ({item[1]}, {item[2]!r}) while waiting "
                    f"for {what}")
        return item[1]

    def take(self, n, timeout=15, what="events"):
        return [self.next(timeout, f"{what} ({i + 1} of {n})") for i in range(n)]

    def quiet(self, secs):
        """Events that arrive within SECS (expected: none)."""
        out = []
        end = time.monotonic() + secs
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return out
            try:
                item = self.q.get(timeout=left)
            except queue.Empty:
                return out
            if item[0] == "end":
                self.q.put(item)
                return out
            out.append(item[1])

    def wait_end(self, timeout=15):
        """(code, details) of the stream's end; fails on timeout. Events
        that arrive first are returned too: (code, details, events)."""
        got = []
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                zt.fail(f"{self.name}: the stream did not end within {timeout}s "
                        f"({len(got)} events meanwhile)")
            try:
                item = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if item[0] == "end":
                return item[1], item[2], got
            got.append(item[1])

    def cancel(self):
        self.call.cancel()
        self.t.join(10)


def ev_key(pb, ev):
    """(type name, topic name, object key) of a WatchEvent, for messages."""
    T = pb.watch.WatchEvent
    which = ev.WhichOneof("object")
    key = None
    if which == "endpoint":
        key = ev.endpoint.name or ev.endpoint.id
    elif which == "service":
        key = ev.service.name
    elif which == "revocation":
        key = ev.revocation.serial
    elif which == "hub":
        key = ev.hub.id
    return (T.Type.Name(ev.type), pb.watch.Topic.Name(ev.topic), which, key)


# ---- keys, CSRs, certificates ------------------------------------------------------------


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def csr_pem(key, cn, san_uris=(), dns=()):
    """A PKCS#10 request signed by KEY; CN may be None (no CN)."""
    b = x509.CertificateSigningRequestBuilder()
    b = b.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
    sans = [x509.UniformResourceIdentifier(u) for u in san_uris] + [x509.DNSName(d) for d in dns]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def csr_bad_signature(key, cn):
    """A CSR for CN whose signature does not verify (one bit of the
    signature's last byte flipped; still well-formed DER)."""
    der = x509.load_pem_x509_csr(csr_pem(key, cn).encode()).public_bytes(
        serialization.Encoding.DER)
    # The signature BIT STRING ends the structure: its last byte is the last
    # byte of the ECDSA signature's s value.
    bad = der[:-1] + bytes([der[-1] ^ 0x01])
    b64 = base64.encodebytes(bad).decode().replace("\n", "")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + \
        "\n-----END CERTIFICATE REQUEST-----\n"


def san_uri(cert):
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = ext.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else uris


def cert_cn(cert):
    a = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return a[0].value if a else None


def serial_hex(cert):
    """The certificate's serial as lowercase hex (for messages)."""
    return format(cert.serial_number, "x")


def serial_eq(hex_serial, cert):
    """An API serial string (lowercase hex, leading zeros or not) names
    CERT's serial."""
    try:
        return hex_serial == hex_serial.lower() and int(hex_serial, 16) == cert.serial_number
    except ValueError:
        return False


def spki_pin(cert):
    """Hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def signed_by(cert, ca_cert):
    """CERT's issuer is CA_CERT's subject and CA_CERT's key verifies its
    signature (ECDSA; python3-cryptography 38 has no
    verify_directly_issued_by)."""
    if cert.issuer != ca_cert.subject:
        return False
    try:
        ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                    ec.ECDSA(cert.signature_hash_algorithm))
        return True
    except Exception:  # noqa: BLE001
        return False


def same_public_key(cert, key):
    f = serialization.PublicFormat.SubjectPublicKeyInfo
    e = serialization.Encoding.DER
    return cert.public_key().public_bytes(e, f) == key.public_key().public_bytes(e, f)


def foreign_ca(mesh="mesh"):
    """A CA that is not the mesh's, named like it: (key, cert)."""
    import datetime
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztm"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"ztm mesh CA {mesh}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def foreign_leaf(ca_key, ca_cert, cn, uri):
    """A client certificate from a foreign CA, shaped like the mesh's
    (CN, one SAN URI, clientAuth): Creds."""
    import datetime
    key = new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Creds(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def server_chain(port, timeout=10):
    """The certificates the server presents in its TLS handshake (unverified,
    no client certificate), as a list of x509 objects, leaf first."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts",
                        "-alpn", "h2", "-servername", "localhost"],
                       input=b"", capture_output=True, timeout=timeout)
    pems = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                      r.stdout, re.S)
    return [x509.load_pem_x509_certificate(p) for p in pems]


# ---- joining ---------------------------------------------------------------------------


class Joined:
    """The outcome of a successful Join: .resp, .key, .creds, .cert, .id."""

    def __init__(self, resp, key):
        self.resp = resp
        self.key = key
        self.creds = Creds(resp.certificate_pem.encode(), key_pem(key))
        self.cert = x509.load_pem_x509_certificate(resp.certificate_pem.encode())
        self.id = resp.endpoint.id
        self.name = resp.endpoint.name


def join(ctl, token, name, key=None, csr=None, root=None, creds=None, timeout=20):
    """Join with TOKEN as a joiner does: its own key, server-only TLS (no
    client certificate unless CREDS), a CSR for NAME. Returns (code,
    Joined or None, details)."""
    pb = protos()
    key = key or new_key()
    if csr is None:
        csr = csr_pem(key, name)
    c = ctl.client(creds, root=root)
    try:
        code, resp, details = c.call("Mesh/Join", pb.mesh.JoinRequest(
            token=token, csr_pem=csr, agent_version="cp-test/1"), timeout=timeout)
    finally:
        c.close()
    return code, (Joined(resp, key) if resp is not None else None), details


def invite_and_join(ctl, admin, name, role=None, **kw):
    pb = protos()
    req = pb.mesh.InviteRequest(name=name)
    if role is not None:
        req.role = role
    inv = admin.ok("Mesh/Invite", req, what=f"Invite {name}")
    code, j, details = join(ctl, inv.token, name, **kw)
    zt.check(code == grpc.StatusCode.OK, f"Join {name}: {code.name} ({details!r}), expected OK")
    return j


# ---- invite tokens (controlplane/ca/token.h) --------------------------------------------


def b64u_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64u_encode(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def token_decode(tok):
    """A dict of the token's fields; fails if it is not well-formed."""
    zt.check(tok.startswith("ztm1."), f"token does not start with ztm1.: {tok[:20]!r}")
    body = b64u_decode(tok[5:])
    d = {"version": body[0], "role": body[1],
         "expires": int.from_bytes(body[2:10], "big"),
         "pin": body[10:42].hex(), "secret": body[42:74]}
    i = 74
    n = body[i]
    d["mesh"] = body[i + 1:i + 1 + n].decode()
    i += 1 + n
    n = body[i]
    d["name"] = body[i + 1:i + 1 + n].decode()
    i += 1 + n
    hubs = []
    for _ in range(body[i]):
        i += 1
        n = body[i]
        hubs.append(body[i + 1:i + 1 + n].decode())
        i += n
    i += 1
    d["hubs"] = hubs
    zt.check(body[i:] == hashlib.sha256(body[:i]).digest()[:4] and len(body) == i + 4,
             "token check bytes do not match its body")
    return d


def token_encode(d):
    """The token for fields D (as token_decode returns), check bytes right."""
    body = bytes([d["version"], d["role"]]) + d["expires"].to_bytes(8, "big") + \
        bytes.fromhex(d["pin"]) + d["secret"]
    for s in (d["mesh"], d["name"]):
        b = s.encode()
        body += bytes([len(b)]) + b
    body += bytes([len(d["hubs"])])
    for h in d["hubs"]:
        b = h.encode()
        body += bytes([len(b)]) + b
    body += hashlib.sha256(body).digest()[:4]
    return "ztm1." + b64u_encode(body)


# ---- raw HTTP/2 -----------------------------------------------------------------------------


class RawH2:
    """One HTTP/2 connection over TLS (ALPN h2) with python3-h2, optionally
    presenting a client certificate (Creds). For requests a stock gRPC
    client does not send."""

    def __init__(self, port, root_pem, creds=None, timeout=15):
        import h2.config
        import h2.connection
        self.h2events = __import__("h2.events", fromlist=["events"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cadata=root_pem.decode())
        ctx.set_alpn_protocols(["h2"])
        self._files = []
        if creds is not None:
            d = tempfile.mkdtemp(dir=tmpdir())
            cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "c.key")
            with open(cp, "wb") as f:
                f.write(creds.cert_pem)
            with open(kp, "wb") as f:
                f.write(creds.key_pem)
            ctx.load_cert_chain(cp, kp)
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        zt.check(self.sock.selected_alpn_protocol() == "h2",
                 f"ALPN: {self.sock.selected_alpn_protocol()!r}, expected h2")
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(64 * MiB)
        self._flush()
        self.streams = {}   # id -> dict(headers, data, trailers, reset, ended, t_end)
        self.closed = False
        self.close_error = None  # the exception that ended the connection, as text

    def _flush(self):
        d = self.conn.data_to_send()
        if d:
            self.sock.sendall(d)

    def request(self, path, body=b"", content_type="application/grpc", extra=(),
                end_stream=True, method="POST"):
        """Sends HEADERS (and BODY as DATA when given); END_STREAM when
        END_STREAM. Returns the stream ID."""
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "https"), (":path", path),
                   (":authority", "localhost"), ("te", "trailers")]
        if content_type is not None:
            headers.append(("content-type", content_type))
        headers.extend(extra)
        self.streams[sid] = {"headers": None, "data": b"", "trailers": None, "reset": None,
                             "ended": False, "t_end": None}
        self.conn.send_headers(sid, headers, end_stream=end_stream and not body)
        self._flush()
        if body:
            self.send_data(sid, body, end_stream=end_stream)
        return sid

    def send_data(self, sid, data, end_stream=False):
        """Sends DATA as flow control allows. False when the stream ended
        (answered or reset) before all of it was sent."""
        import h2.exceptions
        try:
            if not data:
                self.conn.send_data(sid, b"", end_stream=end_stream)
                self._flush()
                return True
            off = 0
            while off < len(data):
                window = self.conn.local_flow_control_window(sid)
                if window <= 0:
                    self._pump(1.0)  # wait for WINDOW_UPDATE
                    if self.streams[sid]["ended"] or self.closed:
                        return False
                    continue
                n = min(len(data) - off, window, self.conn.max_outbound_frame_size)
                last = end_stream and off + n == len(data)
                self.conn.send_data(sid, data[off:off + n], end_stream=last)
                self._flush()
                off += n
            return True
        except h2.exceptions.StreamClosedError:
            return False

    def _pump(self, timeout):
        """Reads what arrives within TIMEOUT and applies it."""
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return
        except (ConnectionResetError, ssl.SSLError, OSError) as e:
            self.closed = True
            self.close_error = f"{type(e).__name__}: {e}"
            return
        if not d:
            self.closed = True
            return
        ev_mod = self.h2events
        import h2.exceptions
        try:
            events = self.conn.receive_data(d)
        except h2.exceptions.ProtocolError as e:
            # python-h2 takes no frame after a GOAWAY (e.g. a PING): the
            # connection is over for us
            self.closed = True
            self.close_error = self.close_error or f"h2: {e}"
            return
        for ev in events:
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, ev_mod.ResponseReceived):
                st["headers"] = dict(ev.headers)
            elif isinstance(ev, ev_mod.TrailersReceived):
                st["trailers"] = dict(ev.headers)
            elif isinstance(ev, ev_mod.DataReceived):
                st["data"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, ev_mod.StreamEnded):
                st["ended"] = True
                st["t_end"] = time.monotonic()
            elif isinstance(ev, ev_mod.StreamReset):
                if st is not None:
                    st["reset"] = ev.error_code
                    st["ended"] = True
                    st["t_end"] = st["t_end"] or time.monotonic()
            elif isinstance(ev, ev_mod.ConnectionTerminated):
                self.closed = True
        self._flush()

    def response(self, sid, timeout=15):
        """Waits until stream SID ends; returns its record: headers (dict or
        None), data, trailers, reset (error code or None), status (the
        grpc-status as int from trailers or trailers-only headers, or None),
        message."""
        end = time.monotonic() + timeout
        st = self.streams[sid]
        while not st["ended"] and not self.closed:
            left = end - time.monotonic()
            if left <= 0:
                zt.fail(f"raw h2 stream {sid}: no end within {timeout}s (headers "
                        f"{st['headers']}, {len(st['data'])} data bytes)")
            self._pump(min(left, 0.5))
        src = st["trailers"] or st["headers"] or {}
        s = src.get("grpc-status")
        st["status"] = int(s) if s is not None else None
        st["message"] = src.get("grpc-message", "")
        st["http"] = (st["headers"] or {}).get(":status")
        return st

    def close(self):
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:  # noqa: BLE001
            pass
        self.sock.close()


def tls_refusal(port, root_pem, creds):
    """How the server treats a TLS connection presenting CREDS: the error
    text (e.g. an SSL alert) if it refuses the connection at the handshake
    or right after it, None if it answers a Health.Check over it."""
    try:
        h = RawH2(port, root_pem, creds, timeout=10)
    except (OSError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}"
    try:
        sid = h.request("/grpc.health.v1.Health/Check", grpc_frame(b""))
        st = h.response(sid, timeout=10)
        if h.closed and st["status"] is None:
            return h.close_error or "connection closed without an answer"
        return None
    finally:
        h.close()


def grpc_frame(msg, compressed=False, length=None):
    """The 5-byte prefix (flag, big-endian length) and MSG."""
    n = len(msg) if length is None else length
    return bytes([1 if compressed else 0]) + n.to_bytes(4, "big") + msg


STATUS = {c.value[0]: c for c in grpc.StatusCode}


def status_name(n):
    c = STATUS.get(n)
    return c.name if c else str(n)
