"""Batching policies: how many waiting requests the server's next batch takes, and how long it may wait for more.

The batcher (server/serve.py, `next_batch`) asks its policy for a `Plan` whenever its compute
thread is free and at least one request waits, waits for the plan, takes the batch, and tells
the policy afterwards what the batch cost (`done`). Policies read no clock: every call is given
`now`, so their decisions are pure functions of what they were told (tests/test_batching.py).

fixed     up to max_batch_size, once full or once the oldest request waited max_wait_ms.
adaptive  sized from what it measures against a latency objective (`latency_slo_ms`):
          - no queue (the compute thread was idle when the request came): dispatch at once;
          - a batch never takes more than `limit`, a compiled bucket moved by AIMD (Clipper,
            NSDI 2017): one bucket up after a batch that left requests waiting, if the next
            bucket's measured time fits the batch budget (half the objective); halved when a
            batch took longer than that budget, but never below the floor: the smallest bucket
            that keeps up with the measured arrival rate at MAX_BUSY of the compute thread.
            Below it, backing off would not save the objective but lose it to a growing queue
            (measured on the AVX2 machine, where batches over the budget were the rule at
            25-70% of capacity: p99 118 against the fixed policy's 71 ms at 25%, 356 against
            248 ms at 70%, the two policies taking turns in one sweep);
          - with a queue, a batch that would run padded waits for its padding to fill, if the
            measured arrival rate fills it before the oldest request's budget runs out, and never
            longer than max_wait_ms (Triton's preferred batch sizes with a queue delay; here the
            padded rows are computed anyway);
          - behind (the requests waiting would take longer than the whole objective to clear at
            the limit's cost per image, or the batch's oldest request had already waited more
            than BEHIND_AGE objectives since it was published: a backlog in the broker, which the
            server's own queue never shows since a pull brings at most 100), the objective is
            lost to queueing and throughput clears the queue fastest: the limit goes to the
            bucket with the lowest measured cost per image, whatever its batch time. It is
            measured, not assumed to fall with batch size: on the AVX-512 machine 40 and 64 ran
            slower per image than 28 (docs/benchmarks.md).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping, Sequence

POLICIES = ("adaptive", "fixed")

# Share of the objective one batch may take: a request can wait behind the batch in progress,
# then run in its own, so two batches must fit the objective.
BATCH_BUDGET = 0.5
# Multiplicative decrease of the limit when a batch overran its budget (TCP's and Clipper's AIMD
# shape; Clipper cut by 10% on fine-grained sizes, our buckets are 1.3-2x apart, so 10% would not
# move the limit at all and 50% moves it one to three buckets).
DECREASE = 0.5
# Weight of the newest batch in a bucket's measured time: ~5 batches of memory, since batch times
# on this shared 2-core machine vary 2-3x from one batch to the next.
COST_WEIGHT = 0.2
# Time constant of the arrival-rate estimate: at 200 img/s it averages over ~40 arrivals and
# follows a change of rate within a few tenths of a second.
RATE_TAU_S = 0.2
# The share of the compute thread the limit's floor may plan to fill. A queue's mean time grows as
# one batch time / (1 - busy): 5 batch times at 0.8, 10 at 0.9; planning for more is planning for a
# queue the objective cannot afford.
MAX_BUSY = 0.8
# How many objectives old a batch's oldest request must be, since it was published, to count as a
# backlog in the broker. Not one: with ordering keys the broker holds a key's next requests until
# the earlier ones are acked, so a request is about one batch cycle old when it is taken even when
# the server keeps up (on the AVX2 machine at 70% of capacity, fixed batching: 34.5 ms in the broker
# plus 39.4 ms waiting, means, against a 50 ms objective); at --rate 0 the backlog is seconds old.
BEHIND_AGE = 4.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """Take at most `limit` requests, after waiting up to `wait_s` for the queue to reach `fill`."""

    limit: int
    fill: int
    wait_s: float


class FixedBatching:
    """Up to the largest bucket, once the queue holds that many or the oldest request waited `max_wait_s`."""

    name = "fixed"

    def __init__(self, buckets: Sequence[int], max_wait_s: float):
        self.buckets = tuple(sorted(buckets))
        self.limit = self.buckets[-1]
        self.max_wait_s = max_wait_s

    def plan(self, queued: int, oldest_age_s: float, backlog: bool, now: float) -> Plan:
        return Plan(self.limit, self.limit, self.max_wait_s - oldest_age_s)

    def arrived(self, n: int, now: float) -> None:
        pass

    def seed(self, costs: Mapping[int, float]) -> None:
        pass

    def done(
        self, taken: int, bucket: int, service_s: float, queued: int, now: float, age_s: float = 0.0
    ) -> str | None:
        return None


class AdaptiveBatching:
    """Batches sized from measured arrivals and batch times against a latency objective (see the module doc).

    `limit` is always one of `buckets`; a plan never asks for more than `limit` requests, and a
    batch of up to `limit` requests runs in a compiled bucket (no recompilation).
    """

    name = "adaptive"

    def __init__(self, buckets: Sequence[int], slo_s: float, max_wait_s: float, costs: Mapping[int, float] = ()):
        if not buckets or slo_s <= 0 or max_wait_s < 0:
            raise ValueError("adaptive batching needs buckets, an objective > 0 and a wait bound >= 0")
        self.buckets = tuple(sorted(set(buckets)))
        self.slo_s, self.max_wait_s = slo_s, max_wait_s
        self.cost: dict[int, float] = {}  # bucket -> measured seconds per batch (moving average)
        self.rate, self.rate_at = 0.0, None  # decayed arrival count (requests/s) and when it was last updated
        self.limit = self.buckets[0]
        self.seed(dict(costs))

    # ------------------------------------------------------------ measurements
    def seed(self, costs: Mapping[int, float]) -> None:
        """Per-bucket batch times measured at start (one call each): the limit starts at the largest that fits."""
        self.cost.update(costs)
        fitting = [b for b in self.buckets if self.fits(b)]
        self.limit = fitting[-1] if fitting else self.buckets[0]

    def arrived(self, n: int, now: float) -> None:
        """`n` requests were pulled at `now`."""
        self.rate = self.arrival_rate(now) + n / RATE_TAU_S
        self.rate_at = now

    def arrival_rate(self, now: float) -> float:
        """Requests per second, exponentially weighted over the last ~RATE_TAU_S."""
        if self.rate_at is None:
            return 0.0
        return self.rate * math.exp(-max(0.0, now - self.rate_at) / RATE_TAU_S)

    def estimate(self, bucket: int) -> float:
        """Seconds one batch of `bucket` takes: measured, else bounded from a measured neighbour, else 0.

        The next larger measured bucket bounds it from above; the largest smaller one, scaled by the
        size ratio, stands in when no larger one was measured. Unknown is 0: optimistic, the
        AIMD step corrects it.
        """
        if bucket in self.cost:
            return self.cost[bucket]
        larger = [b for b in self.cost if b > bucket]
        if larger:
            return self.cost[min(larger)]
        smaller = [b for b in self.cost if b < bucket]
        if smaller:
            b = max(smaller)
            return self.cost[b] * bucket / b
        return 0.0

    def per_image(self, bucket: int) -> float:
        return self.estimate(bucket) / bucket

    def fits(self, bucket: int) -> bool:
        return self.estimate(bucket) <= BATCH_BUDGET * self.slo_s

    def behind(self, queued: int, age_s: float = 0.0) -> bool:
        """The requests waiting would take longer than the objective to clear at the limit's cost per image,
        or the oldest of them has waited more than BEHIND_AGE objectives since it was published (`age_s`)."""
        return queued * self.per_image(self.limit) > self.slo_s or age_s > BEHIND_AGE * self.slo_s

    def floor(self, now: float) -> int:
        """The smallest bucket whose measured throughput keeps up with the arrival rate at MAX_BUSY of the
        compute thread; the cheapest per image if none does (then the server is behind anyway)."""
        needed = self.arrival_rate(now) / MAX_BUSY
        keeping_up = [b for b in self.buckets if self.estimate(b) * needed <= b]
        return keeping_up[0] if keeping_up else self.cheapest()

    def cheapest(self) -> int:
        """The bucket with the lowest measured cost per image (the smaller on a tie)."""
        return min(self.buckets, key=lambda b: (self.per_image(b), b))

    def bucket_for(self, n: int) -> int:
        """The bucket a batch of n runs in (the smallest that holds it)."""
        return self.buckets[min(bisect.bisect_left(self.buckets, n), len(self.buckets) - 1)]

    # ---------------------------------------------------------------- decisions
    def plan(self, queued: int, oldest_age_s: float, backlog: bool, now: float) -> Plan:
        """`queued` requests wait, the oldest for `oldest_age_s`; `backlog`: some were waiting when the last batch ended."""
        now_plan = Plan(self.limit, 0, 0.0)
        if not backlog or queued >= self.limit:
            return now_plan  # no queue: nothing to wait for; or a full batch is there
        bucket = self.bucket_for(queued)
        if bucket == queued:
            return now_plan  # no padding to fill
        slack = min(self.max_wait_s, BATCH_BUDGET * self.slo_s - oldest_age_s - self.estimate(bucket))
        rate = self.arrival_rate(now)
        if slack <= 0 or rate <= 0 or (bucket - queued) / rate > slack:
            return now_plan  # the objective is at risk, or the padding would not fill in time
        return Plan(self.limit, bucket, slack)

    def done(
        self, taken: int, bucket: int, service_s: float, queued: int, now: float, age_s: float = 0.0
    ) -> str | None:
        """A batch of `taken` requests (of `queued` waiting) ran in `bucket` in `service_s`; its oldest request
        had waited `age_s` since it was published when the batch was taken. "up"/"down" if the limit moved."""
        old = self.cost.get(bucket)
        self.cost[bucket] = service_s if old is None else old + COST_WEIGHT * (service_s - old)
        i = self.buckets.index(self.limit)
        floor = self.floor(now)
        if self.behind(queued, age_s):  # throughput first: the cheapest bucket per image
            new = self.cheapest()
        elif service_s > BATCH_BUDGET * self.slo_s:  # multiplicative decrease, down to what keeps up
            new = max(floor, self.buckets[max(0, bisect.bisect_right(self.buckets, DECREASE * self.limit) - 1)])
        elif self.limit < floor:  # arrivals outgrew the limit
            new = floor
        elif queued > taken and i + 1 < len(self.buckets) and self.fits(self.buckets[i + 1]):
            new = self.buckets[i + 1]  # the limit held requests back: additive increase
        else:
            return None
        old_limit, self.limit = self.limit, new
        return None if new == old_limit else "up" if new > old_limit else "down"


def make_policy(name: str, buckets: Sequence[int], max_wait_ms: float, latency_slo_ms: float):
    """The configured policy (`server.batching`)."""
    if name == "fixed":
        return FixedBatching(buckets, max_wait_ms / 1000)
    if name == "adaptive":
        return AdaptiveBatching(buckets, latency_slo_ms / 1000, max_wait_ms / 1000)
    raise ValueError(f"server.batching = {name!r}: use one of {', '.join(POLICIES)}")
