"""Where a request's time goes, stage by stage, per batching policy and offered rate.

python -m bench.stages [--rates 0,150,800] [--policies fixed,adaptive] [--limit 3000] [--repeats 4]

One emulator (started here unless PUBSUB_EMULATOR_HOST is set); per repeat and policy, one
`python -m server --batching POLICY` with a metrics port, `--warm-up` requests through the real
path untimed (a fresh emulator's JVM runs 2-3x slower at first), then `--limit` test images at each
rate on `--streams` ordering keys, paced as `python -m streamer` paces them. The policies take
turns to go first (repeat 1: fixed first, repeat 2: adaptive first, ...): use an even `--repeats`.
The stages of each request come from its result's `timing` (docs/wire.md) and two broker
timestamps:

  send         sent_ns → request's publish_time          the client's publish RPC (send_ms)
  broker in    request's publish_time → server's pull     ordered delivery, pull polling (broker_ms)
  queue        pull → batch start (queue_ms)
  batch wait   the batcher holding the batch open, compute thread free (batch_wait_ms; not
               added into the sum: it overlaps queue)
  decode/model the batch's (decode_ms, model_ms)
  publish      model done → result's publish_time         answers, encoding, the publisher's batching
  broker out   result's publish_time → received here      delivery and the collector's pull

publish_time has millisecond resolution on the emulator, so single stages that cross it are +-1 ms.
The server's Prometheus histograms add what no result can carry: result publish call to publish
done, publish done to ack sent, pull sizes, the batch limit. Writes bench/results/stages-<time>.json
and docs/bench/stages.png (mean ms per stage: means add up to the end-to-end mean, percentiles do not).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from broker import process, wire
from broker.emulator import free_port
from broker.pubsub import BulkPublisher, Puller, Topology, broker_session, delete_topology, ensure_topology
from configs import load_config
from configs.flags import FlagParser, comma_list
from results.machine import describe, machine

REPO = Path(__file__).resolve().parent.parent
STAGES = ("send", "broker_in", "queue", "batch_wait", "decode", "model", "publish", "broker_out", "end_to_end")
ADDITIVE = ("send", "broker_in", "queue", "decode", "model", "publish", "broker_out")  # sum = end_to_end
SCRAPED = (  # Prometheus histograms: their mean per timed run
    "icc_pull_seconds",
    "icc_pull_messages",
    "icc_publish_seconds",
    "icc_ack_seconds",
    "icc_batch_wait_seconds",
    "icc_queue_depth",
    "icc_batch_size",
)


# ---------------------------------------------------------------- the server
class Server:
    """`python -m server` on this run's topology with a metrics port; always stopped."""

    def __init__(self, suffix: str, policy: str, extra: tuple[str, ...] = ()):
        self.port = free_port()
        args = ["--topic-suffix", suffix, "--batching", policy, "--metrics-port", str(self.port), *extra]
        fd, self.log_path = tempfile.mkstemp(prefix=f"stages-{policy}-", suffix=".log")
        os.close(fd)
        self.child = process.start_server("server", args, self.log_path, timeout=180)
        self.proc = self.child.proc

    def scrape(self) -> dict[str, float]:
        """Every sample's value by 'name{labels}'."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def stop(self) -> None:
        self.child.stop_and_drop_log()


# ------------------------------------------------------------------- a run
class Collector(threading.Thread):
    """Pulls the results subscription: per request, when it arrived and its result message's publish time."""

    def __init__(self, topo: Topology, prefix: str):
        super().__init__(name="collector", daemon=True)
        self.topo, self.prefix = topo, prefix
        self.got: dict[str, tuple[int, int, dict, int]] = {}  # id -> (received ns, result publish ns, timing, sent)
        self.stopping = threading.Event()

    def run(self) -> None:
        puller = Puller(self.topo.results_subscription_path)
        try:
            while not self.stopping.is_set():
                messages = puller.pull(timeout=0.5)
                received = time.time_ns()
                for m in messages:
                    for r in wire.decode_results(m.data)[1]:
                        rid = r.get("request_id") or ""
                        if rid.startswith(self.prefix) and "timing" in r:
                            self.got.setdefault(rid, (received, m.publish_ns, r["timing"], r["sent_ns"]))
                if messages:
                    puller.ack([m.ack_id for m in messages])
        finally:
            puller.close()


def timed_run(topo: Topology, images: np.ndarray, rate: float, streams: int, timeout: float = 300.0) -> dict:
    """Stream `images` at `rate`; per-request stage arrays in ms (NaN where a stage is unknown)."""
    from streamer.stream import publish_dataset

    run_id = uuid.uuid4().hex[:8]
    collector = Collector(topo, run_id + "-")
    collector.start()
    publisher = BulkPublisher(topo.requests_topic_path)
    started = time.monotonic()
    try:
        interval = load_config(None, "stream.py").streamer.publish_interval_ms / 1000  # as python -m streamer paces
        asyncio.run(publish_dataset(publisher, images, run_id, rate, streams, interval_s=interval))
        published = time.monotonic() - started
        deadline = time.monotonic() + timeout
        while len(collector.got) < len(images) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        collector.stopping.set()
        collector.join(5)
        publisher.close()
    rows = list(collector.got.values())
    received, result_published = (np.array([r[i] for r in rows], np.float64) for i in (0, 1))
    sent = np.array([r[3] for r in rows], np.float64)
    t = {k: np.array([r[2].get(k, np.nan) for r in rows], np.float64) for k in rows[0][2]} if rows else {}
    stage = {name: t.get(key, np.full(len(rows), np.nan)) for name, key in _TIMING.items()}
    model_done = sent + (stage["send"] + stage["broker_in"] + stage["queue"] + t.get("compute_ms", 0.0)) * 1e6
    stage["publish"] = (result_published - model_done) / 1e6
    stage["broker_out"] = (received - result_published) / 1e6
    stage["end_to_end"] = (received - sent) / 1e6
    return {
        "answered": len(rows),
        "sent": len(images),
        "achieved_rate": len(images) / published if published > 0 else None,
        # answered per second from the first send to the last result: the capacity, at --rate 0
        "throughput": len(rows) / ((received.max() - sent.min()) / 1e9) if len(rows) > 1 else None,
        "stages": stage,
        "batch_size": t.get("batch_size", np.array([])),
        "bucket": t.get("bucket", np.array([])),
    }


_TIMING = {
    "send": "send_ms",
    "broker_in": "broker_ms",
    "queue": "queue_ms",
    "batch_wait": "batch_wait_ms",
    "decode": "decode_ms",
    "model": "model_ms",
}


def quantile_interval(x: np.ndarray, q: float, level: float = 0.95) -> tuple[float, float, float]:
    """The q-quantile and its distribution-free interval from order statistics (binomial ranks).

    It treats requests as independent; latencies of neighbouring requests are not, so the interval
    is a lower bound on the uncertainty within one run, and says nothing about run-to-run spread.
    """
    from scipy import stats

    x = np.sort(x[~np.isnan(x)])
    n = len(x)
    if n == 0:
        return (float("nan"),) * 3
    lo = int(stats.binom.ppf((1 - level) / 2, n, q))
    hi = int(stats.binom.ppf((1 + level) / 2, n, q))
    return float(np.quantile(x, q)), float(x[max(lo - 1, 0)]), float(x[min(hi, n - 1)])


def summarise(run: dict, before: dict, after: dict) -> dict:
    stages = {}
    for name in STAGES:
        x = run["stages"][name]
        p50, p99 = quantile_interval(x, 0.5), quantile_interval(x, 0.99)
        stages[name] = {"mean": float(np.nanmean(x)) if np.isfinite(x).any() else None, "p50": p50, "p99": p99}
    scraped = {}
    for name in SCRAPED:
        count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
        total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
        scraped[name] = total / count if count else None
    buckets = {
        k.split("bucket=")[1].rstrip("}"): after[k] - before.get(k, 0)
        for k in after
        if k.startswith("icc_batches_total{")
    }
    return {
        "answered": run["answered"],
        "sent": run["sent"],
        "achieved_rate": run["achieved_rate"],
        "throughput": run["throughput"],
        "mean_batch": float(np.mean(run["batch_size"])) if len(run["batch_size"]) else None,
        "stages_ms": stages,
        "server_means": scraped,
        "batches_by_bucket": {k: v for k, v in sorted(buckets.items(), key=lambda kv: int(kv[0])) if v},
        "batch_limit_after": after.get("icc_batch_limit"),
        "limit_changes": {
            d: after.get(f"icc_batch_limit_changes_total{{direction={d}}}", 0)
            - before.get(f"icc_batch_limit_changes_total{{direction={d}}}", 0)
            for d in ("up", "down")
        },
    }


# ---------------------------------------------------------------- the bench
def measure(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from train.data import load_fashion_mnist

    images = load_fashion_mnist("test", None).images
    timed = images[: args.limit]
    runs = []
    loads = []
    steps = args.repeats * len(args.policies) * len(args.rates)
    with broker_session() as project, tqdm(total=steps, desc="stages", unit="run") as bar:
        for repeat in range(args.repeats):
            # Alternate which policy runs first: on this shared machine the second server of a pair ran
            # faster in all of 5 pairs at --rate 0, whichever policy it served (bench/results/, 2026-12-01).
            for policy in args.policies if repeat % 2 == 0 else args.policies[::-1]:
                suffix = uuid.uuid4().hex[:10]
                topo = Topology.from_names(project, load_config(None, "stream.py").broker, suffix)
                ensure_topology(topo)
                server = Server(suffix, policy, tuple(args.server_flags))
                try:
                    if args.warm_up:
                        timed_run(topo, images[: args.warm_up], 0, args.streams)
                    for rate in args.rates:
                        loads.append(os.getloadavg()[0])
                        before = server.scrape()
                        run = timed_run(topo, timed, rate, args.streams)
                        after = server.scrape()
                        summary = summarise(run, before, after)
                        runs.append({"repeat": repeat, "policy": policy, "rate": rate, **summary})
                        bar.set_postfix_str(
                            f"{policy} {rate:g}/s: p50 {summary['stages_ms']['end_to_end']['p50'][0]:.1f} ms"
                        )
                        bar.update()
                finally:
                    server.stop()
                    delete_topology(topo)
    return {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "load_average_1min_at_each_run": loads,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
    }


def groups(result: dict) -> dict[tuple[float, str], list[dict]]:
    """The runs by (rate, policy), in rate order, fixed before adaptive."""
    out: dict[tuple[float, str], list[dict]] = {}
    order = result["settings"]["policies"]
    for r in sorted(result["runs"], key=lambda r: (r["rate"], order.index(r["policy"]), r["repeat"])):
        out.setdefault((r["rate"], r["policy"]), []).append(r)
    return out


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    mid = float(np.median(values))
    if len(values) == 1:
        return f"{mid:.1f}"
    return f"{mid:.1f} ({min(values):.1f}-{max(values):.1f})"


def render(result: dict) -> str:
    """Markdown: per stage, p50 and p99 in ms, the median over the repeats (their range in brackets)."""
    g = groups(result)
    head = [f"{policy} {rate:g}/s" if rate else f"{policy} --rate 0" for rate, policy in g]
    lines = [
        f"Machine: {describe(result['machine'])}; 1-min load average at each run: "
        + ", ".join(f"{x:.1f}" for x in result["load_average_1min_at_each_run"]),
        "",
        "| | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    lines.append("| img/s answered | " + " | ".join(_cell([r["throughput"] for r in rs]) for rs in g.values()) + " |")
    lines.append("| mean batch | " + " | ".join(_cell([r["mean_batch"] for r in rs]) for rs in g.values()) + " |")
    for q in ("p50", "p99"):
        for name in STAGES:
            cells = [_cell([r["stages_ms"][name][q][0] for r in rs]) for rs in g.values()]
            lines.append(f"| {name.replace('_', ' ')} {q} ms | " + " | ".join(cells) + " |")
    for key, label in (("icc_publish_seconds", "result publish"), ("icc_ack_seconds", "publish to ack")):
        cells = [_cell([1000 * r["server_means"][key] for r in rs if r["server_means"][key]]) for rs in g.values()]
        lines.append(f"| {label} mean ms | " + " | ".join(cells) + " |")
    cells = [_cell([r["server_means"]["icc_pull_messages"] for r in rs]) for rs in g.values()]
    lines.append("| messages per pull, mean | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """One panel per rate: the stacked mean per stage of each policy (averaged over the repeats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = groups(result)
    rates = sorted({rate for rate, _ in g})
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates) + 1.8, 4.5), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        keys = [k for k in g if k[0] == rate]
        bottoms = np.zeros(len(keys))
        for name in ADDITIVE:
            means = np.array([np.mean([r["stages_ms"][name]["mean"] or 0.0 for r in g[k]]) for k in keys])
            ax.bar([k[1] for k in keys], means, bottom=bottoms, label=name.replace("_", " "))
            bottoms += means
        for x in range(len(keys)):
            ax.text(x, bottoms[x], f"{bottoms[x]:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{rate:g} img/s offered" if rate else "--rate 0 (capacity)", fontsize=9)
        ax.margins(y=0.1)
    axes[0][0].set_ylabel("mean ms per request")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    repeats = result["settings"]["repeats"]
    fig.suptitle(
        f"Where a request's time goes, by batching policy (mean ms per stage, stacked; {repeats} runs each)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_parser() -> FlagParser:
    """Its flags; their domains are in configs/flags.py (PROGRAM_FLAGS)."""
    p = FlagParser(prog="python -m bench.stages", description=__doc__.splitlines()[0])
    p.add_argument(
        "--rates",
        type=comma_list(float),
        default="0,150,800",
        help="offered img/s, comma-separated (0 = as fast as possible)",
    )
    p.add_argument(
        "--policies", type=comma_list(str), default="fixed,adaptive", help="batching policies, comma-separated"
    )
    p.add_argument("--limit", type=int, default=3000, help="images per timed run")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="even: each policy goes first as often")
    p.add_argument("--warm-up", type=int, default=3000, help="untimed requests first, per server")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--plot", default=str(REPO / "docs" / "bench" / "stages.png"))
    p.add_argument("server_flags", nargs=argparse.REMAINDER, help="after --: more `python -m server` flags")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parsed and checked: a value outside its domain is one line and exit 2, before the emulator starts."""
    args = make_parser().parse_args(argv)
    args.server_flags = [f for f in args.server_flags if f != "--"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(args)
    stamp = result["when"].replace("-", "").replace(":", "")
    out = Path(args.out) / f"stages-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, Path(args.plot))
    print(render(result))
    print(f"\nwrote {out} and {args.plot}")
    bad = [(r["policy"], r["rate"], r["answered"]) for r in result["runs"] if r["answered"] != r["sent"]]
    if bad:
        print(f"runs with results missing (policy, rate, answered): {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
