"""Shared pieces of the hub tests (hub.*).

What is here:
  Hub        `ztm hub --state DIR --listen 127.0.0.1:0 ...`, waited for
             (event=hub.listen); .port, .pin, .mesh, .events; stop() by
             SIGTERM (exit 0). Built on cpcommon.Controller, so .logs(),
             .wait_for_log(), .admin_creds(), .ca_pem() work the same.
  enrol      an agent identity the way a user makes one: `ztm invite NAME`
             with the hub's admin credentials, then `ztm join TOKEN --as NAME
             --mesh m --state DIR`; returns cpcommon.Creds from
             DIR/meshes/m/{cert,key}.pem
  Agent      one HTTP/2 connection to the hub over TLS (python3-h2, ALPN h2)
             with an agent's certificate: Events, open, accept, send and
             receive with or without returning flow-control credit (a slow
             reader); pump() applies what arrived
  events     decoding of the Event messages (relay.proto) by hand: a few
             varint and length-delimited fields, no protoc needed
"""
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "controlplane"))
import ztmtest as zt  # noqa: E402
import cpcommon as cp  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402

MiB = 1 << 20


class Hub(cp.Controller):
    """`ztm hub --state STATE --listen LISTEN ARGS` with ZTM_CONFIG_DIR=CONFIG_DIR."""

    def __init__(self, state, config_dir, *args, listen="127.0.0.1:0", name="ztm-hub",
                 timeout=30, env_extra=None):
        self.events = []
        self.state = state
        self.config_dir = config_dir
        env = dict(os.environ)
        env["ZTM_CONFIG_DIR"] = config_dir
        env.update(env_extra or {})
        zt.Proc.__init__(self, [zt.ztm_bin(), "hub", "--state", state, "--listen", listen,
                                *[str(a) for a in args]], name=name, env=env)
        ev = self.wait_for_log("hub.listen", timeout=timeout)
        self.addr = ev["addr"]
        _, self.port = zt.split_hostport(self.addr)
        self.pin = ev["ca_pin"][7:]
        self.mesh = ev.get("mesh")
        self.hub_name = ev.get("name")
        zt.log(f"hub pid {self.pid} on {self.addr} (state {state})")

    def env(self):
        return dict(os.environ, ZTM_CONFIG_DIR=self.config_dir)


def sanitized(pid):
    """True when process PID runs with ASan or TSan (their allocators keep
    freed memory resident, so RSS bounds need slack)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(("libasan" in line or "libtsan" in line) for line in f)
    except OSError:
        return False


def start(name="hub", *args, **kw):
    base = cp.subdir(name)
    return Hub(os.path.join(base, "state"), os.path.join(base, "config"), *args, **kw)


def ztm(hub, *args, timeout=30):
    return subprocess.run([zt.ztm_bin(), *args], env=hub.env(), capture_output=True, text=True,
                          timeout=timeout)


def enrol(hub, name):
    """Invite NAME and join as it; the agent's credentials (cp.Creds)."""
    r = ztm(hub, "invite", name)
    zt.check(r.returncode == 0, f"ztm invite {name}: rc {r.returncode} {r.stderr}")
    tok = r.stdout.strip()
    state = cp.subdir(f"agent-{name}")
    r = ztm(hub, "join", tok, "--as", name, "--mesh", "m", "--state", state)
    zt.check(r.returncode == 0, f"ztm join as {name}: rc {r.returncode} {r.stderr}")
    d = os.path.join(state, "meshes", "m")
    return cp.Creds(cp.read(os.path.join(d, "cert.pem")), cp.read(os.path.join(d, "key.pem")))


# ---- Event messages, decoded by hand ----------------------------------------------------


def _varint(b, i):
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def pb_fields(b):
    """{field number: value} of a protobuf message (varints as int, length-
    delimited as bytes; last one wins)."""
    out, i = {}, 0
    while i < len(b):
        key, i = _varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            zt.fail(f"unexpected wire type {wt} in {b!r}")
        out[f] = v
    return out


def decode_event(msg):
    """("hello", {endpoint_id, endpoint_name, hub_name, version}) or
    ("incoming", {session_id, from_endpoint_id, from_name})."""
    f = pb_fields(msg)
    if 1 in f:
        h = pb_fields(f[1])
        return "hello", {"endpoint_id": h.get(1, b"").decode(), "endpoint_name": h.get(2, b"").decode(),
                         "hub_name": h.get(3, b"").decode(), "version": h.get(4, 0)}
    if 2 in f:
        h = pb_fields(f[2])
        return "incoming", {"session_id": h.get(1, 0), "from_endpoint_id": h.get(2, b"").decode(),
                            "from_name": h.get(3, b"").decode()}
    zt.fail(f"an Event with no known kind: {msg!r}")


def grpc_messages(data):
    """Splits length-prefixed gRPC messages; returns (messages, rest)."""
    out = []
    while len(data) >= 5:
        n = int.from_bytes(data[1:5], "big")
        if len(data) < 5 + n:
            break
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out, data


# ---- an agent's connection -----------------------------------------------------------------


class Stream:
    def __init__(self, sid, auto_ack=True):
        self.sid = sid
        self.headers = None
        self.data = bytearray()
        self.received = 0   # bytes of DATA received (including what was dropped)
        self.keep = True    # keep received bytes in .data
        self.hasher = None  # or a hashlib object fed with every byte
        self.trailers = None
        self.reset = None
        self.ended = False
        self.auto_ack = auto_ack
        self.unacked = 0
        self.sent = 0

    @property
    def status(self):
        return (self.headers or {}).get(":status")

    def header(self, name):
        return (self.headers or {}).get(name)


class Agent:
    """One TLS+HTTP/2 connection to the hub with CREDS (cp.Creds or None)."""

    def __init__(self, hub, creds, name="agent", timeout=15):
        self.name = name
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cadata=hub.ca_pem().decode())
        ctx.set_alpn_protocols(["h2"])
        if creds is not None:
            d = tempfile.mkdtemp(dir=cp.tmpdir())
            cpath, kpath = os.path.join(d, "c.pem"), os.path.join(d, "c.key")
            with open(cpath, "wb") as f:
                f.write(creds.cert_pem)
            with open(kpath, "wb") as f:
                f.write(creds.key_pem)
            ctx.load_cert_chain(cpath, kpath)
        raw = socket.create_connection(("127.0.0.1", hub.port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        zt.check(self.sock.selected_alpn_protocol() == "h2", "ALPN h2 expected")
        self.sock.setblocking(False)
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        # A large connection window: stream windows alone pace the tests.
        self.conn.increment_flow_control_window(256 * MiB)
        self.streams = {}
        self.closed = False
        self.close_error = None
        self.out = b""
        self.flush()

    # -- I/O
    def flush(self):
        self.out += self.conn.data_to_send()
        while self.out:
            try:
                n = self.sock.send(self.out)
            except (ssl.SSLWantWriteError, BlockingIOError):
                return
            except (ssl.SSLError, OSError) as e:
                self.closed = True
                self.close_error = f"{type(e).__name__}: {e}"
                self.out = b""
                return
            self.out = self.out[n:]

    def pump(self, timeout=0.0):
        """Applies what arrives within TIMEOUT (at least one read attempt)."""
        import select
        self.flush()
        if self.closed:
            return
        if not self.sock.pending():
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                return
        while True:
            try:
                d = self.sock.recv(1 << 20)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except (ssl.SSLError, OSError) as e:
                self.closed = True
                self.close_error = f"{type(e).__name__}: {e}"
                return
            if not d:
                self.closed = True
                return
            try:
                evs = self.conn.receive_data(d)
            except h2.exceptions.ProtocolError as e:
                self.closed = True
                self.close_error = f"h2: {e}"
                return
            for ev in evs:
                self._apply(ev)
            if not self.sock.pending():
                break
        self.flush()

    def _apply(self, ev):
        st = self.streams.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived):
            st.headers = dict(ev.headers)
        elif isinstance(ev, h2.events.TrailersReceived):
            st.trailers = dict(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            st.received += len(ev.data)
            if st.keep:
                st.data += ev.data
            if st.hasher:
                st.hasher.update(ev.data)
            if st.auto_ack:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            else:
                st.unacked += ev.flow_controlled_length
        elif isinstance(ev, h2.events.StreamEnded):
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                st.reset = ev.error_code
                st.ended = True
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closed = True
            self.close_error = f"GOAWAY {ev.error_code}"

    def ack(self, sid, n=None):
        """Returns flow-control credit for up to N unacknowledged bytes."""
        st = self.streams[sid]
        n = st.unacked if n is None else min(n, st.unacked)
        if n and not st.ended:
            self.conn.acknowledge_received_data(n, sid)
        st.unacked -= n
        self.flush()

    # -- requests
    def request(self, path, headers=(), body=None, end_stream=False, grpc=False, auto_ack=True):
        sid = self.conn.get_next_available_stream_id()
        hs = [(":method", "POST"), (":scheme", "https"), (":path", path),
              (":authority", "localhost")]
        if grpc:
            hs += [("content-type", "application/grpc"), ("te", "trailers")]
        hs += list(headers)
        self.streams[sid] = Stream(sid, auto_ack)
        self.conn.send_headers(sid, hs, end_stream=end_stream and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end_stream)
        self.flush()
        return sid

    def events(self):
        return self.request("/ztm.v1.Relay/Events", body=cp.grpc_frame(b"\x0a\x04test"),
                            end_stream=True, grpc=True)

    def open(self, peer, **kw):
        return self.request("/ztm.relay/open", [("ztm-peer", peer)], **kw)

    def accept(self, session, **kw):
        return self.request("/ztm.relay/accept", [("ztm-session", str(session))], **kw)

    def send_some(self, sid, data, off, end_stream=True):
        """Sends what the windows allow of DATA[OFF:]; returns the new offset.
        END_STREAM with the last byte when END_STREAM."""
        st = self.streams[sid]
        # Not st.ended: that is the peer's END_STREAM, after which this side
        # may still send (a relayed stream is full duplex until both end).
        if st.reset is not None or self.closed:
            return off
        try:
            while off < len(data):
                w = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size,
                        len(data) - off)
                if w <= 0:
                    break
                last = end_stream and off + w == len(data)
                self.conn.send_data(sid, data[off:off + w], end_stream=last)
                off += w
                st.sent = off
                if len(self.out) > 4 * MiB:
                    break
            if off == len(data) and end_stream and len(data) == 0:
                self.conn.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.flush()
        return off

    def window(self, sid):
        try:
            return self.conn.local_flow_control_window(sid)
        except Exception:  # noqa: BLE001
            return None

    def reset(self, sid, code=8):
        self.conn.reset_stream(sid, error_code=code)
        self.flush()

    def wait(self, cond, timeout=15, what="a condition", others=()):
        """Pumps this connection (and OTHERS) until COND() holds."""
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                zt.fail(f"{self.name}: no {what} within {timeout}s")
            self.pump(0.02)
            for o in others:
                o.pump(0)
        return True

    def wait_end(self, sid, timeout=15, others=()):
        st = self.streams[sid]
        self.wait(lambda: st.ended or self.closed, timeout, f"end of stream {sid}", others)
        return st

    def event_messages(self, sid):
        msgs, _ = grpc_messages(bytes(self.streams[sid].data))
        return [decode_event(m) for m in msgs]

    def wait_event(self, sid, n, timeout=15, others=()):
        """Waits for the Nth (1-based) event on Events stream SID; returns it."""
        self.wait(lambda: len(self.event_messages(sid)) >= n or self.streams[sid].ended,
                  timeout, f"event #{n}", others)
        evs = self.event_messages(sid)
        zt.check(len(evs) >= n, f"{self.name}: Events stream ended after {len(evs)} events "
                 f"(trailers {self.streams[sid].trailers}, headers {self.streams[sid].headers})")
        return evs[n - 1]

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:  # noqa: BLE001
            pass
        self.sock.close()


def connect_agent(hub, creds, name):
    """An Agent with its Events stream open and its Hello read: (agent, events sid, hello)."""
    a = Agent(hub, creds, name)
    sid = a.events()
    kind, hello = a.wait_event(sid, 1)
    zt.check(kind == "hello", f"{name}: first event is {kind}, expected hello")
    return a, sid, hello
