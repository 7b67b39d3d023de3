"""Streaming evaluation config: topics, server batching, streamer rate, collector timeouts.

Command:   python -m streamer --rate 200          (this config; flags override it)
           python -m server                       (the server half alone)
Runtime:   about 50 s for the 10,000 test images at 200 img/s, plus ~15 s start-up and warm-up.
Accuracy:  equal to `python -m train.evaluate` on the same checkpoint, prediction by prediction.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model_dir = ""  # "" = the shipped models/fashion-mnist

    config.broker = ml_collections.ConfigDict(
        dict(
            project="",  # "" = emulator (started if PUBSUB_EMULATOR_HOST is unset)
            requests_topic="requests",
            results_topic="results",
            dead_letter_topic="requests-dead-letter",
            requests_subscription="requests-server",
            results_subscription="results-collector",
            dead_letter_subscription="requests-dead-letter-sub",
            max_delivery_attempts=5,  # real Pub/Sub only: the emulator gets no dead-letter policy (docs/wire.md)
            # Pub/Sub's minimum. A SIGKILLed replica's requests come back after it (docs/reliability.md);
            # the server extends the lease of work held longer than a third of it.
            ack_deadline_s=10,
        )
    )

    config.server = ml_collections.ConfigDict(
        dict(
            # "adaptive": each batch sized from measured arrivals and batch times against latency_slo_ms
            # (server/batching.py); "fixed": up to max_batch_size, once full or once the oldest request
            # waited max_wait_ms. Both are kept so the bench can compare them in one run.
            batching="adaptive",
            # The objective for a request's time in the server (pull to result published), at p99. The
            # adaptive policy keeps one batch within half of it (a request can wait behind the batch in
            # progress, then run in its own): batch 256 took ~26 ms model-only on the AVX-512 machine
            # and ~94 ms on the AVX2 one (docs/benchmarks.md), so 50 ms caps them near 128 and 64.
            latency_slo_ms=50.0,
            max_batch_size=256,
            max_wait_ms=4.0,  # fixed: the batching window; adaptive: the longest it waits to fill padding
            # Padded batch sizes, all compiled at start. No 16 or 32: XLA on the AVX-512 machine runs
            # those 3-4x slower per image than 12, 20 or 28, and 32 on the AVX2 one 2.6x slower than 28
            # (816 against 2,115 img/s; docs/benchmarks.md).
            buckets=(4, 8, 12, 20, 28, 40, 64, 100, 128, 256),
            pull_max_messages=1000,
            pull_threads=1,
            max_outstanding=4096,  # flow control: messages pulled but not yet acked
            top_k=3,
            # Result messages per Publish RPC at most (Pub/Sub's limit). A batch's results, one message per stream,
            # go out in one RPC with whatever batches queued behind the RPC in flight (broker/pubsub.py).
            publish_max_messages=1000,
            drain_timeout_s=20.0,
            log_interval_s=10.0,
            broker_give_up_s=15.0,  # consecutive pull failures before the server gives up
            metrics_port=0,  # 0 = no Prometheus endpoint
            replicas=1,
        )
    )

    config.streamer = ml_collections.ConfigDict(
        dict(
            rate=200.0,  # images/s; 0 = as fast as possible
            streams=16,  # ordering keys: Pub/Sub holds a key's next messages until its earlier ones are acked
            limit=0,  # 0 = the whole test set
            content_type="raw",  # raw | png (image folders: their original files)
            dataset="fashion_mnist",  # fashion_mnist | idx:IMAGES,LABELS | folder:DIR (streamer/datasets.py)
            # Requests pushed through the real path (broker, server, results) before the timed stream, on a
            # freshly started emulator only: its JVM ran the first ~3,000 images of a run 2-3x slower
            # (p99 80-230 ms against ~25 ms warm; docs/benchmarks.md). In proportion to the run: as many
            # requests as it has images, at most warm_up (0 = off), and none for a run of fewer than
            # warm_up_from images, whose p99 rests on its 10 slowest latencies or fewer: too few to read a
            # cold JVM from, and its accuracy is the same either way. `--warm-up N` asks for exactly N.
            warm_up=10000,
            warm_up_from=1000,
            # How long one batch of requests is retried while the broker does not answer, before the run fails:
            # 20 s rides out a broker restart; a dead broker ends the run this long after the loss is noticed.
            publish_retry_s=20.0,
            # A paced run's Publish calls start at least this far apart; what falls due meanwhile shares one. Each
            # call costs the broker and this process more than its messages do: at 1,400 img/s one call per due
            # image gave p50/p99 252/558 ms and 0.52 client cores, 5 ms gave 55/174 ms and 0.31 (emulator,
            # docs/benchmarks.md). At 200 img/s and below an image is due every 5 ms or later: nothing changes.
            publish_interval_ms=5.0,
        )
    )

    # The collector waits as long as results keep coming, whatever the run's size (a robustness run's 38,000
    # requests, two models' 76,000 answers): it gives up only after timeout_s without a new result while
    # requests are still being published, or min(timeout_s, idle_timeout_s) once all are. 30 s is three ack
    # deadlines: a killed replica's requests come back within one (docs/reliability.md).
    # give_up_s: how long the result pump rides out a broker that does not answer (its pulls, and each ack's
    # retries) before the run fails; 15 s, as the server's broker_give_up_s.
    config.collector = ml_collections.ConfigDict(
        dict(timeout_s=120.0, idle_timeout_s=30.0, give_up_s=15.0, reports_dir="reports", state_file="")
    )

    # How sure every figure of a report is (results/stats.py): `python -m streamer` and `report` both read this.
    config.intervals = ml_collections.ConfigDict(
        dict(
            level=0.95,  # two-sided confidence level of every interval (--confidence-level); tests use alpha = 1 - level
            # Bootstrap resamples (F1, ECE, latency percentiles): the Monte Carlo error of a 95% endpoint is ~4% of
            # the half-width at 1,000; all intervals of a 10,000-image comparison then cost ~0.7 s (README).
            resamples=1000,
            seed=0,  # fixed, so the same run always gets the same intervals
            power=0.8,  # the smallest detectable difference is stated at this power
        )
    )
    return config
