// pushsvc browser client: a plain ES module (no build step). Types: pushsvc.d.ts.
//
//   import { PushClient } from "/pushsvc.js";
//   const client = new PushClient("", { token, channels: ["chat:1"], onEvent: (e) => show(e) });
//   await client.publish("chat:1", { text: "hi" });   // queued while offline, sent once
//   const cursor = await client.ready();   // every event stored from now on is delivered once
//
// How it behaves (the Python client in pushsvc.client does the same):
//
// - Every connection cycle starts with POST /v1/negotiate. It checks the token, gives the
//   heartbeat interval, and tells an outage (negotiate fails too) from a proxy that blocks
//   one transport (negotiate works, the transport does not): only the latter demotes the
//   transport. Order: native WebSocket, then native EventSource (SSE), then fetch long-poll.
// - The start position is pinned at the FIRST contact, not by the transport that finally
//   works: negotiate sends {channels, cursor} and the server answers one cursor for exactly
//   those channels (each kept where the sent cursor has it, else at the channel's top). It
//   is adopted only if no frame moved the cursor while the request was out, and saved at
//   once. Each transport attempt, re-probe, reconnect and reloaded page then starts from that
//   cursor or a later one: what is published while a buffering proxy holds an SSE stream for
//   firstEventTimeout is read by the long-poll that follows. (A client that started "from
//   now" per attempt lost it: each attempt's "now" was later.) An older server answers no
//   cursor; then the first `subscribed` / poll cursor pins it.
// - ready(timeoutMs?) resolves with the cursor once it is pinned; from then on every event
//   stored afterwards is delivered exactly once, whatever transport the client ends on. It
//   rejects (PushError) on timeout or when the client closes first.
// - options.cursor starts from that cursor (load-then-subscribe: render what
//   GET /v1/channels/{c}/history answered, subscribe from its `cursor`). It wins over the
//   cursor restored from sessionStorage and resets the per-channel last IDs with it.
// - A transport "works" once its `subscribed` frame arrives. WebSocket: it must open and
//   answer within connectTimeout (a proxy that strips Upgrade gets a plain HTTP answer, the
//   socket closes at once). SSE: EventSource cannot see the server's opening comment, so a
//   stream whose `subscribed` event has not arrived within firstEventTimeout counts as held
//   by a buffering proxy. Long-poll: the first poll is sent with timeout=0 and answers at once.
// - A demoted transport is re-probed while the client runs on a worse one (after
//   reprobeInterval, doubling per failed probe up to reprobeMax); the probe runs beside the
//   working connection, which is closed only once the probe has its `subscribed` frame.
// - Reconnects wait a full-jitter exponential backoff (random(0, min(cap, base * 2^n))); n
//   goes back to 0 once a connection has stayed up for healthyAfter.
// - Every (re)subscription carries the cursor: WebSocket in the subscribe frame, SSE in the
//   last_event_id query parameter (a new EventSource cannot set Last-Event-ID), long-poll in
//   cursor. Per-channel event IDs are monotonic, so an event whose ID is not above the last
//   one delivered on its channel is a duplicate and is dropped. A re-probe that subscribed
//   with a cursor the active connection has moved past since does not move the cursor back
//   with its `subscribed` frame (it replays those events; they are dropped as duplicates).
// - After the server closes a connection, CLOSE_CODES (generated from the one table,
//   pushsvc/protocol/codes.py) says what follows: `resume` reconnects with the cursor,
//   `reauth` reconnects through a negotiate that stops the client unless options.token is a
//   function, `stop` closes the client. A close without a code (1005, 1006: the network
//   dropped the connection) is resumed. A code in RECONNECT_AT_ONCE (1012: the instance
//   drains, another one takes over) is resumed without a backoff delay.
// - Watchdog: nothing (not even a heartbeat) for heartbeatFactor x heartbeat_interval + 0.5 s
//   closes the connection and reconnects. A long-poll request is aborted the same margin
//   after its own timeout.
// - Outbox: publish() queues (bounded), each message with a client id that is the WebSocket
//   publish `id` and the HTTP publish `idempotency_key`, so a resend after a lost ack is
//   stored once. Flushed in order whenever a connection is up; resolved with the event ID.
// - The cursor, the last ID per channel and the outbox live in sessionStorage: a reload of
//   the page resumes where it was (also from a cursor pinned before any event or transport)
//   and still sends what was queued.
// - Presence (options.presence): every subscription asks for it (WebSocket `presence: true`,
//   SSE and long-poll `presence=1`), each with a presence_id made once per client instance:
//   one presence entry for the client across stateless polls and transport switches;
//   long-poll also echoes the previous answer's presence_version. A members view per channel is kept from the
//   frames alone (PresenceView): a `presence` snapshot replaces it and is compared with the
//   old view to report who appeared and disappeared; `join` / `leave` carry the member's
//   connection count after the change, which the view takes as is (never added up), so a
//   diff that a snapshot already holds changes nothing: no member twice, no ghost. Only the
//   active connection's frames count; the view survives reconnects and transport switches
//   until the new connection's snapshot replaces it. EventSource cannot see why a stream
//   was refused, so a failed SSE attempt asks GET /v1/channels/{c}/presence/stats whether
//   the token lacks the presence grant (403 closes the client with that reason).

const ALL_TRANSPORTS = ["websocket", "sse", "long-polling"];

// <generated: close codes; do not edit; python -m pushsvc._docs>
// What the client does after a close code; a code not listed (1005, 1006: the
// connection dropped) is resumed. resume: reconnect and resume from the cursor;
// reauth: reconnect through a new negotiate, which stops the client unless
// options.token is a function (a fresh token); stop: close the client.
export const CLOSE_CODES = Object.freeze({
  1000: Object.freeze({ name: "normal", policy: "resume" }),
  1001: Object.freeze({ name: "going-away", policy: "resume" }),
  1009: Object.freeze({ name: "too-big", policy: "resume" }),
  1011: Object.freeze({ name: "internal", policy: "resume" }),
  1012: Object.freeze({ name: "service-restart", policy: "resume" }),
  1013: Object.freeze({ name: "try-later", policy: "resume" }),
  4000: Object.freeze({ name: "idle", policy: "resume" }),
  4008: Object.freeze({ name: "slow-consumer", policy: "resume" }),
  4400: Object.freeze({ name: "bad-request", policy: "stop" }),
  4401: Object.freeze({ name: "unauthorized", policy: "reauth" }),
  4402: Object.freeze({ name: "token-expired", policy: "reauth" }),
  4403: Object.freeze({ name: "forbidden", policy: "stop" }),
  4404: Object.freeze({ name: "not-found", policy: "stop" }),
  4429: Object.freeze({ name: "rate-limited", policy: "resume" }),
});
// Resumed without a backoff delay: a drain (another instance takes over).
export const RECONNECT_AT_ONCE = Object.freeze([1012]);
// </generated: close codes>

// The policy (CLOSE_CODES) for a close code; a code not listed (1005, 1006: no close frame,
// the network dropped the connection) is resumed.
function closePolicy(code) {
  return CLOSE_CODES[code]?.policy ?? "resume";
}

// A connection's end after the server closed it with `code`: `stop` is fatal (the client
// closes); `resume` and `reauth` reconnect, and every connection cycle starts with a
// negotiate, which refuses a stale token: fatal then, unless options.token is a function.
function closedWith(message, code) {
  const atOnce = RECONNECT_AT_ONCE.includes(code);
  return { message, code, fatal: closePolicy(code) === "stop", atOnce };
}

const DEFAULTS = {
  transports: ALL_TRANSPORTS,
  outboxLimit: 100,
  backoffBase: 500,
  backoffCap: 30_000,
  healthyAfter: 30_000,
  connectTimeout: 5_000,
  firstEventTimeout: 3_000,
  reprobeInterval: 30_000,
  reprobeMax: 300_000,
  pollTimeout: 20,
  heartbeatFactor: 2.5,
};

const STORAGE_VERSION = 1;

export class PushError extends Error {
  constructor(message, code, extra = {}) {
    super(message);
    this.name = "PushError";
    this.code = code;
    this.status = extra.status;
    this.fatal = Boolean(extra.fatal);
  }
}

const now = () => Date.now();

function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am === bm ? as - bs : am - bm;
}

function uuid() {
  if (globalThis.crypto?.randomUUID) {
    try {
      return globalThis.crypto.randomUUID(); // secure contexts only
    } catch {
      /* fall through */
    }
  }
  const b = globalThis.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function fromBase64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function toBase64(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

function payload(frame) {
  if (frame.encoding === "base64") return fromBase64(frame.data);
  return frame.data;
}

// --- presence --------------------------------------------------------------------------
// One channel's members as one client sees them, kept from the server's frames alone. Pure
// (no I/O, no timers): each method answers what it changed, the client turns that into
// callbacks. Members are keyed by subject, so none is there twice. A frame's `connections`
// is the member's count AFTER the change and is taken as is, never added up: a diff that a
// snapshot already holds (they may cross on the wire) changes nothing, and a `leave` with
// 0 removes the member whatever came before, so no ghost stays. A truncated snapshot keeps
// counts only; diffs then move the counts as the wire spec says.

const count = (n) => (Number.isFinite(Number(n)) ? Math.max(0, Math.trunc(Number(n))) : 0);
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const bySubject = (a, b) => (a.subject < b.subject ? -1 : a.subject > b.subject ? 1 : 0);

function member(subject, info, connections) {
  return { subject: String(subject), info: isObject(info) ? info : {}, connections };
}

export class PresenceView {
  constructor() {
    this.known = false; // a snapshot has arrived
    this.truncated = false;
    this._members = new Map(); // subject -> {subject, info, connections}
    this._memberCount = 0; // kept only while truncated
    this._connectionCount = 0;
  }

  members() {
    return [...this._members.values()].map((m) => ({ ...m, info: { ...m.info } })).sort(bySubject);
  }

  counts() {
    if (this.truncated) {
      return { members: this._memberCount, connections: this._connectionCount, truncated: true };
    }
    let connections = 0;
    for (const m of this._members.values()) connections += m.connections;
    return { members: this._members.size, connections, truncated: false };
  }

  /** A `presence` frame: replaces the view. Per-member changes are reported between two
   *  full views only (a truncated one does not say who is there). */
  snapshot(frame) {
    const old = this._members;
    const full = !this.truncated;
    this.known = true;
    this.truncated = Boolean(frame.truncated);
    this._members = new Map();
    if (this.truncated) {
      this._memberCount = count(frame.member_count);
      this._connectionCount = count(frame.connection_count);
      return { joined: [], left: [] };
    }
    for (const m of Array.isArray(frame.members) ? frame.members : []) {
      if (m && m.subject != null) {
        this._members.set(String(m.subject), member(m.subject, m.info, Math.max(1, count(m.connections))));
      }
    }
    if (!full) return { joined: [], left: [] };
    const joined = [...this._members.values()].filter((m) => !old.has(m.subject));
    const left = [...old.values()]
      .filter((m) => !this._members.has(m.subject))
      .map((m) => ({ ...m, connections: 0 }));
    return { joined: joined.map((m) => ({ ...m })).sort(bySubject), left: left.sort(bySubject) };
  }

  /** A `join` frame: `connections` 1 is a member appearing, 2+ another connection of it. */
  join(frame) {
    const connections = Math.max(1, count(frame.connections));
    const m = member(frame.subject, frame.info, connections);
    if (this.truncated) {
      if (connections === 1) this._memberCount++;
      this._connectionCount++;
      return { joined: connections === 1 ? [m] : [], left: [] };
    }
    const held = this._members.has(m.subject);
    this._members.set(m.subject, m); // its info is that of its latest connection
    return { joined: held ? [] : [{ ...m }], left: [] };
  }

  /** A `leave` frame: `connections` 0 is the member gone, 1+ a connection of it gone. */
  leave(frame) {
    const connections = count(frame.connections);
    const subject = String(frame.subject);
    if (this.truncated) {
      if (connections === 0) this._memberCount = Math.max(0, this._memberCount - 1);
      this._connectionCount = Math.max(0, this._connectionCount - 1);
      return { joined: [], left: connections === 0 ? [member(subject, frame.info, 0)] : [] };
    }
    const held = this._members.get(subject);
    if (connections === 0) {
      if (!held) return { joined: [], left: [] };
      this._members.delete(subject);
      return { joined: [], left: [{ ...held, connections: 0 }] };
    }
    // Still connected elsewhere. Absent here (a join this view never saw): the server says
    // it is a member, with that many connections.
    this._members.set(subject, member(subject, held ? held.info : frame.info, connections));
    return { joined: held ? [] : [member(subject, frame.info, connections)], left: [] };
  }

  /** What onPresence compares: the view a page could render. */
  _fingerprint() {
    return JSON.stringify([this.known, this.counts(), this.members()]);
  }
}

// --- connections ---------------------------------------------------------------------
// One object per attempt on one transport. `open(cursor)` resolves once the `subscribed`
// frame arrived; frames are held until `attach(sink)`, so a probe that becomes the active
// connection loses nothing received before the switch. `done` resolves (never rejects)
// with {message, code?, status?, fatal?} when the connection is over.

class Connection {
  constructor(client, transport) {
    this.client = client;
    this.transport = transport;
    this.sink = null;
    this.pending = [];
    this.closed = false;
    this.ready = false;
    this.lastFrameAt = now();
    this.openedAt = 0;
    this.timers = [];
    this.done = new Promise((resolve) => (this._done = resolve));
  }

  open(cursor) {
    this.startCursor = cursor ?? null;
    return new Promise((resolve, reject) => {
      this._resolveOpen = resolve;
      this._rejectOpen = reject;
      this._start(cursor);
    });
  }

  attach(sink) {
    this.sink = sink;
    const held = this.pending;
    this.pending = [];
    for (const f of held) {
      if (this.closed || this.sink !== sink) break;
      sink(this, f);
    }
  }

  close(message = "closed by the client") {
    this._end({ message });
  }

  _after(ms, fn) {
    this.timers.push(setTimeout(fn, ms));
  }

  _watchdog() {
    const limit = this.client._silenceLimit();
    const every = Math.max(100, Math.min(1_000, limit / 8));
    this.timers.push(
      setInterval(() => {
        if (this.ready && now() - this.lastFrameAt > limit) {
          this._end({ message: `no frame for ${Math.round(limit)} ms (heartbeat timeout)` });
        }
      }, every),
    );
  }

  _frame(f) {
    if (this.closed) return;
    this.lastFrameAt = now();
    if (f.type === "subscribed" && !this.ready) {
      this.ready = true;
      this.openedAt = now();
      this._resolveOpen();
    }
    if (f.type === "heartbeat") return;
    if (this.sink) this.sink(this, f);
    else this.pending.push(f);
  }

  _end(reason) {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this._teardown();
    if (!this.ready && this._rejectOpen) {
      this._rejectOpen(
        new PushError(reason.message, "transport-failed", {
          status: reason.status,
          fatal: reason.fatal,
        }),
      );
    }
    this._done(reason);
  }

  _teardown() {}
}

class WebSocketConnection extends Connection {
  _start(cursor) {
    const c = this.client;
    let ws;
    try {
      // batch=1: the server may put several frames into one text message (see below)
      ws = new WebSocket(c._endpoint("/v1/ws", { token: c._tokenValue, batch: 1 }, true));
    } catch (e) {
      this._end({ message: `websocket could not start: ${e.message}` });
      return;
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const subscribe = { type: "subscribe", channels: c.channels, cursor: cursor || null };
      if (c._presence) {
        // one presence entry for this client on every transport: a move up from
        // long-polling takes over the polls' entry instead of adding one
        subscribe.presence = true;
        subscribe.presence_id = c._presenceId;
      }
      ws.send(JSON.stringify(subscribe));
    };
    ws.onmessage = (m) => {
      let frames;
      try {
        frames = parseWebSocketMessage(m.data);
      } catch {
        this._end({ message: "websocket frame could not be parsed" });
        return;
      }
      for (const frame of frames) {
        if (this.closed) return;
        if (frame.type === "error" && frame.op === "subscribe") {
          const message = `subscribe refused (${frame.status}): ${frame.detail}`;
          this._end({ message, status: frame.status, fatal: true });
          return;
        }
        this._frame(frame);
      }
    };
    ws.onclose = (e) => {
      const opened = this.ready ? "" : " before subscribing";
      this._end(
        closedWith(`websocket closed${opened} (${e.code}${e.reason ? ` ${e.reason}` : ""})`, e.code),
      );
    };
    this._after(c.options.connectTimeout, () => {
      if (!this.ready) this._end({ message: `websocket not subscribed within ${c.options.connectTimeout} ms` });
    });
    this._watchdog();
  }

  send(obj) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  _teardown() {
    const ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {
      /* already closed */
    }
  }
}

// The frames of one WebSocket message, in order. With batch=1 a text message holds one or
// more JSON frames separated by "\n" (JSON text never contains a raw newline); a binary
// message is one frame (a JSON header, "\n", the raw payload) and is never batched.
function parseWebSocketMessage(data) {
  if (typeof data === "string") {
    return data
      .split("\n")
      .filter((part) => part !== "")
      .map((part) => JSON.parse(part));
  }
  const bytes = new Uint8Array(data);
  const nl = bytes.indexOf(10);
  const head = JSON.parse(new TextDecoder().decode(bytes.subarray(0, nl)));
  head.data = bytes.slice(nl + 1);
  return [head];
}

class SSEConnection extends Connection {
  _start(cursor) {
    const c = this.client;
    const query = { channel: c.channels, token: c._tokenValue };
    if (cursor) query.last_event_id = cursor;
    if (c._presence) {
      query.presence = "1";
      query.presence_id = c._presenceId;
    }
    const es = (this.es = new EventSource(c._endpoint("/v1/sse", query)));
    const on = (type, fn) =>
      es.addEventListener(type, (e) => {
        let body;
        try {
          body = JSON.parse(e.data);
        } catch {
          this._end({ message: `unparsable SSE ${type} event` });
          return;
        }
        fn(body, e.lastEventId);
      });
    on("subscribed", (b, id) => this._frame({ type: "subscribed", channels: b.channels, cursor: id }));
    on("message", (b, id) => this._frame({ type: "event", ...b, cursor: id }));
    on("gap", (b, id) => this._frame({ type: "gap", ...b, cursor: id }));
    on("heartbeat", () => this._frame({ type: "heartbeat" }));
    // no `id:` on presence events: they do not move the cursor
    for (const type of ["presence", "join", "leave"]) on(type, (b) => this._frame({ ...b, type }));
    on("close", (b) => this._end(closedWith(`server closed the stream (${b.code} ${b.reason})`, b.code)));
    // EventSource would reconnect by itself; the client does it (with backoff and cursor).
    es.onerror = () => this._end({ message: this.ready ? "SSE stream lost" : "SSE stream failed" });
    const window = c.options.firstEventTimeout;
    this._after(window, () => {
      if (!this.ready) this._end({ message: `no SSE event within ${window} ms (buffering proxy?)` });
    });
    this._watchdog();
  }

  _teardown() {
    this.es?.close();
  }
}

class PollConnection extends Connection {
  _start(cursor) {
    this.cursor = cursor;
    this._loop();
  }

  async _loop() {
    const c = this.client;
    let first = true;
    while (!this.closed) {
      const timeout = first ? 0 : c.options.pollTimeout;
      const query = { channel: c.channels, timeout: String(timeout) };
      if (this.cursor) query.cursor = this.cursor;
      if (c._presence) {
        query.presence = "1";
        query.presence_id = c._presenceId;
        // Per connection: the first poll of each sends none, so it answers a fresh snapshot.
        if (this.presenceVersion != null) query.presence_version = this.presenceVersion;
      }
      const abort = (this.abort = new AbortController());
      const limit = first ? c.options.connectTimeout : timeout * 1000 + c._silenceLimit();
      const timer = setTimeout(() => abort.abort(), limit);
      let body;
      try {
        const r = await fetch(c._endpoint("/v1/poll", query), {
          headers: { Authorization: `Bearer ${c._tokenValue}` },
          signal: abort.signal,
          cache: "no-store",
        });
        if (!r.ok) {
          const fatal = r.status === 401 || r.status === 403;
          const detail = fatal ? await problemDetail(r) : "";
          this._end({ message: `poll answered HTTP ${r.status}${detail}`, status: r.status, fatal });
          return;
        }
        body = await r.json();
      } catch (e) {
        const why = abort.signal.aborted ? `no answer within ${limit} ms` : e.message;
        this._end({ message: `poll failed: ${why}` });
        return;
      } finally {
        clearTimeout(timer);
      }
      if (this.closed) return;
      if (first) this._frame({ type: "subscribed", channels: c.channels });
      first = false;
      for (const item of body.events) this._frame(item);
      if (body.presence_version != null) this.presenceVersion = String(body.presence_version);
      this.cursor = body.cursor;
      this._frame({ type: "cursor", cursor: body.cursor });
    }
  }

  _teardown() {
    this.abort?.abort();
  }
}

async function problemDetail(r) {
  try {
    const problem = await r.json();
    return problem.detail ? `: ${problem.detail}` : "";
  } catch {
    return ""; // not JSON
  }
}

const CONNECTIONS = {
  websocket: WebSocketConnection,
  sse: SSEConnection,
  "long-polling": PollConnection,
};

// --- the client ------------------------------------------------------------------------

export class PushClient {
  constructor(url, options) {
    if (!options || !options.token) throw new TypeError("PushClient needs options.token");
    if (!Array.isArray(options.channels) || options.channels.length === 0) {
      throw new TypeError("PushClient needs options.channels (a non-empty array)");
    }
    this.options = { ...DEFAULTS, ...options };
    const base = new URL(url || "/", globalThis.location?.href);
    this.baseUrl = base.href.replace(/\/+$/, "");
    this.channels = [...options.channels];
    this.transports = this.options.transports.filter((t) => ALL_TRANSPORTS.includes(t));
    if (this.transports.length === 0) throw new TypeError(`transports: any of ${ALL_TRANSPORTS}`);
    if (options.cursor != null && (typeof options.cursor !== "string" || !options.cursor)) {
      throw new TypeError("options.cursor must be a non-empty string (a pushsvc cursor)");
    }
    this.state = "connecting";
    this.transport = null;
    this.heartbeatInterval = 15;
    this.stats = { duplicatesDropped: 0, reconnects: 0, gaps: 0, switches: 0 };
    this._storage = this._pickStorage();
    this._key =
      options.storageKey ?? `pushsvc:${this.baseUrl}:${[...this.channels].sort().join(",")}`;
    this._cursor = null;
    this._last = {};
    this._outbox = [];
    this._waiters = new Map();
    this._blocked = new Map();
    this._active = null;
    this._closed = false;
    this._pinned = false; // the start position of every channel is fixed (see ready())
    this._readyWaiters = new Set();
    this._tokenValue = typeof options.token === "string" ? options.token : null;
    this._presence = Boolean(options.presence);
    // Long-poll's presence entry: one per client instance, kept across its polls (a reload
    // is a new instance, whose old entry expires on the server).
    this._presenceId = this._presence ? uuid().replace(/[^A-Za-z0-9_-]/g, "") : null;
    this._views = new Map(); // channel -> PresenceView
    this._restore();
    if (options.cursor) {
      // Explicit start (load-then-subscribe) wins over the stored one. The stored last IDs
      // belong to the stored cursor: kept, they would drop events after this one as dups.
      this._cursor = options.cursor;
      this._last = {};
      this._save();
    }
    this._onOnline = () => this._wake?.();
    globalThis.addEventListener?.("online", this._onOnline);
    this._run();
  }

  get cursor() {
    return this._cursor;
  }

  get outboxSize() {
    return this._outbox.length;
  }

  members(channel) {
    return this._views.get(channel)?.members() ?? [];
  }

  presenceCounts(channel) {
    return this._views.get(channel)?.counts() ?? { members: 0, connections: 0, truncated: false };
  }

  ready(timeoutMs) {
    if (this._closed) return Promise.reject(new PushError("the client is closed", "closed"));
    if (this._pinned) return Promise.resolve(this._cursor);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      if (timeoutMs != null) {
        waiter.timer = setTimeout(() => {
          this._readyWaiters.delete(waiter);
          reject(new PushError(`start position not pinned within ${timeoutMs} ms`, "timeout"));
        }, timeoutMs);
      }
      this._readyWaiters.add(waiter);
    });
  }

  publish(channel, data, options = {}) {
    if (this._closed) return Promise.reject(new PushError("the client is closed", "closed"));
    if (this._outbox.length >= this.options.outboxLimit) {
      return Promise.reject(
        new PushError(`outbox full: ${this._outbox.length} messages waiting`, "outbox-full"),
      );
    }
    const entry = { id: options.id || uuid(), channel };
    if (options.event) entry.event = options.event;
    if (data instanceof ArrayBuffer) data = new Uint8Array(data);
    if (data instanceof Uint8Array) entry.data_b64 = toBase64(data);
    else entry.data = data === undefined ? null : data;
    const promise = new Promise((resolve, reject) => this._waiters.set(entry.id, { resolve, reject }));
    this._outbox.push(entry);
    this._save();
    this._flush();
    return promise;
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    clearTimeout(this._reprobeTimer);
    this._active?.close();
    this._probe?.close();
    this._wake?.();
    for (const w of this._waiters.values()) {
      w.reject(new PushError("the client was closed; the message stays queued", "closed"));
    }
    this._waiters.clear();
    this._unready(new PushError("closed before the start position was pinned", "closed"));
    this._setState("closed");
  }

  // --- connection cycle ---------------------------------------------------------------

  async _run() {
    let attempt = 0;
    while (!this._closed) {
      this._setState("connecting");
      const conn = await this._connect();
      if (this._closed) {
        conn?.close();
        return;
      }
      if (conn === null) {
        await this._backoff(attempt++);
        continue;
      }
      const since = now();
      const lost = new Promise((resolve) => (this._lost = resolve));
      this._activate(conn);
      const reason = await lost;
      this._active = null;
      this.transport = null;
      clearTimeout(this._reprobeTimer);
      if (this._closed) return;
      this.stats.reconnects++;
      if (reason.fatal && !(await this._recoverable(reason))) return;
      if (now() - since >= this.options.healthyAfter) attempt = 0;
      this._log("lost", conn.transport, reason.message);
      // a drain: the instance leaves and another one is up; a refused reconnect backs off
      if (reason.atOnce) attempt = 0;
      await this._backoff(attempt++, reason.message, reason.atOnce);
    }
  }

  async _connect() {
    try {
      await this._negotiate();
    } catch (e) {
      this._log("negotiate-failed", null, e.message);
      if (e.fatal) await this._recoverable(e); // closes the client when it is not
      return null;
    }
    const candidates = this._candidates();
    for (const transport of candidates) {
      if (this._closed) return null;
      const conn = new CONNECTIONS[transport](this, transport);
      this._log("try", transport);
      try {
        await conn.open(this._cursor);
        return conn;
      } catch (e) {
        this._log("transport-failed", transport, e.message);
        if (e.fatal) {
          await this._recoverable(e);
          return null;
        }
        // An outage is not the transport's fault: only a reachable server demotes it.
        if (this._closed || !(await this._reachable())) return null;
        const refused = transport === "sse" && (await this._presenceRefusal());
        if (refused) {
          await this._recoverable(refused);
          return null;
        }
        if (transport !== candidates[candidates.length - 1]) this._block(transport, e.message);
      }
    }
    return null;
  }

  _candidates() {
    const t = now();
    const offered = this.transports.filter((tr) => !this._offered || this._offered.has(tr));
    const open = offered.filter((tr) => !(this._blocked.get(tr)?.retryAt > t));
    return open.length ? open : offered.length ? offered : this.transports;
  }

  _activate(conn) {
    this._active = conn;
    this.transport = conn.transport;
    conn.done.then((reason) => {
      if (this._active === conn) this._lost(reason);
    });
    conn.attach((c, f) => this._onFrame(c, f));
    const best = conn.transport === this.transports[0];
    this._setState(best ? "connected" : "degraded");
    this._scheduleReprobe();
    this._flush();
  }

  _block(transport, message) {
    const entry = this._blocked.get(transport) ?? { failures: 0 };
    entry.failures++;
    const wait = Math.min(
      this.options.reprobeMax,
      this.options.reprobeInterval * 2 ** (entry.failures - 1),
    );
    entry.retryAt = now() + wait;
    entry.reason = message;
    this._blocked.set(transport, entry);
    this._log("blocked", transport, `${message}; re-probe in ${wait} ms`);
  }

  _scheduleReprobe() {
    clearTimeout(this._reprobeTimer);
    const active = this._active;
    if (!active) return;
    const better = this.transports.slice(0, this.transports.indexOf(active.transport));
    if (better.length === 0) return;
    const at = Math.min(...better.map((t) => this._blocked.get(t)?.retryAt ?? 0));
    this._reprobeTimer = setTimeout(() => this._reprobe(active), Math.max(0, at - now()));
  }

  async _reprobe(active) {
    const better = this.transports.slice(0, this.transports.indexOf(active.transport));
    for (const transport of better) {
      if (this._active !== active || this._closed) return;
      if (this._blocked.get(transport)?.retryAt > now()) continue;
      const probe = (this._probe = new CONNECTIONS[transport](this, transport));
      this._log("reprobe", transport);
      try {
        await probe.open(this._cursor);
      } catch (e) {
        this._block(transport, e.message);
        continue;
      } finally {
        this._probe = null;
      }
      if (this._active !== active || this._closed) {
        probe.close();
        return;
      }
      this._blocked.delete(transport);
      this.stats.switches++;
      this._log("switch", transport, `from ${active.transport}`);
      // Swap before closing the old one: its `done` must not count as a lost connection.
      this._active = null;
      active.close("moved to a better transport");
      this._activate(probe);
      return;
    }
    if (this._active === active) this._scheduleReprobe();
  }

  async _negotiate() {
    const token = await this._token();
    const sent = this._cursor;
    const r = await this._fetch("/v1/negotiate", {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ channels: this.channels, cursor: sent }),
    });
    if (!r.ok) throw await this._negotiateRefused(r, sent);
    const info = await r.json();
    this.heartbeatInterval = Number(info.heartbeat_interval) || this.heartbeatInterval;
    this._offered = new Set(info.transports || ALL_TRANSPORTS);
    // Adopt the server's start position unless a frame moved the cursor meanwhile (then it
    // is already past the answer for those channels; the next negotiate fills the rest).
    if (typeof info.cursor === "string" && info.cursor && this._cursor === sent) {
      this._setCursor(info.cursor);
      this._pin("negotiate");
    }
    return info;
  }

  async _negotiateRefused(r, sent) {
    let problem = {};
    try {
      problem = await r.json();
    } catch {
      /* not JSON */
    }
    const detail = problem.detail ? `: ${problem.detail}` : "";
    const message = `negotiate answered HTTP ${r.status}${detail}`;
    const badCursor = r.status === 400 && String(problem.type).endsWith("/bad-cursor");
    if (badCursor && sent !== this.options.cursor) {
      // A stored cursor the server cannot read (tampered storage, a new cursor version):
      // drop it, the next negotiate pins a fresh start. An explicit cursor stays fatal.
      this._log("cursor-refused", null, message);
      if (this._cursor === sent) {
        this._setCursor(null);
        this._pinned = false;
      }
      return new PushError(message, "negotiate", { status: r.status });
    }
    // 400 (a bad channel name or cursor), 401, 403: asking again does not help.
    const fatal = r.status === 400 || r.status === 401 || r.status === 403;
    return new PushError(message, "negotiate", { status: r.status, fatal });
  }

  // EventSource cannot see the status of a refused stream: without the presence grant SSE
  // would look blocked by a proxy. The presence stats need the same grant: a 401/403 there
  // is the reason (null: granted, not asked for, or no answer).
  async _presenceRefusal() {
    if (!this._presence || this._closed) return null;
    for (const channel of this.channels) {
      let r;
      try {
        r = await this._fetch(`/v1/channels/${encodeURIComponent(channel)}/presence/stats`, {
          headers: { Authorization: `Bearer ${this._tokenValue}` },
        });
      } catch {
        return null;
      }
      if (r.status === 401 || r.status === 403) {
        const detail = await problemDetail(r);
        const message = `presence refused on ${channel}: HTTP ${r.status}${detail}`;
        return new PushError(message, "refused", { status: r.status, fatal: true });
      }
    }
    return null;
  }

  async _reachable() {
    try {
      await this._negotiate();
      return true;
    } catch (e) {
      return Boolean(e.status && e.status < 500);
    }
  }

  async _recoverable(reason) {
    // A refused token is final unless the application gives fresh tokens (a function).
    if (typeof this.options.token === "function" && reason.status === 401) return true;
    this._log("fatal", null, reason.message);
    this._closed = true;
    for (const w of this._waiters.values()) w.reject(new PushError(reason.message, "refused"));
    this._waiters.clear();
    this._unready(new PushError(reason.message, "refused", { status: reason.status, fatal: true }));
    this._setState("closed", { error: reason.message });
    return false;
  }

  async _token() {
    const t = this.options.token;
    this._tokenValue = typeof t === "function" ? await t() : t;
    return this._tokenValue;
  }

  _silenceLimit() {
    return this.heartbeatInterval * 1000 * this.options.heartbeatFactor + 500;
  }

  async _backoff(attempt, error, atOnce = false) {
    const ceiling = Math.min(this.options.backoffCap, this.options.backoffBase * 2 ** attempt);
    const delay = atOnce ? 0 : Math.round(Math.random() * ceiling);
    this._setState("disconnected", { delay, attempt, error });
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, delay);
      this._wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this._wake = null;
  }

  // --- frames -------------------------------------------------------------------------

  _onFrame(conn, f) {
    if (conn !== this._active) return;
    switch (f.type) {
      case "subscribed":
        // A probe's `subscribed` cursor is the one it opened with: keep ours when frames of
        // the connection it replaces have moved it since (never back to an older start).
        if (f.cursor && (this._cursor === null || this._cursor === conn.startCursor)) {
          this._setCursor(f.cursor);
        }
        this._pin("subscribed"); // a server that answers no cursor to negotiate
        break;
      case "cursor":
        this._setCursor(f.cursor);
        this._pin("poll");
        break;
      case "event": {
        const last = this._last[f.channel];
        if (last !== undefined && compareIds(f.id, last) <= 0) {
          this.stats.duplicatesDropped++;
          break;
        }
        this._last[f.channel] = f.id;
        if (f.cursor) this._cursor = f.cursor;
        this._save();
        const event = { channel: f.channel, event: f.event, id: f.id, data: payload(f) };
        if (f.encoding) event.binary = true;
        this._call("onEvent", event, conn.transport);
        break;
      }
      case "gap": {
        const last = this._last[f.channel];
        if (last === undefined || compareIds(f.until, last) > 0) this._last[f.channel] = f.until;
        if (f.cursor) this._cursor = f.cursor;
        this._save();
        this.stats.gaps++;
        this._call("onGap", { channel: f.channel, after: f.after, until: f.until });
        break;
      }
      case "ack":
        this._acked(f.id, f.channel, f.event_id);
        break;
      case "error":
        if (f.op === "publish") this._publishFailed(f.id, f.status, f.detail);
        break;
      case "presence":
      case "join":
      case "leave":
        this._presenceFrame(f);
        break;
      default:
        break; // pong, refreshed, unsubscribed, token-expired: nothing to do here
    }
  }

  _presenceFrame(f) {
    if (!this._presence || !this.channels.includes(f.channel)) return;
    let view = this._views.get(f.channel);
    if (!view) this._views.set(f.channel, (view = new PresenceView()));
    const before = view._fingerprint();
    const change =
      f.type === "presence" ? view.snapshot(f) : f.type === "join" ? view.join(f) : view.leave(f);
    for (const m of change.left) this._call("onLeave", m, f.channel);
    for (const m of change.joined) this._call("onJoin", m, f.channel);
    if (view._fingerprint() !== before) this._call("onPresence", f.channel, view.members());
  }

  _setCursor(cursor) {
    this._cursor = cursor;
    this._save();
  }

  _pin(how) {
    if (this._pinned || !this._cursor || this._closed) return;
    this._pinned = true;
    this._log("pinned", this._active?.transport ?? null, how);
    for (const w of this._readyWaiters) {
      clearTimeout(w.timer);
      w.resolve(this._cursor);
    }
    this._readyWaiters.clear();
  }

  _unready(error) {
    for (const w of this._readyWaiters) {
      clearTimeout(w.timer);
      w.reject(error);
    }
    this._readyWaiters.clear();
  }

  // --- outbox -------------------------------------------------------------------------

  async _flush() {
    const conn = this._active;
    if (!conn || this._flushing || this._outbox.length === 0) return;
    if (conn.transport === "websocket") {
      for (const entry of this._outbox) {
        if (entry._sentOn === conn) continue;
        if (!conn.send({ type: "publish", ...this._wire(entry) })) return;
        entry._sentOn = conn;
      }
      return;
    }
    this._flushing = true;
    try {
      while (this._outbox.length && this._active === conn && !this._closed) {
        const entry = this._outbox[0];
        let r;
        try {
          const { id, ...message } = this._wire(entry);
          r = await this._fetch("/v1/publish", {
            method: "POST",
            headers: {
              Authorization: `Bearer ${this._tokenValue}`,
              "Content-Type": "application/json",
            },
            body: JSON.stringify({ ...message, idempotency_key: id }),
          });
        } catch (e) {
          this._log("publish-retry", conn.transport, e.message);
          this._retryFlushLater();
          return;
        }
        if (r.ok) {
          const body = await r.json();
          this._acked(entry.id, body.channel, body.id);
        } else if (r.status === 429 || r.status === 408 || r.status >= 500) {
          this._retryFlushLater();
          return;
        } else {
          let detail = `HTTP ${r.status}`;
          try {
            detail = (await r.json()).detail || detail;
          } catch {
            /* not JSON */
          }
          this._publishFailed(entry.id, r.status, detail);
        }
      }
    } finally {
      this._flushing = false;
    }
  }

  _retryFlushLater() {
    clearTimeout(this._flushTimer);
    this._flushTimer = setTimeout(() => this._flush(), 1_000 + Math.random() * 1_000);
  }

  _wire(entry) {
    const { _sentOn, ...message } = entry;
    return message;
  }

  _acked(id, channel, eventId) {
    const index = this._outbox.findIndex((e) => e.id === id);
    if (index < 0) return;
    this._outbox.splice(index, 1);
    this._save();
    this._waiters.get(id)?.resolve(eventId);
    this._waiters.delete(id);
    this._call("onPublished", { id, channel, eventId });
  }

  _publishFailed(id, status, detail) {
    if (status === 429 || status >= 500) {
      const entry = this._outbox.find((e) => e.id === id);
      if (entry) entry._sentOn = null;
      this._retryFlushLater();
      return;
    }
    const index = this._outbox.findIndex((e) => e.id === id);
    if (index < 0) return;
    const [entry] = this._outbox.splice(index, 1);
    this._save();
    const error = new PushError(`publish refused: ${detail}`, "refused", { status });
    this._waiters.get(id)?.reject(error);
    this._waiters.delete(id);
    this._call("onPublished", { id, channel: entry.channel, error });
  }

  // --- persistence, helpers ------------------------------------------------------------

  _pickStorage() {
    if (this.options.storageKey === null) return null;
    if (this.options.storage) return this.options.storage;
    try {
      return globalThis.sessionStorage ?? null;
    } catch {
      return null; // storage disabled by the browser
    }
  }

  _restore() {
    if (!this._storage) return;
    try {
      const saved = JSON.parse(this._storage.getItem(this._key) || "null");
      if (!saved || saved.v !== STORAGE_VERSION) return;
      this._cursor = saved.cursor ?? null;
      this._last = saved.last ?? {};
      this._outbox = Array.isArray(saved.outbox) ? saved.outbox : [];
    } catch {
      /* unreadable: start afresh */
    }
  }

  _save() {
    if (!this._storage) return;
    const outbox = this._outbox.map((e) => this._wire(e));
    const state = { v: STORAGE_VERSION, cursor: this._cursor, last: this._last, outbox };
    try {
      this._storage.setItem(this._key, JSON.stringify(state));
    } catch {
      /* quota or disabled storage: keep running in memory */
    }
  }

  _endpoint(path, query = {}, websocket = false) {
    const u = new URL(this.baseUrl + path);
    if (websocket) u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    for (const [k, v] of Object.entries(query)) {
      for (const item of Array.isArray(v) ? v : [v]) u.searchParams.append(k, item);
    }
    return u.href;
  }

  async _fetch(path, init) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.options.connectTimeout);
    try {
      return await fetch(this._endpoint(path), { ...init, signal: abort.signal, cache: "no-store" });
    } catch (e) {
      throw new PushError(
        abort.signal.aborted ? `${path}: no answer within ${this.options.connectTimeout} ms` : `${path}: ${e.message}`,
        "network",
      );
    } finally {
      clearTimeout(timer);
    }
  }

  _setState(state, extra = {}) {
    const transport = state === "connected" || state === "degraded" ? this.transport : undefined;
    this.state = state;
    this._log("state", transport ?? null, state);
    this._call("onState", { state, transport, ...extra });
  }

  _log(kind, transport, detail) {
    this._call("onLog", { at: now(), kind, transport: transport ?? undefined, detail });
  }

  _call(name, ...args) {
    const fn = this.options[name];
    if (!fn) return;
    try {
      fn(...args);
    } catch (e) {
      // an application callback must not break the client
      setTimeout(() => {
        throw e;
      });
    }
  }
}

export default PushClient;
