"""permessage-deflate as the Python `websockets` client does it (compression="deflate").

    python deflate.py ws://127.0.0.1:PORT ROOM
    ROOMCAST_CA=ca.pem python deflate.py wss://127.0.0.1:PORT ROOM    (over TLS, trusting ca.pem)

Echoes a ~3 KB JSON text on /echo, then has two connections join ROOM on /ws and one
publish ~1 KB of JSON to it. Prints one JSON line: the extension each connection agreed to
and what came back, for tests/deflate.rs to check.
"""

import asyncio
import json
import os
import ssl
import sys

from websockets.asyncio.client import connect


def feed(n):
    return {"items": [{"sym": f"S{(n * 7 + i) % 500:03d}", "bid": 100 + i / 4, "vol": n * 31 + i} for i in range(20)]}


async def main(base, room):
    out = {}
    tls = {}
    if base.startswith("wss:"):
        tls["ssl"] = ssl.create_default_context(cafile=os.environ["ROOMCAST_CA"])
    async with connect(f"{base}/echo", compression="deflate", open_timeout=5, **tls) as ws:
        text = json.dumps({"feed": [feed(i) for i in range(3)]})
        await ws.send(text)
        out["echo"] = {
            "ext": ws.response.headers.get("Sec-WebSocket-Extensions"),
            "same": await asyncio.wait_for(ws.recv(), 5) == text,
            "size": len(text),
        }
    async with connect(f"{base}/ws?room={room}", compression="deflate", **tls) as a, connect(
        f"{base}/ws?room={room}", compression="deflate", **tls
    ) as b:
        for c in (a, b):
            joined = json.loads(await asyncio.wait_for(c.recv(), 5))
            assert joined["op"] == "joined", joined
        data = feed(1)
        await a.send(json.dumps({"op": "pub", "room": room, "data": data}))
        got = json.loads(await asyncio.wait_for(b.recv(), 5))
        out["room"] = {
            "ext": b.response.headers.get("Sec-WebSocket-Extensions"),
            "same": got["op"] == "msg" and got["data"] == data,
        }
    print(json.dumps(out), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))
