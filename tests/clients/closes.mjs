// Server-initiated closes, as the Node `ws` client sees them.
//
// Each case connects, makes the server close the connection while the client is still
// writing, keeps writing until the close event, and prints one JSON line:
// {"case": …, "code": <close code received, 1006 if none>, "reason": …}.
//
//   node closes.mjs ws://127.0.0.1:PORT flood oversize-echo oversize-ws utf8 protocol echo-reason
//   node closes.mjs ws://127.0.0.1:PORT drain      (prints "ready" once sending)
import crypto from "node:crypto";
import WebSocket from "ws";

// A client frame written by hand, for what the library refuses to send.
function maskedFrame(firstByte, payload) {
  const key = crypto.randomBytes(4);
  const body = Buffer.from(payload.map((b, i) => b ^ key[i % 4]));
  return Buffer.concat([Buffer.from([firstByte, 0x80 | payload.length]), key, body]);
}

const pub = () => JSON.stringify({ op: "pub", room: "flood", data: { n: 1 } });
const bigPub = JSON.stringify({ op: "pub", room: "elsewhere", data: "x".repeat(30_000) });

// Opens `url`, runs `first(ws)`, then sends `then()` every `pauseMs` until the close event
// (bounded: 60 s). Resolves to [code, reason].
function closedByServer(url, first, then, pauseMs = 0, ready = false) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { maxPayload: 0 });
    let timer;
    const giveUp = setTimeout(() => reject(new Error("no close within 60 s")), 60_000);
    ws.on("error", () => {}); // the close event follows and carries the code
    ws.on("open", () => {
      first(ws);
      if (ready) console.log("ready");
      timer = setInterval(() => {
        // A burst each tick, so that the flood outruns --rate.
        for (let i = 0; i < (pauseMs ? 1 : 50); i++) {
          // Bounded: at most 1 MiB waiting in the client.
          if (ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 1 << 20) ws.send(then());
        }
      }, pauseMs);
    });
    ws.on("close", (code, reason) => {
      clearInterval(timer);
      clearTimeout(giveUp);
      resolve([code, reason.toString()]);
    });
  });
}

const cases = {
  flood: (base) => closedByServer(base + "/ws", () => {}, pub),
  "oversize-echo": (base) =>
    closedByServer(base + "/echo", (ws) => ws.send(Buffer.alloc(200_000, 120)), () => "more", 1),
  "oversize-ws": (base) =>
    closedByServer(base + "/ws", (ws) => ws.send(Buffer.alloc(200_000, 120)), () => "more", 1),
  utf8: (base) =>
    closedByServer(
      base + "/echo",
      (ws) => ws.send(Buffer.from([0xff, 0xfe, 0x20]), { binary: false }),
      () => "valid",
      1,
    ),
  protocol: (base) =>
    closedByServer(
      base + "/echo",
      // RSV2 set without an extension that defines it: RFC 6455 §5.2.
      (ws) => ws._socket.write(maskedFrame(0x80 | 0x20 | 0x1, [0x68, 0x69])),
      () => "valid",
      1,
    ),
  drain: (base) =>
    // Large messages back to back: the client is busy writing when the 1001 arrives.
    closedByServer(base + "/ws", (ws) => ws.send('{"op":"join","room":"drain"}'), () => bigPub, 0, true),
  // The client closes; the server's answer must carry the same code and reason.
  "echo-reason": (base) =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(base + "/echo");
      const giveUp = setTimeout(() => reject(new Error("no close within 10 s")), 10_000);
      ws.on("open", () => ws.close(4001, "bye"));
      ws.on("close", (code, reason) => {
        clearTimeout(giveUp);
        resolve([code, reason.toString()]);
      });
    }),
};

const [base, ...names] = process.argv.slice(2);
for (const name of names) {
  const [code, reason] = await cases[name](base);
  console.log(JSON.stringify({ case: name, code, reason }));
}
