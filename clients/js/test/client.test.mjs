// The client against a real roomcast server (the release binary: ROOMCAST_BIN, else
// ../../target/release/roomcast), through a TCP proxy in this file that can cut every
// connection or refuse new ones: replay after a cut with every message exactly once,
// publishes that wait (bounded) while disconnected, and refusals that are not retried.
import test from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Roomcast } from "../roomcast.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.ROOMCAST_BIN || path.join(here, "../../../target/release/roomcast");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, cond, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A roomcast server on a free port; stopped by `stop()`. */
async function server(args = []) {
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--rate", "0", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  const line = await new Promise((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d;
      if (buf.includes("\n")) resolve(buf);
    });
    child.on("exit", (c) => reject(new Error(`roomcast exited ${c}`)));
  });
  const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(line)[1]);
  return { port, stop: () => child.kill("SIGKILL") };
}

/** A proxy to `port`: counts WebSocket upgrades, `cut()` resets every connection,
 * `down()` refuses new ones until `up()`. */
async function proxy(port) {
  const pairs = new Set();
  let refusing = false;
  const p = { upgrades: 0, requests: [] };
  const srv = net.createServer((client) => {
    if (refusing) return client.resetAndDestroy();
    const upstream = net.connect(port, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    client.once("data", (chunk) => {
      const head = chunk.toString("latin1");
      p.requests.push(head.split("\r\n")[0]);
      if (/^upgrade: websocket/im.test(head)) p.upgrades++;
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
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  p.url = `ws://127.0.0.1:${srv.address().port}/ws`;
  p.cut = () => {
    for (const { client, upstream } of pairs) {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
    pairs.clear();
  };
  p.down = () => {
    refusing = true;
    p.cut();
  };
  p.up = () => {
    refusing = false;
  };
  p.close = () => {
    p.cut();
    srv.close();
  };
  return p;
}

/** A plain `ws` publisher straight to the server. */
async function publisher(port) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
  await new Promise((r, j) => ws.once("open", r).once("error", j));
  return ws;
}

function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = crypto.createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${sig}`;
}

const fast = { WebSocket, minDelay: 50, maxDelay: 200, sseAfter: 100 };

// Every client a test makes, closed when it ends, pass or fail (a client left open keeps
// reconnecting, and the test process would never exit).
const clients = new Set();
function client(url, options) {
  const rc = new Roomcast(url, options);
  clients.add(rc);
  return rc;
}
test.afterEach(() => {
  for (const rc of clients) rc.close();
  clients.clear();
});

test("a cut mid-stream: the client reconnects, replays, and delivers each message once", async () => {
  const s = await server(["--history-size", "1000"]);
  const p = await proxy(s.port);
  try {
    const rc = client(p.url, fast);
    const states = [];
    rc.on("state", (st) => states.push(st));
    const gaps = [];
    rc.on("gap", (g) => gaps.push(g));
    const got = [];
    rc.join("r", (data, meta) => got.push({ data, ...meta }));
    await until("the first joined", () => rc.rooms.get("r").joined);
    const pub = await publisher(s.port);
    const TOTAL = 300;
    for (let i = 1; i <= TOTAL; i++) {
      pub.send(JSON.stringify({ op: "pub", room: "r", data: i }));
      if (i === 100) {
        await until("100 messages", () => got.length >= 80);
        p.cut();
      }
      await sleep(2);
    }
    await until(`${TOTAL} messages (got ${got.length})`, () => got.length >= TOTAL);
    await sleep(200);
    assert.deepEqual(
      got.map((m) => m.seq),
      Array.from({ length: TOTAL }, (_, i) => i + 1),
      "every seq once, in order",
    );
    assert.deepEqual(got.map((m) => m.data), got.map((m) => m.seq));
    assert.ok(got.some((m) => m.replayed), "some came in the replay");
    assert.deepEqual(gaps, []);
    assert.ok(states.includes("reconnecting") && states.at(-1) === "open", states.join(","));
    assert.ok(p.upgrades >= 2);
    rc.close();
    pub.close();
  } finally {
    p.close();
    s.stop();
  }
});

test("publishes wait while disconnected, up to queueLimit, and go out on reconnect", async () => {
  const s = await server();
  const p = await proxy(s.port);
  try {
    const rc = client(p.url, { ...fast, queueLimit: 3 });
    const got = [];
    rc.join("q", (data) => got.push(data));
    await until("joined", () => rc.rooms.get("q").joined);
    assert.equal(await rc.publish("q", "first"), 1, "resolves to the seq");
    p.down();
    await until("reconnecting", () => rc.state === "reconnecting");
    const waiting = ["a", "b", "c"].map((d) => rc.publish("q", d));
    await assert.rejects(rc.publish("q", "d"), (e) => e.code === "queue_full");
    await sleep(300);
    p.up();
    const seqs = await Promise.all(waiting);
    assert.deepEqual(seqs, [2, 3, 4]);
    await until("delivered", () => got.length === 4);
    assert.deepEqual(got, ["first", "a", "b", "c"]);
    // A server error rejects with its code.
    await assert.rejects(rc.publish("bad name!", 1), (e) => e.code === "invalid_room");
    rc.close();
    await assert.rejects(rc.publish("q", 1), (e) => e.code === "closed");
  } finally {
    p.close();
    s.stop();
  }
});

test("refusals are not retried: a bad token at the handshake, a 1008 for auth", async () => {
  const secret = "client-test-secret";
  const s = await server(["--jwt-secret", secret, "--handshake-timeout", "1"]);
  const p = await proxy(s.port);
  try {
    // 401 at the handshake: the client asks the server why (a browser cannot see the
    // status of a refused upgrade) and stops.
    const bad = client(p.url, { ...fast, token: "not.a.token" });
    await until("closed", () => bad.state === "closed");
    assert.match(bad.closeReason, /401/);
    await sleep(400);
    assert.equal(p.upgrades, 1, "no retry after a 401");

    // No token: the upgrade passes (a token may come in an `auth` op), then the server
    // closes with 1008 "authentication timeout": terminal too.
    const none = client(p.url, fast);
    await until("closed", () => none.state === "closed", 5000);
    assert.match(none.closeReason, /1008 authentication timeout/);
    await sleep(400);
    assert.equal(p.upgrades, 2, "no retry after a 1008 for auth");

    // getToken: asked before connecting, and again `refreshBefore` seconds before exp;
    // the fresh token goes out in a `refresh` op. The first token lasts 4 s: without the
    // refresh the server would close the connection (1008 "token expired") at its exp.
    let asked = 0;
    const getToken = () => {
      asked++;
      const life = asked === 1 ? 4 : 600;
      return jwt(secret, { sub: "bo", exp: Math.floor(Date.now() / 1000) + life, join: ["*"], pub: ["*"] });
    };
    const fresh = client(p.url, { ...fast, getToken, refreshBefore: 3 });
    const errors = [];
    fresh.on("error", (e) => errors.push(e.code));
    const states = [];
    fresh.on("state", (st) => states.push(st));
    fresh.join("t", () => {});
    await until("joined with getToken", () => fresh.rooms.get("t").joined);
    const upgrades = p.upgrades;
    assert.equal(asked, 1);
    await until("the refresh", () => asked === 2, 6000);
    await sleep(4500); // past the first token's exp
    assert.deepEqual(errors, []);
    assert.deepEqual(states, ["open"], "never dropped: the server took the fresh token");
    assert.equal(p.upgrades, upgrades, "no reconnect");
    assert.equal(await fresh.publish("t", "after the refresh"), 1);
    fresh.close();

    // A good token works, through the bearer subprotocol.
    const exp = Math.floor(Date.now() / 1000) + 600;
    const token = jwt(secret, { sub: "ann", exp, join: ["*"], pub: ["*"] });
    const good = client(p.url, { ...fast, token });
    const got = [];
    good.join("t", (d) => got.push(d));
    await until("joined", () => good.rooms.get("t").joined);
    assert.equal(await good.publish("t", "hi"), 2);
    await until("delivered", () => got.length === 1);
    good.close();
  } finally {
    p.close();
    s.stop();
  }
});
