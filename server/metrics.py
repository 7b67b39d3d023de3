"""Prometheus metrics for one server replica (exposed only when a port is configured)."""

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

REQUESTS = Counter("icc_requests_total", "Request messages pulled (redeliveries included)")
RESULTS = Counter("icc_results_total", "Requests whose result was published and whose ack succeeded")
ERRORS = Counter("icc_errors_total", "Requests answered with an error result", ["reason"])
BATCH_SIZE = Histogram("icc_batch_size", "Requests per model batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
QUEUE_WAIT = Histogram("icc_queue_wait_seconds", "Pull to batch start, per request", buckets=_LATENCY)
COMPUTE = Histogram("icc_compute_seconds", "Decode + model time, per batch", buckets=_LATENCY)
IN_SERVER = Histogram("icc_in_server_seconds", "Pull to result published, per request", buckets=_LATENCY)
OUTSTANDING = Gauge("icc_messages_outstanding", "Pulled but not yet acked or nacked")
MODEL = Info("icc_model", "The served model's identity")

# Where the time goes, stage by stage (per-request figures are in each result's `timing`, docs/wire.md).
PULL = Histogram("icc_pull_seconds", "One pull call that returned messages (empty polls included)", buckets=_LATENCY)
PULL_SIZE = Histogram(
    "icc_pull_messages", "Messages per pull that returned any", buckets=(1, 2, 4, 8, 16, 32, 64, 100, 128, 256, 1000)
)
DECODE = Histogram("icc_decode_seconds", "Request checks and pixel decoding, per batch", buckets=_LATENCY)
MODEL_TIME = Histogram("icc_model_seconds", "The model call (padded to its bucket), per batch", buckets=_LATENCY)
PUBLISH = Histogram("icc_publish_seconds", "Result publish call to publish done, per result message", buckets=_LATENCY)
ACK = Histogram("icc_ack_seconds", "Result published to its requests' ack sent, per result message", buckets=_LATENCY)

# The batching policy's choices (server/batching.py).
BATCHING = Info("icc_batching", "The batching policy (server.batching)")
LATENCY_SLO = Gauge("icc_latency_slo_seconds", "The latency objective (server.latency_slo_ms)")
BATCH_LIMIT = Gauge("icc_batch_limit", "The largest batch the policy takes now (adaptive: its AIMD limit)")
LIMIT_CHANGES = Counter("icc_batch_limit_changes_total", "Steps of the adaptive batch limit", ["direction"])
BATCH_COST = Gauge(
    "icc_batch_cost_seconds", "The adaptive policy's measured seconds per batch (decode to publish)", ["bucket"]
)
BATCHES = Counter("icc_batches_total", "Model batches by the compiled bucket they ran in", ["bucket"])
BATCH_WAIT = Histogram(
    "icc_batch_wait_seconds", "Time a batch was held, compute thread free, waiting for more requests", buckets=_LATENCY
)
QUEUE_DEPTH = Histogram(
    "icc_queue_depth",
    "Requests waiting when a batch was taken",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)


def serve_metrics(port: int) -> None:
    start_http_server(port, addr="127.0.0.1")


NACKS = Counter("icc_nacks_total", "Requests handed back for redelivery", ["reason"])
