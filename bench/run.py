"""The benchmark harness: every figure measured side by side, in one run, on this machine.

Scenarios (each on fresh topic names, against one shared emulator):
  model      jitted model alone, img/s per batch bucket (no broker)
  echo       the same server transport with a constant answer: the broker's own floor
  naive      streaming pull, batch 1, one result message and one ack per request
  server     the real server: throughput at --rate 0, latency at --rate 200 (with the offline check)
  capacity   end-to-end img/s at --rate 0 per batching policy, and the client's CPU against the server's
  sweep      latency at 10-110% of that capacity (bench/sweep.py)
  streams    --streams 1-256 at 10% of capacity, server against the echo floor
  replicas   one against two server replicas
  drain      the server alone draining a pre-filled subscription (serving efficiency)
  coldstart  `python -m streamer --index 0` from nothing (emulator + server + model) to the result
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from bench import sweep
from broker import process, wire
from broker.emulator import Emulator, free_port
from broker.pubsub import EMULATOR_PROJECT, Publisher, PublishSettings, Topology, ensure_topology
from configs import load_config
from configs.flags import BENCH_SCENARIOS
from results.machine import describe as describe_machine
from results.machine import machine as results_machine
from results.tables import Table, cells, render
from train.checkpoint import DEFAULT_MODEL_DIR
from train.data import load_fashion_mnist
from train.predictor import load_predictor

REPO = Path(__file__).resolve().parent.parent
# Model-only sizes: the server's buckets, plus 1, 16 and 32 (XLA's slow path on some CPUs).
BUCKETS = (1, 4, 8, 12, 16, 20, 28, 32, 40, 64, 100, 128, 256)
MODEL_DIR = DEFAULT_MODEL_DIR  # main() may point it elsewhere (--model)
# Verdicts are same-run ratios only: machines of one kind differ up to 3.5x from day to day, and an
# absolute target judges the machine, not the code. Absolute figures are reported as information.
TARGETS = {
    "vs_model_only": 0.5,  # end-to-end / model-only at the batch sizes the server actually ran
    "vs_naive": 5.0,
    "p50_overhead_ms": 2.0,  # p50(server) - p50(echo) - the server's own compute p50, at 10% of capacity
    "p99_overhead_ms": 10.0,
}


# ------------------------------------------------------------ processes
MODULES = {"naive": "bench.naive_server", "server": "server", "echo": "bench.server"}


class Server:
    """A server subprocess (real, echo or naive) on its own topic suffix; `cpus` pins it (taskset)."""

    def __init__(self, kind: str, suffix: str, replicas: int = 1, extra: tuple[str, ...] = (), cpus: str | None = None):
        args = ["--topic-suffix", suffix, "--model", str(MODEL_DIR), *extra]
        if kind != "naive":
            args += ["--replicas", str(replicas)] + (["--echo"] if kind == "echo" else [])
        fd, log_path = tempfile.mkstemp(prefix=f"bench-{kind}-", suffix=".log")
        os.close(fd)
        pin = ["taskset", "-c", cpus] if cpus is not None else []
        try:
            self.child = process.start_server(MODULES[kind], args, log_path, replicas, timeout=180, prefix=pin)
        except process.ProcessError as err:
            raise RuntimeError(f"{kind} server: {err}") from None
        self.proc, self.pids = self.child.proc, self.child.pids

    def cpu_s(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def peak_rss_mb(self) -> float:
        return max(peak_rss_mb(pid) for pid in self.pids)

    def stop(self) -> None:
        self.child.stop_and_drop_log()


@contextlib.contextmanager
def server(kind: str, suffix: str, replicas: int = 1, extra: tuple[str, ...] = ()):
    srv = Server(kind, suffix, replicas, extra)
    try:
        yield srv
    finally:
        srv.stop()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        return int(match.group(1)) / 1024 if match else 0.0
    return 0.0


def stream(
    suffix: str,
    limit: int,
    rate: float,
    streams: int = 16,
    verify: bool = False,
    emulator_pid: int | None = None,
    server_obj: Server | None = None,
) -> dict:
    """Run `python -m streamer --server external` and return its report (plus CPU use per process)."""
    with tempfile.TemporaryDirectory() as reports:
        cmd = [
            sys.executable,
            "-m",
            "streamer",
            "--server",
            "external",
            "--topic-suffix",
            suffix,
            "--limit",
            str(limit),
            "--rate",
            str(rate),
            "--streams",
            str(streams),
            "--reports-dir",
            reports,
            "--timeout",
            "300",
        ]
        cmd += ["--model", str(MODEL_DIR)] if verify else ["--no-verify"]
        before = {
            "emulator": cpu_seconds(emulator_pid) if emulator_pid else 0.0,
            "server": server_obj.cpu_s() if server_obj else 0.0,
        }
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        streamer_cpu, samples = 0.0, []
        while proc.poll() is None:  # sample the CPU while the streamer lives: (wall, streamer, server)
            streamer_cpu = max(streamer_cpu, cpu_seconds(proc.pid))
            samples.append((time.time(), streamer_cpu, server_obj.cpu_s() if server_obj else 0.0))
            time.sleep(0.02)
        out = proc.stdout.read()
        proc.stdout.close()
        folder = next(Path(reports).iterdir(), None)
        if folder is None:
            raise RuntimeError(f"streamer wrote no report (exit {proc.returncode}): {out[-500:]}")
        report = json.loads((folder / "report.json").read_text())
    report["cpu_window"] = cpu_window(report, samples)
    report["cpu_s"] = {
        "emulator": (cpu_seconds(emulator_pid) - before["emulator"]) if emulator_pid else None,
        "server": (server_obj.cpu_s() - before["server"]) if server_obj else None,
        "streamer+collector": streamer_cpu,
    }
    report.pop("predictions", None)
    return report


def cpu_window(report: dict, samples: list[tuple[float, float, float]]) -> dict | None:
    """Streamer+collector and server CPU seconds from the first publish to the last result (start-up and
    report writing excluded), interpolated between 20 ms samples of /proc."""
    published = [t for t in report.get("published_s") or () if t is not None]
    received = [p["received_s"] for p in report.get("predictions") or () if p.get("received_s") is not None]
    if len(samples) < 2 or not published or not received:
        return None
    t, client, srv = (np.array(column) for column in zip(*samples))
    t0, t1 = min(published), max(received)
    return {
        "seconds": t1 - t0,
        "images": len(received),
        "streamer+collector": float(np.interp(t1, t, client) - np.interp(t0, t, client)),
        "server": float(np.interp(t1, t, srv) - np.interp(t0, t, srv)),
    }


def topology(suffix: str) -> Topology:
    return Topology.from_names(EMULATOR_PROJECT, load_config(None, "stream.py").broker, suffix)


def spread(values: list[float | None]) -> dict:
    """min, median and max of repeated runs (a run without the figure, None, is left out), and the runs."""
    values = [v for v in values if v is not None]
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": values}


def fresh() -> str:
    return uuid.uuid4().hex[:8]


# ------------------------------------------------------------ scenarios
def img_per_s(predictor, size: int, seconds: float = 1.0) -> float:
    """Model-only throughput of one predictor at one batch size (after a compile/warm call)."""
    x = np.zeros((size, *predictor.meta["input_shape"]), np.uint8)
    predictor(x)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor(x)
        n += size
    return n / (time.perf_counter() - started)


def bench_model(model_dir) -> dict:
    predictor = load_predictor(model_dir)
    return {str(size): img_per_s(predictor, size) for size in BUCKETS}


def throughput_runs(
    kind: str, n: int, repeats: int, emulator: Emulator, replicas: int = 1, extra: tuple[str, ...] = ()
) -> dict:
    runs, cpu, rss, correct, hists = [], [], [], [], []
    for _ in range(repeats):
        suffix = fresh()
        ensure_topology(topology(suffix))
        with server(kind, suffix, replicas, extra) as srv:
            report = stream(suffix, n, 0, emulator_pid=emulator.process.pid, server_obj=srv)
            rss.append(srv.peak_rss_mb())
        runs.append(report["throughput"]["img_per_s"])
        hists.append(report["server"]["batch_size_hist"])
        cpu.append(report["cpu_s"])
        correct.append({k: report["counts"][k] for k in ("sent", "answered", "missing", "duplicates", "errors")})
    return {
        "img_per_s": spread(runs),
        "cpu_s": cpu,
        "peak_rss_mb": max(rss),
        "counts": correct,
        "images": n,
        "batch_size_hist": hists,
    }


def latency_run(kind: str, n: int, rate: float, repeats: int = 1, verify: bool = False) -> dict:
    """`repeats` streams at `rate` through one server; percentiles are medians over the repeats.

    A single run's p99 rests on a few dozen samples and moves by tens of ms from run to run.
    """
    suffix = fresh()
    ensure_topology(topology(suffix))
    with server(kind, suffix):
        reports = [stream(suffix, n, rate, verify=verify and i == 0) for i in range(repeats)]
    keys = ("p50", "p90", "p95", "p99", "max", "mean")
    first = reports[0]
    return {
        "rate": rate,
        "images": n,
        "repeats": repeats,
        "latency_ms": {k: statistics.median(r["latency_ms"][k] for r in reports) for k in keys},
        "latency_runs_ms": [{k: r["latency_ms"][k] for k in keys} for r in reports],
        "achieved_rate": first["run"]["rate_achieved"],
        "counts": first["counts"],
        "offline": first.get("offline"),
        "accuracy": first["accuracy"],
        "ordering_violations": first["ordering"]["violations"],
        "server": first["server"],
    }


def pinned_runs(n: int, emulator: Emulator) -> dict:
    """The capacity model's check (docs/capacity.md): one replica pinned to core 1, then two replicas
    pinned to cores 0 and 1, draining a pre-filled subscription; server CPU per image from /proc."""
    images = load_fashion_mnist("test").images
    out = {}
    for name, pins in (("one_replica_core1", ["1"]), ("two_replicas_core0_core1", ["0", "1"])):
        suffix = fresh()
        prefill(suffix, n, images)
        port = free_port()
        servers = [
            Server("server", suffix, extra=("--metrics-port", str(port + k)), cpus=cpu) for k, cpu in enumerate(pins)
        ]
        try:
            cpu_before = sum(srv.cpu_s() for srv in servers)
            started = time.monotonic()
            # The first replica starts draining while the second compiles: time only what follows.
            base = sum(results_total(port + k) for k in range(len(pins)))
            while (done := sum(results_total(port + k) for k in range(len(pins)))) < n:
                if time.monotonic() - started > 180:
                    raise RuntimeError(f"pinned drain stalled at {done}/{n}")
                time.sleep(0.02)
            seconds = time.monotonic() - started
            cpu = sum(srv.cpu_s() for srv in servers) - cpu_before
        finally:
            for srv in servers:
                srv.stop()
        if n - base <= 0:  # all drained before the last replica was ready (a short --quick drain): nothing timed
            print(f"  pinned {name}: all {n} requests drained before timing began; not reported", flush=True)
            continue
        out[name] = {
            "img_per_s": (n - base) / seconds,
            "server_cpu_us_per_img": cpu / (n - base) * 1e6,
            "cores": pins,
            "timed_images": n - base,
        }
    return out


def prefill(suffix: str, n: int, images: np.ndarray) -> Topology:
    """A fresh topology whose request subscription already holds n requests on 16 streams."""
    topo = topology(suffix)
    ensure_topology(topo)
    publisher = Publisher(topo.requests_topic_path, PublishSettings(max_messages=500, max_latency_s=0.01))
    futures = []
    for i in range(n):
        data, attrs = wire.encode_request(images[i % len(images)], f"d-{i}", stream=str(i % 16), seq=i // 16)
        futures.append(publisher.publish(data, attrs["stream"], **attrs))
    for f in futures:
        f.result()
    publisher.close()
    return topo


def drain_runs(n: int, repeats: int, images: np.ndarray) -> dict:
    """Pre-fill the request subscription, then time the server alone answering all of it."""
    runs = []
    for _ in range(repeats):
        suffix = fresh()
        prefill(suffix, n, images)
        port = free_port()
        with server("server", suffix, extra=("--metrics-port", str(port))):
            started = time.monotonic()
            while (done := results_total(port)) < n:
                if time.monotonic() - started > 120:
                    raise RuntimeError(f"drain stalled at {done}/{n}")
                time.sleep(0.02)
            runs.append(n / (time.monotonic() - started))
    return {"img_per_s": spread(runs), "images": n}


def results_total(port: int) -> float:
    """The server's icc_results_total counter, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = (s for family in text_string_to_metric_families(text) for s in family.samples)
    return next((s.value for s in samples if s.name == "icc_results_total"), 0.0)


def cold_start(repeats: int) -> dict:
    """From `python -m streamer --index 0` with no broker running to its printed result."""
    env = {k: v for k, v in os.environ.items() if k != "PUBSUB_EMULATOR_HOST"}
    runs = []
    for _ in range(repeats):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "streamer", "--index", "0", "--model", str(MODEL_DIR)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cold start failed: {proc.stderr[-300:]}")
        runs.append(time.monotonic() - started)
    return {"seconds": spread(runs)}


# ------------------------------------------------------------ reporting
def machine() -> dict:
    """The CPU kind (results.machine: model, AVX-512, the ISA XLA uses under XLA_FLAGS, cores) and the versions."""
    from importlib.metadata import version

    return {
        **results_machine(),
        "versions": {p: version(p) for p in ("jax", "flax", "google-cloud-pubsub", "grpcio", "numpy")},
        "emulator": "google-cloud-cli-pubsub-emulator (gcloud SDK) " + _gcloud_version(),
    }


def _gcloud_version() -> str:
    with contextlib.suppress(Exception):
        return Path("/usr/lib/google-cloud-sdk/VERSION").read_text().strip()
    return "?"


def model_only_at_served_sizes(model: dict, hists: list[dict], buckets: list[int]) -> float:
    """Model-only img/s for the mix of batch sizes the server ran: each request costs its padded bucket's
    call time divided by the batch it shared."""
    seconds = requests = 0.0
    for hist in hists:
        for size, count in hist.items():
            size = int(size)
            if size <= 0:
                continue
            bucket = next((b for b in sorted(buckets) if b >= size), max(buckets))
            call_s = bucket / model[str(bucket)]
            seconds += count * call_s / size
            requests += count
    return requests / seconds if seconds else float("nan")


def verdicts(r: dict) -> list[dict]:
    """Same-run ratios as verdicts (pass/miss); absolute figures as information (pass None)."""
    rows = []

    def add(metric, value, target, ok, note=""):
        rows.append({"metric": metric, "value": value, "target": target, "pass": ok, "note": note})

    if "server" in r and "model" in r:
        tp = r["server"]["throughput"]["img_per_s"]["median"]
        mo = model_only_at_served_sizes(
            r["model"], r["server"]["throughput"]["batch_size_hist"], r["settings"]["buckets"]
        )
        add(
            "end-to-end / model-only at the served batch sizes",
            f"{tp:.0f} / {mo:.0f} = {tp / mo:.0%}",
            f">= {TARGETS['vs_model_only']:.0%}",
            tp / mo >= TARGETS["vs_model_only"],
        )
    if "server" in r and "naive" in r:
        tp = r["server"]["throughput"]["img_per_s"]["median"]
        ratio = tp / r["naive"]["throughput"]["img_per_s"]["median"]
        add(
            "end-to-end / naive server", f"{ratio:.1f}x", f">= {TARGETS['vs_naive']:.0f}x", ratio >= TARGETS["vs_naive"]
        )
    sweep.verdicts(r, add)  # capacity, the rate and stream sweeps, and the overhead at 10% of capacity
    # Information: absolute figures, which say as much about the machine as about the code.
    if "model" in r:
        add("model-only img/s at batch 256 (info)", f"{r['model']['256']:.0f} img/s", "", None)
    if "server" in r:
        tp = r["server"]["throughput"]["img_per_s"]["median"]
        add("end-to-end, 10k at --rate 0 (info)", f"{tp:.0f} img/s", "", None)
        add("server peak RSS (info)", f"{r['server']['throughput']['peak_rss_mb']:.0f} MB", "", None)
    if "drain" in r and "model" in r:
        d, m = r["drain"]["img_per_s"]["median"], r["model"]["256"]
        add("drain / model-only @256 (info)", f"{d:.0f} / {m:.0f} = {d / m:.0%}", "", None)
    if "coldstart" in r:
        add("cold start, streamer --index 0 to result (info)", f"{r['coldstart']['seconds']['median']:.1f} s", "", None)
    return rows


def write_outputs(r: dict, out_dir: Path, docs_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out_dir / "latest.json").read_text()) if (out_dir / "latest.json").is_file() else None
    stamp = r["date"].replace(":", "").replace("-", "")
    json_path = out_dir / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(r, indent=1))
    (out_dir / "latest.json").write_text(json.dumps(r, indent=1))
    plots = plot(r, docs_dir / "bench")
    md = render_markdown(r, plots, docs_dir, previous)
    target = docs_dir / "benchmarks.md"
    text = target.read_text() if target.is_file() else "# Benchmarks\n\n<!-- bench:begin -->\n<!-- bench:end -->\n"
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    target.write_text(f"{head}{begin}\n{md}\n{end}{tail}")
    return json_path, target


def plot(r: dict, folder: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = sweep.plot(r, folder)
    bars = [
        (name, r[key]["throughput"]["img_per_s"])
        for key, name in (("naive", "naive"), ("echo", "echo floor"), ("server", "server"), ("replicas", "server x2"))
        if key in r and "throughput" in r[key]
    ]
    if bars:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        meds = [b[1]["median"] for b in bars]
        err = [[m - b[1]["min"] for m, b in zip(meds, bars)], [b[1]["max"] - m for m, b in zip(meds, bars)]]
        ax.bar([b[0] for b in bars], meds, yerr=err, capsize=6, color=["#bbb", "#8ab", "#47a", "#258"][: len(bars)])
        for i, m in enumerate(meds):
            ax.text(i, m, f"{m:.0f}", ha="center", va="bottom")
        ax.set_ylabel("img/s, 10k images at --rate 0 (median, min-max)")
        ax.set_title(f"End-to-end throughput on {r['machine']['cores']} cores ({r['machine']['cpu']})")
        fig.tight_layout()
        paths["throughput"] = folder / "throughput.png"
        fig.savefig(paths["throughput"])
        plt.close(fig)
    return paths


def _verdict_text(v: dict) -> str:
    return "info" if v["pass"] is None else "PASS" if v["pass"] else "MISS"


def verdict_table(r: dict) -> Table:
    return Table(
        ["metric", "this run", "target", "verdict"],
        [[v["metric"], v["value"], v["target"], _verdict_text(v)] for v in r["verdicts"]],
    )


def previous_table(r: dict, previous: dict) -> Table:
    """This bench run beside the previous one: bench figures, not run results (no pairing, no test)."""
    old = {v["metric"]: v for v in previous.get("verdicts", [])}
    rows: list[list] = [
        [v["metric"], f"{old[v['metric']]['value']} {_verdict_text(old[v['metric']])}" if v["metric"] in old else "not measured", f"{v['value']} {_verdict_text(v)}"]
        for v in r["verdicts"]
    ]  # fmt: skip
    if "model" in previous and "model" in r:
        rows.append(
            ["model-only img/s at 256", *cells("number", previous["model"]["256"], r["model"]["256"], digits=0)]
        )
    for key in ("naive", "echo", "server"):
        if key in previous and key in r and "throughput" in r[key]:
            medians = (run[key]["throughput"]["img_per_s"]["median"] for run in (previous, r))
            rows.append([f"{key} img/s, median", *cells("number", *medians, digits=0)])
        if key in previous and key in r and "latency" in r[key] and "latency" in previous[key]:
            a, b = previous[key]["latency"]["latency_ms"], r[key]["latency"]["latency_ms"]
            rows.append([f"{key} p50 / p99 at 200 img/s", *(f"{x['p50']:.1f} / {x['p99']:.1f} ms" for x in (a, b))])
    return Table(["metric", "previous run", "this run"], rows)


def scenario_table(r: dict) -> Table:
    rows: list[list] = []
    for key in ("naive", "echo", "echo_ungrouped", "server", "replicas"):
        t = r.get(key, {}).get("throughput")
        if not t:
            continue
        s = t["img_per_s"]
        cpu = t["cpu_s"][len(t["cpu_s"]) // 2]
        rows.append(
            [f"{key} ({t['images']} images)", f"{s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f}"]
            + cells("number", cpu["server"], cpu["emulator"], cpu["streamer+collector"], digits=2)
        )
    if "drain" in r:
        s = r["drain"]["img_per_s"]
        drained = f"drain, server alone ({r['drain']['images']} pre-filled)"
        rows.append([drained, f"{s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f}", "", "", ""])
    for name, p in (r.get("pinned") or {}).items():
        rows.append(
            [
                f"pinned: {name.replace('_', ' ')} (drain, {p['timed_images']} timed)",
                f"{p['img_per_s']:.0f}",
                f"{p['server_cpu_us_per_img']:.0f} core-µs/img",
                "",
                "",
            ]
        )
    header = ["scenario", "img/s min / median / max", "server CPU s", "emulator CPU s", "streamer+collector CPU s"]
    return Table(header, rows)


def render_markdown(r: dict, plots: dict, docs_dir: Path, previous: dict | None = None) -> str:
    m = r["machine"]
    lines = [
        f"## Latest run: {r['date']}",
        "",
        f"Machine: {describe_machine(m)} (CPU flags: {' '.join(m.get('cpu_flags', m.get('flags', [])))}); "
        f"Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; {m['emulator']}.",
        f"Settings: {json.dumps(r['settings'])}. Repeats: {r['repeats']} (min / median / max).",
        "",
        render(verdict_table(r), "markdown"),
    ]
    if previous:
        pm = previous["machine"]
        lines += [
            "",
            f"Side by side with the previous run ({previous['date']}: {describe_machine(pm)}):",
            "",
            render(previous_table(r, previous), "markdown"),
        ]
    lines += ["", render(scenario_table(r), "markdown")]
    if "model" in r:
        lines += [
            "",
            "Model only (jitted, no broker), img/s by batch size: "
            + ", ".join(f"{b}: {v:.0f}" for b, v in r["model"].items()),
        ]
    for key in ("echo", "server"):
        lat = r.get(key, {}).get("latency")
        if lat:
            ms = lat["latency_ms"]
            lines.append(
                f"\nLatency at --rate {lat['rate']:.0f} ({key}, {lat.get('repeats', 1)} x {lat['images']} images, achieved {lat['achieved_rate']} img/s), "
                f"median over the repeats: p50 {ms['p50']:.1f} ms, p90 {ms['p90']:.1f} ms, p99 {ms['p99']:.1f} ms, max {ms['max']:.1f} ms"
                + (
                    " (runs: "
                    + "; ".join(f"p50 {x['p50']:.1f} / p99 {x['p99']:.1f}" for x in lat["latency_runs_ms"])
                    + ")"
                    if lat.get("latency_runs_ms")
                    else ""
                )
                + "."
            )
            if lat.get("offline"):
                o = lat["offline"]
                lines.append(
                    f"Correctness: {lat['counts']['answered']}/{lat['counts']['sent']} answered, {lat['counts']['duplicates']} duplicates, "
                    f"{o['agree']}/{o['compared']} predictions equal to offline evaluation, ordering violations {lat['ordering_violations']}."
                )
    lines += sweep.markdown(r)
    for name, path in plots.items():
        lines.append(f"\n![{name}]({path.relative_to(docs_dir).as_posix()})")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(args) -> int:
    quick = args.quick
    repeats = 1 if quick else args.repeats
    n_full = 3000 if quick else 10000
    only = set(args.only or BENCH_SCENARIOS)
    global MODEL_DIR
    MODEL_DIR = model_dir = Path(args.model).resolve() if args.model else DEFAULT_MODEL_DIR
    r: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "repeats": repeats,
        "settings": {
            "buckets": list(load_config(None, "stream.py").server.buckets),
            "config": "configs/stream.py defaults",
            "streams": 16,
            "full_set": n_full,
            "latency_images": 3000 if not quick else 1000,
        },
    }
    started = time.monotonic()

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {name}", flush=True)

    if "model" in only:
        step("model only")
        r["model"] = bench_model(model_dir)
    with Emulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        lat_n = r["settings"]["latency_images"]
        step("warm-up (not counted): the emulator's JVM compiles its hot paths over the first ~10k messages")
        throughput_runs("echo", n_full, 1, emulator)
        if "echo" in only:
            step("echo floor")
            r["echo"] = {
                "throughput": throughput_runs("echo", n_full, repeats, emulator),
                "latency": latency_run("echo", lat_n, 200, repeats),
            }
        if "ungrouped" in only:
            step("echo floor, one result message per request")
            r["echo_ungrouped"] = {"throughput": throughput_runs("echo", n_full, 1, emulator, extra=("--ungrouped",))}
        if "naive" in only:
            step("naive baseline")
            r["naive"] = {"throughput": throughput_runs("naive", 3000 if not quick else 1000, repeats, emulator)}
        if "server" in only:
            step("real server")
            r["server"] = {
                "throughput": throughput_runs("server", n_full, repeats, emulator),
                "latency": latency_run("server", lat_n, 200, repeats, verify=True),
            }
        if "replicas" in only:
            step("two replicas")
            r["replicas"] = {"throughput": throughput_runs("server", n_full, repeats, emulator, replicas=2)}
        if "pinned" in only:
            step("pinned replicas (capacity model check)")
            r["pinned"] = pinned_runs(max(n_full, 10000), emulator)  # 3,000 drain before a replica is timed
        if "drain" in only:
            step("drain (server alone)")
            r["drain"] = drain_runs(n_full, repeats, load_fashion_mnist("test").images)
        if only & {"capacity", "sweep", "streams"}:
            r["sweep_settings"] = s = sweep.settings(quick)
            step("capacity: end-to-end at --rate 0, fixed and adaptive batching")
            r["capacity"] = sweep.capacity(s, emulator)
            cap = r["capacity"]["capacity"]
        if "sweep" in only:
            step(f"rate sweep, {', '.join(f'{f:.0%}' for f in s['fractions'])} of {cap:.0f} img/s")
            r["rate_sweep"] = sweep.rate_sweep(s, cap, load_fashion_mnist("test").images)
        if "streams" in only:
            step(f"streams {s['stream_counts']} at {min(s['fractions']):.0%} of capacity, server and echo")
            r["streams"] = sweep.streams_sweep(s, cap, load_fashion_mnist("test").images)
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    if "coldstart" in only:
        step("cold start")
        r["coldstart"] = cold_start(1 if quick else min(repeats, 2))
    r["verdicts"] = verdicts(r)
    r["wall_s"] = round(time.monotonic() - started, 1)
    json_path, md_path = write_outputs(r, REPO / args.out, REPO / args.docs)
    print()
    m = r["machine"]
    print(f"  machine: {describe_machine(m)}")
    print(render(verdict_table(r), "terminal"))
    print(f"\nbench took {r['wall_s']:.0f}s -> {json_path}, {md_path}")
    return 0
