// Types for pushsvc.js, the pushsvc browser client (served at GET /pushsvc.js and
// GET /pushsvc.d.ts). Plain ES module, no build step:
//
//   import { PushClient } from "https://push.example.com/pushsvc.js";
//   const client = new PushClient("https://push.example.com", {
//     token: () => fetch("/my-app/push-token").then((r) => r.text()),
//     channels: ["chat:1", "orders"],
//     onEvent: (e) => console.log(e.channel, e.id, e.data),
//     onState: (s) => console.log(s.state, s.transport ?? ""),
//   });
//   const eventId = await client.publish("chat:1", { text: "hello" });
//
// Load-then-subscribe: render the history, then subscribe from the cursor it answered.
//
//   const h = await fetch("/v1/channels/chat:1/history?limit=50", { headers }).then((r) => r.json());
//   render(h.events);
//   const live = new PushClient("", { token, channels: ["chat:1"], cursor: h.cursor, onEvent });
//
// Presence: who is on the channels (the token needs the `presence` grant on each).
//
//   const room = new PushClient("", {
//     token, channels: ["chat:1"], presence: true,
//     onPresence: (channel, members) => render(members),   // [{subject, info, connections}]
//     onJoin: (m) => say(`${m.info.name ?? m.subject} joined`),
//   });

// <generated: close codes; do not edit; python -m pushsvc._docs>
/** What the client does after a close: see CLOSE_CODES. */
export type ClosePolicy = "resume" | "reauth" | "stop";
/** Every close code pushsvc sends; a code not listed (1005, 1006) is resumed. */
export declare const CLOSE_CODES: {
  readonly 1000: { readonly name: "normal"; readonly policy: "resume" };
  readonly 1001: { readonly name: "going-away"; readonly policy: "resume" };
  readonly 1009: { readonly name: "too-big"; readonly policy: "resume" };
  readonly 1011: { readonly name: "internal"; readonly policy: "resume" };
  readonly 1012: { readonly name: "service-restart"; readonly policy: "resume" };
  readonly 1013: { readonly name: "try-later"; readonly policy: "resume" };
  readonly 4000: { readonly name: "idle"; readonly policy: "resume" };
  readonly 4008: { readonly name: "slow-consumer"; readonly policy: "resume" };
  readonly 4400: { readonly name: "bad-request"; readonly policy: "stop" };
  readonly 4401: { readonly name: "unauthorized"; readonly policy: "reauth" };
  readonly 4402: { readonly name: "token-expired"; readonly policy: "reauth" };
  readonly 4403: { readonly name: "forbidden"; readonly policy: "stop" };
  readonly 4404: { readonly name: "not-found"; readonly policy: "stop" };
  readonly 4429: { readonly name: "rate-limited"; readonly policy: "resume" };
};
/** Close codes resumed without a backoff delay (a drain). */
export declare const RECONNECT_AT_ONCE: readonly number[];
// </generated: close codes>

/** Transports in the order the client prefers them. */
export type TransportName = "websocket" | "sse" | "long-polling";

/**
 * - `connecting`: negotiating / trying transports.
 * - `connected`: subscribed on the best allowed transport.
 * - `degraded`: subscribed, but on a fallback transport (better ones are re-probed).
 * - `disconnected`: the connection was lost; waiting `delay` ms (backoff) before the next try.
 * - `closed`: `close()` was called, or the server refused the token / channels for good.
 */
export type ConnectionState = "connecting" | "connected" | "degraded" | "disconnected" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** Set for `connected` and `degraded`. */
  transport?: TransportName;
  /** Backoff before the next attempt (`disconnected`). */
  delay?: number;
  attempt?: number;
  /** Why the previous connection ended, or why the client closed. */
  error?: string;
}

/** One event, delivered once, in order per channel. */
export interface PushEvent {
  channel: string;
  /** Event name (`"message"` unless the publisher named it). */
  event: string;
  /** Server-assigned stream ID ("<ms>-<seq>"), monotonic per channel. */
  id: string;
  /** The published JSON value, or the bytes of a binary event. */
  data: unknown;
  /** True when `data` is a `Uint8Array` (binary event). */
  binary?: boolean;
}

/** Events with `after < id <= until` on `channel` were trimmed before this client read them. */
export interface GapInfo {
  channel: string;
  after: string;
  until: string;
}

/** Outcome of a queued publish, also for messages restored from sessionStorage after a reload. */
export interface PublishOutcome {
  /** The client message id (idempotency key). */
  id: string;
  channel: string;
  /** The stored event's ID, once acknowledged. */
  eventId?: string;
  /** Set when the server refused the message for good (it is dropped from the outbox). */
  error?: PushError;
}

/**
 * Diagnostics: every transport attempt, failure, demotion, re-probe, switch and state.
 * `pinned`: the start position is fixed (`detail`: `negotiate`, or with a server whose
 * negotiate answers no cursor, `subscribed` / `poll`); `ready()` resolves then.
 * `cursor-refused`: the server could not read the stored cursor; it was dropped and the
 * next negotiate pins a fresh start.
 */
export interface LogEntry {
  /** `Date.now()` when it happened. */
  at: number;
  kind:
    | "state"
    | "try"
    | "transport-failed"
    | "blocked"
    | "reprobe"
    | "switch"
    | "lost"
    | "negotiate-failed"
    | "pinned"
    | "cursor-refused"
    | "publish-retry"
    | "fatal";
  transport?: TransportName;
  detail?: string;
}

/** A member of a channel: a token subject with its token's `info`, and how many
 *  connections (tabs, devices) it has on the channel. */
export interface PresenceMember {
  subject: string;
  /** The `info` object of the member's most recently joined connection's token (`{}`). */
  info: Record<string, unknown>;
  /** Connections of this member on the channel; 0 in an `onLeave` (it is gone). */
  connections: number;
}

export interface PresenceCounts {
  members: number;
  connections: number;
  /**
   * The server lists no members above its `presence_snapshot_max`: the view then keeps
   * these counts only (from the snapshot, moved by each join/leave) and `members()` is empty.
   */
  truncated: boolean;
}

export interface PushClientOptions {
  /** A client token (see `pushsvc token`), or a function answering a fresh one per connect. */
  token: string | (() => string | Promise<string>);
  /** Channels to subscribe to; one cursor covers them all. */
  channels: string[];
  /**
   * Start from this cursor instead of the one kept in sessionStorage (it wins over it, and
   * the stored last IDs per channel are forgotten with it): load-then-subscribe, with the
   * `cursor` that `GET /v1/channels/{channel}/history` answered after the events the page
   * rendered (its `cursor=` parameter keeps other channels' positions in it). Channels the
   * cursor does not position start at their current top, pinned by the first negotiate.
   * A cursor the server refuses (400 `bad-cursor`) closes the client (`refused`).
   */
  cursor?: string;
  /**
   * Ask for presence on every channel, on every transport (the token needs the `presence`
   * grant for each, besides `subscribe`). The client keeps a members view per channel:
   * `members()`, `presenceCounts()`, `onJoin`, `onLeave`, `onPresence`. A token without
   * the grant closes the client (`refused`, state `closed` with the reason). Default false.
   */
  presence?: boolean;
  /**
   * A member appeared on `channel` (its first connection; also each member of the first
   * snapshot, the client's own subject included). Not called for a second tab of a member
   * already there, nor while the view is truncated and a snapshot replaces it.
   */
  onJoin?: (member: PresenceMember, channel: string) => void;
  /** A member disappeared from `channel` (its last connection went, or a fresh snapshot,
   *  after a reconnect, no longer lists it); `member.connections` is 0. */
  onLeave?: (member: PresenceMember, channel: string) => void;
  /**
   * The view of `channel` changed (a member, a connection count, an `info`, the counts):
   * `members` is `client.members(channel)`. Called after `onJoin` / `onLeave`, once per
   * frame that changed something.
   */
  onPresence?: (channel: string, members: PresenceMember[]) => void;
  /** Allowed transports, best first. Default: all three. */
  transports?: TransportName[];
  /** Called once per event, in order per channel, duplicates dropped. */
  onEvent?: (event: PushEvent, transport: TransportName) => void;
  /** Called when part of a channel's history was trimmed before it could be read. */
  onGap?: (gap: GapInfo) => void;
  onState?: (change: StateChange) => void;
  onPublished?: (outcome: PublishOutcome) => void;
  onLog?: (entry: LogEntry) => void;
  /**
   * sessionStorage key for the cursor, the last ID per channel and the outbox. Default:
   * derived from the URL and the channel list. `null`: keep nothing (no resume after reload).
   */
  storageKey?: string | null;
  /** Another `Storage` (e.g. `localStorage`); default `sessionStorage`. */
  storage?: Storage;
  /** Messages the outbox holds before `publish()` rejects with code `outbox-full`. Default 100. */
  outboxLimit?: number;
  /** Backoff: full jitter, random(0, min(backoffCap, backoffBase * 2^attempt)) ms. */
  backoffBase?: number;
  backoffCap?: number;
  /** A connection up this long (ms) resets the backoff attempt count. Default 30000. */
  healthyAfter?: number;
  /** WebSocket open + subscribed, negotiate, publish, first poll (ms). Default 5000. */
  connectTimeout?: number;
  /** An SSE stream with no `subscribed` event within this window (ms) is taken as held
   *  by a buffering proxy. Default 3000. */
  firstEventTimeout?: number;
  /** First re-probe of a demoted transport (ms), doubling per failure. Default 30000. */
  reprobeInterval?: number;
  /** Longest wait between re-probes (ms). Default 300000. */
  reprobeMax?: number;
  /** Long-poll wait (s) the server is asked for. Default 20. */
  pollTimeout?: number;
  /** Silence (no frame, no heartbeat) beyond heartbeatFactor * heartbeat_interval + 0.5 s
   *  closes and reconnects. Default 2.5. */
  heartbeatFactor?: number;
}

export class PushError extends Error {
  /** `outbox-full`, `closed`, `refused`, `network`, `negotiate`, `transport-failed`,
   *  `timeout` (`ready()`). */
  readonly code: string;
  /** HTTP status, where one was answered. */
  readonly status?: number;
  readonly fatal: boolean;
}

export class PushClient {
  /**
   * Starts connecting at once. `url` is the pushsvc base URL (`""` for the page's origin).
   * A WebSocket from another origin must be allowed by the server's `allowed_origins`;
   * SSE, long-poll and publish by its `cors_origins`.
   */
  constructor(url: string, options: PushClientOptions);
  readonly state: ConnectionState;
  /** The transport events currently arrive on, or null. */
  readonly transport: TransportName | null;
  /** The opaque resume cursor (also kept in sessionStorage). */
  readonly cursor: string | null;
  /**
   * Resolves with the cursor once every channel's start position is pinned: when the first
   * `POST /v1/negotiate` answered a cursor (with a server that answers none, when the first
   * transport subscribed). From then on every event stored afterwards is delivered exactly
   * once, whatever transport the client ends on, across reconnects, re-probes and page
   * reloads (the pinned cursor is saved at once). Resolves at once when already pinned.
   * Rejects with a `PushError`: `timeout` after `timeoutMs` (default: no limit), `closed`
   * when `close()` comes first or the client is closed, `refused` when the server refused
   * the token or the channels for good.
   */
  ready(timeoutMs?: number): Promise<string>;
  /** Messages queued and not yet acknowledged. */
  readonly outboxSize: number;
  /** Heartbeat interval (s) from the last negotiation. */
  readonly heartbeatInterval: number;
  readonly stats: { duplicatesDropped: number; reconnects: number; gaps: number; switches: number };
  /**
   * Queue a message; sent at once when connected, else on the next connection (also after
   * a page reload). Resolves with the event ID once stored (exactly once: the client id is
   * the idempotency key). Rejects with `outbox-full` when `outboxLimit` messages wait, and
   * with `refused` when the server rejects the message (no grant, too large, ...).
   */
  publish(
    channel: string,
    data: unknown,
    options?: { event?: string; id?: string },
  ): Promise<string>;
  /**
   * The members of `channel` as this client sees them, sorted by subject (copies). Kept
   * from the active connection's frames: a snapshot on each (re)subscription replaces
   * the view, join/leave frames update it; it survives reconnects and transport switches
   * until the new connection's snapshot. Empty without `presence`, before the first
   * snapshot, and for a truncated view (see `presenceCounts`).
   */
  members(channel: string): PresenceMember[];
  /** Member and connection counts of `channel` (right for a truncated view too). */
  presenceCounts(channel: string): PresenceCounts;
  /** Stop for good. Queued messages stay in sessionStorage for a later client. */
  close(): void;
}

/**
 * One channel's members kept from presence frames alone, as `PushClient` keeps them (for a
 * page that reads the frames itself, e.g. from an `EventSource`). Each method answers who
 * appeared and who disappeared. A frame's `connections` (the count after the change) is
 * taken as is: a diff that a snapshot already holds changes nothing.
 */
export class PresenceView {
  /** A snapshot has arrived. */
  readonly known: boolean;
  readonly truncated: boolean;
  members(): PresenceMember[];
  counts(): PresenceCounts;
  /** A `presence` frame: replaces the view (per-member changes only between full views). */
  snapshot(frame: {
    members: PresenceMember[];
    member_count: number;
    connection_count: number;
    truncated?: boolean;
  }): PresenceChange;
  join(frame: { subject: string; info?: Record<string, unknown>; connections: number }): PresenceChange;
  leave(frame: { subject: string; info?: Record<string, unknown>; connections: number }): PresenceChange;
}

export interface PresenceChange {
  joined: PresenceMember[];
  left: PresenceMember[];
}

export default PushClient;
