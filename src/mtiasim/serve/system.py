"""A discrete-event simulation of a server answering queries.

A query arrives, waits for a host core to pre-process it (`host.preprocess_us_per_query`), then joins the open
batch of the dynamic batcher. A batch closes when the next query would not fit `max_batch` samples, when no
query could fit any more, or `window_s` after it opened; it goes to the card with the fewest samples queued or
running (join the shortest queue). Then, per batch: a host core runs the call's host part (the engine's
`host_s`), the inputs cross the switch tree to the card, the card runs the batch (the engine's `device_s` of the
batch's bucket; one batch at a time, in arrival order), the outputs cross back, and a host core answers each of
its queries (`host.postprocess_us_per_query`). A query's latency is its answer time less its arrival time.
Each card has a queue on the host: a batch leaves it (for its host part and transfer) when the card has fewer
than `PREFETCH_BATCHES` batches between leaving that queue and finishing on the card, so the next batch's
inputs are prepared and sent while the card runs the current one (double buffering).

Shared resources, with the chip engine's disciplines:
- the host CPU cores: one pool of FIFO servers, work on formed batches before new queries' pre-processing;
- each card: a FIFO single server (a sharded model's lookups before its dense parts);
- the links (host memory, each socket's root link, each leaf switch's uplink, each card's link; one resource
  per direction of a link, host memory shared by both): every transfer is a flow over its path, and the flows
  in progress share the links by max-min fairness (progressive filling, as the chip engine shares SRAM slices,
  LPDDR5 channels and NoC lanes), re-rated whenever a flow starts or ends; a transfer first waits the card's
  PCIe latency (`host.latency_ns` of the chip).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mtiasim.hw import Server
from mtiasim.serve.costs import BatchCosts
from mtiasim.serve.queries import QUERY_SIZE_QUANTILES, Queries
from mtiasim.serve.sharded import ShardedCosts

PREFETCH_BATCHES = 2  # assumed: double-buffered inputs per card (one batch running, the next on its way)


class EventLoop:
    def __init__(self) -> None:
        self.t = 0.0
        self._heap: list = []
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable, *args: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn, args))

    def run(self) -> None:
        while self._heap:
            t, _, fn, args = heapq.heappop(self._heap)
            self.t = t
            fn(*args)


class CorePool:
    """`cores` identical servers taking jobs first come, first served within two classes: work on batches
    already formed (`urgent`: a call's host part, answering queries) goes before new queries' pre-processing,
    so that a burst of arrivals (offline: all at once) does not starve the cards."""

    def __init__(self, loop: EventLoop, cores: int) -> None:
        self.loop = loop
        self.free = cores
        self.urgent: deque = deque()
        self.queue: deque = deque()
        self.busy_s = 0.0

    def submit(self, seconds: float, done: Callable[[], None], *, urgent: bool = False) -> None:
        if self.free:
            self._start(seconds, done)
        else:
            (self.urgent if urgent else self.queue).append((seconds, done))

    def _start(self, seconds: float, done: Callable[[], None]) -> None:
        self.free -= 1
        self.busy_s += seconds
        self.loop.at(self.loop.t + seconds, self._finish, done)

    def _finish(self, done: Callable[[], None]) -> None:
        self.free += 1
        if self.urgent or self.queue:
            self._start(*(self.urgent or self.queue).popleft())
        done()


def maxmin_rates(paths: list[tuple[int, ...]], capacity: list[float]) -> list[float]:
    """Max-min fair rates of flows over links (progressive filling): all unfixed flows rise together until a
    link fills; the flows crossing it stop there; repeat with the capacity left. (Plain Python: a handful of
    flows at a time, where numpy's per-call cost would dominate.)"""
    rate = [0.0] * len(paths)
    left = {link: capacity[link] for path in paths for link in path}
    live = set(range(len(paths)))
    while live:
        count: dict[int, int] = {}
        for f in live:
            for link in paths[f]:
                count[link] = count.get(link, 0) + 1
        level = min(left[link] / n for link, n in count.items())
        full = {link for link, n in count.items() if left[link] / n <= level * (1 + 1e-12)}
        fixed = [f for f in live if not full.isdisjoint(paths[f])]
        for f in fixed:
            rate[f] = level
            for link in paths[f]:
                left[link] = max(0.0, left[link] - level)
        live.difference_update(fixed)
    return rate


class FlowNetwork:
    """Transfers over shared links, max-min fair; `moved[link]` counts the bytes each link carried."""

    def __init__(self, loop: EventLoop, names: list[str], capacity_bytes_per_s: list[float]) -> None:
        self.loop = loop
        self.names = names
        self.capacity = [float(c) for c in capacity_bytes_per_s]
        self.moved = np.zeros(len(names))
        self._flows: dict[int, list] = {}  # id -> [path, bytes left, rate, done]
        self._ids = itertools.count()
        self._last = 0.0
        self._version = 0

    def transfer(
        self, path: tuple[int, ...], nbytes: int, latency_s: float, done: Callable[[], None]
    ) -> None:
        if nbytes <= 0:
            self.loop.at(self.loop.t + latency_s, done)
            return
        self.loop.at(self.loop.t + latency_s, self._join, path, float(nbytes), done)

    def _join(self, path: tuple[int, ...], nbytes: float, done: Callable[[], None]) -> None:
        self._advance()
        self._flows[next(self._ids)] = [path, nbytes, 0.0, done]
        self._rerate()

    def _advance(self) -> None:
        dt = self.loop.t - self._last
        self._last = self.loop.t
        if dt <= 0:
            return
        for flow in self._flows.values():
            moved = min(flow[1], flow[2] * dt)
            flow[1] -= moved
            for link in flow[0]:
                self.moved[link] += moved

    def _rerate(self) -> None:
        ids = list(self._flows)
        rates = maxmin_rates([self._flows[i][0] for i in ids], self.capacity)
        soonest = np.inf
        for i, r in zip(ids, rates, strict=True):
            self._flows[i][2] = r
            soonest = min(soonest, max(0.0, self._flows[i][1]) / r)
        self._version += 1
        if ids:
            self.loop.at(self.loop.t + soonest, self._on_done, self._version)

    def _on_done(self, version: int) -> None:
        if version != self._version:  # re-rated since: a later event stands for this one
            return
        self._advance()
        # done: no bytes left, or fewer than the rate moves in the clock's resolution (float dust that would
        # otherwise schedule its end at this same instant forever)
        dust_s = max(1e-12, 4 * math.ulp(self.loop.t))
        finished = [i for i, f in self._flows.items() if f[1] <= f[2] * dust_s]
        dones = [self._flows.pop(i)[3] for i in finished]
        self._rerate()
        for done in dones:
            done()


@dataclass
class Batch:
    queries: list[int]
    samples: int
    card: int = -1
    bucket: int = 0


@dataclass
class Job:
    """Work on one card: `seconds` of the card (`joules` above idle) for `batch`, then `done(batch)`."""

    batch: Batch
    seconds: float
    joules: float
    part: str  # "whole" (a replicated model's batch), "sparse" or "dense" (a sharded model's parts)
    done: Callable[[Batch], None]
    samples: int = 0  # the batch's samples this job answers (a dense part: its slice)
    padded: int = 0  # what the program ran, padding included


@dataclass
class CardStats:
    batches: int = 0
    samples: int = 0
    padded_samples: int = 0
    busy_s: float = 0.0
    sparse_s: float = 0.0  # of busy_s, a sharded model's lookups
    dense_s: float = 0.0  # of busy_s, a sharded model's dense parts
    dynamic_j: float = 0.0


@dataclass
class SimResult:
    """One simulated run: per query its arrival and answer time and the batch that served it."""

    arrival_s: np.ndarray
    done_s: np.ndarray
    batch_of: np.ndarray
    batches: list[Batch]
    cards: list[CardStats]
    host_busy_s: float
    link_names: list[str]
    link_bytes: np.ndarray
    link_capacity: np.ndarray
    start_s: float = 0.0
    end_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def latency_s(self) -> np.ndarray:
        return self.done_s - self.arrival_s

    @property
    def wall_s(self) -> float:
        return self.end_s - self.start_s


class ServingSystem:
    """Holds the server, the engine costs and the batching policy; `run(queries, rate)` simulates one run."""

    def __init__(self, server: Server, costs: BatchCosts | ShardedCosts, *, window_s: float) -> None:
        self.server = server
        self.costs = costs
        self.window_s = window_s
        self.max_batch = costs.max_batch
        self.min_query = min(QUERY_SIZE_QUANTILES)
        chip = costs.chip
        self.latency_s = chip.host.latency_ns * 1e-9
        topo = server.topology
        names = ["host_memory"]
        caps = [server.host.memory_gbps * 1e9]
        index: dict[tuple[str, str, int], int] = {}
        for direction in ("down", "up"):
            for kind, count, gbps in (
                ("root", topo.sockets, topo.host_link_gbps),
                ("switch", topo.switches, topo.switch_uplink_gbps),
                ("card", topo.cards, chip.host.bandwidth_gbps),
            ):
                for i in range(count):
                    index[(direction, kind, i)] = len(names)
                    names.append(f"{kind}_{direction}[{i}]")
                    caps.append(gbps * 1e9)
        for i in range(topo.cards):  # each card's device-to-device (peer-to-peer) sending rate
            index[("peer", "card", i)] = len(names)
            names.append(f"peer[{i}]")
            caps.append(topo.peer_gbps * 1e9)
        self.link_names, self.link_caps = names, caps

        def path(direction: str, card: int) -> tuple[int, ...]:
            links = (
                index[(direction, "root", server.socket_of(card))],
                index[(direction, "switch", server.switch_of(card))],
                index[(direction, "card", card)],
            )
            return (0, *links)

        self.down = [path("down", c) for c in range(topo.cards)]
        self.up = [path("up", c) for c in range(topo.cards)]

        self._index = index

    def exchange(self, pooled_bytes: Sequence[int]) -> list[tuple[tuple[int, ...], float]]:
        """The pooled-embedding all-to-all of one batch as flows over links: card c holds `pooled_bytes[c]` of
        every sample's pooled embeddings and keeps the share of its own slice of the batch (1/cards), sending
        each other card its share; the pairs' flows are merged link by link, each link carrying exactly the
        bytes that cross it: per card what it sends (at its peer-to-peer rate, up its link) and what it
        receives (down its link), per pair of leaf switches what crosses from one to the other (up and down
        the switches' uplinks; also through the root links when the switches hang off different sockets)."""
        s, index = self.server, self._index
        n = s.cards
        share = [b / n for b in pooled_bytes]
        total = sum(share)
        flows: list[tuple[tuple[int, ...], float]] = []
        for c in range(n):
            flows.append(((index[("peer", "card", c)], index[("up", "card", c)]), share[c] * (n - 1)))
            flows.append(((index[("down", "card", c)],), total - share[c]))
        for a in range(s.topology.switches):
            for b in range(s.topology.switches):
                if a == b:
                    continue
                src = [c for c in range(n) if s.switch_of(c) == a]
                sa, sb = s.socket_of(a * s.cards_per_switch), s.socket_of(b * s.cards_per_switch)
                links = [index[("up", "switch", a)]]
                if sa != sb:
                    links += [index[("up", "root", sa)], index[("down", "root", sb)]]
                links.append(index[("down", "switch", b)])
                flows.append((tuple(links), sum(share[c] for c in src) * s.cards_per_switch))
        return [(path, nbytes) for path, nbytes in flows if nbytes > 0]

    @property
    def sharded(self) -> bool:
        return isinstance(self.costs, ShardedCosts)

    def run(self, queries: Queries, queries_per_s: float | None) -> SimResult:
        kind = _ShardedRun if self.sharded else _Run
        return kind(self, queries, queries_per_s).result()


class _Run:
    def __init__(self, system: ServingSystem, queries: Queries, queries_per_s: float | None) -> None:
        s = system.server
        self.sys = system
        self.loop = EventLoop()
        self.cores = CorePool(self.loop, s.host.cores)
        self.net = FlowNetwork(self.loop, system.link_names, system.link_caps)
        self.sizes = queries.sizes
        self.arrival = queries.arrivals_s(queries_per_s)
        self.done = np.full(queries.count, np.nan)
        self.batch_of = np.full(queries.count, -1, dtype=np.int64)
        self.batches: list[Batch] = []
        self.open: Batch | None = None
        self.cards = [CardStats() for _ in range(s.cards)]
        self.outstanding = np.zeros(s.cards, dtype=np.int64)  # samples dispatched to a card, not yet run
        self.host_queue: list[deque] = [deque() for _ in range(s.cards)]  # closed batches not yet sent
        self.in_flight = [0] * s.cards  # batches sent (or being prepared) and not yet run
        self.card_queue: list[deque] = [deque() for _ in range(s.cards)]
        self.lookup_queue: list[deque] = [
            deque() for _ in range(s.cards)
        ]  # a sharded model's lookups go first
        self.card_busy = [False] * s.cards
        self.pre_s = s.host.preprocess_us_per_query * 1e-6
        self.post_s = s.host.postprocess_us_per_query * 1e-6
        for q, t in enumerate(self.arrival.tolist()):
            self.loop.at(t, self._arrive, q)

    def result(self) -> SimResult:
        self.loop.run()
        assert not np.isnan(self.done).any(), "a query was never answered"
        return SimResult(
            self.arrival,
            self.done,
            self.batch_of,
            self.batches,
            self.cards,
            self.cores.busy_s,
            self.sys.link_names,
            self.net.moved.copy(),
            np.asarray(self.net.capacity),
            start_s=float(self.arrival.min()),
            end_s=float(self.done.max()),
        )

    # ---- queries and the batcher
    def _arrive(self, q: int) -> None:
        self.cores.submit(self.pre_s, lambda: self._to_batcher(q))

    def _to_batcher(self, q: int) -> None:
        size = int(self.sizes[q])
        if self.open is not None and self.open.samples + size > self.sys.max_batch:
            self._close(self.open)
        if self.open is None:
            self.open = Batch([], 0)
            self.loop.at(self.loop.t + self.sys.window_s, self._window, self.open)
        self.open.queries.append(q)
        self.open.samples += size
        if self.open.samples + self.sys.min_query > self.sys.max_batch:
            self._close(self.open)

    def _window(self, batch: Batch) -> None:
        if self.open is batch:
            self._close(batch)

    def _close(self, batch: Batch) -> None:
        self.open = None
        batch.card = int(np.argmin(self.outstanding))
        batch.bucket = self.sys.costs.bucket_for(batch.samples)
        self.outstanding[batch.card] += batch.samples
        index = len(self.batches)
        self.batches.append(batch)
        self.batch_of[batch.queries] = index
        self.host_queue[batch.card].append(batch)
        self._prefetch(batch.card)

    # ---- a batch through the switch tree and its card
    def _prefetch(self, card: int) -> None:
        while self.in_flight[card] < PREFETCH_BATCHES and self.host_queue[card]:
            batch = self.host_queue[card].popleft()
            self.in_flight[card] += 1
            cost = self.sys.costs.cost(batch.bucket)
            self.cores.submit(cost.host_s, lambda batch=batch: self._send(batch), urgent=True)

    def _send(self, batch: Batch) -> None:
        cost = self.sys.costs.cost(batch.bucket)
        self.net.transfer(
            self.sys.down[batch.card], cost.h2d_bytes, self.sys.latency_s, lambda: self._arrive_card(batch)
        )

    def _arrive_card(self, batch: Batch) -> None:
        cost = self.sys.costs.cost(batch.bucket)
        job = Job(batch, cost.device_s, cost.card_dynamic_j, "whole", self._ran, batch.samples, batch.bucket)
        self._card_job(batch.card, job)

    def _card_job(self, card: int, job: Job) -> None:
        """Queue `job` on `card`: one job at a time, first come first served, a sharded model's lookups before
        its dense parts (every card's lookups hold up the batch, one card's dense part only its own batch)."""
        (self.lookup_queue if job.part == "sparse" else self.card_queue)[card].append(job)
        if not self.card_busy[card]:
            self._next_on_card(card)

    def _next_on_card(self, card: int) -> None:
        queue = self.lookup_queue[card] or self.card_queue[card]
        if not queue:
            self.card_busy[card] = False
            return
        self.card_busy[card] = True
        job = queue.popleft()
        stats = self.cards[card]
        if job.part != "sparse":  # the part that yields the batch's outputs counts its samples
            stats.batches += 1
            stats.samples += job.samples
            stats.padded_samples += job.padded
        stats.busy_s += job.seconds
        if job.part == "sparse":
            stats.sparse_s += job.seconds
        elif job.part == "dense":
            stats.dense_s += job.seconds
        stats.dynamic_j += job.joules
        self.loop.at(self.loop.t + job.seconds, self._job_done, card, job)

    def _job_done(self, card: int, job: Job) -> None:
        job.done(job.batch)
        self._next_on_card(card)

    def _ran(self, batch: Batch) -> None:
        self.outstanding[batch.card] -= batch.samples
        self.in_flight[batch.card] -= 1
        self._prefetch(batch.card)
        cost = self.sys.costs.cost(batch.bucket)
        self.net.transfer(
            self.sys.up[batch.card], cost.d2h_bytes, self.sys.latency_s, lambda: self._answer(batch)
        )

    def _answer(self, batch: Batch) -> None:
        for q in batch.queries:
            self.cores.submit(self.post_s, lambda q=q: self._done(q), urgent=True)

    def _done(self, q: int) -> None:
        self.done[q] = self.loop.t


class _ShardedRun(_Run):
    """A sharded model (`serve/sharded.py`): per batch, every card holding shards runs its lookups for the whole
    batch; the pooled embeddings go all-to-all (`ServingSystem.exchange`), a collective: it starts when every
    card's lookups are done and every card's dense slice waits for all of it; then every card runs the dense
    part on its slice of the batch (data parallel, the batch split evenly) and sends its slice's outputs back.

    Per batch a host core prepares each card's indices (that card's lookup program's host part) and each
    card's dense call (the dense program's host part); the inputs cross the switch tree. At most
    `PREFETCH_BATCHES` batches are between their host part and the end of their last lookup (double buffering
    over the whole server)."""

    def __init__(self, system: ServingSystem, queries: Queries, queries_per_s: float | None) -> None:
        super().__init__(system, queries, queries_per_s)
        self.waiting: deque = deque()  # closed batches not yet started
        self.started = 0  # batches started whose lookups are not all done
        self.left: dict[tuple[int, str], int] = {}  # (id(batch), what) -> parts still to come
        self.exchanges: dict[int, list] = {}  # bucket -> the all-to-all's flows

    def _close(self, batch: Batch) -> None:
        self.open = None
        batch.bucket = self.sys.costs.bucket_for(batch.samples)
        self.batch_of[batch.queries] = len(self.batches)
        self.batches.append(batch)
        self.waiting.append(batch)
        self._start()

    def _start(self) -> None:
        cards = self.sys.server.cards
        while self.started < PREFETCH_BATCHES and self.waiting:
            batch = self.waiting.popleft()
            self.started += 1
            cost = self.sys.costs.cost(batch.bucket)
            if batch.bucket not in self.exchanges:
                self.exchanges[batch.bucket] = self.sys.exchange(cost.pooled_bytes)
            holders = [c for c, sc in enumerate(cost.sparse) if sc is not None]
            self.left[(id(batch), "lookups")] = len(holders)
            self.left[(id(batch), "outputs")] = cards
            for c in holders:
                self.cores.submit(
                    cost.sparse[c].host_s, lambda batch=batch, c=c: self._send_ids(batch, c), urgent=True
                )
            for c in range(cards):
                self.left[(id(batch), f"dense{c}")] = 2  # its dense features and the all-to-all
                self.cores.submit(
                    cost.dense.host_s, lambda batch=batch, c=c: self._send_dense(batch, c), urgent=True
                )

    def _count(self, batch: Batch, what: str) -> bool:
        """One more of `what` for `batch`; whether it was the last."""
        key = (id(batch), what)
        self.left[key] -= 1
        if self.left[key]:
            return False
        del self.left[key]
        return True

    def _send_ids(self, batch: Batch, card: int) -> None:
        sc = self.sys.costs.cost(batch.bucket).sparse[card]
        job = Job(batch, sc.device_s, sc.card_dynamic_j, "sparse", self._looked_up)
        self.net.transfer(
            self.sys.down[card], sc.h2d_bytes, self.sys.latency_s, lambda: self._card_job(card, job)
        )

    def _send_dense(self, batch: Batch, card: int) -> None:
        nbytes = self.sys.costs.cost(batch.bucket).dense_h2d_bytes
        self.net.transfer(
            self.sys.down[card], nbytes, self.sys.latency_s, lambda: self._dense_input(batch, card)
        )

    def _looked_up(self, batch: Batch) -> None:
        if not self._count(batch, "lookups"):
            return
        self.started -= 1
        self._start()
        flows = self.exchanges[batch.bucket]
        if not flows:
            self._exchanged(batch)
            return
        self.left[(id(batch), "exchange")] = len(flows)
        for path, nbytes in flows:
            self.net.transfer(path, nbytes, self.sys.latency_s, lambda: self._flow_done(batch))

    def _flow_done(self, batch: Batch) -> None:
        if self._count(batch, "exchange"):
            self._exchanged(batch)

    def _exchanged(self, batch: Batch) -> None:
        for c in range(self.sys.server.cards):
            self._dense_input(batch, c)

    def _dense_input(self, batch: Batch, card: int) -> None:
        if not self._count(batch, f"dense{card}"):
            return
        cost = self.sys.costs.cost(batch.bucket)
        n = self.sys.server.cards
        samples = batch.samples // n + (card < batch.samples % n)
        job = Job(batch, cost.dense.device_s, cost.dense.card_dynamic_j, "dense",
                  lambda b: self._dense_done(b, card), samples, cost.slice)  # fmt: skip
        self._card_job(card, job)

    def _dense_done(self, batch: Batch, card: int) -> None:
        d2h = self.sys.costs.cost(batch.bucket).dense.d2h_bytes
        self.net.transfer(self.sys.up[card], d2h, self.sys.latency_s, lambda: self._output(batch))

    def _output(self, batch: Batch) -> None:
        if self._count(batch, "outputs"):
            self._answer(batch)
