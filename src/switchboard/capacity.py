"""Fleet capacity for admission control: what workers publish, and how free slots are counted.

Every worker keeps one field of the fleet hash up to date (on every heartbeat, and at once
when it claims or releases a call or crosses its load threshold):
`"<capacity> <live> <draining> <load‰> <overloaded> <deadline_ms>"` (older workers publish
the first three only). The deadline is stamped by Redis itself (Lua `TIME`), and readers
compare it with Redis' clock too, so clock skew between hosts can neither keep a dead worker
alive nor bury a live one. Edges publish `"<load‰> <overloaded> <deadline_ms>"` in their own
hash: a call needs an edge that is not saturated as much as a worker slot.

    free = Σ capacity of live workers neither draining nor over their load threshold
           − calls claimed from the dispatch stream (pending in its consumer group)
           − calls announced on it that no worker has claimed yet
           − calls the TwiML endpoint admitted whose stream is not announced yet (reservations)

Calls in use are counted from the dispatch stream, not from what workers report: a claim
moves an entry from unclaimed to pending atomically, so a call is never counted nowhere
between its claim and its worker's next report; and the calls of a dead or draining worker
stay counted until they end, since they are about to take slots on the others.
The control API reserves a slot for each call its TwiML admits (and keeps a FIFO of callers
on hold in queue mode); the edge drops the reservation once the call is announced, so the
call is counted twice for a moment rather than not at all. All admission keys share one
hash tag, so each script runs on one Redis Cluster slot. `FleetView`, `parse_worker`,
`fleet_view` and `dispatch_backlog` are pure; the async functions are the only Redis I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .keys import DISPATCH_GROUP, Keys

# An admitted call's stream normally starts within a second or two of the TwiML answer; a
# reservation older than this is dropped (Twilio gave up, or the caller hung up first).
RESERVATION_TTL_MS = 10_000


# --- pure ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkerLoad:
    worker_id: str
    capacity: int
    live: int
    draining: bool
    deadline_ms: int
    load: float = 0.0  # measured (switchboard.loadmeter): 1.0 = a full core or 20 ms of event-loop lag
    overloaded: bool = False  # past its own threshold: it takes no new call

    @property
    def accepting(self) -> bool:
        return not (self.draining or self.overloaded)

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.live) if self.accepting else 0


@dataclass(frozen=True, slots=True)
class FleetView:
    workers: int = 0  # live workers, draining ones included
    capacity: int = 0  # slots of live, non-draining workers
    live: int = 0  # calls the live workers report holding (for information)
    claimed: int = 0  # dispatch entries claimed by any worker, live or not, and not ended
    unclaimed: int = 0  # announced on the dispatch stream, not claimed yet
    reserved: int = 0  # admitted by TwiML, not announced yet
    overloaded: int = 0  # live workers past their load threshold (their slots are not counted)
    edges: int = 0  # live edges that publish their load
    edges_overloaded: int = 0

    @property
    def edges_saturated(self) -> bool:
        """Every edge is past its load threshold: no new stream would be served well."""
        return self.edges > 0 and self.edges_overloaded == self.edges

    @property
    def unreserved_free(self) -> int:
        """Free slots before reservations: what the TwiML admission script starts from."""
        free = self.capacity - self.claimed - self.unclaimed
        return min(free, 0) if self.edges_saturated else free

    @property
    def free(self) -> int:
        """Slots a new call may take now; negative when more calls wait than slots exist."""
        return self.unreserved_free - self.reserved


def parse_worker(worker_id: bytes | str, value: bytes | str) -> WorkerLoad | None:
    """One fleet hash field; None for a value this version does not understand."""
    raw = value.decode(errors="replace") if isinstance(value, bytes) else value
    parts = raw.split()
    if len(parts) not in (4, 6):
        return None
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        return None
    name = worker_id.decode(errors="replace") if isinstance(worker_id, bytes) else worker_id
    if len(numbers) == 4:  # a worker from before load was published
        capacity, live, draining, deadline = numbers
        return WorkerLoad(name, capacity, live, draining != 0, deadline)
    capacity, live, draining, permille, overloaded, deadline = numbers
    return WorkerLoad(name, capacity, live, draining != 0, deadline, permille / 1000, overloaded != 0)


def parse_edge(value: bytes | str) -> tuple[bool, int] | None:
    """(overloaded, deadline_ms) of one edge field; None if unreadable."""
    parts = (value.decode(errors="replace") if isinstance(value, bytes) else value).split()
    if len(parts) != 3:
        return None
    try:
        _permille, overloaded, deadline = (int(part) for part in parts)
    except ValueError:
        return None
    return overloaded != 0, deadline


def fleet_view(
    fields: Sequence[Any], now_ms: int, *, claimed: int = 0, unclaimed: int = 0, reserved: int = 0,
    edge_fields: Sequence[Any] = (),
) -> FleetView:
    """The fleet from flat HGETALL replies [id, value, id, value, ...] at Redis time `now_ms`."""
    workers = capacity = live = overloaded = 0
    for load in _loads(fields):
        if load.deadline_ms < now_ms:
            continue  # stopped publishing: dead, frozen or partitioned
        workers += 1
        live += load.live
        overloaded += load.overloaded
        if load.accepting:
            capacity += load.capacity
    edges = edges_overloaded = 0
    for i in range(1, len(edge_fields), 2):
        edge = parse_edge(edge_fields[i])
        if edge is not None and edge[1] >= now_ms:
            edges += 1
            edges_overloaded += edge[0]
    return FleetView(workers, capacity, live, max(0, claimed), max(0, unclaimed), max(0, reserved),
                     overloaded, edges, edges_overloaded)


def _loads(fields: Sequence[Any]) -> Iterable[WorkerLoad]:
    for i in range(0, len(fields) - 1, 2):
        load = parse_worker(fields[i], fields[i + 1])
        if load is not None:
            yield load


def dispatch_backlog(groups: Sequence[dict[str, Any]], length: int, group: str = DISPATCH_GROUP) -> tuple[int, int]:
    """(claimed, unclaimed) dispatch entries, from XINFO GROUPS and XLEN.

    `lag` is exact but Redis cannot compute it once an entry that was never delivered has
    been deleted; then every entry left is either pending (claimed) or unclaimed, because
    workers delete an entry when its call ends.
    """
    for info in groups:
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) != group:
            continue
        claimed = max(0, int(info.get("pending") or 0))
        lag = info.get("lag")
        if lag is not None:
            return claimed, max(0, int(lag))
        return claimed, max(0, length - claimed)
    return 0, max(0, length)  # no group yet: nobody has claimed anything


# --- Redis ------------------------------------------------------------------------------------------
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS[1] fleet; ARGV: worker id, "capacity live draining", ttl ms.
_PUBLISH = _NOW + """
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + ttl))
if redis.call('PTTL', KEYS[1]) < 2 * ttl then redis.call('PEXPIRE', KEYS[1], 2 * ttl) end
return now
"""

# KEYS[1] fleet, KEYS[2] reservations, KEYS[3] edges; ARGV: reservation ttl ms, callSid whose
# reservation to look up (or ""). Drops fields of workers and edges past their deadline
# (atomically: one that publishes again is never lost) and lapsed reservations.
_READ = _NOW + """
local function live(key)
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local deadline = tonumber(string.match(fields[i + 1], '(%d+)$'))
    if deadline == nil or deadline < now then redis.call('HDEL', key, fields[i]) end
  end
  return fields
end
local fields = live(KEYS[1])
local edges = live(KEYS[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))
local held = 0
if ARGV[2] ~= '' and redis.call('ZSCORE', KEYS[2], ARGV[2]) then held = 1 end
return {now, redis.call('ZCARD', KEYS[2]), held, fields, edges}
"""

# KEYS: reservations, queue, queue seen. ARGV: callSid, free slots before reservations,
# "1" to queue the caller when there is no slot, reservation ttl ms, queue stale ms.
# First come, first served: a caller gets a slot only if fewer callers wait ahead of it
# than there are slots; a caller who stops polling (hung up) leaves the queue.
_ADMIT = _NOW + """
local sid, slots, ttl, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - stale)
for _, member in ipairs(gone) do redis.call('ZREM', KEYS[2], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - stale)
local avail = slots - redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], sid)
local ahead = rank or redis.call('ZCARD', KEYS[2])
local since = redis.call('ZSCORE', KEYS[2], sid)
local waited = 0
if since then waited = now - tonumber(since) end
if ahead < avail then
  if rank then
    redis.call('ZREM', KEYS[2], sid)
    redis.call('ZREM', KEYS[3], sid)
  end
  redis.call('ZADD', KEYS[1], now, sid)
  if redis.call('PTTL', KEYS[1]) < 2 * ttl then redis.call('PEXPIRE', KEYS[1], 2 * ttl) end
  return {1, ahead, waited, avail, redis.call('ZCARD', KEYS[2])}
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], 'NX', now, sid)
  redis.call('ZADD', KEYS[3], now, sid)
  redis.call('PEXPIRE', KEYS[2], 2 * stale)
  redis.call('PEXPIRE', KEYS[3], 2 * stale)
end
return {0, ahead, waited, avail, redis.call('ZCARD', KEYS[2])}
"""


def publish_command(keys: Keys, worker_id: str, capacity: int, live: int, draining: bool, ttl_ms: int,
                    load: float = 0.0, overloaded: bool = False) -> tuple[Any, ...]:
    """EVAL arguments that publish one worker's slots and load (for `pipe.eval(*args)` or `redis.eval(*args)`)."""
    value = f"{capacity} {live} {int(draining)} {round(load * 1000)} {int(overloaded)}"
    return (_PUBLISH, 1, keys.admission_fleet(), worker_id, value, max(1, ttl_ms))


async def publish(
    redis: Any, keys: Keys, worker_id: str, capacity: int, live: int, draining: bool, ttl_ms: int
) -> None:
    await redis.eval(*publish_command(keys, worker_id, capacity, live, draining, ttl_ms))


def publish_edge_command(keys: Keys, edge_id: str, load: float, overloaded: bool, ttl_ms: int) -> tuple[Any, ...]:
    """EVAL arguments that publish one edge's load."""
    return (_PUBLISH, 1, keys.admission_edges(), edge_id, f"{round(load * 1000)} {int(overloaded)}", max(1, ttl_ms))


async def withdraw(redis: Any, keys: Keys, worker_id: str) -> None:
    """A stopping worker leaves the fleet at once instead of at its deadline."""
    await redis.hdel(keys.admission_fleet(), worker_id)


async def read(redis: Any, keys: Keys, *, reservation_of: str = "") -> tuple[FleetView, bool]:
    """The fleet now, and whether the call `reservation_of` (a callSid) holds a reservation."""
    pipe = redis.pipeline(transaction=False)
    pipe.eval(_READ, 3, keys.admission_fleet(), keys.admission_reserved(), keys.admission_edges(),
              RESERVATION_TTL_MS, reservation_of)
    pipe.xinfo_groups(keys.dispatch())
    pipe.xlen(keys.dispatch())
    script, groups, length = await pipe.execute(raise_on_error=False)
    if isinstance(script, Exception):
        raise script
    if isinstance(groups, Exception):  # no dispatch stream yet (no worker ever started)
        groups = []
    if isinstance(length, Exception):
        raise length
    now_ms, reserved, held, fields, edge_fields = script
    claimed, unclaimed = dispatch_backlog(groups, int(length))
    view = fleet_view(fields, int(now_ms), claimed=claimed, unclaimed=unclaimed, reserved=int(reserved),
                      edge_fields=edge_fields)
    return view, bool(held)


@dataclass(frozen=True, slots=True)
class Ticket:
    admitted: bool
    ahead: int  # callers queued ahead of this one (0 = next in line)
    waited_ms: int  # time in the queue so far (0 if it never queued)
    available: int  # free slots after reservations when it was decided
    queue_length: int


async def admit(redis: Any, keys: Keys, call_sid: str, unreserved_free: int, *, queue: bool, stale_ms: int) -> Ticket:
    """Reserve a slot for this call if one is free and nobody waits ahead of it; else (queue=True) hold its place."""
    reply = await redis.eval(
        _ADMIT, 3, keys.admission_reserved(), keys.admission_queue(), keys.admission_queue_seen(),
        call_sid, unreserved_free, "1" if queue else "0", RESERVATION_TTL_MS, max(1000, stale_ms),
    )
    admitted, ahead, waited, available, length = (int(x) for x in reply)
    return Ticket(admitted == 1, ahead, waited, available, length)


def drop_reservation(pipe: Any, keys: Keys, call_sid: str) -> None:
    """Queue the ZREM that ends a call's reservation, in the pipeline that announces the call."""
    pipe.zrem(keys.admission_reserved(), call_sid)


async def leave_queue(redis: Any, keys: Keys, call_sid: str) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.zrem(keys.admission_queue(), call_sid)
    pipe.zrem(keys.admission_queue_seen(), call_sid)
    await pipe.execute()
