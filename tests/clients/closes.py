"""Server-initiated closes, as the Python `websockets` client sees them.

Each case connects, makes the server close the connection while the client is still
writing, keeps writing until the library reports the connection closed, and prints one
JSON line: {"case": …, "code": <close code received, or 1006 if none was>, "reason": …}.

    python closes.py ws://127.0.0.1:PORT flood oversize-echo oversize-ws utf8 protocol
    python closes.py ws://127.0.0.1:PORT drain     (prints "ready" once sending, then waits)
"""

import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State


def masked_frame(first_byte: int, payload: bytes) -> bytes:
    """A client frame written by hand, for what the library refuses to send."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([first_byte, 0x80 | len(payload)]) + key + body


async def keep_sending(ws, first, then, pause=0.0):
    """Sends `first`, then `then()` until the connection is closed (bounded: 60 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    try:
        await first(ws)
        while loop.time() < deadline and ws.state is State.OPEN:
            await ws.send(then())
            await asyncio.sleep(pause)
    except ConnectionClosed:
        pass
    except AttributeError:
        # websockets 15: a send() that races the transport's own close can fail inside
        # the library (transport.abort() on a transport already closed). The connection
        # is closed either way; what the server sent is read below.
        pass


async def closed_by_server(url, first, then, pause=0.0, ready=False):
    ws = await connect(url, max_size=None, open_timeout=5, close_timeout=5)
    sender = asyncio.create_task(keep_sending(ws, first, then, pause))
    if ready:
        print("ready", flush=True)
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    await asyncio.wait_for(sender, 10)
    # The loop above ends once the connection is closed: nothing left to close (and
    # websockets 15 can fail closing a transport that is already gone).
    rcvd = ws.protocol.close_rcvd
    if rcvd is None:
        return 1006, ""
    return rcvd.code, rcvd.reason


async def nothing(ws):
    pass


def pub():
    return '{"op":"pub","room":"flood","data":{"n":1}}'


BIG_PUB = '{"op":"pub","room":"elsewhere","data":"' + "x" * 30_000 + '"}'


async def case(base, name):
    if name == "flood":
        # --rate 50 --burst 100: the 101st message in a burst is one too many.
        return await closed_by_server(base + "/ws", nothing, pub)
    if name in ("oversize-echo", "oversize-ws"):
        path = "/echo" if name == "oversize-echo" else "/ws"

        async def big(ws):
            await ws.send(b"x" * 200_000)

        return await closed_by_server(base + path, big, lambda: b"more", pause=0.001)
    if name == "utf8":

        async def invalid(ws):
            # text=True sends the bytes as a text frame, unchecked.
            await ws.send(b"\xff\xfe invalid", text=True)

        return await closed_by_server(base + "/echo", invalid, lambda: "valid", 0.001)
    if name == "protocol":

        async def rsv2(ws):
            # RSV2 set without an extension that defines it: RFC 6455 §5.2.
            ws.transport.write(masked_frame(0x80 | 0x20 | 0x1, b"hi"))

        return await closed_by_server(base + "/echo", rsv2, lambda: "valid", 0.001)
    if name == "drain":

        async def join(ws):
            await ws.send('{"op":"join","room":"drain"}')

        # Large messages back to back: the client is busy writing when the 1001 arrives.
        return await closed_by_server(base + "/ws", join, lambda: BIG_PUB, ready=True)
    raise SystemExit(f"unknown case {name}")


async def main():
    base, names = sys.argv[1], sys.argv[2:]
    for name in names:
        code, reason = await case(base, name)
        print(json.dumps({"case": name, "code": code, "reason": reason}), flush=True)


asyncio.run(main())
