#!/usr/bin/env python3
"""A TCP relay that adds a fixed one-way delay in both directions.

Used by bench/run.sh (BENCH_RTT_MS) to time the tools over a link with a
round-trip time, on a machine without tc/netem. It listens on LISTEN_IP at
the FTP control port and at every port of the server's passive range, and
relays each connection to the same port on 127.0.0.1. A client that opens
data connections to the control connection's address (EPSV, or PASV with
the reply's address ignored) therefore goes through the relay both ways.

usage: delay_relay.py LISTEN_IP CONTROL_PORT PASV_LO PASV_HI ONE_WAY_MS
Prints "ready" on stdout once every listener is up.
"""
import asyncio
import sys


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk released `delay` s after it arrived."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if chunk is None:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(chunk)
            await writer.drain()

    task = asyncio.create_task(deliver())
    try:
        while True:
            chunk = await reader.read(256 * 1024)
            queue.put_nowait((loop.time() + delay, chunk or None))
            if not chunk:
                break
        await task
    except (ConnectionError, OSError):
        task.cancel()
        writer.close()


async def relay(client_r, client_w, port, delay):
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(
        pump(client_r, server_w, delay), pump(server_r, client_w, delay), return_exceptions=True
    )
    for w in (client_w, server_w):
        w.close()


async def main():
    ip, control, lo, hi, ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    delay = ms / 1000.0
    servers = []
    for port in [control, *range(lo, hi + 1)]:
        servers.append(
            await asyncio.start_server(
                lambda r, w, p=port: relay(r, w, p, delay), ip, port, reuse_address=True
            )
        )
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
