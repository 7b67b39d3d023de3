"""The server's settings from configs/stream.py, checked: light to import, so a bad config file is one line
and exit 2 before JAX loads (server/run.py)."""

from __future__ import annotations

import dataclasses

from server.batching import POLICIES


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Batching, flow-control and lifecycle knobs; the values live in configs/stream.py (`server`)."""

    max_batch_size: int
    max_wait_ms: float
    buckets: tuple[int, ...]
    batching: str
    latency_slo_ms: float
    pull_max_messages: int
    pull_threads: int
    max_outstanding: int
    top_k: int
    publish_max_messages: int
    drain_timeout_s: float
    log_interval_s: float
    broker_give_up_s: float
    ack_deadline_s: int

    @classmethod
    def from_config(cls, config) -> ServerSettings:
        """From configs/stream.py: its `server` section plus the broker's ack deadline."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in config.server.to_dict().items() if k in names}
        return cls(**values, ack_deadline_s=config.broker.ack_deadline_s)

    def __post_init__(self):
        buckets = tuple(sorted(set(self.buckets) | {self.max_batch_size}))
        object.__setattr__(self, "buckets", tuple(b for b in buckets if b <= self.max_batch_size))
        if self.batching not in POLICIES:
            raise ValueError(f"server.batching = {self.batching!r} is not allowed: use one of {', '.join(POLICIES)}")
        if not self.latency_slo_ms > 0:
            raise ValueError(f"server.latency_slo_ms = {self.latency_slo_ms!r} is not allowed: use a number > 0")
