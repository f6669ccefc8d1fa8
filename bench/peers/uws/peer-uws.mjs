// The reference server on uWebSockets.js: the same /echo and /ws rooms protocol as the
// Rust peers in bench/peers/src (join, leave, pub with `data` passed through, acks,
// errors), written as a uWS.js user would, on uWS's own pub/sub: each room is a topic,
// `ws.subscribe(room)` joins it and `app.publish(room, frame)` fans the one encoded `msg`
// out (uWS queues small publishes in its topic tree and drains them per subscriber, corked,
// at the end of the loop iteration). One thread: Node's event loop, with uWS's sockets on it.
//
//   node peer-uws.mjs [127.0.0.1:9200]

import { createRequire } from "node:module";

// The native addon itself, not the package's entry point: that one silently falls back to a
// pure-JS implementation on `ws` when the binary does not load, which would be a different
// server. Fail loudly instead.
const require = createRequire(import.meta.url);
const { platform, arch } = process;
const abi = process.versions.modules;
const uWS = require(
  `@trufflesuite/uws-js-unofficial/binaries/uws_${platform}_${arch}_${abi}.node`,
);

/// The listen address: the first argument, or 127.0.0.1:9200 (as the Rust peers).
const addr = process.argv[2] ?? "127.0.0.1:9200";
const colon = addr.lastIndexOf(":");
const host = addr.slice(0, colon).replace(/^\[|\]$/g, "");
const port = Number(addr.slice(colon + 1));
if (colon < 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`peer-uws: bad listen address ${addr}`);
  process.exit(2);
}

/// The last seq of every room ever joined (like the Rust peers, rooms are never removed).
const seqs = new Map();

const error = (code) => `{"op":"error","code":"${code}","msg":"${code}"}`;

/// The rooms to join from `?room=a,b` (raw query, no decoding: as the Rust peers).
function roomsInQuery(query) {
  const rooms = [];
  for (const kv of query.split("&")) {
    if (!kv.startsWith("room=")) continue;
    for (const r of kv.slice(5).split(",")) if (r) rooms.push(r);
  }
  return rooms;
}

function join(ws, room) {
  if (!seqs.has(room)) seqs.set(room, 0);
  ws.subscribe(room); // idempotent
  return `{"op":"joined","room":"${room}","seq":${seqs.get(room)}}`;
}

// A minimal scanner over text JSON.parse has already accepted: the source span of the
// top-level members `data` and `id`, so `data` goes out byte for byte (never re-serialized)
// and `id` keeps every digit of a u64.
const isWs = (c) => c === 32 || c === 9 || c === 10 || c === 13;
function skipWs(s, i) {
  while (i < s.length && isWs(s.charCodeAt(i))) i++;
  return i;
}
function skipString(s, i) {
  for (i++; ; ) {
    const c = s.charCodeAt(i);
    if (c === 92) i += 2;
    else if (c === 34) return i + 1;
    else i++;
  }
}
function skipValue(s, i) {
  const c = s.charCodeAt(i);
  if (c === 34) return skipString(s, i);
  if (c === 123 || c === 91) {
    for (let depth = 0; ; ) {
      const d = s.charCodeAt(i);
      if (d === 34) {
        i = skipString(s, i);
        continue;
      }
      if (d === 123 || d === 91) depth++;
      else if ((d === 125 || d === 93) && --depth === 0) return i + 1;
      i++;
    }
  }
  while (i < s.length) {
    const d = s.charCodeAt(i);
    if (d === 44 || d === 125 || d === 93 || isWs(d)) break;
    i++;
  }
  return i;
}
/// { data: "<raw text>" | undefined, id: "<raw text>" | undefined } (the last of duplicate
/// keys wins, as in JSON.parse).
function rawMembers(s) {
  const out = { data: undefined, id: undefined };
  let i = skipWs(s, 0) + 1;
  for (;;) {
    i = skipWs(s, i);
    if (s.charCodeAt(i) !== 34) return out;
    const k0 = i;
    i = skipString(s, i);
    let key = s.slice(k0 + 1, i - 1);
    if (key.includes("\\")) key = JSON.parse(s.slice(k0, i));
    i = skipWs(s, skipWs(s, i) + 1);
    const v0 = i;
    i = skipValue(s, i);
    if (key === "data" || key === "id") out[key] = s.slice(v0, i);
    i = skipWs(s, i);
    if (s.charCodeAt(i) !== 44) return out;
    i++;
  }
}

const U64_MAX = 18446744073709551615n;

/// Handles one text message on /ws; returns the reply to this connection, if any.
function handle(ws, text) {
  let op;
  try {
    op = JSON.parse(text);
  } catch {
    return error("bad_json");
  }
  if (op === null || typeof op !== "object" || Array.isArray(op)) return error("bad_json");
  if (typeof op.op !== "string") return error("bad_json");
  if (op.room !== undefined && op.room !== null && typeof op.room !== "string") {
    return error("bad_json");
  }
  let id; // the raw digits, when given
  if (op.id !== undefined && op.id !== null) {
    id = rawMembers(text).id;
    if (!/^\d+$/.test(id) || BigInt(id) > U64_MAX) return error("bad_json");
  }
  const room = op.room;
  if (room === undefined || room === null) return error("missing_field");
  switch (op.op) {
    case "join":
      return join(ws, room);
    case "leave":
      ws.unsubscribe(room);
      return `{"op":"left","room":"${room}"}`;
    case "pub": {
      if (op.data === undefined || op.data === null) return undefined;
      const data = rawMembers(text).data;
      let seq = seqs.get(room);
      if (seq === undefined) {
        seq = 0; // no such room: nobody to deliver to
      } else {
        seqs.set(room, ++seq);
        app.publish(room, `{"op":"msg","room":"${room}","seq":${seq},"data":${data}}`, false);
      }
      return id === undefined ? undefined : `{"op":"ack","id":${id},"seq":${seq}}`;
    }
    default:
      return error("unknown_op");
  }
}

const behavior = {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  // No idle timeout and so no pings (uWS pings only to uphold idleTimeout): the idle
  // scenario holds connections that send nothing, and the Rust peers never ping either.
  idleTimeout: 0,
  maxLifetime: 0,
  sendPingsAutomatically: false,
  // uWS buffers what the kernel will not take, per socket, up to maxBackpressure; past it
  // sends and publishes to that socket are skipped silently (closeOnBackpressureLimit off,
  // the default). The default 64 KiB drops messages to a healthy member that lags a moment
  // behind a closed-loop fan-out or a burst, which would count against completeness while
  // saving uWS the work; 16 MiB lets it queue like the Rust peers (unbounded channels) do at
  // the bench's sizes, and still bounds a never-reading member.
  maxBackpressure: 16 * 1024 * 1024,
  closeOnBackpressureLimit: false,
};

const app = uWS.App();

app.ws("/echo", {
  ...behavior,
  message: (ws, message, isBinary) => {
    ws.send(message, isBinary);
  },
});

app.ws("/ws", {
  ...behavior,
  upgrade: (res, req, context) => {
    res.upgrade(
      { rooms: roomsInQuery(req.getQuery() ?? "") },
      req.getHeader("sec-websocket-key"),
      req.getHeader("sec-websocket-protocol"),
      req.getHeader("sec-websocket-extensions"),
      context,
    );
  },
  open: (ws) => {
    const data = ws.getUserData();
    for (const room of data.rooms) ws.send(join(ws, room), false);
    data.rooms = undefined;
  },
  message: (ws, message, isBinary) => {
    if (isBinary) return; // the rooms protocol is text
    const reply = handle(ws, Buffer.from(message).toString("utf8"));
    if (reply !== undefined) ws.send(reply, false);
  },
  // uWS unsubscribes a closing socket from every topic itself.
});

app.any("/*", (res) => {
  res.writeStatus("404 Not Found").end("not found\n");
});

app.listen(host, port, (listenSocket) => {
  if (!listenSocket) {
    console.error(`peer-uws: cannot listen on ${addr}`);
    process.exit(1);
  }
  console.log(`peer-uws listening on ${host}:${uWS.us_socket_local_port(listenSocket)}`);
});
