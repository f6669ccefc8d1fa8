// Types for roomcast-client (roomcast.js).

export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface Options {
  /** A JWT, sent as a `bearer.<jwt>` WebSocket subprotocol (and `?token=` over /sse). */
  token?: string;
  /** Asked for a token before each connection, and again `refreshBefore` seconds before
   * the token's `exp` (then sent in a `refresh` op). */
  getToken?: () => Promise<string> | string;
  /** Reconnect backoff bounds, ms: attempt n waits uniformly between minDelay and
   * min(maxDelay, minDelay × 2^n). Defaults 500 and 20000. */
  minDelay?: number;
  maxDelay?: number;
  /** Publishes that may wait for a connection (default 100); more reject `queue_full`. */
  queueLimit?: number;
  /** Handshakes in a row that fail while a plain GET of the same URL is answered (a proxy
   * that blocks WebSocket), before receiving moves to /sse (default 3). */
  sseAfter?: number;
  /** Seconds before `exp` at which getToken is asked again (default 30). */
  refreshBefore?: number;
  /** Implementations to use instead of the globals (Node: `ws`'s WebSocket). */
  WebSocket?: unknown;
  EventSource?: unknown;
  fetch?: typeof fetch;
  /** A source of randomness in [0, 1) for the jitter (tests). */
  random?: () => number;
}

export interface Meta {
  room: string;
  seq: number;
  epoch: string;
  /** Whether the message came in the replay after a resume. */
  replayed: boolean;
}

export interface Gap {
  room: string;
  /** Always false: what is in `from..=to` (or, without them, since the last message
   * delivered) will not be delivered. */
  recovered: false;
  from?: number;
  to?: number;
}

export interface Presence {
  members: number;
  users?: string[];
}

export interface PresenceEvent {
  op: "presence";
  room: string;
  event: "join" | "leave";
  user?: string;
}

export declare class RoomcastError extends Error {
  /** The server's error code (`forbidden`, `unavailable`, …) or the client's own
   * (`queue_full`, `disconnected`, `closed`, `publish_unavailable`, `timeout`). */
  code: string;
  /** For `rpc_error`: the code the backend refused the call with. */
  status?: number;
}

export declare class Room {
  readonly name: string;
  /** The last seq delivered, and its epoch. */
  readonly seq: number | undefined;
  readonly epoch: string | undefined;
  leave(): void;
  presence(): Promise<Presence>;
}

export declare class Roomcast {
  constructor(url: string, options?: Options);
  readonly state: State;
  /** "ws" or "sse" (receiving only) once connected. */
  readonly transport: "ws" | "sse" | null;
  /** Why the client closed for good (a terminal refusal), if it did. */
  readonly closeReason: string | undefined;
  join(room: string, handler: (data: unknown, meta: Meta) => void): Room;
  publish(room: string, data: unknown): Promise<number>;
  /** Calls the backend's `method` (the server's `--hook-rpc`); resolves to its answer. */
  rpc(method: string, data?: unknown, options?: { timeout?: number }): Promise<unknown>;
  /** The user the server says this connection is, once it said so. */
  readonly user: string | undefined;
  /** `reason`: why it is reconnecting, or why it closed for good. */
  on(event: "state", fn: (state: State, info: { reason?: string }) => void): () => void;
  on(event: "gap", fn: (gap: Gap) => void): () => void;
  on(event: "error", fn: (error: RoomcastError) => void): () => void;
  on(event: "presence", fn: (event: PresenceEvent) => void): () => void;
  on(event: "message", fn: (message: Meta & { data: unknown }) => void): () => void;
  /** Who the server says this is: a token's `sub`, or the connect hook's user and `data`. */
  on(event: "authed", fn: (who: { user: string; exp: number; data?: unknown }) => void): () => void;
  close(): void;
}

export declare function backoff(attempt: number, minDelay: number, maxDelay: number, random?: () => number): number;
export declare function drainDelay(minDelay: number, random?: () => number): number;
export declare function isTerminalClose(code: number, reason: string, canRefresh: boolean): boolean;
export declare function tokenExp(token: string): number | undefined;

export default Roomcast;
