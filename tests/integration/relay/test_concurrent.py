#!/usr/bin/env python3
"""relay.concurrent (also labelled tsan): 200 connections at once through a
relay with --workers 2. Each client sends an 8-byte id then 1 MiB of random
data while the target sends it 1 MiB of other random data at the same time.
SHA-256 is checked at both ends: the target records what it received and
sent per id; the client checks what it got. Every connection is logged
conn.close reason=done with exact up/down byte counts, and both workers
carried connections."""
import asyncio
import hashlib
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402

N = 200
SIZE = 1 * zt.MiB
CHUNK = 64 << 10


async def send_random(writer, total):
    h = hashlib.sha256()
    for c in zt.random_chunks(total, CHUNK):
        h.update(c)
        writer.write(bytes(c))
        await writer.drain()
    writer.write_eof()
    return h.hexdigest()


async def recv_all(reader):
    h = hashlib.sha256()
    n = 0
    while True:
        d = await reader.read(CHUNK)
        if not d:
            return n, h.hexdigest()
        h.update(d)
        n += len(d)


async def scenario(tsock, relay):
    target = {}  # id -> (received bytes, received sha, sent sha)
    errors = []

    async def handle(reader, writer):
        try:
            cid = int.from_bytes(await reader.readexactly(8), "big")
            sent, (n, got) = await asyncio.gather(send_random(writer, SIZE), recv_all(reader))
            target[cid] = (n, got, sent)
        except Exception as e:  # reported below
            errors.append(f"target: {type(e).__name__}: {e}")
        finally:
            writer.close()

    server, _ = await zt.start_async_server(handle, sock=tsock)

    async def client(cid):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        local = writer.get_extra_info("sockname")[1]
        writer.write(cid.to_bytes(8, "big"))
        sent, (n, got) = await asyncio.gather(send_random(writer, SIZE), recv_all(reader))
        writer.close()
        return cid, local, sent, n, got

    results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(N))), 80)
    server.close()
    zt.check(not errors, f"{len(errors)} target errors, first: {errors[0] if errors else ''}")
    return target, results


def run():
    tsock, tport = zt.listen_socket()
    relay = zt.Relay(tport, "--workers", "2")
    listen = relay.logs("relay.listen")[0]
    zt.check(listen.get("workers") == "2", f"relay.listen says workers={listen.get('workers')}")
    target, results = asyncio.run(scenario(tsock, relay))
    bad = []
    for cid, local, sent, n, got in results:
        t = target.get(cid)
        if t is None:
            bad.append(f"conn {cid}: the target never finished it")
            continue
        tn, tgot, tsent = t
        if tn != SIZE or tgot != sent:
            bad.append(f"conn {cid}: target got {tn} bytes sha {tgot[:12]}, client sent "
                       f"{SIZE} sha {sent[:12]}")
        if n != SIZE or got != tsent:
            bad.append(f"conn {cid}: client got {n} bytes sha {got[:12]}, target sent "
                       f"{SIZE} sha {tsent[:12]}")
    zt.check(not bad, f"{len(bad)} of {N} connections corrupted; " + "; ".join(bad[:5]))
    zt.log(f"{N} connections: all bytes exact in both directions")

    up, down = 8 + SIZE, SIZE
    closes = relay.wait_for_log("conn.close", count=N, timeout=30)
    wrong = [c for c in closes
             if (c.get("reason"), c.get("up"), c.get("down")) != ("done", str(up), str(down))]
    zt.check(not wrong, f"{len(wrong)} of {N} conn.close lines are not reason=done up={up} "
                        f"down={down}, e.g. {wrong[:2]}")
    relay.closes_for([local for _, local, *_ in results])  # client= names each client
    workers = {e.get("worker") for e in closes}
    zt.check(len(workers - {"main", None}) >= 2,
             f"conn.close lines come from workers {sorted(map(str, workers))}; expected 2 workers")
    relay.stop()
    zt.check(relay.logs("relay.stop"), "no event=relay.stop logged")
    return (f"{N} concurrent connections x 1 MiB each way, --workers 2: SHA-256 exact at both "
            f"ends, {N} conn.close reason=done with exact byte counts")


zt.main(run)
