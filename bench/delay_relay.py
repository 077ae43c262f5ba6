#!/usr/bin/env python3
"""A TCP relay that adds a fixed one-way delay in both directions.

Used by bench/run.sh (BENCH_RTT_MS) to time the tools over a link with a
round-trip time, on a machine without tc/netem. It listens on LISTEN_IP at
the FTP control port and at every port of the server's passive range, and
relays each connection to the same port on 127.0.0.1. A client that opens
data connections to the control connection's address (EPSV, or PASV with
the reply's address ignored) therefore goes through the relay both ways.

usage: delay_relay.py LISTEN_IP CONTROL_PORT PASV_LO PASV_HI ONE_WAY_MS [COUNT_FILE]
Prints "ready" on stdout once every listener is up.

With COUNT_FILE, each control connection appends one JSON line to it when it
closes: the commands the client sent (by verb), and its "turns": how many
times the client sent something after the server had answered, i.e. how
often it waited a round trip for a reply (a pipelined batch is one turn).
Each data connection appends {"data": 1}. bench/run.sh sums these per run.
"""
import asyncio
import json
import sys


class Counter:
    """What one control connection's client did (see COUNT_FILE)."""

    def __init__(self):
        self.verbs = {}
        self.turns = 0
        self.partial = b""
        self.last = None  # who sent the last chunk: "client" or "server"

    def chunk(self, side, data):
        if side == "client":
            if self.last != "client":
                self.turns += 1
            self.partial += data
            *lines, self.partial = self.partial.split(b"\n")
            for line in lines:
                verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
                if verb:
                    self.verbs[verb] = self.verbs.get(verb, 0) + 1
        self.last = side

    def line(self):
        return json.dumps({"verbs": self.verbs, "turns": self.turns})


COUNT_FILE = None


def record(line):
    if COUNT_FILE:
        with open(COUNT_FILE, "a") as f:
            f.write(line + "\n")


async def pump(reader, writer, delay, seen=None):
    """Copies reader to writer, each chunk released `delay` s after it arrived;
    `seen(chunk)` is told of each chunk as it arrives."""
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
            if seen and chunk:
                seen(chunk)
            queue.put_nowait((loop.time() + delay, chunk or None))
            if not chunk:
                break
        await task
    except (ConnectionError, OSError):
        task.cancel()
        writer.close()


async def relay(client_r, client_w, port, delay, control):
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    counter = Counter() if control else None
    await asyncio.gather(
        pump(client_r, server_w, delay, counter and (lambda c: counter.chunk("client", c))),
        pump(server_r, client_w, delay, counter and (lambda c: counter.chunk("server", c))),
        return_exceptions=True,
    )
    for w in (client_w, server_w):
        w.close()
    record(counter.line() if counter else '{"data": 1}')


async def main():
    global COUNT_FILE
    ip, control, lo, hi, ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    COUNT_FILE = sys.argv[6] if len(sys.argv) > 6 else None
    delay = ms / 1000.0
    servers = []
    for port in [control, *range(lo, hi + 1)]:
        servers.append(
            await asyncio.start_server(
                lambda r, w, p=port: relay(r, w, p, delay, p == control), ip, port, reuse_address=True
            )
        )
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
