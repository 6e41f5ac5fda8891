#!/usr/bin/env python3
"""End-to-end flow control: a client POSTs a large body to the echo service
and does not read the echo. The server may only take what HTTP/2's windows
allow and must stop reading once its echo cannot leave: the client's send
window closes after a bounded amount, and the server's RSS stays flat. Then
the client reads, and every byte comes back exact. Also a graceful stop
(SIGTERM: GOAWAY, the stream in flight completes, exit 0).

Usage: test_h2_flow.py CERTDIR"""
import hashlib
import os
import select
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events

import h2common as hc
from h2common import zt

TOTAL = 64 * 1024 * 1024


class Client:
    def __init__(self, port):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(hc.cert("ca.pem"))
        ctx.load_cert_chain(hc.cert("client.pem"), hc.cert("client.key"))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        zt.check(self.sock.selected_alpn_protocol() == "h2", "ALPN h2 not agreed")
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.received = bytearray()
        self.unacked = 0
        self.ended = False
        self.status = None

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def handle(self, data, ack):
        """Feeds DATA to the connection; with ACK, returns window credit
        for received body bytes (a reading client), else keeps it."""
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                self.status = dict(ev.headers).get(b":status")
            elif isinstance(ev, h2.events.DataReceived):
                self.received += ev.data
                if ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                else:
                    self.unacked += ev.flow_controlled_length
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended = True

    def pump(self, timeout, read_body):
        """Reads and handles frames for up to TIMEOUT seconds (or until
        nothing arrives). With READ_BODY false, DATA is not acknowledged."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.sock], [], [], max(0.0, min(0.2, end - time.monotonic())))
            if not r and not self.sock.pending():
                if not read_body:
                    continue
                return
            data = self.sock.recv(1 << 20)
            if not data:
                self.ended = True
                return
            self.handle(data, ack=True)
            self.flush()
            if self.ended:
                return


def scenario():
    srv = hc.Server(*hc.tls_args(), workers=1)
    c = Client(srv.port)
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "POST"), (":path", "/echo"), (":scheme", "https"),
                              (":authority", "localhost")])
    c.flush()
    body = os.urandom(TOTAL)

    # Phase 1: send without ever reading the echo. Stop when the window stays
    # shut (flow control) or the socket stops taking bytes (TCP).
    c.sock.setblocking(False)
    sent = 0
    stuck_since = None
    rss_peak = 0
    while sent < TOTAL:
        window = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
        if window > 0:
            chunk = body[sent:sent + window]
            c.conn.send_data(sid, chunk)
            sent += len(chunk)
        out = c.conn.data_to_send()
        try:
            if out:
                c.sock.sendall(out)
        except (BlockingIOError, ssl.SSLWantWriteError):
            pass
        # Take WINDOW_UPDATEs (and nothing else is acknowledged).
        try:
            c.handle(c.sock.recv(1 << 16), ack=False)  # window credit kept back
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        rss_peak = max(rss_peak, zt.rss_bytes(srv.pid))
        if window <= 0:
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > 2.0:
                break
            time.sleep(0.01)
        else:
            stuck_since = None
    zt.check(sent < TOTAL, f"the client sent all {TOTAL >> 20} MiB without reading: no flow control")
    zt.check(sent < 24 * 1024 * 1024, f"the server took {sent >> 20} MiB before flow control stopped "
             f"the client; expected a few MiB (windows + socket buffers)")
    zt.check(rss_peak < 64 * 1024 * 1024, f"server RSS reached {rss_peak >> 20} MiB while the echo "
             f"was not read (bound 64 MiB)")
    zt.log(f"writer stopped by flow control after {sent / 2**20:.1f} MiB of {TOTAL >> 20} MiB; "
           f"server RSS peak {rss_peak / 2**20:.1f} MiB")

    # Phase 2: read the echo and send the rest.
    c.sock.setblocking(True)
    c.sock.settimeout(30)
    if c.unacked:
        c.conn.acknowledge_received_data(c.unacked, sid)
    c.flush()
    while sent < TOTAL:
        window = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
        if window > 0:
            chunk = body[sent:sent + window]
            c.conn.send_data(sid, chunk)
            sent += len(chunk)
            c.flush()
        else:
            c.pump(0.05, read_body=True)
    c.conn.end_stream(sid)
    c.flush()
    deadline = time.monotonic() + 90
    while not c.ended and time.monotonic() < deadline:
        c.pump(1.0, read_body=True)
    zt.check(c.status == b"200", f"status {c.status}")
    zt.check(len(c.received) == TOTAL and hashlib.sha256(c.received).digest() == hashlib.sha256(body).digest(),
             f"echo came back as {len(c.received)} bytes of {TOTAL}, or altered")
    zt.log(f"then all {TOTAL >> 20} MiB echoed back exact")

    # Graceful stop with a stream in flight: it completes, the server exits 0.
    sid = c.conn.get_next_available_stream_id()
    n = 8 * 1024 * 1024
    c.conn.send_headers(sid, [(":method", "GET"), (":path", f"/bytes/{n}"), (":scheme", "https"),
                              (":authority", "localhost")], end_stream=True)
    c.flush()
    c.received = bytearray()
    c.ended = False
    c.pump(0.3, read_body=False)  # the response has started
    os.kill(srv.pid, 15)
    while not c.ended and time.monotonic() < deadline + 60:
        c.pump(1.0, read_body=True)
    zt.check(bytes(c.received) == hc.pattern(n), f"in-flight stream at SIGTERM: {len(c.received)} of {n} bytes")
    rc = srv.wait_exit(30)
    zt.check(rc == 0, f"server exit code {rc} after SIGTERM")
    return (f"flow control stopped the writer at {sent and 'a bounded'} point, RSS peak "
            f"{rss_peak / 2**20:.1f} MiB; 64 MiB echoed exact; SIGTERM let an 8 MiB stream finish, exit 0")


if __name__ == "__main__":
    zt.main(scenario, deadline=250)
