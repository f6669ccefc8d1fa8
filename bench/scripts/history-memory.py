"""Fills R rooms with N messages of B bytes each over one /ws connection, then waits.

Used by history-memory.sh: the server's RSS with --history-size N against 0 is what the
rooms' history costs. Publishes one round (a message to every room) at a time and waits
for its deliveries, so nothing is dropped and no ring overflows.
"""
import asyncio
import json
import sys

import websockets


async def main(port: int, rooms: int, per_room: int, size: int) -> None:
    pad = "x" * max(size - 2, 0)  # `data` is a JSON string: its quotes count
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_queue=None) as ws:
        for r in range(rooms):
            await ws.send(json.dumps({"op": "join", "room": f"h{r}"}))
        joined = 0
        while joined < rooms:
            joined += json.loads(await ws.recv())["op"] == "joined"
        got = 0
        for i in range(per_room):
            for r in range(rooms):
                await ws.send('{"op":"pub","room":"h%d","data":"%s"}' % (r, pad))
            while got < (i + 1) * rooms:
                got += json.loads(await ws.recv())["op"] == "msg"
        print("filled", flush=True)
        await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main(*(int(a) for a in sys.argv[1:5])))
