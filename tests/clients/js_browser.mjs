// roomcast.js in a real browser: Debian's headless Chromium loads pages served by roomcast
// and drives `/roomcast.js` there, while this script runs the servers, a TCP proxy in
// front of them (the page's only way to the server), and a Node `ws` publisher.
//
//   node js_browser.mjs ROOMCAST_BIN CHROMIUM_BIN OUT_DIR
//
// Scenarios, each reported as one member of a JSON line on stdout (tests/js_client.rs
// asserts; this script only records):
// - basic: the page joins, publishes, receives its own message.
// - cut: a publisher sends 200 msg/s; the proxy resets every connection mid-way; the page
//   must reconnect by itself and see every message once.
// - drain: the server drains (1001) and a fresh server takes its port (a new epoch): the
//   page reconnects, is told `gap` recovered:false, and carries on.
// - failover: two nodes on one redis-server behind the proxy (first node, else the
//   second); the first drains mid-stream and the page moves to the second, losing nothing.
// - blocked: a proxy that drops every WebSocket upgrade: the page receives over /sse.
// - demo: the demo page at `/`, with messages in it, captured to OUT_DIR/demo.png.
// - rpc: a backend (Node's http, in this script) behind --hook-connect and --hook-rpc:
//   the page's cookie makes it a user, and `rc.rpc()` round-trips (and fails as told).
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { cdp, openPage, startChromium } from "./cdp.mjs";

const [BIN, CHROMIUM, OUT] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = new Set();

async function until(what, cond, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** `roomcast serve` on `port` (0: any); resolves once it listens. */
async function roomcast(port, args = []) {
  const child = spawn(
    BIN,
    ["serve", "--listen", `127.0.0.1:${port}`, "--rate", "0", "--drain-window", "1", ...args],
    { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
  );
  children.add(child);
  child.on("exit", () => children.delete(child));
  const line = await new Promise((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d;
      if (buf.includes("\n")) resolve(buf);
    });
    child.on("exit", (c) => reject(new Error(`roomcast exited ${c}`)));
  });
  const got = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(line)[1]);
  return {
    port: got,
    child,
    exited: new Promise((r) => child.on("exit", r)),
    drain: () => child.kill("SIGTERM"),
  };
}

async function redis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  children.add(child);
  await until("redis-server", async () => {
    return await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.end();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
  }, 5000);
  return { port, url: `redis://127.0.0.1:${port}` };
}

/** A proxy to the first of `ports` that accepts (a node that drains closes its listener:
 * the next one gets the connection); `cut()` resets every connection. `blockWs`: it drops
 * every WebSocket upgrade and passes plain HTTP (a proxy that blocks WebSocket). */
async function proxy(ports, blockWs = false) {
  const pairs = new Set();
  const p = { targets: [], blocked: 0 };
  const srv = net.createServer(async (client) => {
    client.pause();
    let first = null;
    if (blockWs) {
      first = await new Promise((resolve) => {
        client.once("data", resolve);
        client.once("error", () => resolve(null));
        client.resume();
      });
      client.pause();
      if (!first || /^upgrade: websocket/im.test(first.toString("latin1"))) {
        p.blocked++;
        return client.destroy();
      }
    }
    for (const port of ports) {
      const upstream = net.connect(port, "127.0.0.1");
      const ok = await new Promise((resolve) => {
        upstream.once("connect", () => resolve(true));
        upstream.once("error", () => resolve(false));
      });
      if (!ok) continue;
      p.targets.push(port);
      const pair = { client, upstream };
      pairs.add(pair);
      if (first) upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
      const end = () => {
        client.destroy();
        upstream.destroy();
        pairs.delete(pair);
      };
      client.on("error", end).on("close", end);
      upstream.on("error", end).on("close", end);
      return;
    }
    client.destroy();
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  p.origin = `http://127.0.0.1:${srv.address().port}`;
  p.cut = () => {
    for (const { client, upstream } of pairs) {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
    pairs.clear();
  };
  p.close = () => {
    p.cut();
    srv.close();
  };
  return p;
}

/** A publisher straight to a server: `send(n)` publishes {n} with id n; acks by n. */
async function publisher(port, room) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
  await new Promise((r, j) => ws.once("open", r).once("error", j));
  const acks = new Map();
  ws.on("message", (raw) => {
    const m = JSON.parse(raw);
    if (m.op === "ack") acks.set(m.id, m.seq);
  });
  return {
    acks,
    send: (n) => ws.send(JSON.stringify({ op: "pub", room, data: { n }, id: n })),
    close: () => ws.close(),
  };
}

// What a test page runs: roomcast.js from the server, one room, everything recorded.
const CLIENT = (room, opts = "{}") => `
  (async () => {
    const { Roomcast } = await import('/roomcast.js');
    const rec = { msgs: [], gaps: [], states: [], errors: [], joined: [] };
    window.__rec = rec;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const rc = new Roomcast(scheme + '//' + location.host + '/ws', ${opts});
    window.__rc = rc;
    rc.on('state', (s) => rec.states.push(s));
    rc.on('gap', (g) => rec.gaps.push(g));
    rc.on('error', (e) => rec.errors.push(e.code));
    window.__room = rc.join('${room}', (data, meta) => rec.msgs.push({ n: data.n, data, seq: meta.seq, epoch: meta.epoch, replayed: meta.replayed }));
    return true;
  })()`;
const RECORD = "JSON.parse(JSON.stringify(window.__rec))";
const OPTS = "{ minDelay: 100, maxDelay: 1000 }";

async function basic(browser) {
  const s = await roomcast(0);
  const p = await proxy([s.port]);
  const page = await openPage(browser, `${p.origin}/healthz`);
  try {
    await page.evaluate(CLIENT("basic", OPTS));
    await until("open", async () => (await page.evaluate("window.__rc.state")) === "open", 10_000);
    await until("joined", async () => (await page.evaluate("window.__room.epoch")) !== undefined, 10_000);
    const seq = await page.evaluate("window.__rc.publish('basic', { n: 1, text: 'hello' })");
    await until("its own message", async () => (await page.evaluate(RECORD)).msgs.length >= 1, 10_000);
    return { published_seq: seq, ...(await page.evaluate(RECORD)) };
  } finally {
    await teardown(page, p, s);
  }
}

/** Ends a scenario whatever happened in it: its publisher (if any), page, proxy and server. */
async function teardown(page, p, server, pub) {
  pub?.close();
  await page.close();
  p.close();
  server.drain();
  await server.exited;
}

/** The page on `room` through `p` while `pub` sends TOTAL at 200 msg/s; `at(n)` runs
 * before message n. Returns what the page recorded and the publisher's acks. */
async function stream(page, pub, total, at) {
  for (let n = 1; n <= total; n++) {
    await at(n);
    pub.send(n);
    await sleep(5);
  }
  await until(() => `every ack (${pub.acks.size} of ${total})`, () => pub.acks.size === total, 15_000);
  const last = Math.max(...pub.acks.values());
  await until(
    "the page to reach the last seq",
    async () => (await page.evaluate(RECORD)).msgs.some((m) => m.seq >= last),
    15_000,
  ).catch(() => {});
  await sleep(300); // a duplicate would arrive now
  return { acks: [...pub.acks.entries()].sort((a, b) => a[0] - b[0]), ...(await page.evaluate(RECORD)) };
}

async function cut(browser) {
  const s = await roomcast(0, ["--history-size", "1000"]);
  const p = await proxy([s.port]);
  const page = await openPage(browser, `${p.origin}/healthz`);
  const pub = await publisher(s.port, "cut");
  try {
    await page.evaluate(CLIENT("cut", OPTS));
    await until("joined", async () => (await page.evaluate("window.__room.epoch")) !== undefined, 10_000);
    let before = null;
    const seen = await stream(page, pub, 400, async (n) => {
      if (n === 150) {
        before = (await page.evaluate(RECORD)).msgs.length;
        p.cut();
      }
    });
    return { before_cut: before, ...seen };
  } finally {
    await teardown(page, p, s, pub);
  }
}

async function drain(browser) {
  let s = await roomcast(0);
  const port = s.port;
  const p = await proxy([port]);
  const page = await openPage(browser, `${p.origin}/healthz`);
  try {
    await page.evaluate(CLIENT("d", OPTS));
    await until("joined", async () => (await page.evaluate("window.__room.epoch")) !== undefined, 10_000);
    const first = await publisher(port, "d");
    for (let n = 1; n <= 20; n++) first.send(n);
    await until("the first 20", async () => (await page.evaluate(RECORD)).msgs.length >= 20, 10_000);
    const epochBefore = await page.evaluate("window.__room.epoch");
    first.close();
    s.drain();
    await s.exited;
    s = await roomcast(port); // a fresh server, a new epoch
    await until("the page back", async () => {
      const r = await page.evaluate(RECORD);
      return r.gaps.length > 0 && (await page.evaluate("window.__rc.state")) === "open";
    }, 15_000);
    const second = await publisher(port, "d");
    for (let n = 21; n <= 30; n++) second.send(n);
    await until("the next 10", async () => (await page.evaluate(RECORD)).msgs.length >= 30, 10_000).catch(() => {});
    second.close();
    return {
      epoch_before: epochBefore,
      epoch_after: await page.evaluate("window.__room.epoch"),
      ...(await page.evaluate(RECORD)),
    };
  } finally {
    await teardown(page, p, s);
  }
}

async function failover(browser) {
  const r = await redis();
  const args = (id) => ["--redis", r.url, "--node-id", id, "--history-size", "1000"];
  const n1 = await roomcast(0, args("n1"));
  const n2 = await roomcast(0, args("n2"));
  const p = await proxy([n1.port, n2.port]);
  const page = await openPage(browser, `${p.origin}/healthz`);
  // The publisher is on the second node: it outlives the first's drain.
  const pub = await publisher(n2.port, "ha");
  try {
    await page.evaluate(CLIENT("ha", OPTS));
    await until("joined", async () => (await page.evaluate("window.__room.epoch")) !== undefined, 10_000);
    const seen = await stream(page, pub, 300, async (n) => {
      if (n === 100) n1.drain();
    });
    await n1.exited;
    return { nodes: [n1.port, n2.port], proxied_to: p.targets, ...seen };
  } finally {
    await teardown(page, p, n2, pub);
  }
}

async function blocked(browser) {
  const s = await roomcast(0);
  const p = await proxy([s.port], true);
  const page = await openPage(browser, `${p.origin}/healthz`);
  try {
    await page.evaluate(CLIENT("b", "{ minDelay: 100, maxDelay: 300, sseAfter: 3 }"));
    await until("receiving over /sse", async () => (await page.evaluate("window.__rc.transport")) === "sse", 15_000);
    await until("joined over /sse", async () => (await page.evaluate("window.__room.epoch")) !== undefined, 10_000);
    const pub = await publisher(s.port, "b");
    for (let n = 1; n <= 20; n++) pub.send(n);
    await until("20 messages over /sse", async () => (await page.evaluate(RECORD)).msgs.length >= 20, 10_000).catch(() => {});
    const publish = await page.evaluate("window.__rc.publish('b', {n: 0}).then(() => 'published', (e) => e.code)");
    pub.close();
    return {
      transport: await page.evaluate("window.__rc.transport"),
      state: await page.evaluate("window.__rc.state"),
      upgrades_blocked: p.blocked,
      publish,
      acks: [...pub.acks.entries()].sort((a, b) => a[0] - b[0]),
      ...(await page.evaluate(RECORD)),
    };
  } finally {
    await teardown(page, p, s);
  }
}

async function demo(browser) {
  const s = await roomcast(0);
  const p = await proxy([s.port]);
  const page = await openPage(browser, `${p.origin}/?room=lobby`);
  try {
    await until("the demo connected", async () => (await page.evaluate("window.rc && window.rc.state")) === "open", 10_000);
    await until("joined", async () => (await page.evaluate("window.rc.rooms.get('lobby').joined")) === true, 10_000);
    // One message typed into the page, two from another client.
    await page.evaluate(`(() => {
      document.getElementById('text').value = 'hello from the page';
      document.getElementById('say').requestSubmit();
      return true;
    })()`);
    const ws = new WebSocket(`ws://127.0.0.1:${s.port}/ws?room=lobby`);
    await new Promise((r, j) => ws.once("open", r).once("error", j));
    for (const text of ["hi from node", "second line"]) {
      ws.send(JSON.stringify({ op: "pub", room: "lobby", data: { from: "node", text } }));
    }
    const lines = () => page.evaluate("[...document.querySelectorAll('#log li')].map((li) => li.textContent)");
    await until("three messages shown", async () => (await lines()).filter((l) => l.includes(": ")).length >= 3, 10_000);
    await until("the stats", async () => (await page.evaluate("document.getElementById('stats').textContent")).includes("websockets"), 10_000);
    await until("the member count", async () => (await page.evaluate("document.getElementById('members').textContent")) === "2", 10_000);
    ws.close();
    const shot = await page.send("Page.captureScreenshot", { format: "png" });
    const file = path.join(OUT, "demo.png");
    fs.mkdirSync(OUT, { recursive: true });
    fs.writeFileSync(file, Buffer.from(shot.data, "base64"));
    return {
      lines: await lines(),
      members: await page.evaluate("document.getElementById('members').textContent"),
      stats: await page.evaluate("document.getElementById('stats').textContent"),
      state: await page.evaluate("document.getElementById('state').textContent"),
      screenshot: file,
    };
  } finally {
    await teardown(page, p, s);
  }
}

/** An application backend for the hooks: a `session` cookie is the user; `add` sums. */
async function hookBackend() {
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const b = JSON.parse(body);
      let out = {};
      if (b.kind === "connect") {
        const m = /(?:^|; )session=([^;]+)/.exec(b.headers.cookie || "");
        out = m ? { user: m[1], data: { greeting: `hi ${m[1]}` } } : { error: { code: 401, reason: "log in first" } };
      } else if (b.kind === "rpc") {
        out = b.method === "add" ? { data: b.data.a + b.data.b } : { error: { code: 418, reason: "teapot" } };
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(out));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}/hook`, close: () => server.close() };
}

async function rpc(browser) {
  const backend = await hookBackend();
  const s = await roomcast(0, ["--hook-connect", backend.url, "--hook-rpc", backend.url]);
  const p = await proxy([s.port]);
  const page = await openPage(browser, `${p.origin}/healthz`);
  try {
    await page.evaluate("document.cookie = 'session=ann; path=/'");
    await page.evaluate(`
      (async () => {
        const { Roomcast } = await import('/roomcast.js');
        const rc = new Roomcast('ws://' + location.host + '/ws', ${OPTS});
        window.__rc = rc;
        window.__authed = null;
        rc.on('authed', (who) => (window.__authed = who));
        return true;
      })()`);
    await until("open", async () => (await page.evaluate("window.__rc.state")) === "open", 10_000);
    await until("authed", async () => await page.evaluate("window.__authed"), 10_000);
    const sum = await page.evaluate("window.__rc.rpc('add', { a: 2, b: 3 })");
    const failed = await page.evaluate(
      "window.__rc.rpc('nope', 1).then(() => null, (e) => ({ code: e.code, status: e.status, message: e.message }))",
    );
    return { sum, failed, authed: await page.evaluate("window.__authed"), user: await page.evaluate("window.__rc.user") };
  } finally {
    await teardown(page, p, s);
    backend.close();
  }
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "roomcast-chromium-"));
  const chromium = startChromium(CHROMIUM, profile, ["--window-size=1100,700"]);
  let browser;
  const report = {};
  try {
    browser = await cdp(await chromium.url);
    for (const [name, run] of Object.entries({ basic, cut, drain, failover, blocked, demo, rpc })) {
      try {
        report[name] = await run(browser);
      } catch (e) {
        report[name] = { error: String(e && e.stack ? e.stack : e) };
      }
    }
    console.log(JSON.stringify(report));
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
    for (const c of children) c.kill("SIGKILL");
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
