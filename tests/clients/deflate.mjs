// permessage-deflate as Node's `ws` (perMessageDeflate: true) and headless Chromium do it.
//
//   node deflate.mjs ws://127.0.0.1:PORT ROOM_PREFIX [CHROMIUM_BIN]
//   ROOMCAST_CA=ca.pem ROOMCAST_SPKI=… node deflate.mjs wss://127.0.0.1:PORT …   (over TLS:
//   Node trusts ca.pem, Chromium the server key whose SHA-256 SPKI hash is ROOMCAST_SPKI)
//
// For each client: a ~3 KB JSON text echoed on /echo, then two connections join a room on
// /ws and one publishes ~1 KB of JSON. Prints one JSON line, {node: {…}, chromium: {…}},
// with the extension agreed and whether what came back was what was sent; tests/deflate.rs
// checks it.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { cdp, startChromium } from "./cdp.mjs";

const [BASE, PREFIX, CHROMIUM] = process.argv.slice(2);

// Runs in Node and, as source text, in the page: no imports, only standard WebSocket calls.
async function scenario(base, room, WS) {
  const feed = (n) => ({
    items: Array.from({ length: 20 }, (_, i) => ({ sym: `S${String((n * 7 + i) % 500).padStart(3, "0")}`, bid: 100 + i / 4, vol: n * 31 + i })),
  });
  const open = (url) =>
    new Promise((resolve, reject) => {
      const ws = new WS(url);
      const queue = [];
      const waiting = [];
      ws.onmessage = (e) => {
        const w = waiting.shift();
        if (w) w(e.data);
        else queue.push(e.data);
      };
      ws.next = () =>
        new Promise((res, rej) => {
          const t = setTimeout(() => rej(new Error("no message in 5 s")), 5000);
          const done = (d) => {
            clearTimeout(t);
            res(typeof d === "string" ? d : d.toString());
          };
          if (queue.length) done(queue.shift());
          else waiting.push(done);
        });
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error(`cannot open ${url}`));
    });
  const out = {};
  const e = await open(`${base}/echo`);
  const text = JSON.stringify({ feed: [feed(0), feed(1), feed(2)] });
  e.send(text);
  out.echo = { ext: e.extensions, same: (await e.next()) === text, size: text.length };
  e.close();
  const a = await open(`${base}/ws?room=${room}`);
  const b = await open(`${base}/ws?room=${room}`);
  for (const c of [a, b]) {
    const j = JSON.parse(await c.next());
    if (j.op !== "joined") throw new Error(`expected joined: ${JSON.stringify(j)}`);
  }
  const data = feed(1);
  a.send(JSON.stringify({ op: "pub", room, data }));
  const got = JSON.parse(await b.next());
  out.room = { ext: b.extensions, same: got.op === "msg" && JSON.stringify(got.data) === JSON.stringify(data) };
  a.close();
  b.close();
  return out;
}

const CA = process.env.ROOMCAST_CA ? fs.readFileSync(process.env.ROOMCAST_CA) : undefined;

class NodeWS extends WebSocket {
  constructor(url) {
    super(url, { perMessageDeflate: true, ca: CA });
  }
}

const report = { node: await scenario(BASE, `${PREFIX}-node`, NodeWS) };

if (CHROMIUM) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "roomcast-deflate-"));
  const spki = process.env.ROOMCAST_SPKI;
  const { proc, url } = startChromium(CHROMIUM, profile, spki ? [`--ignore-certificate-errors-spki-list=${spki}`] : []);
  try {
    const browser = await cdp(await url);
    const { targetId } = await browser.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await browser.send("Target.attachToTarget", { targetId, flatten: true });
    const expression = `(${scenario.toString()})(${JSON.stringify(BASE)}, ${JSON.stringify(`${PREFIX}-chromium`)}, WebSocket)`;
    const r = await browser.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true }, sessionId);
    report.chromium = r.exceptionDetails ? { error: JSON.stringify(r.exceptionDetails) } : r.result.value;
    browser.close();
  } finally {
    try {
      process.kill(-proc.pid, "SIGKILL");
    } catch {}
    fs.rmSync(profile, { recursive: true, force: true });
  }
}
console.log(JSON.stringify(report));
