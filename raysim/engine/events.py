"""The event-queue clock of asynchronous FL: when devices start, finish, and when the server steps.

`EventQueue` is the one event queue of both asynchronous modes: events in simulated-time order,
ties by a key; an event whose time is known only once its work is done (a gateway's cycle of
rounds) waits as pending with a lower bound (its start) and is resolved, in batches, once it
might be the next. `MAX_IDLE` bounds the empty tries in a row before a run stops (`NoDevices`).
`Timeline` below is the flat asynchronous mode's use of it; `raysim.engine.gateway_async` the
gateways'.

At most C devices train at once. A device is dispatched against the global version current at
that moment, finishes at its predicted time (cost model, jitter) unless its availability ends
first (then its update is lost), and whenever one finishes another is dispatched, so that C
stay busy. The server steps once `buffer` updates have arrived (FedBuff; 1 for FedAsync).

Nothing here depends on what training produces: the timeline is a pure function of the
scenario and seed, so it can run ahead of the numerics (the engine trains the devices of many
future steps together) and a run is bit-identical however its work is split.

    tl = Timeline(dispatch, concurrency=100, buffer=10)
    win = tl.next_window()          # the events up to server step 1
    [j.version for j in win.arrivals]
"""

from __future__ import annotations

import heapq
import math
from dataclasses import astuple, dataclass
from typing import Any, Callable, Optional, cast

from raysim.errors import NoDevices

FINISH, RETRY = 0, 1
# Empty tries in a row (slots nobody could take, gateway cycles nobody trained in) before a run
# gives up: at a 10 s poll, about 11 simulated days.
MAX_IDLE = 100_000


# An event as the queue holds it: (time, key, kind, item); a mode says what key and item are.
Queued = tuple[float, Any, int, Any]


class EventQueue:
    """Events `(time, key, kind, item)` popped in (time, key) order; pending events (time not
    known yet) resolved when they might come next.

        >>> q = EventQueue()
        >>> q.push(5.0, 1, FINISH, "a"); q.defer(2.0, 0, "b")
        >>> q.pop(lambda items: [(3.0, 0, FINISH, items[0] + "!")])
        (3.0, 0, 0, 'b!')
    """

    def __init__(self) -> None:
        self.heap: list[Queued] = []
        self.pending: dict[Any, tuple[float, Any]] = {}   # key -> (lower bound, item)

    def push(self, t: float, key: Any, kind: int, item: Any) -> None:
        """An event at a known time."""
        heapq.heappush(self.heap, (t, key, kind, item))

    def defer(self, bound: float, key: Any, item: Any) -> None:
        """An event no earlier than `bound`, whose time `resolve` (see `pop`) will tell."""
        self.pending[key] = (bound, item)

    def pop(self, resolve: Optional[Callable[[list[Any]], list[Queued]]] = None) -> Queued:
        """The next event. First the pending events that might come before every known one are
        resolved (in key order, all of them in one `resolve(items)` call, which returns their
        events), until none might."""
        while self.pending:
            bound = self.heap[0][0] if self.heap else math.inf
            due = sorted(k for k, (b, _) in self.pending.items() if b <= bound)
            if not due:
                break
            assert resolve is not None, "pending events need a resolve"
            for ev in resolve([self.pending.pop(k)[1] for k in due]):
                self.push(*ev)
        return heapq.heappop(self.heap)

    def __len__(self) -> int:
        return len(self.heap) + len(self.pending)


@dataclass(frozen=True)
class Job:
    """One device's dispatch: what it trains, from which version, and when it finishes."""

    job: int            # dispatch number: the device's random stream for this training
    device: int         # device id
    pos: int            # its fleet position
    rate: float
    version: int        # global version downloaded (server steps taken at dispatch)
    t_dispatch: float   # simulated seconds
    t_download: float
    t_compute: float
    t_upload: float
    samples: int
    lost: bool          # its availability ends before it finishes: the update never arrives
    w_download: float = 0.0  # seconds of the transfers a duty-cycled radio waits off air
    w_upload: float = 0.0

    @property
    def finish(self) -> float:
        return self.t_dispatch + self.t_download + self.t_compute + self.t_upload


@dataclass(frozen=True)
class Refusal:
    """A dispatch attempt that found the device unable to train (no rate fits, no data)."""

    job: int
    device: int
    pos: int
    version: int
    t: float
    reason: str


@dataclass(frozen=True)
class Dispatched:
    """What a dispatcher returns: the jobs started and the attempts refused."""

    jobs: list[Job]
    refused: list[Refusal]
    attempts: int        # job numbers consumed (started + refused)


# A queued event: (time, seq, kind, job); the job of a FINISH event, None for a RETRY.
Event = tuple[float, int, int, Optional[Job]]

# dispatch(n, t, version, first_job, busy device ids) -> Dispatched (at most n jobs)
Dispatch = Callable[[int, float, int, int, frozenset[int]], Dispatched]


@dataclass
class Window:
    """The events that lead up to server step `step` and are concluded by it."""

    step: int
    start: float                 # simulated time of the previous step
    time: float                  # simulated time of this step
    arrivals: list[Job]          # updates that go into this step
    lost: list[Job]              # went offline while training
    refused: list[Refusal]
    dispatched: int              # jobs started in this window
    state: Optional["Snapshot"] = None  # the timeline after this step (checkpoints)


@dataclass(frozen=True)
class Snapshot:
    """The timeline's state at one moment (`Timeline.snapshot`); `plain()` is what a checkpoint holds."""

    time: float
    steps: int
    next_job: int
    seq: int
    heap: tuple[Event, ...]
    refused: tuple[Refusal, ...]
    dispatched: int
    idle_polls: int
    started: bool

    def versions(self) -> set[int]:
        """Global versions the jobs in flight started from."""
        return {cast(Job, e[3]).version for e in self.heap if e[2] == FINISH}

    def plain(self) -> dict[str, Any]:
        return {"time": self.time, "steps": self.steps, "next_job": self.next_job, "seq": self.seq,
                "heap": [[t, s, k, list(astuple(j)) if j is not None else None] for t, s, k, j in self.heap],
                "refused": [list(astuple(r)) for r in self.refused], "dispatched": self.dispatched,
                "idle_polls": self.idle_polls, "started": self.started}


class Timeline:
    """The event queue: `next_window()` advances to the next server step."""

    def __init__(self, dispatch: Dispatch, concurrency: int, buffer: int, poll_s: float = 10.0,
                 max_idle_polls: int = MAX_IDLE) -> None:
        self.dispatch = dispatch
        self.concurrency = concurrency
        self.buffer = buffer
        self.poll_s = poll_s
        self.max_idle_polls = max_idle_polls
        self.time = 0.0
        self.steps = 0
        self.next_job = 0
        self.seq = 0
        self.queue = EventQueue()        # (time, seq, kind, job or None)
        self.busy: set[int] = set()
        self.refused: list[Refusal] = []  # refusals since the last step
        self.dispatched = 0               # jobs started since the last step
        self.idle_polls = 0
        self.started = False

    @property
    def heap(self) -> list[Event]:
        """The queued events (time, seq, kind, job or None)."""
        return cast(list[Event], self.queue.heap)

    # ------------------------------------------------------------------ events
    def _push(self, t: float, kind: int, job: Optional[Job]) -> None:
        self.queue.push(t, self.seq, kind, job)
        self.seq += 1

    def _fill(self, n: int, t: float, version: int) -> None:
        """Dispatch up to n devices at time t; slots nobody could take are polled again later."""
        out = self.dispatch(n, t, version, self.next_job, frozenset(self.busy))
        self.next_job += out.attempts
        self.refused.extend(out.refused)
        for j in out.jobs:
            self.busy.add(j.device)
            # A lost update is noticed when it would have arrived (the device just never reports).
            self._push(j.finish, FINISH, j)
        self.dispatched += len(out.jobs)
        for _ in range(n - len(out.jobs)):
            self._push(t + self.poll_s, RETRY, None)
        if out.jobs:
            self.idle_polls = 0

    def next_window(self) -> Window:
        """Run the queue until the next server step and return what happened."""
        if not self.started:
            self.started = True
            self._fill(self.concurrency, 0.0, 0)
        step = self.steps + 1
        start = self.time
        arrivals: list[Job] = []
        lost: list[Job] = []
        while len(arrivals) < self.buffer:
            t, _, kind, job = self.queue.pop()
            self.time = t
            if kind == RETRY:
                self.idle_polls += 1
                if self.idle_polls > self.max_idle_polls:
                    raise NoDevices(f"no device could be dispatched for {self.idle_polls * self.poll_s:g} simulated "
                                    f"seconds (by t={t:g} s): is every device offline for good?")
                self._fill(1, t, self.steps)
                continue
            job = cast(Job, job)  # a FINISH event carries its job
            self.busy.discard(job.device)
            if job.lost:
                lost.append(job)
            else:
                arrivals.append(job)
                if len(arrivals) == self.buffer:
                    break  # the server steps now; the free slot gets the new version
            self._fill(1, t, self.steps)
        refused, dispatched = self.refused, self.dispatched
        self.refused, self.dispatched = [], 0
        self.steps = step
        self._fill(1, self.time, step)  # the slot of the arrival that completed the step
        return Window(step, start, self.time, arrivals, lost, refused, dispatched, self.snapshot())

    # ------------------------------------------------------------------ checkpoints
    def in_flight(self) -> list[Job]:
        """Jobs dispatched and not yet concluded."""
        return [cast(Job, e[3]) for e in self.heap if e[2] == FINISH]

    def snapshot(self) -> "Snapshot":
        """The queue as it is now, cheaply (jobs are immutable: a shallow copy suffices)."""
        return Snapshot(self.time, self.steps, self.next_job, self.seq, tuple(self.heap), tuple(self.refused),
                        self.dispatched, self.idle_polls, self.started)

    def state(self) -> dict[str, Any]:
        """The queue as plain lists and numbers (safe to save with torch's weights-only pickler)."""
        return self.snapshot().plain()

    def load_state(self, st: dict[str, Any]) -> None:
        """Restore from `state()`."""
        self.time = float(st["time"])
        self.steps = int(st["steps"])
        self.next_job = int(st["next_job"])
        self.seq = int(st["seq"])
        self.queue = EventQueue()
        self.queue.heap = [(float(t), int(s), int(k), Job(*j) if j is not None else None) for t, s, k, j in st["heap"]]
        heapq.heapify(self.queue.heap)
        self.busy = {cast(Job, e[3]).device for e in self.heap if e[2] == FINISH}
        self.refused = [Refusal(*r) for r in st["refused"]]
        self.dispatched = int(st["dispatched"])
        self.idle_polls = int(st["idle_polls"])
        self.started = bool(st["started"])
