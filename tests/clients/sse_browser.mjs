// /sse in a real browser: Debian's headless Chromium runs `new EventSource('/sse?room=r')`
// while a Node `ws` publisher sends a numbered sequence; the test cuts the stream mid-way
// and the browser must reconnect by itself (the server's `retry: 1000`) with Last-Event-ID.
//
//   node sse_browser.mjs http://127.0.0.1:PORT /usr/bin/chromium
//
// Prints one JSON line of what was observed (tests/resume.rs asserts):
// {"acks": [[n, seq], …], "msgs": [{seq, n, id, open}, …], "joined": […], "gaps": […],
//  "opens": k, "errors": k, "cut": {sse, before}, "epoch_seen": …}
//
// The cut: the browser reaches the server through a TCP proxy in this script that forwards
// to the server, and the test resets both sides of every proxied connection at once (a
// dropped network path, no HTTP-level end). A proxy rather than `ss -K`: it needs no
// CONFIG_INET_DIAG_DESTROY in the kernel nor CAP_NET_ADMIN, and it cuts exactly the
// browser's connections.
//
// The browser is driven over the DevTools protocol directly (cdp.mjs).
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { cdp, startChromium } from "./cdp.mjs";

// With an API key and a token, the server also drops the stream itself, mid-way: the
// server API's disconnect closes the token's user (the stream ends with `event: close`).
const [base, chromiumPath, apiKey, token, pubToken] = process.argv.slice(2);
const serverUrl = new URL(base);
const ROOM = "r";
const TOTAL = 400; // messages, one every 5 ms: 2 s of publishing
const CUT_AT = 150; // published before the cut, about 0.75 s in
const DROP_AT = 300; // published before the server drops the stream (with a key and token)

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, cond, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${typeof what === "function" ? what() : what}`);
    }
    await sleep(20);
  }
}

// The proxy: every accepted connection is piped to the server; `cut()` resets both sides.
function startProxy() {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(serverUrl.port), serverUrl.hostname);
    const pair = { client, upstream, sse: false };
    pairs.add(pair);
    // Any request on it may be the stream's (the browser reuses a kept-alive connection).
    client.on("data", (chunk) => {
      if (chunk.toString("latin1").startsWith("GET /sse")) pair.sse = true;
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: server.address().port,
        cut() {
          let sse = 0;
          for (const pair of pairs) {
            if (pair.sse) sse++;
            pair.client.resetAndDestroy();
            pair.upstream.resetAndDestroy();
          }
          pairs.clear();
          return sse;
        },
        close: () => server.close(),
      });
    });
  });
}

// What the page runs: an EventSource on the page's own origin, recording what it sees.
const PAGE_SETUP = `
  window.__sse = { msgs: [], joined: [], gaps: [], opens: 0, errors: 0 };
  const es = new EventSource('/sse?room=${ROOM}${token ? `&token=${token}` : ""}');
  es.onopen = () => { __sse.opens++; };
  es.onerror = () => { __sse.errors++; };
  es.addEventListener('joined', (e) => {
    __sse.joined.push({ data: JSON.parse(e.data), id: e.lastEventId, open: __sse.opens });
  });
  es.addEventListener('gap', (e) => { __sse.gaps.push(JSON.parse(e.data)); });
  es.addEventListener('close', (e) => { __sse.closes = (__sse.closes || 0) + 1; });
  es.addEventListener('msg', (e) => {
    const m = JSON.parse(e.data);
    __sse.msgs.push({ seq: m.seq, room: m.room, n: m.data.n, id: e.lastEventId, open: __sse.opens });
  });
  true`;

async function main() {
  const proxy = await startProxy();
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "roomcast-chromium-"));
  const chromium = startChromium(chromiumPath, profile);
  let browser;
  try {
    browser = await cdp(await chromium.url);
    const { targetId } = await browser.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await browser.send("Target.attachToTarget", { targetId, flatten: true });
    const page = (method, params) => browser.send(method, params, sessionId);
    const evaluate = async (expression) => {
      const r = await page("Runtime.evaluate", { expression, returnByValue: true });
      if (r.exceptionDetails) throw new Error(JSON.stringify(r.exceptionDetails));
      return r.result.value;
    };
    // The server's own /healthz through the proxy: the page's origin is the proxy's, so
    // '/sse' is same-origin and needs no CORS.
    await page("Page.enable");
    const loaded = browser.waitEvent("Page.loadEventFired");
    await page("Page.navigate", { url: `http://127.0.0.1:${proxy.port}/healthz` });
    await loaded;
    await evaluate(PAGE_SETUP);
    const state = () => evaluate("JSON.parse(JSON.stringify(window.__sse))");
    await until("the first joined event", async () => (await state()).joined.length >= 1, 10_000);

    // The publisher, straight to the server: n = 0 … TOTAL-1, one every 5 ms.
    const pubWs = new WebSocket(`ws://${serverUrl.host}/ws${pubToken ? `?token=${pubToken}` : ""}`);
    await new Promise((res, rej) => pubWs.on("open", res).on("error", rej));
    const acks = new Map(); // n → seq (id = n)
    pubWs.on("message", (raw) => {
      const m = JSON.parse(raw);
      if (m.op === "ack") acks.set(m.id, m.seq);
    });
    let cut = null;
    let dropped = null;
    for (let n = 0; n < TOTAL; n++) {
      pubWs.send(JSON.stringify({ op: "pub", room: ROOM, data: { n }, id: n }));
      if (n === CUT_AT) {
        // Mid-stream: the browser has been receiving on its first connection.
        const before = (await state()).msgs.length;
        cut = { sse: proxy.cut(), before };
      }
      if (n === DROP_AT && apiKey) {
        // Once the browser is back from the cut (retry: 1000 ms), the server drops it.
        await until("the reconnect after the cut", async () => (await state()).opens >= 2, 10_000);
        await sleep(100);
        const r = await fetch(`http://${serverUrl.host}/api/disconnect`, {
          method: "POST",
          headers: { authorization: `apikey ${apiKey}`, "content-type": "application/json" },
          body: JSON.stringify({ user: "viewer", reason: "dropped by the test" }),
        });
        dropped = { status: r.status, body: await r.json(), before: (await state()).msgs.length };
      }
      await sleep(5);
    }
    await until(() => `every ack (${acks.size} of ${TOTAL})`, () => acks.size === TOTAL, 10_000);
    const last = Math.max(...acks.values());
    // The browser reconnects after retry: 1000 ms, then catches up.
    await until(
      "the browser to reach the last seq",
      async () => (await state()).msgs.some((m) => m.seq >= last),
      15_000,
    ).catch(() => {}); // reported below either way: the test asserts what arrived
    // Anything extra (a duplicate replay) would arrive now.
    await sleep(300);
    const seen = await state();
    pubWs.close();
    console.log(
      JSON.stringify({
        acks: [...acks.entries()].sort((a, b) => a[0] - b[0]),
        cut,
        dropped,
        ...seen,
      }),
    );
  } finally {
    if (browser) {
      await Promise.race([browser.send("Browser.close").catch(() => {}), sleep(2000)]);
      browser.close();
    }
    try {
      process.kill(-chromium.proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
    proxy.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
