// Headless Chromium driven over the DevTools protocol directly, with the `ws` package this
// folder already has: puppeteer-core's current releases need Node >= 22, and Debian's Node
// is 20; the few CDP calls the browser tests need are a few lines. Shared by
// sse_browser.mjs, js_browser.mjs and dashboard_browser.mjs.
import { spawn } from "node:child_process";
import WebSocket from "ws";

/** Chromium with a DevTools port, in its own process group (the launcher script forks:
 * kill the group at the end). `url` resolves to the browser's DevTools WebSocket URL. */
export function startChromium(chromiumPath, profile, extraArgs = []) {
  const proc = spawn(
    chromiumPath,
    [
      "--headless=new",
      "--no-sandbox",
      "--remote-debugging-port=0",
      `--user-data-dir=${profile}`,
      "--no-first-run",
      "--no-default-browser-check",
      ...extraArgs,
      "about:blank",
    ],
    { stdio: ["ignore", "ignore", "pipe"], detached: true },
  );
  const url = new Promise((resolve, reject) => {
    let err = "";
    proc.stderr.on("data", (d) => {
      err += d;
      const m = err.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) resolve(m[1]);
    });
    proc.on("exit", (code) => reject(new Error(`chromium exited (${code}): ${err}`)));
    setTimeout(() => reject(new Error(`chromium did not start: ${err}`)), 30_000);
  });
  return { proc, url };
}

/** A minimal CDP client: send(method, params, sessionId) → result; waitEvent(method). */
export function cdp(url) {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 << 20 });
  let next = 1;
  const pending = new Map();
  const waiters = [];
  ws.on("message", (raw) => {
    const m = JSON.parse(raw);
    if (m.id && pending.has(m.id)) {
      const { resolve, reject } = pending.get(m.id);
      pending.delete(m.id);
      if (m.error) reject(new Error(JSON.stringify(m.error)));
      else resolve(m.result);
    } else if (m.method) {
      for (const w of waiters.splice(0)) {
        if (w.method === m.method) w.resolve(m.params);
        else waiters.push(w);
      }
    }
  });
  return new Promise((resolve, reject) => {
    ws.on("error", reject);
    ws.on("open", () =>
      resolve({
        send(method, params = {}, sessionId) {
          const id = next++;
          ws.send(JSON.stringify({ id, method, params, sessionId }));
          return new Promise((res, rej) => pending.set(id, { resolve: res, reject: rej }));
        },
        waitEvent(method) {
          return new Promise((res) => waiters.push({ method, resolve: res }));
        },
        close: () => ws.close(),
      }),
    );
  });
}

/** A page (a tab) at `url`, with `evaluate(expr)` (awaits promises). */
export async function openPage(browser, url) {
  const { targetId } = await browser.send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await browser.send("Target.attachToTarget", { targetId, flatten: true });
  const send = (method, params) => browser.send(method, params, sessionId);
  await send("Page.enable");
  const loaded = browser.waitEvent("Page.loadEventFired");
  await send("Page.navigate", { url });
  await loaded;
  const evaluate = async (expression) => {
    const r = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(JSON.stringify(r.exceptionDetails));
    return r.result.value;
  };
  return { send, evaluate, close: () => browser.send("Target.closeTarget", { targetId }) };
}
