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


def serve_metrics(port: int) -> None:
    start_http_server(port, addr="127.0.0.1")


NACKS = Counter("icc_nacks_total", "Requests handed back for redelivery", ["reason"])
