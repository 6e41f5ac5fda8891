#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/).
The seeds are committed; run this again after a format changes:
    /usr/bin/python3 tests/fuzz/make-seeds.py
Needs the openssl CLI for the certificate, CSR and key seeds."""
import base64, hashlib, os, shutil, struct, subprocess, tempfile

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus")


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def prefix(payload, compressed=0):
    return bytes([compressed]) + struct.pack(">I", len(payload)) + payload


# ---- grpc frame: mode byte, then the stream ----
put("grpc_frame", "two-messages", b"\x80" + prefix(b"abc") + prefix(b""))
put("grpc_frame", "small-limit", b"\x02" + prefix(b"toolong"))
put("grpc_frame", "compressed", b"\x40" + prefix(b"zz", 1) + prefix(b"x"))
put("grpc_frame", "bad-flags", b"\x80" + prefix(b"q", 7))
put("grpc_frame", "truncated", b"\x80" + prefix(b"abcdef")[:8])
put("grpc_frame", "timeout", b"\x00100m")
put("grpc_frame", "timeout-max", b"\x0099999999H")
put("grpc_frame", "path", b"\x00/ztm.v1.Mesh/GetEndpoint")
put("grpc_frame", "percent", b"\x00caf%C3%A9 50%25 %zz")
put("grpc_frame", "content-type", b"\x00application/grpc+proto")

# ---- tokens ----
def token(version=1, role=1, expires=1750003600, mesh=b"m1", name=b"laptop",
          hubs=(b"127.0.0.1:7443",)):
    body = bytes([version, role]) + struct.pack(">Q", expires) + bytes(range(32)) + bytes(32)
    body += bytes([len(mesh)]) + mesh + bytes([len(name)]) + name + bytes([len(hubs)])
    for h in hubs:
        body += bytes([len(h)]) + h
    body += hashlib.sha256(body).digest()[:4]
    return b"ztm1." + base64.urlsafe_b64encode(body).rstrip(b"=")

put("token", "agent", token())
put("token", "admin-3-hubs", token(role=3, hubs=(b"a:1", b"[::1]:443", b"hub.example.com:8443")))
put("token", "pasted", b"  " + token() + b"\n")
put("token", "version-2", token(version=2))
put("token", "bad-role", token(role=9))
put("token", "cut", token()[:40])

# ---- protobuf messages: index byte, then the encoding ----
def varint(n):
    b = b""
    while True:
        c = n & 0x7F
        n >>= 7
        if n:
            b += bytes([c | 0x80])
        else:
            return b + bytes([c])

def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload

endpoint = (field(1, 2, b"0123456789abcdef") + field(2, 2, b"laptop") + field(3, 2, b"m1") +
            field(4, 0, 1) + field(5, 2, field(1, 2, b"site") + field(2, 2, b"home")) +
            field(7, 0, 1750000000) + field(8, 0, 1))
for i in range(40):
    put("proto", "msg-%02d-endpoint-shape" % i, bytes([i]) + endpoint)
put("proto", "unknown-field", b"\x00" + field(99, 0, 1) + field(1, 2, b"x"))
put("proto", "nested-service", b"\x05" + field(1, 2, field(1, 2, b"web") + field(2, 0, 1) +
                                                 field(3, 2, field(1, 2, b"e1") + field(3, 0, 2))))

# ---- API requests: method index, caller index, request ----
put("api", "health-anon", b"\x0e\x03")
put("api", "invite-admin", b"\x00\x00" + field(1, 2, b"laptop") + field(3, 0, 600))
put("api", "list-agent", b"\x04\x01" + field(1, 0, 2))
put("api", "get-agent", b"\x05\x01" + field(2, 2, b"admin"))
put("api", "publish-agent", b"\x06\x01" + field(1, 2, b"web") + field(3, 0, 2))
put("api", "setpolicy-admin", b"\x09\x00" + field(1, 2, b"web") + field(5, 0, 2))
put("api", "register-hub", b"\x0a\x02" + field(1, 2, b"127.0.0.1:7443"))
put("api", "hubs-list", b"\x0c\x01")
put("api", "watch-admin", b"\x0d\x00")
put("api", "revoke-admin", b"\x03\x00" + field(3, 2, b"agent"))
put("api", "join-garbage", b"\x01\x03" + field(1, 2, b"ztm1.AAAA") + field(2, 2, b"x"))

# ---- store file ----
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF

def store_file(records, events, version):
    b = b"ZTMSTORE" + struct.pack("<IIQII", 1, 0, version, len(records), len(events))
    for kind, key, value in records:
        b += struct.pack("<BBI", kind, len(key), len(value)) + key + value
    for v, topic, data in events:
        b += struct.pack("<QII", v, topic, len(data)) + data
    return b + struct.pack("<I", crc32c(b))

# mode byte 0: the file as is (1: the target recomputes the CRC)
put("store_file", "empty", b"\x00" + store_file([], [], 0))
put("store_file", "records-events", b"\x00" + store_file(
    [(1, b"cert", b"-----BEGIN CERTIFICATE-----"), (5, b"e1", b"\x0a\x02e1"), (5, b"e2", b"")],
    [(7, 1, b"ev7"), (8, 2, b"")], 8))
put("store_file", "out-of-order", b"\x00" + store_file([(5, b"b", b""), (5, b"a", b"")], [], 0))
put("store_file", "bad-crc", b"\x01" + store_file([], [], 3)[:-1] + b"\x00")

# ---- certificates, CSRs, keys (openssl CLI) ----
tmp = tempfile.mkdtemp()
try:
    def run(*args):
        subprocess.run(args, check=True, cwd=tmp, capture_output=True)
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "k.pem")
    run("openssl", "pkcs8", "-topk8", "-nocrypt", "-in", "k.pem", "-out", "k8.pem")
    run("openssl", "req", "-new", "-key", "k.pem", "-subj", "/CN=laptop", "-out", "r.pem")
    run("openssl", "req", "-x509", "-key", "k.pem", "-subj", "/CN=laptop", "-days", "1",
        "-addext", "subjectAltName=URI:ztm://m1/agent/0123456789abcdef",
        "-addext", "basicConstraints=critical,CA:FALSE", "-out", "c.pem")
    run("openssl", "x509", "-in", "c.pem", "-outform", "der", "-out", "c.der")
    run("openssl", "req", "-x509", "-key", "k.pem", "-subj", "/CN=ztm mesh CA m1", "-days", "1",
        "-addext", "subjectAltName=URI:ztm://m1",
        "-addext", "basicConstraints=critical,CA:TRUE", "-out", "ca.pem")
    rd = lambda n: open(os.path.join(tmp, n), "rb").read()
    put("ca", "identity-der", b"\x00" + rd("c.der"))
    put("ca", "identity-pem", b"\x01" + rd("c.pem"))
    put("ca", "csr", b"\x02" + rd("r.pem"))
    put("ca", "key-sec1", b"\x03" + rd("k.pem"))
    put("ca", "key-pkcs8", b"\x03" + rd("k8.pem"))
    ca, key = rd("ca.pem"), rd("k8.pem")
    pad = b"\n" * max(0, len(key) - len(ca))   # ztm_ca_load splits the input in two halves
    ca += pad
    key += b"\n" * (len(ca) - len(key))
    put("ca", "ca-pair", b"\x04" + ca + key)
finally:
    shutil.rmtree(tmp)
