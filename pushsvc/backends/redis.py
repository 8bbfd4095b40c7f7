"""The Redis log (``redis://host:port/db?prefix=app:``, ``rediss://…``); needs Redis >= 7.

Redis Cluster: ``redis+cluster://host:port[,host:port…]/?prefix=app:`` (``rediss+cluster://``
for TLS); see "Redis Cluster" below.

Decisions (DESIGN 1 and 2):

- One stream per channel, keys hash-tagged per channel (``{prefix}{channel}:log``,
  idempotency buckets ``…:i:<n>``, shard channel ``…:n``) so that each channel lives in
  one cluster slot. Every key expires by itself: the stream ``max_age`` (plus a margin)
  after its last event, a bucket of idempotency records ``idempotency_ttl`` after its
  newest one, presence keys ``presence_ttl`` after their last renewal.
- Live notifications: a Lua script appends (idempotency check, XADD, trimming by count
  and by age on the server clock) and SPUBLISHes the new entry's ID *and fields* in the
  same atomic step: the listener never reads per publish, and Redis work per publish is
  one script whatever the number of subscribers. Pub/Sub against a multiplexed
  ``XREAD BLOCK`` listener, ``python benchmarks/backend_notify.py --url redis://…
  [--channels 2000 --events 10000]`` (Redis 7.0.15, loopback, busy 2-CPU box, 100 B
  events, batches of 100, ranges over 2-5 rounds; latency of single events):

  ==============  ============================  ==============================
  listened        Lua XADD + SPUBLISH           XADD + multiplexed XREAD
  ==============  ============================  ==============================
  50 channels     6-14 k ev/s, 14-31 us Redis   5-14 k ev/s, 5-12 us Redis
                  CPU/event, p50 0.20-0.35 ms   CPU/event, p50 0.19-0.33 ms
  2000 channels   9 k ev/s, 22-24 us/event,     4 k ev/s, 69-80 us/event,
                  p50 0.27 ms                   p50 1.8-2.3 ms
  ==============  ============================  ==============================

  Both are client-bound (redis-py) and on par for few channels; the script costs Redis
  ~3x the CPU of a bare XADD but stays flat, while every XREAD wake-up carries all the
  listened streams, so it degrades with the channels a process serves. XREAD would also
  need interrupting to add a channel and cannot span cluster slots.
- Redis records no trimmed IDs (``max-deleted-entry-id`` follows XDEL only), so the
  script trims exactly below the greatest ID to drop and XDELs that one: a Gap then
  names exactly the greatest trimmed ID. "Approximate" retention trims in batches.
- The listener is ONE raw connection (RESP2), not redis-py's ``PubSub``: ``PubSub``
  silently reconnects and re-subscribes, which would hide a lost connection and the
  notifications lost with it. Here a lost or deaf (no PONG) connection is replaced with
  capped, jittered backoff, every channel is re-subscribed and then re-read from the
  last delivered ID while its notifications are held back; delivery is deduplicated by ID.
- Appends are never retried automatically (a retry after a lost reply could store the
  message twice); publishers retry with an idempotency key. Reads are retried once.
- Commands go through a *blocking* pool (``?max_connections=64&pool_timeout=5`` by
  default): redis-py's plain asyncio pool refuses a command over its limit at once
  (``MaxConnectionsError``), which turned a burst of long-polls into 503s. Here a command
  waits up to ``pool_timeout`` seconds for a connection; only then is it refused, with a
  503 problem that says so (and ``Retry-After``). The listener's connection is outside
  the pool.
- The listener's PONG deadline is measured in time the reader could have used: when the
  event loop is saturated, a PONG may sit unread in the socket buffer long past the
  deadline (a 3 s wall-clock deadline made a server at 100% CPU reconnect a healthy
  listener). Time the loop spent lagging does not count, and any reply read restarts
  the count: a busy process is not a deaf Redis (see ``_await_pong``).
- Presence (DESIGN 8) takes three keys per channel in the channel's slot, as Centrifugo
  does: ``…:pc`` (hash conn_id -> subject and info), ``…:pe`` (sorted set conn_id ->
  deadline, on the Redis clock) and ``…:pm`` (hash subject -> entry count and info, so
  that ``HLEN`` counts members and stats never scan). Every script sweeps the channel's
  expired entries first (at most ``SWEEP_MAX`` per call), re-``PEXPIRE``s the three keys
  to the TTL when it writes, and deletes them with the last entry: a channel abandoned
  by a crashed instance loses its keys by itself. A script handles one channel (one
  slot); a process's refresh is ONE pipeline of one script call per channel. Diffs go
  out with ``SPUBLISH`` on the channel's shard channel, the one its events use, as notes
  starting with ``p`` (an event note starts with its ID's digits); they are live only.
- Redis Cluster (a ``+cluster`` scheme: the user says so, nothing is guessed from the
  server) changes only who is talked to, not the layout. Commands go through redis-py's
  ``RedisCluster`` (every script and pipeline entry touches one channel, so one slot).
  Notifications are sharded Pub/Sub, as on one node (``SPUBLISH`` works there too, so both
  modes run the same scripts): the listener is one raw connection *per primary* (a
  ``_Link``), each SSUBSCRIBEd (one command per shard channel, slots differ) to the
  channels whose slot that primary owns. A link follows its node like the single-node
  listener does (PING deadline, reconnect, re-subscribe, re-read). Moves are followed:
  Redis sends ``sunsubscribe`` for the channels of a slot that migrated or of a primary
  demoted by a failover, answers ``MOVED`` to a subscription sent to the wrong node, and
  a link to a dead primary fails; each of these, and a check every ``topology_interval``
  seconds, re-reads the slot map (CLUSTER SLOTS) and moves channels to their owner's
  link, where they are subscribed and then re-read from the last delivered ID while
  their notifications are held back: no gap, no duplicate (delivery dedupes by ID).
  redis-py's cluster client has no blocking pool: ``max_connections`` is per node and a
  command over it is refused at once with a 503 (``pool_timeout`` does not apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from pushsvc._tasks import cancel_and_wait
from pushsvc.backends.base import (
    EXPIRY_MARGIN,
    Backend,
    ListenerStatus,
    Message,
    PresenceDiff,
    PresenceEntry,
    PresenceSnapshot,
    ReadResult,
    Retention,
    expired_gap,
)
from pushsvc.exceptions import BackendError, ConfigError
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import MAX_SEQ, ZERO, StreamId

log = logging.getLogger("pushsvc.backends.redis")

DEFAULT_PREFIX = "pushsvc:"
CATCH_UP_PAGE = 1000
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_POOL_TIMEOUT = 5.0
# Idempotency records are kept in this many hash buckets per TTL: a bucket key lives
# ``ttl / IDEM_BUCKETS`` longer than its newest record needs; a lookup reads
# IDEM_BUCKETS + 1 fields.
IDEM_BUCKETS = 4

# One channel's messages, in order, in one call: KEYS[1] stream, KEYS[2] the channel's
# idempotency bucket prefix (optional). ARGV: shard channel, max_len, slack, max_age ms,
# idempotency ttl ms, stream expiry ms (0: none), then four per message: event name,
# data, binary "1"/"0", idempotency field ("" for none). Answers ONE string of the
# messages' IDs, space-separated, then the fields of each repeat whose original is still
# stored: "<id>" a new entry, "<id>!" a repeat (its original's fields follow, in order),
# "<id>?" a repeat whose original was trimmed since. (One string rather than an array
# per message: redis-py's parser costs about 1 µs per element it reads.) Each new entry
# is SPUBLISHed on its own (the listener's notification); the trim, the expiry and XLEN
# run once per call: a batch of 100 messages on one channel is one script call, not 100
# (each call costs Redis about as much as the XADD itself).
#
# Redis records no trimmed IDs (max-deleted-entry-id follows XDEL only, not XTRIM or
# MAXLEN), so the script picks the greatest ID to drop (by count, then by age), trims
# below it with XTRIM MINID and XDELs that ID itself: max-deleted-entry-id then is the
# greatest trimmed ID, exactly what a Gap needs. "Approximate" trims in batches of slack.
#
# Growth (nothing grows without bound): every write re-arms the stream's PEXPIRE to
# max_age + EXPIRY_MARGIN, so a channel with no event for that long loses its stream.
# Idempotency records are fields of one hash per channel per time bucket
# (``<prefix>{channel}:i:<bucket>``, IDEM_BUCKETS buckets per TTL, on the Redis clock),
# not a key each: a record is a field (``idempotency_field``: 12 bytes) and its event
# ID; a bucket key expires once its newest record is ``ttl`` old. A record counts while
# its event ID (the server time it was stored) is less than ``ttl`` old, so the
# semantics are exact whatever the bucket.
# The bucket keys are built here from KEYS[2] (same hash tag, so same slot).
APPEND_LUA = """
local stream, idem = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[5])
local width = math.max(1, math.floor(ttl / IDEM_BUCKETS))
local bucket = math.floor(now / width)
local bucket_key = idem and (idem .. string.format('%.0f', bucket))
local bucket_until = string.format('%.0f', (bucket + 1) * width + ttl)
local ids, out = {}, {''}
local id
for i = 7, #ARGV, 4 do
  local name, data, binary, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local seen
  if idem and key ~= '' then
    for b = bucket, bucket - IDEM_BUCKETS, -1 do
      local prev = redis.call('HGET', idem .. string.format('%.0f', b), key)
      if prev then
        if tonumber(string.match(prev, '^(%d+)')) + ttl > now then
          local found = redis.call('XRANGE', stream, prev, prev)
          if #found == 1 then
            seen = prev .. '!'
            out[#out + 1] = found[1][2]
          else
            seen = prev .. '?'
          end
        end
        break  -- an expired record: newer buckets hold none for this key
      end
    end
  end
  if seen then
    ids[#ids + 1] = seen
  else
    if binary == '1' then
      id = redis.call('XADD', stream, '*', 'e', name, 'd', data, 'b', '1')
    else
      id = redis.call('XADD', stream, '*', 'e', name, 'd', data)
    end
    if idem and key ~= '' then
      redis.call('HSET', bucket_key, key, id)
      redis.call('PEXPIREAT', bucket_key, bucket_until)
    end
    redis.call('SPUBLISH', ARGV[1], id .. ' ' .. binary .. ' ' .. #name .. ' ' .. name .. data)
    ids[#ids + 1] = id
  end
end
out[1] = table.concat(ids, ' ')
if not id then return out end
local cut
local max_len = tonumber(ARGV[2])
local len = redis.call('XLEN', stream)
if len > max_len + tonumber(ARGV[3]) then
  local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', len - max_len)
  cut = old[#old][1]
end
local max_age = tonumber(ARGV[4])
if max_age > 0 then
  local min_ms = now - max_age
  local id_ms = tonumber(string.match(id, '^(%d+)'))
  if min_ms > id_ms then min_ms = id_ms end
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if min_ms > 0 and first and tonumber(string.match(first[1], '^(%d+)')) < min_ms then
    -- (cheap test first: XREVRANGE from the middle of a stream is not)
    local bound = '(' .. string.format('%.0f', min_ms) .. '-0'
    local older = redis.call('XREVRANGE', stream, bound, '-', 'COUNT', 1)
    if #older == 1 then
      local a_ms, a_seq = string.match(older[1][1], '^(%d+)-(%d+)$')
      if not cut then
        cut = older[1][1]
      else
        local c_ms, c_seq = string.match(cut, '^(%d+)-(%d+)$')
        a_ms, c_ms = tonumber(a_ms), tonumber(c_ms)
        if a_ms > c_ms or (a_ms == c_ms and tonumber(a_seq) > tonumber(c_seq)) then
          cut = older[1][1]
        end
      end
    end
  end
end
if cut then
  redis.call('XTRIM', stream, 'MINID', '=', cut)
  redis.call('XDEL', stream, cut)
end
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', stream, ARGV[6]) end
return out
""".replace("IDEM_BUCKETS", str(IDEM_BUCKETS))

# KEYS[1] stream. ARGV: first ID to answer (inclusive), count.
# Answers {server time in ms} for a missing stream (never written, or expired: see
# ``expired_gap``), else {last-generated-id, max-deleted-entry-id, entries}.
READ_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  return {string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1]
  elseif info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {last, deleted, entries}
"""


# Presence. KEYS: …:pc, …:pe, …:pm, …:ps of ONE channel. ARGV[1] shard channel, ARGV[2]
# TTL ms, then the script's own. An entry is "<len(subject)> <subject><info>", a member
# "<count> <info of its latest entry>", a note "p<j|l> <seq> <count after> <len(subject)>
# <subject><info>". Expired entries are swept first, a leave note each. ``seq`` (in …:ps)
# orders a channel's changes: the server clock in microseconds, or one more than the last
# when that is not below it; it outlives the other keys of an emptied channel by the TTL,
# so it keeps growing (a second later, the clock alone is past any earlier seq).
SWEEP_MAX = 1000
PRESENCE_LUA = """
local pc, pe, pm, ps = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local shard, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = string.format('%.0f', now + ttl)
local function split(v)
  local sp = string.find(v, ' ', 1, true)
  return tonumber(string.sub(v, 1, sp - 1)), string.sub(v, sp + 1)
end
local function note(kind, count, subject, info)
  local seq = now * 1000
  local prev = tonumber(redis.call('GET', ps) or '0')
  if seq <= prev then seq = prev + 1 end
  seq = string.format('%.0f', seq)
  redis.call('SET', ps, seq, 'PX', ttl)
  redis.call('SPUBLISH', shard,
    'p' .. kind .. ' ' .. seq .. ' ' .. count .. ' ' .. #subject .. ' ' .. subject .. info)
end
local function add(conn, subject, info)
  redis.call('HSET', pc, conn, #subject .. ' ' .. subject .. info)
  redis.call('ZADD', pe, deadline, conn)
  local count = 1
  local prev = redis.call('HGET', pm, subject)
  if prev then count = split(prev) + 1 end
  redis.call('HSET', pm, subject, count .. ' ' .. info)
  note('j', count, subject, info)
end
local function remove(conn)
  redis.call('ZREM', pe, conn)
  local v = redis.call('HGET', pc, conn)
  if not v then return end
  redis.call('HDEL', pc, conn)
  local n, rest = split(v)
  local subject, info = string.sub(rest, 1, n), string.sub(rest, n + 1)
  local count = 0
  local prev = redis.call('HGET', pm, subject)
  if prev then
    local m, member_info = split(prev)
    count = m - 1
    if count > 0 then
      redis.call('HSET', pm, subject, count .. ' ' .. member_info)
    else
      redis.call('HDEL', pm, subject)
    end
  end
  note('l', count, subject, info)
end
local function sweep()
  local expired = redis.call('ZRANGEBYSCORE', pe, '-inf', string.format('%.0f', now),
    'LIMIT', 0, SWEEP_MAX)
  for i = 1, #expired do remove(expired[i]) end
end
local function settle(renew)
  if redis.call('HLEN', pc) == 0 then
    redis.call('DEL', pc, pe, pm)  -- ps stays until its own TTL: seq never goes back
  elseif renew then
    redis.call('PEXPIRE', pc, ttl)
    redis.call('PEXPIRE', pe, ttl)
    redis.call('PEXPIRE', pm, ttl)
    redis.call('PEXPIRE', ps, ttl)
  end
end
""".replace("SWEEP_MAX", str(SWEEP_MAX))

# ARGV[3] conn_id, ARGV[4] subject, ARGV[5] info. Answers the channel's seq.
PRESENCE_JOIN_LUA = (
    PRESENCE_LUA
    + """
sweep()
if redis.call('HEXISTS', pc, ARGV[3]) == 1 then
  redis.call('ZADD', pe, deadline, ARGV[3])
else
  add(ARGV[3], ARGV[4], ARGV[5])
end
settle(true)
return redis.call('GET', ps) or '0'
"""
)

# ARGV[3] conn_id.
PRESENCE_LEAVE_LUA = (
    PRESENCE_LUA
    + """
sweep()
remove(ARGV[3])
settle(true)
return 1
"""
)

# ARGV[3…] conn_ids to renew. Answers the conn_ids that were not there.
PRESENCE_REFRESH_LUA = (
    PRESENCE_LUA
    + """
local missing = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', pe, ARGV[i]) then
    redis.call('ZADD', pe, deadline, ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
sweep()
settle(true)
return missing
"""
)

# ARGV[3] most members to list. Answers {members, connections, truncated, seq, [hgetall]}.
PRESENCE_SNAPSHOT_LUA = (
    PRESENCE_LUA
    + """
sweep()
settle(false)
local m, c = redis.call('HLEN', pm), redis.call('HLEN', pc)
local seq = redis.call('GET', ps) or '0'
if m > tonumber(ARGV[3]) then return {m, c, 1, seq} end
return {m, c, 0, seq, redis.call('HGETALL', pm)}
"""
)

PRESENCE_STATS_LUA = (
    PRESENCE_LUA
    + """
sweep()
settle(false)
return {redis.call('HLEN', pm), redis.call('HLEN', pc)}
"""
)


def parse_url(url: str) -> tuple[str, str]:
    """Split ``?prefix=`` off a Redis URL: answer (URL for redis-py, key prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    rest = []
    for key, value in query:
        if key == "prefix":
            prefix = value
        else:
            rest.append((key, value))
    if "{" in prefix or "}" in prefix:
        raise ConfigError(f"Redis key prefix {prefix!r} must not contain '{{' or '}}'")
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


@dataclass(frozen=True, slots=True)
class PoolOptions:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    timeout: float = DEFAULT_POOL_TIMEOUT


def parse_pool_options(url: str) -> tuple[str, PoolOptions]:
    """Split ``?max_connections=&pool_timeout=`` off a Redis URL (the command pool's size
    and how long a command waits for a free connection): answer (rest of URL, options)."""
    parts = urlsplit(url)
    rest = []
    max_connections, timeout = DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key == "max_connections":
                max_connections = int(value)
                if max_connections < 1:
                    raise ValueError
            elif key == "pool_timeout":
                timeout = float(value)
                if not 0 < timeout < math.inf:
                    raise ValueError
            else:
                rest.append((key, value))
        except ValueError:
            raise ConfigError(
                f"Redis URL option {key}={value!r} must be a positive "
                + ("integer" if key == "max_connections" else "number of seconds")
            ) from None
    url = urlunsplit(parts._replace(query=urlencode(rest)))
    return url, PoolOptions(max_connections, timeout)


class PoolExhausted(RedisConnectionError):
    """Every pooled connection stayed busy for the whole pool timeout."""


class _BlockingPool(aioredis.BlockingConnectionPool):
    """Tells a wait for a free connection that timed out (``PoolExhausted``) apart from a
    connection that failed (redis-py raises ``ConnectionError`` for both)."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            conn: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, TimeoutError):  # the wait, not the connect
                raise PoolExhausted(
                    f"all {self.max_connections} Redis connections stayed busy for {self.timeout} s"
                ) from exc
            raise
        return conn


def idempotency_field(key: str) -> bytes:
    """An idempotency record's field: 12 bytes of the key's BLAKE2b digest (a WebSocket
    publish's key is ``u:<subject>:<message id>``, 40 bytes and more; 96 bits make a
    collision between two keys of one channel within the TTL out of reach)."""
    return hashlib.blake2b(key.encode(), digest_size=12).digest()


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if is_cluster_url(url):
        netloc = ",".join(f"{h}:{p}" for h, p in cluster_nodes(url))
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The startup nodes of ``redis+cluster://[user:pass@]host:port[,host:port…]/…``."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        try:
            nodes.append((host, int(port)) if sep and host else (item.strip(), 6379))
        except ValueError:
            raise ConfigError(f"Redis Cluster node {item!r} is not host:port") from None
        if not nodes[-1][0]:
            raise ConfigError("a Redis Cluster URL names at least one host:port")
    return nodes


def _cluster_client(url: str, pool: PoolOptions) -> RedisCluster:
    """A ``RedisCluster`` for a ``redis+cluster://`` URL (rid of ``prefix`` and pool
    options): the first node and the URL's options through redis-py's ``from_url``, the
    other nodes as further startup nodes."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    (host, port), *others = cluster_nodes(url)
    plain = urlunsplit(
        (CLUSTER_SCHEMES[parts.scheme], f"{userinfo}{at}{host}:{port}", parts.path, parts.query, "")
    )
    try:
        return RedisCluster.from_url(
            plain,
            startup_nodes=[ClusterNode(h, p) for h, p in others],
            max_connections=pool.max_connections,
            decode_responses=False,
            protocol=2,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=5,
            socket_timeout=10,
        )
    except (RedisClusterException, ValueError) as exc:
        raise ConfigError(f"bad Redis Cluster URL {_redacted(url)!r}: {exc}") from None


def _id(raw: bytes) -> StreamId:
    ms, _, seq = raw.partition(b"-")
    return (int(ms), int(seq or b"0"))


def _successor(sid: StreamId) -> StreamId:
    return (sid[0], sid[1] + 1) if sid[1] < MAX_SEQ else (sid[0] + 1, 0)


def _event(channel: str, raw_id: bytes, fields: list[bytes]) -> Event:
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return Event(
        channel, _id(raw_id), values[b"e"].decode(), values[b"d"], values.get(b"b") == b"1"
    )


def _presence_note(channel: str, payload: bytes) -> PresenceDiff:
    """Parse ``"p<j|l> <seq> <count> <len(subject)> <subject><info>"`` (see
    ``PRESENCE_LUA``)."""
    seq, count, size, rest = payload[3:].split(b" ", 3)
    n = int(size)
    kind = payload[1:2]
    if kind not in (b"j", b"l") or payload[2:3] != b" ":
        raise ValueError(payload[:3])
    subject, info = rest[:n].decode(), rest[n:]
    if kind == b"j":
        return PresenceDiff(channel, "join", subject, info, int(count), int(seq))
    return PresenceDiff(channel, "leave", subject, info, int(count), int(seq))


def _append_answers(reply: list[Any]) -> list[list[Any]]:
    """``APPEND_LUA``'s reply, one answer per message: ``[id, 0]`` new,
    ``[id, 1, fields]`` a repeat, ``[id, 1]`` a repeat whose original was trimmed."""
    fields = iter(reply[1:])
    answers: list[list[Any]] = []
    for token in reply[0].split(b" "):
        mark = token[-1:]
        if mark == b"!":
            answers.append([token[:-1], 1, next(fields)])
        elif mark == b"?":
            answers.append([token[:-1], 1])
        else:
            answers.append([token, 0])
    return answers


def _notification(channel: str, payload: bytes) -> Event:
    """Parse ``"<id> <binary> <len(name)> <name><data>"`` (see ``APPEND_LUA``)."""
    raw_id, binary, size, rest = payload.split(b" ", 3)
    n = int(size)
    return Event(channel, _id(raw_id), rest[:n].decode(), rest[n:], binary == b"1")


@contextlib.contextmanager
def _wrapped(what: str) -> Iterator[None]:
    try:
        yield
    except (PoolExhausted, MaxConnectionsError) as exc:
        err = BackendError(
            f"Redis {what} refused: {exc or 'all connections busy'} (server overloaded)"
        )
        err.headers["Retry-After"] = "1"
        raise err from exc
    except (RedisError, RedisClusterException, OSError) as exc:
        raise BackendError(f"Redis {what} failed: {exc}") from exc


class _Deaf(Exception):
    """The listener connection did not answer a PING in time."""


@dataclass(eq=False, slots=True)
class _Channel:
    name: str
    shard: bytes
    # Last delivered ID; None until listen() has recorded the top after subscribing.
    last: StreamId | None = None
    # Notifications held back (in arrival order) until a re-read of the log is done.
    held: list[Event] | None = field(default_factory=list)
    subscribed: asyncio.Future[None] = field(default_factory=asyncio.Future)
    ready: asyncio.Future[None] = field(default_factory=asyncio.Future)
    # The link it is (to be) subscribed on, and the (link, generation) of the last
    # subscription Redis confirmed: any other pair means notifications may have been lost.
    link: _Link | None = None
    confirmed: tuple[_Link, int] | None = None
    # Redis dropped or refused its subscription (slot moved): re-place it.
    misplaced: bool = False
    catch_up: asyncio.Task[None] | None = None


@dataclass(eq=False, slots=True)
class _Link:
    """One listener connection: to the node of a ``redis://`` URL (``node`` None) or to
    one cluster primary, carrying the shard channels that node owns."""

    node: tuple[str, int] | None
    conn: AbstractConnection | None = None
    pending: dict[bytes, int] = field(default_factory=dict)  # SSUBSCRIBEs unconfirmed
    unsubscribing: dict[bytes, int] = field(default_factory=dict)  # our SUNSUBSCRIBEs
    generation: int = 0  # bumped on every lost connection
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    reads: int = 0  # replies read on the connection (proof of life)
    up: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class RedisBackend(Backend):
    def __init__(
        self,
        url: str,
        retention: Retention,
        *,
        ping_interval: float = 5.0,
        ping_timeout: float = 3.0,
        listen_timeout: float = 10.0,
        max_backoff: float = 5.0,
        topology_interval: float = 5.0,
    ) -> None:
        super().__init__(retention)
        redis_url, self.prefix = parse_url(url)
        redis_url, self.pool_options = parse_pool_options(redis_url)
        self._where = _redacted(redis_url)
        self._cluster: RedisCluster | None = None
        self._redis: aioredis.Redis | RedisCluster
        if is_cluster_url(redis_url):
            self._redis = self._cluster = _cluster_client(redis_url, self.pool_options)
        else:
            pool = _BlockingPool.from_url(
                redis_url,
                max_connections=self.pool_options.max_connections,
                timeout=self.pool_options.timeout,
                decode_responses=False,
                protocol=2,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=5,
                socket_timeout=10,
            )
            self._redis = aioredis.Redis.from_pool(pool)
        self._append_script = self._redis.register_script(APPEND_LUA)
        self._read_script = self._redis.register_script(READ_LUA)
        self._presence_scripts = {
            name: self._redis.register_script(lua)
            for name, lua in (
                ("join", PRESENCE_JOIN_LUA),
                ("leave", PRESENCE_LEAVE_LUA),
                ("refresh", PRESENCE_REFRESH_LUA),
                ("snapshot", PRESENCE_SNAPSHOT_LUA),
                ("stats", PRESENCE_STATS_LUA),
            )
        }
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.listen_timeout = listen_timeout
        self.max_backoff = max_backoff
        self.topology_interval = topology_interval
        # listener state
        self._channels: dict[str, _Channel] = {}
        self._by_shard: dict[bytes, _Channel] = {}
        self._links: dict[tuple[str, int] | None, _Link] = {}
        self._mapped = asyncio.Event()  # the links exist (cluster: the slot map was read)
        self._remap_wanted = asyncio.Event()
        self._reconnects = 0
        # the single node's link, or (cluster) the task that follows the slot map
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        # appends waiting for the next round trip, and the round trips under way
        self._appends: list[tuple[list[Message], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    # --- keys ------------------------------------------------------------------------

    def _stream_key(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:log"

    def _idem_prefix(self, channel: str) -> str:
        """The channel's idempotency bucket keys are this and a bucket number."""
        return f"{self.prefix}{{{channel}}}:i:"

    def _shard_channel(self, channel: str) -> bytes:
        return f"{self.prefix}{{{channel}}}:n".encode()

    def _presence_keys(self, channel: str) -> list[str]:
        tag = f"{self.prefix}{{{channel}}}"
        return [f"{tag}:pc", f"{tag}:pe", f"{tag}:pm", f"{tag}:ps"]

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._redis.ping()
            await self._redis.script_load(APPEND_LUA)
            await self._redis.script_load(READ_LUA)
            for script in self._presence_scripts.values():
                await self._redis.script_load(script.script)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise BackendError(f"cannot reach Redis at {self._where}: {exc}") from exc
        self._ensure_listener()
        try:
            async with asyncio.timeout(self.listen_timeout):
                await self._mapped.wait()
                for link in list(self._links.values()):
                    await link.up.wait()
        except TimeoutError:
            raise BackendError(f"the Redis listener could not connect to {self._where}") from None

    async def close(self) -> None:
        self._closed = True
        await asyncio.sleep(0)  # appends queued this turn start their round trip
        if self._flushes:  # appends under way finish (a publish is answered, not cut)
            await asyncio.wait(set(self._flushes), timeout=5)
        for chan in self._channels.values():
            self._forget(chan)
        self._channels.clear()
        self._by_shard.clear()
        await cancel_and_wait(self._listener, *(link.task for link in self._links.values()))
        self._listener = None
        self._links.clear()
        await self._redis.aclose()

    async def ping(self) -> None:
        with _wrapped("PING"):
            await self._redis.ping()

    # --- the log ---------------------------------------------------------------------

    async def append_many(self, messages: Sequence[Message]) -> list[Event]:
        """Appends that arrive while the loop runs one batch of callbacks (several
        publishes answered at once under load) share ONE pipelined round trip
        (``_flush_appends``): redis-py's cost per round trip (the pool, the pipeline, its
        timeouts) is most of a publish's CPU, and it is paid once. Each caller gets its own
        answers or its own error; per-channel order is the order of the calls."""
        if not messages:
            return []
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._appends.append((list(messages), answer))
        if len(self._appends) == 1:  # the first of this batch: flush after the others
            asyncio.get_running_loop().call_soon(self._flush_appends)
        with _wrapped("append"):
            results = await answer
        events = []
        for m, res in zip(messages, results, strict=True):
            if isinstance(res, Exception):
                with _wrapped("append"):
                    raise res
            if len(res) == 3:
                events.append(_event(m.channel, res[0], res[2]))
            else:  # new, or a repeat whose original was trimmed: same message by definition
                events.append(Event(m.channel, _id(res[0]), m.name, m.data, m.binary))
        return events

    def _flush_appends(self) -> None:
        batch, self._appends = self._appends, []
        task = asyncio.get_running_loop().create_task(self._append_batch(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _append_batch(self, batch: list[tuple[list[Message], asyncio.Future[Any]]]) -> None:
        try:
            answers = await self._append([m for messages, _ in batch for m in messages])
        except BaseException as exc:
            for _, answer in batch:
                if answer.done():
                    continue
                if isinstance(exc, Exception):
                    answer.set_exception(exc)
                else:
                    answer.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for messages, answer in batch:
            if not answer.done():  # (a caller that went away)
                answer.set_result(answers[start : start + len(messages)])
            start += len(messages)

    async def _append(self, messages: list[Message]) -> list[Any]:
        """One pipelined round trip: one EVALSHA per channel with that channel's messages
        in order; the answers in the order of ``messages`` (a failed channel's error in
        place of each of its answers)."""
        r = self.retention
        slack = min(100, r.max_len // 10) if r.approximate else 0
        max_age_ms = max(0, int(r.max_age * 1000))
        idem_ttl_ms = max(1, int(r.idempotency_ttl * 1000))
        expiry_ms = max_age_ms + int(EXPIRY_MARGIN * 1000) if max_age_ms else 0
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(messages):
            groups.setdefault(m.channel, []).append(i)
        calls = [
            (channel, [messages[i] for i in indexes], indexes)
            for channel, indexes in groups.items()
        ]
        args = (max(1, r.max_len), slack, max_age_ms, idem_ttl_ms, expiry_ms)
        results = await self._append_calls([c[:2] for c in calls], args)
        out: list[Any] = [[] for _ in messages]
        for (_, _, indexes), reply in zip(calls, results, strict=True):
            if isinstance(reply, Exception):  # that channel's call failed: its messages
                for i in indexes:
                    out[i] = reply
                continue
            for i, answer in zip(indexes, _append_answers(reply), strict=True):
                out[i] = answer
        return out

    async def _append_calls(
        self, calls: list[tuple[str, list[Message]]], settings: tuple[int, ...]
    ) -> list[Any]:
        """``APPEND_LUA`` once per (channel, its messages), pipelined: the replies, or
        each call's error; calls refused for a flushed script cache are made again."""
        sha = self._append_script.sha
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, messages in calls:
                keys = [self._stream_key(channel)]
                args: list[Any] = [self._shard_channel(channel), *settings]
                for m in messages:
                    key = m.idempotency_key
                    if key is not None and len(keys) == 1:
                        keys.append(self._idem_prefix(channel))
                    args += (
                        m.name,
                        m.data,
                        "1" if m.binary else "0",
                        idempotency_field(key) if key is not None else b"",
                    )
                # (a cluster pipeline has no evalsha method)
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return await self._redo_unloaded(
            results,
            [APPEND_LUA],
            lambda redo: self._append_calls([calls[c] for c in redo], settings),
            raise_errors=False,
        )

    async def _redo_unloaded(
        self,
        results: list[Any],
        scripts: Iterable[str | bytes | memoryview],
        redo: Callable[[list[int]], Awaitable[list[Any]]],
        *,
        raise_errors: bool = True,
    ) -> list[Any]:
        """The results of a pipeline of EVALSHA, those refused because the script cache
        was flushed (a restart, SCRIPT FLUSH) run again once ``scripts`` are loaded;
        raise the first error left (``raise_errors``), else leave each in its place."""
        missing = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
        if missing:
            for script in scripts:
                await self._redis.script_load(script)
            again = await redo(missing)
            for i, res in zip(missing, again, strict=True):
                results[i] = res
        for res in results:
            if isinstance(res, Exception) and raise_errors:
                raise res
        return results

    async def _run_read(self, channel: str, first: StreamId, count: int) -> list[Any]:
        keys = [self._stream_key(channel)]
        args: list[str | int] = [f"{first[0]}-{first[1]}", count]
        try:
            result: list[Any] = await self._read_script(keys=keys, args=args)
        except PoolExhausted:
            raise  # it waited for pool_timeout already: no second wait
        except (RedisConnectionError, RedisTimeoutError):  # reads are safe to retry once
            result = await self._read_script(keys=keys, args=args)
        return result

    async def read_after(self, channel: str, after: StreamId, limit: int) -> ReadResult:
        with _wrapped("read"):
            res = await self._run_read(channel, _successor(after), max(0, limit))
        if len(res) == 1:  # no stream: never written, or expired
            gap = expired_gap(channel, after, int(res[0]), self.retention.max_age)
            return ReadResult([], ZERO, gap)
        top, deleted = _id(res[0]), _id(res[1])
        events = [_event(channel, raw_id, fields) for raw_id, fields in res[2]]
        gap = Gap(channel, after, deleted) if deleted > after else None
        return ReadResult(events, top, gap)

    async def top(self, channel: str) -> StreamId:
        with _wrapped("read"):
            res = await self._run_read(channel, ZERO, 0)
        return _id(res[0]) if len(res) > 1 else ZERO

    # --- presence --------------------------------------------------------------------

    def _presence_call(
        self, name: str, channel: str, *args: bytes | str | int
    ) -> tuple[AsyncScript, list[str], list[bytes | str | int]]:
        ttl_ms = max(1, int(self.retention.presence_ttl * 1000))
        args_ = [self._shard_channel(channel), ttl_ms, *args]
        return self._presence_scripts[name], self._presence_keys(channel), args_

    async def _run_scripts(
        self, calls: list[tuple[AsyncScript, list[str], list[bytes | str | int]]]
    ) -> list[Any]:
        """One pipelined round trip of EVALSHA (script cache flushed: load, redo those).
        Only for idempotent scripts: a connection lost on the way is retried once."""
        try:
            results = await self._pipeline(calls)
        except PoolExhausted:
            raise
        except (RedisConnectionError, RedisTimeoutError):
            results = await self._pipeline(calls)
        scripts = {call[0].script for call in calls}
        return await self._redo_unloaded(
            results, scripts, lambda redo: self._pipeline([calls[i] for i in redo])
        )

    async def _pipeline(
        self, calls: list[tuple[AsyncScript, list[str], list[bytes | str | int]]]
    ) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def presence_join(self, entry: PresenceEntry) -> int:
        (seq,) = await self._join([entry])
        return int(seq)

    async def presence_join_many(self, entries: Sequence[PresenceEntry]) -> None:
        await self._join(entries)

    async def _join(self, entries: Sequence[PresenceEntry]) -> list[Any]:
        calls = [
            self._presence_call("join", e.channel, e.conn_id, e.subject.encode(), e.info)
            for e in entries
        ]
        if not calls:
            return []
        with _wrapped("presence join"):
            return await self._run_scripts(calls)

    async def presence_leave(self, channel: str, conn_id: str) -> None:
        with _wrapped("presence leave"):
            await self._run_scripts([self._presence_call("leave", channel, conn_id)])

    async def presence_refresh(
        self, entries: Sequence[PresenceEntry], sweep: Iterable[str] = ()
    ) -> list[PresenceEntry]:
        by_channel: dict[str, dict[str, PresenceEntry]] = {}
        for entry in entries:
            by_channel.setdefault(entry.channel, {})[entry.conn_id] = entry
        for channel in sweep:
            by_channel.setdefault(channel, {})
        if not by_channel:
            return []
        calls = [self._presence_call("refresh", c, *conns) for c, conns in by_channel.items()]
        with _wrapped("presence refresh"):
            results = await self._run_scripts(calls)
        missing = []
        for conns, absent in zip(by_channel.values(), results, strict=True):
            missing += [conns[raw.decode()] for raw in absent]
        return missing

    async def presence_snapshot(self, channel: str, limit: int) -> PresenceSnapshot:
        with _wrapped("presence snapshot"):
            (res,) = await self._run_scripts(
                [self._presence_call("snapshot", channel, max(0, limit))]
            )
        member_count, connection_count, seq = int(res[0]), int(res[1]), int(res[3])
        if int(res[2]):
            return PresenceSnapshot([], member_count, connection_count, True, seq)
        members = []
        flat = res[4]
        for subject, value in zip(flat[::2], flat[1::2], strict=True):
            count, _, info = value.partition(b" ")
            members.append((subject.decode(), info, int(count)))
        members.sort()
        return PresenceSnapshot(members, member_count, connection_count, False, seq)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        with _wrapped("presence stats"):
            (res,) = await self._run_scripts([self._presence_call("stats", channel)])
        return int(res[0]), int(res[1])

    # --- live notifications ----------------------------------------------------------

    def listener_status(self) -> ListenerStatus:
        up = bool(self._links) and all(link.up.is_set() for link in self._links.values())
        return ListenerStatus(up, self._reconnects, len(self._channels))

    async def listen(self, channel: str) -> None:
        self._raise_if_closed()
        chan = self._channels.get(channel)
        if chan is not None:  # listened already, or being listened by another caller
            try:
                await asyncio.shield(chan.ready)
            except asyncio.CancelledError:
                if not chan.ready.cancelled():
                    raise
                self._raise_if_closed()
            return
        chan = _Channel(channel, self._shard_channel(channel))
        self._channels[channel] = chan
        self._by_shard[chan.shard] = chan
        try:
            await self._start_listening(chan)
        except BaseException as exc:
            if self._channels.get(channel) is chan:
                await self.unlisten(channel)
            if not chan.ready.done():
                chan.ready.set_exception(BackendError(f"listening on {channel!r} failed"))
                chan.ready.exception()  # retrieved: no "never retrieved" warning
            if isinstance(exc, TimeoutError):
                raise BackendError(f"Redis confirmed no subscription to {channel!r}") from None
            if isinstance(exc, asyncio.CancelledError) and chan.subscribed.cancelled():
                self._raise_if_closed()
                return  # unlistened before it was in force
            raise
        if not chan.ready.done():
            chan.ready.set_result(None)

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise BackendError("the Redis backend is closed")

    async def _start_listening(self, chan: _Channel) -> None:
        self._ensure_listener()
        async with asyncio.timeout(self.listen_timeout):
            await self._mapped.wait()
        link = self._place(chan)
        if link.conn is not None:
            await self._subscribe(link, link.conn, [chan.shard])
        # else the link subscribes every channel of its own when it (re)connects
        async with asyncio.timeout(self.listen_timeout):
            await asyncio.shield(chan.subscribed)
        # Recorded after the subscription is confirmed: every event with a greater ID
        # is notified on the listener connection (or re-read after a reconnect).
        top = await self.top(chan.name)
        if self._channels.get(chan.name) is not chan:
            return  # unlistened meanwhile
        chan.last = top
        if chan.link is None or chan.confirmed != (chan.link, chan.link.generation):
            # the connection was lost, or the channel moved, since the confirmation:
            # re-read after ``top``
            self._start_catch_up(chan)
        else:
            self._release(chan)

    async def unlisten(self, channel: str) -> None:
        chan = self._channels.pop(channel, None)
        if chan is None:
            return
        self._by_shard.pop(chan.shard, None)
        self._forget(chan)
        link = chan.link
        if link is not None and link.conn is not None:
            link.unsubscribing[chan.shard] = link.unsubscribing.get(chan.shard, 0) + 1
            await self._send(link, link.conn, "SUNSUBSCRIBE", chan.shard)

    def _forget(self, chan: _Channel) -> None:
        if chan.catch_up is not None:
            chan.catch_up.cancel()
        if not chan.subscribed.done():
            chan.subscribed.cancel()
        if not chan.ready.done():
            chan.ready.cancel()

    # --- links: one listener connection per node ------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is not None or self._closed:
            return
        if self._cluster is None:
            self._listener = self._start_link(None).task
            self._mapped.set()
        else:
            self._listener = asyncio.create_task(
                self._follow_topology(self._cluster), name="pushsvc-redis-topology"
            )

    def _start_link(self, node: tuple[str, int] | None) -> _Link:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link(node)
            link.task = asyncio.create_task(self._run_listener(link), name="pushsvc-redis-listener")
        return link

    def _owner(self, shard: bytes) -> tuple[str, int] | None:
        """The node whose link carries ``shard``: the primary owning its slot."""
        if self._cluster is None:
            return None
        node = self._cluster.nodes_manager.get_node_from_slot(key_slot(shard))
        return (node.host, int(node.port))

    def _place(self, chan: _Channel) -> _Link:
        try:
            link = self._start_link(self._owner(chan.shard))
        except RedisClusterException as exc:  # the slot map has no owner for it
            raise BackendError(f"no Redis Cluster node serves {chan.name!r}: {exc}") from exc
        chan.link = link
        return link

    async def _follow_topology(self, cluster: RedisCluster) -> None:
        """Cluster: keep a link per primary and every channel on its slot owner's link.
        Runs on a hint (a dropped or refused subscription, a lost link) and every
        ``topology_interval`` seconds. The client's slot map is re-read only when a
        primary's CLUSTER SLOTS differs from it: redis-py's re-read recycles every
        command connection."""
        failures = 0
        while True:
            try:
                # (the client read the map at start)
                stale = self._mapped.is_set() and await self._map_is_stale(cluster)
                await self._remap(cluster, stale)
                failures = 0
            except Exception as exc:  # unreachable nodes, a map with holes: try again
                log.warning("reading the Redis Cluster slot map failed: %s", exc)
                failures += 1
            if failures:
                await asyncio.sleep(self._backoff(failures))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.topology_interval):
                    await self._remap_wanted.wait()
            if self._remap_wanted.is_set():
                # let a burst of hints (a whole slot's channels dropped at once) gather:
                # a rate limit, not a wait for a condition
                await asyncio.sleep(0.05)

    def _want_remap(self) -> None:
        self._remap_wanted.set()

    async def _map_is_stale(self, cluster: RedisCluster) -> bool:
        """Whether a primary (the first to answer, in random order) sees another owner
        than the client's slot map for any slot range."""
        primaries = cluster.get_primaries()
        random.shuffle(primaries)
        error: Exception | None = None
        for node in primaries:
            try:
                ranges = await cluster.execute_command("CLUSTER SLOTS", target_nodes=node)
                break
            except (RedisError, OSError) as exc:
                error = exc
        else:
            raise BackendError(f"no Redis Cluster primary answered CLUSTER SLOTS: {error}")
        for (start, _end), where in ranges.items():
            host, port = where["primary"]
            try:
                known = cluster.nodes_manager.get_node_from_slot(int(start))
            except RedisClusterException:
                return True
            if (host or node.host, int(port)) != (known.host, int(known.port)):
                return True
        return False

    async def _remap(self, cluster: RedisCluster, refresh: bool) -> None:
        self._remap_wanted.clear()
        if refresh:
            await cluster.nodes_manager.initialize()
        primaries = {(n.host, int(n.port)) for n in cluster.get_primaries()}
        for node in primaries:
            self._start_link(node)
        self._mapped.set()
        for chan in list(self._channels.values()):
            owner = self._owner(chan.shard)
            if chan.link is None:
                continue  # not placed yet: listen() places it
            if chan.misplaced or chan.link.node != owner:
                log.info("Redis listener: %r moves to %s:%s", chan.name, *(owner or ("?", 0)))
                await self._move(chan, self._start_link(owner))
        used = {chan.link for chan in self._channels.values()}
        for where, link in list(self._links.items()):
            if where not in primaries and link not in used:
                del self._links[where]  # no longer a primary, nothing on it
                await cancel_and_wait(link.task)

    async def _move(self, chan: _Channel, link: _Link) -> None:
        """Subscribe ``chan`` on ``link``; once confirmed, it is re-read from the last
        delivered ID with its notifications held back (see ``_confirmed``). Counted as a
        reconnect: what the process saw live of the channel may have a pause, and the hub
        trusts what it saw only while the count stands still."""
        chan.misplaced = False
        self._reconnects += 1
        chan.link = link
        if chan.catch_up is not None:
            chan.catch_up.cancel()
            chan.catch_up = None
        if chan.last is not None and chan.held is None:
            chan.held = []
        if link.conn is not None:
            await self._subscribe(link, link.conn, [chan.shard])

    async def _run_listener(self, link: _Link) -> None:
        """Keep one pub/sub connection up; replace it when it is lost or deaf."""
        failures = 0
        ever_connected = False
        while True:
            conn = self._new_listener_connection(link)
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                if ever_connected:
                    self._reconnects += 1
                    log.warning("Redis listener reconnected (%d reconnects)", self._reconnects)
                ever_connected = True
                failures = 0
                await self._serve(link, conn)
            except (RedisError, OSError, _Deaf) as exc:
                log.warning("Redis listener connection lost: %s", exc)
            except Exception:  # a bug must not leave the process deaf for good
                log.exception("Redis listener failed")
            finally:
                self._lost(link, conn)
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.disconnect(nowait=True))
            if self._cluster is not None:
                self._want_remap()  # a failover may have moved its slots elsewhere
            await asyncio.sleep(self._backoff(failures))
            failures += 1

    def _backoff(self, failures: int) -> float:
        """Full jitter, capped: up to 25 ms after the first failure, doubling."""
        return random.uniform(0, min(self.max_backoff, 0.025 * 2 ** min(failures, 16)))

    def _new_listener_connection(self, link: _Link) -> AbstractConnection:
        if link.node is None:
            assert isinstance(self._redis, aioredis.Redis)
            pool = self._redis.connection_pool
            kwargs, connection_class = dict(pool.connection_kwargs), pool.connection_class
        else:
            assert self._cluster is not None
            node = ClusterNode(*link.node, **self._cluster.nodes_manager.connection_kwargs)
            kwargs, connection_class = dict(node.connection_kwargs), node.connection_class
        kwargs.update(
            protocol=2,  # pub/sub messages as plain replies, not RESP3 pushes
            health_check_interval=0,  # our own PINGs; redis-py's would eat a message
            client_name="pushsvc-listener",
            socket_timeout=self.ping_timeout + 5,
            retry=Retry(NoBackoff(), 0),
        )
        conn: AbstractConnection = connection_class(**kwargs)
        return conn

    async def _serve(self, link: _Link, conn: AbstractConnection) -> None:
        link.conn = conn
        link.pending.clear()
        link.unsubscribing.clear()
        shards = [c.shard for c in self._channels.values() if c.link is link]
        link.up.set()
        if shards:
            if self._cluster is None:
                for i in range(0, len(shards), 500):
                    await self._subscribe(link, conn, shards[i : i + 500])
            else:
                await self._subscribe(link, conn, shards)
        reader = asyncio.create_task(self._read(link, conn))
        health = asyncio.create_task(self._health(link, conn))
        try:
            done, _ = await asyncio.wait({reader, health}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
        finally:
            for task in (reader, health):
                task.cancel()
            await asyncio.gather(reader, health, return_exceptions=True)

    def _lost(self, link: _Link, conn: AbstractConnection) -> None:
        if link.conn is conn:
            link.conn = None
        link.up.clear()
        link.generation += 1
        for chan in self._channels.values():
            if chan.link is link and chan.catch_up is not None:
                chan.catch_up.cancel()
                chan.catch_up = None

    async def _send(self, link: _Link, conn: AbstractConnection, *args: Any) -> bool:
        # Never let redis-py reconnect this connection behind our back.
        if link.conn is not conn or not conn.is_connected:
            return False
        try:
            await conn.send_command(*args, check_health=False)
        except (RedisError, OSError) as exc:
            log.debug("listener send failed: %s", exc)  # the reader notices and reconnects
            return False
        return True

    async def _subscribe(self, link: _Link, conn: AbstractConnection, shards: list[bytes]) -> None:
        for shard in shards:
            link.pending[shard] = link.pending.get(shard, 0) + 1
        if self._cluster is None:
            await self._send(link, conn, "SSUBSCRIBE", *shards)
            return
        # a cluster refuses one SSUBSCRIBE across slots: one command each, one write
        if link.conn is not conn or not conn.is_connected:
            return
        try:
            await conn.send_packed_command(
                conn.pack_commands([("SSUBSCRIBE", shard) for shard in shards]),
                check_health=False,
            )
        except (RedisError, OSError) as exc:
            log.debug("listener send failed: %s", exc)  # the reader notices and reconnects

    async def _health(self, link: _Link, conn: AbstractConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            link.pong.clear()
            await self._send(link, conn, "PING")
            await self._await_pong(link)

    async def _await_pong(self, link: _Link) -> None:
        """Wait for the PONG; raise ``_Deaf`` once nothing at all has been read from the
        connection for ``ping_timeout`` seconds of time the loop could have used.

        The wait is cut into steps of an eighth of the deadline, and a step counts for at
        most its own length however late the loop wakes us: when the process is at 100%
        CPU, the PONG can sit unread in the socket while wall time passes. Any reply read
        (a notification, a subscription) proves the connection alive and restarts the
        count. A saturated loop still detects a deaf connection, after 8 turns."""
        loop = asyncio.get_running_loop()
        step = self.ping_timeout / 8
        quiet = 0.0  # loop-usable time with nothing read
        reads = link.reads
        lag = 0.0
        while not link.pong.is_set():
            started = loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step):
                    await link.pong.wait()
            if link.pong.is_set():
                break
            elapsed = loop.time() - started
            lag = max(lag, elapsed - step)
            if link.reads != reads:
                reads, quiet = link.reads, 0.0
            else:
                quiet += min(elapsed, step)
            if quiet >= self.ping_timeout:
                raise _Deaf(f"no PONG and nothing read within {self.ping_timeout} s")
        if lag > step:
            log.debug("Redis listener PONG late: the event loop lagged up to %.2f s", lag)

    async def _read(self, link: _Link, conn: AbstractConnection) -> None:
        while True:
            try:
                msg = await conn.read_response(timeout=math.inf)
            except ResponseError as exc:  # an error reply: MOVED to an SSUBSCRIBE, …
                if self._cluster is None:
                    raise
                link.reads += 1
                self._refused(link, exc)
                continue
            link.reads += 1
            if msg == b"PONG":  # a connection with no subscription answers a plain PONG
                link.pong.set()
                continue
            if not isinstance(msg, list) or not msg:
                continue
            kind = msg[0]
            if kind == b"smessage":
                chan = self._by_shard.get(msg[1])
                if chan is not None:
                    if msg[2][:1] == b"p":  # a presence diff (event notes start with a digit)
                        self._deliver_presence(chan, msg[2])
                        continue
                    try:
                        event = _notification(chan.name, msg[2])
                    except (ValueError, UnicodeDecodeError):
                        log.error("ignored a malformed notification on %r", msg[1])
                        continue
                    if chan.held is not None:
                        chan.held.append(event)
                    else:
                        self._deliver(chan, event)
            elif kind == b"ssubscribe":
                self._confirmed(link, msg[1])
            elif kind == b"sunsubscribe":
                self._unsubscribed(link, msg[1])
            elif kind == b"pong":
                link.pong.set()

    def _refused(self, link: _Link, exc: ResponseError) -> None:
        """A cluster node refused a subscription (MOVED: the slot is elsewhere; or the
        cluster is down): the channels still unconfirmed on ``link`` (those of the MOVED
        slot only, when it says) are placed again from a fresh slot map."""
        slot = getattr(exc, "slot_id", None)
        log.info("Redis refused a subscription on %s: %s", link.node, exc)
        for chan in self._channels.values():
            if (
                chan.link is link
                and chan.shard in link.pending
                and (slot is None or key_slot(chan.shard) == int(slot))
            ):
                link.pending.pop(chan.shard, None)
                chan.misplaced = True
        self._want_remap()

    def _unsubscribed(self, link: _Link, shard: bytes) -> None:
        left = link.unsubscribing.get(shard, 0)
        if left > 0:  # the answer to our own SUNSUBSCRIBE
            if left > 1:
                link.unsubscribing[shard] = left - 1
            else:
                del link.unsubscribing[shard]
            return
        # Redis dropped it: its slot migrated, or the node is no longer a primary
        chan = self._by_shard.get(shard)
        if chan is not None and chan.link is link:
            log.info("Redis dropped the subscription to %r (slot moved)", chan.name)
            chan.misplaced = True
            if chan.last is not None and chan.held is None:
                chan.held = []  # until it is re-read where it lives now
            self._want_remap()

    def _deliver_presence(self, chan: _Channel, payload: bytes) -> None:
        try:
            diff = _presence_note(chan.name, payload)
        except (ValueError, UnicodeDecodeError):
            log.error("ignored a malformed presence note on %r", chan.name)
            return
        if self._presence_sink is not None:
            try:
                self._presence_sink(diff)
            except Exception:
                log.exception("the presence sink failed on %r", chan.name)

    def _confirmed(self, link: _Link, shard: bytes) -> None:
        left = link.pending.get(shard, 0) - 1
        if left > 0:
            link.pending[shard] = left
            return
        link.pending.pop(shard, None)
        chan = self._by_shard.get(shard)
        if chan is None or chan.link is not link:
            return  # unlistened, or moved to another node meanwhile
        chan.confirmed = (link, link.generation)
        if not chan.subscribed.done():
            chan.subscribed.set_result(None)
        if chan.last is not None:
            # re-subscribed after a lost connection or a move: hold notifications back,
            # re-read
            if chan.held is None:
                chan.held = []
            self._start_catch_up(chan)

    def _start_catch_up(self, chan: _Channel) -> None:
        if chan.catch_up is not None:
            chan.catch_up.cancel()
        chan.catch_up = asyncio.create_task(self._catch_up(chan))

    async def _catch_up(self, chan: _Channel) -> None:
        """Deliver what the log holds after ``chan.last``, then the held notifications."""
        failures = 0
        while True:
            assert chan.last is not None
            try:
                res = await self.read_after(chan.name, chan.last, CATCH_UP_PAGE)
            except Exception as exc:
                log.warning("re-reading %r after a reconnect failed: %s", chan.name, exc)
                await asyncio.sleep(self._backoff(failures))
                failures += 1
                continue
            if self._channels.get(chan.name) is not chan:
                return
            if res.gap is not None:
                log.warning(
                    "listener on %r missed trimmed events up to %s-%s",
                    chan.name,
                    *res.gap.until,
                )
                if self._gap_sink is not None:
                    try:
                        self._gap_sink(res.gap)
                    except Exception:
                        log.exception("the gap sink failed on %r", chan.name)
            for event in res.events:
                self._deliver(chan, event)
            if len(res.events) < CATCH_UP_PAGE:
                break
        chan.catch_up = None
        self._release(chan)

    def _release(self, chan: _Channel) -> None:
        held, chan.held = chan.held or [], None
        for event in held:
            self._deliver(chan, event)

    def _deliver(self, chan: _Channel, event: Event) -> None:
        if chan.last is not None and event.id <= chan.last:
            return
        chan.last = event.id
        if self._sink is not None:
            try:
                self._sink(event)
            except Exception:
                log.exception("the event sink failed on %s", event.id_str)
