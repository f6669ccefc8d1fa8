// roomcast-client: the browser (and Node) half of roomcast's rooms protocol.
//
// One WebSocket to `/ws` carries every room. When it drops, the client reconnects with
// exponential backoff and full jitter, rejoins every room with the last `seq`/`epoch` it
// delivered, and hands each message to the room's handler exactly once (replay first, then
// live, de-duplicated by `seq`). Publishes made while disconnected wait in a bounded queue.
// What could not be recovered is said, never silent: a `gap` event. When WebSocket keeps
// failing while plain HTTP to the server works (a proxy that blocks it), receiving falls
// back to `/sse`.
//
// No dependencies. Works with the browser's WebSocket, EventSource and fetch; in Node pass
// `WebSocket` (e.g. from the `ws` package) in the options.

const DEFAULTS = {
  minDelay: 500,
  maxDelay: 20000,
  queueLimit: 100,
  // Handshakes in a row that fail while plain HTTP works, before receiving moves to /sse.
  sseAfter: 3,
  // Seconds before a token's `exp` at which `getToken` is asked for a fresh one.
  refreshBefore: 30,
};

/** The delay before reconnect attempt `attempt` (0-based): uniform between `minDelay` and
 * min(`maxDelay`, `minDelay` × 2^attempt) ("full jitter" above the floor). */
export function backoff(attempt, minDelay, maxDelay, random = Math.random) {
  const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
  return minDelay + random() * Math.max(0, cap - minDelay);
}

/** The delay after a server drain (close 1001): prompt, but spread over `minDelay` so
 * that a drained node's clients do not all arrive at once. */
export function drainDelay(minDelay, random = Math.random) {
  return random() * minDelay;
}

/** Close codes and reasons after which reconnecting cannot help: 1008 for auth, and the
 * application's own 4000-4999 (the server API's `disconnect` uses them to remove a user). */
export function isTerminalClose(code, reason, canRefresh) {
  if (code >= 4000 && code <= 4999) return true;
  if (code !== 1008) return false;
  const r = String(reason || "").toLowerCase();
  if (r.includes("token expired")) return !canRefresh;
  return r.includes("token") || r.includes("auth") || r.includes("forbidden");
}

/** The `exp` (seconds) of a JWT, or undefined. */
export function tokenExp(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function" ? atob(part) : Buffer.from(part, "base64").toString();
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** An error the server answered with: `code` is its snake_case code. */
export class RoomcastError extends Error {
  constructor(code, message) {
    super(message ? `${code}: ${message}` : code);
    this.code = code;
  }
}

class Room {
  constructor(client, name, handler) {
    this.client = client;
    this.name = name;
    this.handler = handler;
    /** The last seq delivered to the handler, and its epoch (undefined: none yet). */
    this.seq = undefined;
    this.epoch = undefined;
    /** Messages up to this seq are a replay (set by a recovered `joined`). */
    this.replayUntil = 0;
    this.joined = false;
    this.left = false;
    /** Joins refused in a row (`unavailable`), for their backoff. */
    this.retries = 0;
  }

  /** Leaves the room: no more messages for it. */
  leave() {
    if (this.left) return;
    this.left = true;
    this.client._leave(this);
  }

  /** The room's members over the whole cluster: `{members, users?}`. */
  presence() {
    return this.client._presence(this.name);
  }
}

export class Roomcast {
  /**
   * @param {string} url  `ws://host:port/ws` (or `wss://`)
   * @param {object} [options] see roomcast.d.ts
   */
  constructor(url, options = {}) {
    this.url = url;
    this.opts = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.EventSource = options.EventSource || globalThis.EventSource;
    this.fetch = options.fetch || globalThis.fetch?.bind(globalThis);
    this.random = options.random || Math.random;
    this.rooms = new Map();
    this.listeners = new Map();
    this.queue = []; // publishes waiting for a connection: {room, data, id, resolve, reject}
    this.inflight = new Map(); // id -> {resolve, reject}
    this.presenceWaits = new Map(); // room -> [resolve]
    this.nextId = 1;
    this.failures = 0; // attempts in a row that failed (reset on open)
    // Attempts in a row whose handshake failed while plain HTTP to the same URL worked: a
    // proxy that blocks WebSocket, not an outage.
    this.wsBlocked = 0;
    this.state = "connecting";
    this.transport = null; // "ws" | "sse"
    this.ws = null;
    this.es = null;
    this.timer = null;
    this.refreshTimer = null;
    this.closed = false;
    this.token = options.token;
    this._connect();
  }

  /** Subscribes to `event`: "state", "gap", "error", "presence", "message", "authed". Returns a
   * function that unsubscribes. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  _setState(state, reason) {
    if (this.state === state) return;
    // `reason`: why it closed for good, or why it is reconnecting.
    this.state = state;
    if (state === "closed") this.closeReason = reason;
    this._emit("state", state, { reason });
  }

  /** Joins `room`; `handler(data, meta)` gets each message once, meta being
   * `{room, seq, epoch, replayed}`. */
  join(room, handler) {
    if (this.rooms.has(room)) throw new RoomcastError("already_joined", room);
    const r = new Room(this, room, handler);
    this.rooms.set(room, r);
    if (this.transport === "ws" && this.ws?.readyState === 1) this._sendJoin(r);
    else if (this.transport === "sse") this._openSse();
    return r;
  }

  /** Publishes `data` to `room`; resolves to its seq. While disconnected the publish waits
   * (up to `queueLimit` of them). Rejects with a RoomcastError (the server's code, or
   * `queue_full`, `disconnected` when the connection dropped before the answer — it may
   * have been published —, `closed`, or `publish_unavailable` while receiving over /sse). */
  publish(room, data) {
    if (this.closed) return Promise.reject(new RoomcastError("closed"));
    if (this.transport === "sse") {
      return Promise.reject(
        new RoomcastError("publish_unavailable", "WebSocket is blocked: receiving over /sse; publish through the server API"),
      );
    }
    return new Promise((resolve, reject) => {
      const p = { room, data, id: this.nextId++, resolve, reject };
      if (this.ws?.readyState === 1 && this.transport === "ws") return this._sendPublish(p);
      if (this.queue.length >= this.opts.queueLimit) {
        return reject(new RoomcastError("queue_full", `${this.opts.queueLimit} publishes already wait for a connection`));
      }
      this.queue.push(p);
    });
  }

  /** Calls the backend's `method` with `data` (the server's `--hook-rpc`); resolves to the
   * backend's answer. Rejects with a RoomcastError: `rpc_error` (the backend refused; its
   * code in `status`), `unavailable`, `rpc_disabled`, `disconnected`, `timeout`, `closed`. */
  rpc(method, data = null, { timeout = 10000 } = {}) {
    if (this.closed) return Promise.reject(new RoomcastError("closed"));
    if (this.transport !== "ws" || this.ws?.readyState !== 1) {
      return Promise.reject(new RoomcastError("disconnected", "rpc needs an open WebSocket"));
    }
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const call = { resolve, reject, rpc: true };
      call.timer = setTimeout(() => {
        if (this.inflight.get(id) !== call) return;
        this.inflight.delete(id);
        reject(new RoomcastError("timeout", `no answer to rpc ${method}`));
      }, timeout);
      this.inflight.set(id, call);
      this.ws.send(JSON.stringify({ op: "rpc", method, data, id }));
    });
  }

  /** Closes for good. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    this.es?.close();
    if (this.ws && this.ws.readyState <= 1) this.ws.close(1000, "bye");
    this._failPending(new RoomcastError("closed"));
    this._setState("closed");
  }

  _failPending(err) {
    for (const p of this.inflight.values()) p.reject(err);
    this.inflight.clear();
    for (const waits of this.presenceWaits.values()) {
      for (const w of waits) w.reject(err);
    }
    this.presenceWaits.clear();
    if (err.code === "closed") {
      for (const p of this.queue) p.reject(err);
      this.queue = [];
    }
  }

  async _connect() {
    if (this.closed) return;
    if (this.opts.getToken) {
      try {
        this.token = await this.opts.getToken();
      } catch (e) {
        return this._retry(`getToken failed: ${e}`);
      }
      if (this.closed) return;
    }
    if (this.wsBlocked >= this.opts.sseAfter && this.EventSource) return this._openSse();
    const protocols = this.token ? ["roomcast", `bearer.${this.token}`] : undefined;
    let ws;
    try {
      ws = protocols ? new this.WebSocket(this.url, protocols) : new this.WebSocket(this.url);
    } catch (e) {
      return this._retry(String(e));
    }
    this.ws = ws;
    this.transport = "ws";
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.failures = 0;
      this.wsBlocked = 0;
      this._setState("open");
      this._scheduleRefresh();
      for (const r of this.rooms.values()) this._sendJoin(r);
      const waiting = this.queue;
      this.queue = [];
      for (const p of waiting) this._sendPublish(p);
    };
    ws.onmessage = (ev) => this._onText(typeof ev.data === "string" ? ev.data : String(ev.data));
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const r of this.rooms.values()) r.joined = false;
      this._failPending(new RoomcastError("disconnected", "the connection dropped before the answer"));
      if (this.closed) return;
      if (!opened) return this._handshakeFailed();
      if (isTerminalClose(ev.code, ev.reason, Boolean(this.opts.getToken))) {
        return this._terminal(`${ev.code} ${ev.reason}`);
      }
      if (ev.code === 1001) {
        this._setState("reconnecting");
        this.timer = setTimeout(() => this._connect(), drainDelay(this.opts.minDelay, this.random));
        return;
      }
      this._retry(`closed ${ev.code} ${ev.reason || ""}`.trim());
    };
  }

  /** The handshake failed: a browser cannot see the status, so ask the server plainly
   * (a GET of the same URL answers 401/403 as the upgrade did); those are terminal. */
  async _handshakeFailed() {
    const status = await this._probe();
    if (this.closed) return;
    if (status === 401 || status === 403) return this._terminal(`handshake refused: HTTP ${status}`);
    // 400: the server answers HTTP but the upgrade did not get through. (503 and 429,
    // full or over a limit, are retried like an outage.)
    if (status === 400) this.wsBlocked++;
    this._retry(status ? `handshake failed (HTTP answers ${status})` : "handshake failed");
  }

  async _probe() {
    if (!this.fetch) return undefined;
    try {
      // The token in the query, not a header: a cross-origin GET with no custom header
      // needs no preflight.
      let http = this.url.replace(/^ws/, "http");
      if (this.token) http += `${http.includes("?") ? "&" : "?"}token=${encodeURIComponent(this.token)}`;
      const res = await this.fetch(http, { cache: "no-store" });
      return res.status;
    } catch {
      return undefined;
    }
  }

  _terminal(reason) {
    this.closed = true;
    clearTimeout(this.refreshTimer);
    this._failPending(new RoomcastError("closed", reason));
    this._setState("closed", reason);
  }

  _retry(why) {
    if (this.closed) return;
    const delay = backoff(this.failures++, this.opts.minDelay, this.opts.maxDelay, this.random);
    this._setState("reconnecting", why);
    this.timer = setTimeout(() => this._connect(), delay);
  }

  _scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    if (!this.opts.getToken || !this.token) return;
    const exp = tokenExp(this.token);
    if (!exp) return;
    const wait = Math.max(1000, (exp - this.opts.refreshBefore) * 1000 - Date.now());
    this.refreshTimer = setTimeout(async () => {
      try {
        this.token = await this.opts.getToken();
        if (this.closed) return;
        if (this.ws?.readyState === 1) this.ws.send(JSON.stringify({ op: "refresh", token: this.token }));
        this._scheduleRefresh();
      } catch (e) {
        this._emit("error", new RoomcastError("refresh_failed", String(e)));
      }
    }, Math.min(wait, 2 ** 31 - 1));
  }

  _sendJoin(r) {
    const op = { op: "join", room: r.name };
    if (r.seq !== undefined && r.epoch !== undefined) {
      op.since = r.seq;
      op.epoch = r.epoch;
    }
    this.ws.send(JSON.stringify(op));
  }

  /** A join refused because the cluster's Redis is down: tried again, with backoff. */
  _rejoinLater(r) {
    const delay = backoff(r.retries++, this.opts.minDelay, this.opts.maxDelay, this.random);
    setTimeout(() => {
      if (this.rooms.get(r.name) === r && !r.joined && this.ws?.readyState === 1) this._sendJoin(r);
    }, delay);
  }

  _sendPublish(p) {
    this.inflight.set(p.id, p);
    this.ws.send(JSON.stringify({ op: "pub", room: p.room, data: p.data, id: p.id }));
  }

  _leave(r) {
    if (this.rooms.get(r.name) !== r) return;
    this.rooms.delete(r.name);
    if (this.transport === "ws" && this.ws?.readyState === 1) {
      this.ws.send(JSON.stringify({ op: "leave", room: r.name }));
    } else if (this.transport === "sse") {
      this._openSse();
    }
  }

  _presence(room) {
    return new Promise((resolve, reject) => {
      if (this.transport !== "ws" || this.ws?.readyState !== 1) {
        return reject(new RoomcastError("disconnected", "presence needs an open WebSocket"));
      }
      if (!this.presenceWaits.has(room)) this.presenceWaits.set(room, []);
      const wait = { resolve, reject };
      this.presenceWaits.get(room).push(wait);
      // Answers come in order; one refused (no right to the room) comes as an error event.
      setTimeout(() => {
        const waits = this.presenceWaits.get(room);
        const i = waits ? waits.indexOf(wait) : -1;
        if (i >= 0) {
          waits.splice(i, 1);
          reject(new RoomcastError("timeout", "no presence answer"));
        }
      }, 10000);
      this.ws.send(JSON.stringify({ op: "presence", room }));
    });
  }

  _onText(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    this._onOp(m);
  }

  _onOp(m) {
    const r = m.room !== undefined ? this.rooms.get(m.room) : undefined;
    switch (m.op) {
      case "msg":
        return this._deliver(r, m);
      case "joined":
        return this._joined(r, m);
      case "gap":
        if (!r) return;
        if (m.to !== undefined && (r.seq === undefined || m.to > r.seq)) r.seq = m.to;
        this._emit("gap", { room: m.room, recovered: false, from: m.from, to: m.to });
        return;
      case "ack": {
        const p = this.inflight.get(m.id);
        if (p) {
          this.inflight.delete(m.id);
          p.resolve(m.seq);
        }
        return;
      }
      case "rpc_result": {
        const call = this.inflight.get(m.id);
        if (call) {
          this.inflight.delete(m.id);
          clearTimeout(call.timer);
          call.resolve(m.data);
        }
        return;
      }
      case "authed":
        // Who the server says this is (a token's `sub`, or the connect hook's user and
        // `data`).
        this.user = m.sub;
        this._emit("authed", { user: m.sub, exp: m.exp, data: m.data });
        return;
      case "error": {
        const p = m.id !== undefined && m.id !== null ? this.inflight.get(m.id) : undefined;
        const err = new RoomcastError(m.code, m.msg);
        if (m.status !== undefined) err.status = m.status;
        if (p) {
          this.inflight.delete(m.id);
          clearTimeout(p.timer);
          p.reject(err);
        } else {
          if (m.code === "unavailable" && r && !r.joined) this._rejoinLater(r);
          this._emit("error", err);
        }
        return;
      }
      case "presence":
        if (m.event) return this._emit("presence", m);
        {
          const waits = this.presenceWaits.get(m.room);
          const wait = waits?.shift();
          if (wait) wait.resolve({ members: m.members, users: m.users });
        }
        return;
      default:
    }
  }

  _joined(r, m) {
    if (!r) return;
    r.joined = true;
    r.retries = 0;
    if (m.recovered === true && m.epoch === r.epoch) {
      // The replay follows: everything after what was delivered, up to m.seq.
      r.replayUntil = m.seq;
      return;
    }
    if (m.recovered === false || (r.epoch !== undefined && m.epoch !== r.epoch)) {
      this._emit("gap", { room: r.name, recovered: false, from: r.seq === undefined ? undefined : r.seq + 1, to: undefined });
    }
    r.epoch = m.epoch;
    r.seq = m.seq;
    r.replayUntil = 0;
  }

  _deliver(r, m) {
    if (!r || r.left) return;
    if (r.seq !== undefined && m.seq <= r.seq) return; // a duplicate
    r.seq = m.seq;
    const meta = { room: r.name, seq: m.seq, epoch: r.epoch, replayed: m.seq <= r.replayUntil };
    try {
      r.handler?.(m.data, meta);
    } finally {
      this._emit("message", { data: m.data, ...meta });
    }
  }

  // ------------------------------------------------------------------ /sse fallback

  _openSse() {
    this.es?.close();
    this.transport = "sse";
    clearTimeout(this.refreshTimer);
    // Nothing can be published from here: what waited is told now.
    const waiting = this.queue;
    this.queue = [];
    for (const p of waiting) {
      p.reject(new RoomcastError("publish_unavailable", "WebSocket is blocked: receiving over /sse"));
    }
    if (this.rooms.size === 0) {
      this._setState("open");
      return;
    }
    const names = [...this.rooms.keys()];
    const base = this.url.replace(/^ws/, "http").replace(/\/ws(\?.*)?$/, "/sse");
    const params = new URLSearchParams({ room: names.join(",") });
    const cursor = names
      .map((n) => this.rooms.get(n))
      .filter((r) => r.seq !== undefined && r.epoch !== undefined)
      .map((r) => `${r.name}~${r.epoch}~${r.seq}`)
      .join(",");
    if (cursor) params.set("lastEventId", cursor);
    if (this.token) params.set("token", this.token);
    const es = new this.EventSource(`${base}?${params}`);
    this.es = es;
    es.onopen = () => this._setState("open");
    es.onerror = () => {
      if (this.es !== es || this.closed) return;
      this._setState("reconnecting");
      if (es.readyState === 2) {
        // The browser gave up on it (a non-200 answer: a stale token, a draining node):
        // start over, WebSocket first, with backoff and a fresh token.
        es.close();
        this.es = null;
        this.transport = null;
        this.wsBlocked = 0;
        this._retry("the event stream was refused");
      }
    };
    for (const name of ["joined", "msg", "gap", "presence"]) {
      es.addEventListener(name, (ev) => this._onText(ev.data));
    }
    es.addEventListener("close", () => this._setState("reconnecting"));
  }
}

export default Roomcast;
