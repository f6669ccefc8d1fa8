"""History and resume (issue 14), as real clients see them: Python `websockets` on /ws and a
plain socket reading /sse the way an EventSource would.

Each case prints JSON lines of what it observed (no verdicts: tests/resume.rs asserts).

    python resume.py http://127.0.0.1:PORT ws-cut        member cut abruptly mid-stream, rejoins
    python resume.py http://127.0.0.1:PORT ws-restart    rejoins across a server restart
    python resume.py http://127.0.0.1:PORT sse-resume    /sse?room=a,b: resume, wrong epoch
    python resume.py http://127.0.0.1:PORT sse-drain     /sse until the server drains
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake


def say(**fields):
    print(json.dumps(fields), flush=True)


def now():
    return asyncio.get_running_loop().time()


async def ws_connect(base, path="/ws"):
    url = "ws" + base.removeprefix("http") + path
    # No client pings: the server's heartbeat is not what these cases are about.
    return await connect(url, max_size=None, open_timeout=5, ping_interval=None)


async def recv_json(ws, deadline):
    """The next message as JSON, or None at the deadline."""
    left = deadline - now()
    if left <= 0:
        return None
    try:
        # websockets 15: cancelling recv() loses no message.
        return json.loads(await asyncio.wait_for(ws.recv(), left))
    except asyncio.TimeoutError:
        return None


async def joined(ws, room, **since):
    """Sends join (with since/epoch when given) and returns the `joined` reply."""
    await ws.send(json.dumps({"op": "join", "room": room, **since}))
    reply = await recv_json(ws, now() + 5)
    if reply is None or reply.get("op") != "joined":
        raise SystemExit(f"join {room}: got {reply}")
    return reply


class Publisher:
    """One /ws connection publishing with ids; records every ack as [id, seq]."""

    def __init__(self, ws):
        self.ws = ws
        self.acks = {}
        self.other = []
        self.next_id = 0
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, base):
        return cls(await ws_connect(base))

    async def _read(self):
        try:
            async for text in self.ws:
                m = json.loads(text)
                if m.get("op") == "ack":
                    self.acks[m["id"]] = m["seq"]
                else:
                    self.other.append(m)
        except ConnectionClosed:
            pass

    async def pub(self, room, data):
        """Publishes `data`; returns the id its ack will carry."""
        i = self.next_id
        self.next_id += 1
        await self.ws.send(json.dumps({"op": "pub", "room": room, "data": data, "id": i}))
        return i

    async def settle(self, timeout=5, strict=True):
        """Waits until every publish has its ack. If some never come: exits with what came
        instead, or (`strict=False`) returns, for the test to report."""
        deadline = now() + timeout
        while len(self.acks) < self.next_id and now() < deadline:
            await asyncio.sleep(0.005)
        if strict and len(self.acks) < self.next_id:
            raise SystemExit(
                f"publisher: {len(self.acks)} acks for {self.next_id} publishes after "
                f"{timeout} s; other replies: {self.other[:5]}"
            )

    async def close(self):
        await self.ws.close()
        await self.reader


# ---------------------------------------------------------------------------------------
# /ws: a member cut without a close frame rejoins with since/epoch.


async def ws_cut(base):
    room = "cut"
    member = await ws_connect(base)
    first_join = await joined(member, room)
    publisher = await Publisher.open(base)
    sent = []  # [id, n] in publish order
    stop = asyncio.Event()

    async def publish():
        # 1,000 messages a second, by the clock: after a stall it catches up in a burst.
        start, n = now(), 0
        while not stop.is_set():
            while n < int((now() - start) * 1000):
                sent.append([await publisher.pub(room, {"n": n}), n])
                n += 1
            await asyncio.sleep(0.001)

    pub_task = asyncio.create_task(publish())
    got1, got2, other = [], [], []

    async def read(ws, into, until):
        while (m := await recv_json(ws, until)) is not None:
            if m.get("op") == "msg" and m.get("room") == room:
                into.append([m["seq"], m["data"]])
            else:
                other.append(m)

    await read(member, got1, now() + 0.5)
    # No close frame, no FIN handshake: the transport is dropped as a network cut would.
    member.transport.abort()
    cut_at = now()
    await asyncio.sleep(0.3)
    last = got1[-1][0] if got1 else first_join["seq"]
    member = await ws_connect(base)
    second_join = await joined(member, room, since=last, epoch=first_join.get("epoch"))
    away = now() - cut_at
    await read(member, got2, now() + 0.5)
    stop.set()
    await pub_task
    await publisher.settle(strict=False)
    final = max(publisher.acks.values(), default=0)
    # Read on until the last acknowledged seq arrived (bounded).
    deadline = now() + 5
    while (not got2 or got2[-1][0] < final) and now() < deadline:
        if (m := await recv_json(member, deadline)) is None:
            break
        if m.get("op") == "msg" and m.get("room") == room:
            got2.append([m["seq"], m["data"]])
        else:
            other.append(m)
    await member.close()
    await publisher.close()
    say(
        case="ws-cut",
        first_join=first_join,
        second_join=second_join,
        away_ms=round(away * 1000),
        sent=sent,
        acks=publisher.acks,
        publisher_other=publisher.other,
        got1=got1,
        got2=got2,
        other=other,
    )


# ---------------------------------------------------------------------------------------
# /ws: rejoining with the cursor of a server that has since restarted.


async def ws_restart(base):
    room = "restart"
    member = await ws_connect(base)
    before_join = await joined(member, room)
    publisher = await Publisher.open(base)
    for n in range(5):
        await publisher.pub(room, {"before": n})
    await publisher.settle()
    got = []
    deadline = now() + 5
    while len(got) < 5 and (m := await recv_json(member, deadline)) is not None:
        got.append(m)
    await publisher.close()
    say(case="ws-restart", phase="before", joined=before_join, got=got, acks=publisher.acks)
    # The test restarts the server now: wait for the connection to end, then reconnect as a
    # client would, every 50 ms for up to 10 s. A connection can be refused, or accepted by
    # the dying process's listener and then dropped before the 101: both are retried.
    try:
        async for _ in member:
            pass
    except ConnectionClosed:
        pass
    deadline = now() + 10
    while True:
        try:
            member = await ws_connect(base)
            break
        except (OSError, InvalidHandshake):
            if now() > deadline:
                raise
            await asyncio.sleep(0.05)
    last = got[-1]["seq"] if got else before_join["seq"]
    after_join = await joined(member, room, since=last, epoch=before_join.get("epoch"))
    publisher = await Publisher.open(base)
    for n in range(5):
        await publisher.pub(room, {"after": n})
    await publisher.settle()
    got = []
    deadline = now() + 5
    while len(got) < 5 and (m := await recv_json(member, deadline)) is not None:
        got.append(m)
    # Anything more (a replay of the old server's messages would be) arrives now.
    while (m := await recv_json(member, now() + 0.2)) is not None:
        got.append(m)
    await member.close()
    await publisher.close()
    say(case="ws-restart", phase="after", joined=after_join, got=got, acks=publisher.acks)


# ---------------------------------------------------------------------------------------
# /sse read off a plain socket, parsed as the HTML standard's EventSource parses it.


class Sse:
    """One GET /sse response: its status, headers and events.

    `events` holds one entry per block the server ended with a blank line: the fields it
    had (`event`, `data`, `id`, `retry`), and `last_id`, the EventSource's last event ID
    after it (an `id` field sets it and it persists, as in the standard).
    """

    def __init__(self, reader, writer, status, headers):
        self.reader, self.writer = reader, writer
        self.status, self.headers = status, headers
        self.events = []
        self.comments = 0
        self.eof = False
        self.last_id = ""
        self._block = {}

    @classmethod
    async def open(cls, base, path, headers=()):
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        writer.write(head.encode())
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
        return cls(reader, writer, status, fields)

    async def read_until(self, done, timeout=5):
        """Reads events until `done(self)` holds, EOF or the timeout."""
        deadline = now() + timeout
        while not done(self) and not self.eof and now() < deadline:
            try:
                line = await asyncio.wait_for(self.reader.readline(), deadline - now())
            except asyncio.TimeoutError:
                break
            if not line:
                self.eof = True
                break
            self._line(line.decode().rstrip("\r\n"))

    def _line(self, line):
        if line == "":
            if self._block:
                if "id" in self._block:
                    self.last_id = self._block["id"]
                self._block["last_id"] = self.last_id
                self.events.append(self._block)
            self._block = {}
        elif line.startswith(":"):
            self.comments += 1
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in self._block:
                self._block["data"] += "\n" + value
            else:
                self._block[name] = value

    def named(self, event):
        """Events of type `event`, their data parsed."""
        return [json.loads(e["data"]) for e in self.events if e.get("event") == event]

    def cursor(self):
        """The last event ID as {room: [epoch, seq]}."""
        out = {}
        for entry in filter(None, self.last_id.split(",")):
            room, epoch, seq = entry.split("~")
            out[room] = [epoch, int(seq)]
        return out

    def close(self):
        self.writer.close()

    def report(self):
        return {
            "status": self.status,
            "headers": self.headers,
            "events": self.events,
            "comments": self.comments,
            "eof": self.eof,
        }


def joined_all(rooms, count=1):
    return lambda s: len(s.named("joined")) >= count * len(rooms)


def caught_up(acks_by_room, epochs):
    """Done when the stream's last event ID has reached every room's last acknowledged seq."""

    def done(s):
        want = {r: [epochs[r], max(s for s, _ in acks)] for r, acks in acks_by_room.items()}
        cur = s.cursor()
        return all(cur.get(r) == w for r, w in want.items())

    return done


async def sse_resume(base):
    rooms = ["a", "b"]
    path = "/sse?room=a,b"
    publisher = await Publisher.open(base)
    # which[id] = [room, n]: what each ack belongs to.
    which = {}

    async def publish(ns):
        ids = []
        for n in ns:
            for room in rooms:
                i = await publisher.pub(room, {"room": room, "n": n})
                which[i] = [room, n]
                ids.append(i)
        await publisher.settle()
        # room -> [[seq, n], ...] in publish order
        return {r: [[publisher.acks[i], which[i][1]] for i in ids if which[i][0] == r] for r in rooms}

    # 1. A fresh stream on two rooms; 10 messages each; read until the cursor has them all.
    first = await Sse.open(base, path)
    await first.read_until(joined_all(rooms))
    epochs = {j["room"]: j["epoch"] for j in first.named("joined")}
    acked = await publish(range(10))
    await first.read_until(caught_up(acked, epochs))
    first.close()
    say(case="sse-resume", phase="first", acks=acked, cursor=first.last_id, **first.report())

    # 2. Away: 5 more each, published while no stream is open.
    missed = await publish(range(10, 15))
    say(case="sse-resume", phase="missed", acks=missed)

    # 3. Back with Last-Event-ID: the missed ones (after which the cursor must cover
    # them), then 5 live each.
    second = await Sse.open(base, path, [("Last-Event-ID", first.last_id)])
    await second.read_until(joined_all(rooms))
    await second.read_until(caught_up(missed, epochs), timeout=3)
    after_replay = second.last_id
    live = await publish(range(15, 20))
    await second.read_until(caught_up(live, epochs))
    second.close()
    say(
        case="sse-resume",
        phase="second",
        acks=live,
        cursor_after_replay=after_replay,
        cursor=second.last_id,
        **second.report(),
    )

    # 4. The same cursor in the query (lastEventId=): everything since it, 10 per room.
    third = await Sse.open(base, f"{path}&lastEventId={first.last_id}")
    await third.read_until(caught_up(live, epochs), timeout=3)
    third.close()
    say(case="sse-resume", phase="query", cursor=third.last_id, **third.report())

    # 5. A cursor from another epoch: recovered:false and a gap per room, then live.
    wrong = ",".join(f"{r}~zz{epochs[r]}~{acks[-1][0]}" for r, acks in acked.items())
    fourth = await Sse.open(base, path, [("Last-Event-ID", wrong)])
    await fourth.read_until(lambda s: len(s.named("gap")) >= len(rooms))
    tail = await publish([20])
    await fourth.read_until(caught_up(tail, epochs))
    fourth.close()
    say(
        case="sse-resume",
        phase="wrong-epoch",
        sent_cursor=wrong,
        cursor=fourth.last_id,
        acks=tail,
        **fourth.report(),
    )
    await publisher.close()


async def sse_drain(base):
    stream = await Sse.open(base, "/sse?room=d")
    await stream.read_until(joined_all(["d"]))
    say(case="sse-drain", phase="ready", joined=stream.named("joined"))
    # The test sends SIGTERM now; read to the end of the body.
    await stream.read_until(lambda s: False, timeout=20)
    stream.close()
    say(case="sse-drain", phase="end", **stream.report())


CASES = {
    "ws-cut": ws_cut,
    "ws-restart": ws_restart,
    "sse-resume": sse_resume,
    "sse-drain": sse_drain,
}


async def main():
    base, names = sys.argv[1], sys.argv[2:]
    for name in names:
        await CASES[name](base)


asyncio.run(main())
