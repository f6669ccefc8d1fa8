// The reconnect schedule and the small pure parts of the client.
import test from "node:test";
import assert from "node:assert/strict";
import { backoff, drainDelay, isTerminalClose, tokenExp } from "../roomcast.js";

test("each delay lies between minDelay and min(maxDelay, minDelay × 2^attempt)", () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const cap = Math.min(20000, 500 * 2 ** attempt);
    assert.equal(backoff(attempt, 500, 20000, () => 0), 500, "the floor");
    assert.equal(backoff(attempt, 500, 20000, () => 0.999999999), 500 + 0.999999999 * (cap - 500));
    for (let i = 0; i < 50; i++) {
      const d = backoff(attempt, 500, 20000);
      assert.ok(d >= 500 && d <= cap, `attempt ${attempt}: ${d}`);
    }
  }
  assert.equal(backoff(0, 500, 20000, () => 0.5), 500, "the first retry: the cap is the floor");
  assert.equal(backoff(3, 500, 20000, () => 0.5), 500 + 0.5 * 3500);
  assert.equal(backoff(1000, 500, 20000, () => 1), 20000, "never past maxDelay");
});

test("the jitter spreads a herd over the whole window", () => {
  // 1,000 clients retrying at attempt 5 (cap 16 s): no tenth of the window holds more than
  // twice its share, and every tenth gets some.
  const n = 1000;
  const bins = new Array(10).fill(0);
  for (let i = 0; i < n; i++) {
    const d = backoff(5, 500, 20000);
    bins[Math.min(9, Math.floor(((d - 500) / 15500) * 10))]++;
  }
  for (const b of bins) assert.ok(b > 0 && b < (2 * n) / 10, `bins ${bins}`);
  const distinct = new Set(Array.from({ length: 100 }, () => backoff(5, 500, 20000)));
  assert.ok(distinct.size > 95);
});

test("after a drain the reconnect is prompt but spread", () => {
  for (let i = 0; i < 200; i++) {
    const d = drainDelay(500);
    assert.ok(d >= 0 && d < 500, `${d}`);
  }
});

test("terminal closes: auth refusals, not slow consumers or rate limits", () => {
  assert.equal(isTerminalClose(1008, "invalid token", false), true);
  assert.equal(isTerminalClose(1008, "authentication timeout", false), true);
  assert.equal(isTerminalClose(1008, "token expired", false), true);
  assert.equal(isTerminalClose(1008, "token expired", true), false, "getToken can get a fresh one");
  assert.equal(isTerminalClose(1008, "slow consumer", false), false);
  assert.equal(isTerminalClose(1008, "rate limit exceeded", false), false);
  assert.equal(isTerminalClose(1001, "server shutting down", false), false);
  assert.equal(isTerminalClose(1006, "", false), false);
  assert.equal(isTerminalClose(4001, "bye", false), true, "the application removed the user");
});

test("a token's exp is read without a library", () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  assert.equal(tokenExp(`${b64({ alg: "HS256" })}.${b64({ sub: "a", exp: 1234567890 })}.sig`), 1234567890);
  assert.equal(tokenExp("not a token"), undefined);
});
