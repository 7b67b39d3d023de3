"""Latency against load relative to the measured capacity, and against the number of streams.

`make bench` runs three scenarios from here against `python -m server` or the echo floor
(bench.server --echo), each server on a fresh topology:

  capacity  end-to-end img/s at --rate 0 through `python -m streamer --server external` (bench.run.stream)
            with each batching policy (fixed, adaptive), on fresh servers, alternating which goes first;
            the client's and the server's CPU from the first publish to the last result. The adaptive
            policy's median (the default) is the capacity.
  sweep     one server per policy offered 10-110% of that capacity, every point repeated, the policies
            taking turns point by point (so a burst of load from elsewhere spreads over the points, and
            the machine's drift over both policies).
  streams   --streams 1..256 at the lowest fraction, server and echo floor at each count, taking turns.

The sweeps run in this process (bench.stages.timed_run: the streamer's own publish_dataset and a
plain results puller), so a point costs its images and not a streamer's start-up (~5-8 s), and every
request's stages (docs/wire.md `timing`) come with it.

Settings and targets live in configs/bench.py.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from bench import run as bench_run
from broker.pubsub import ensure_topology
from configs import load_config

KEYS = ("p50", "p90", "p99", "max", "mean")


def settings(quick: bool) -> dict:
    c = load_config(None, "bench.py")
    out = {k: v for k, v in c.items() if k not in ("quick", "targets")}
    if quick:
        out.update(c.quick.to_dict())
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def load() -> float:
    """The 1-minute load average: recorded with every figure (the machine is shared)."""
    return os.getloadavg()[0]


def point(report: dict) -> dict:
    """What one streamer run says about latency, the server's share of it and the CPU it cost."""
    srv = report["server"]
    return {
        "achieved": report["run"]["rate_achieved"],
        "img_per_s": report["throughput"]["img_per_s"],
        "latency_ms": {k: report["latency_ms"][k] for k in KEYS},
        "queue_ms": {k: srv["queue_ms"][k] for k in ("p50", "p99")},
        "compute_ms": {k: srv["compute_ms"][k] for k in ("p50", "p99")},
        "mean_batch": srv["mean_batch_size"],
        "batch_size_hist": srv["batch_size_hist"],
        "missing": report["counts"]["missing"],
        "duplicates": report["counts"]["duplicates"],
        "ordering_violations": report["ordering"]["violations"],
        "cpu_window": report["cpu_window"],
        "load_1min": load(),
    }


def summary(points: list[dict]) -> dict:
    """Medians over the repeats (min and max beside them) of every latency figure."""
    out = {
        "latency_ms": {k: bench_run.spread([p["latency_ms"][k] for p in points]) for k in KEYS},
        "queue_ms": {k: bench_run.spread([p["queue_ms"][k] for p in points]) for k in ("p50", "p99")},
        "compute_ms": {k: bench_run.spread([p["compute_ms"][k] for p in points]) for k in ("p50", "p99")},
        "batch_wait_ms": {k: bench_run.spread([p["batch_wait_ms"][k] for p in points]) for k in ("p50", "p99")},
        "stages_ms": {
            name: {k: bench_run.spread([p["stages_ms"][name][k] for p in points]) for k in ("mean", "p50")}
            for name in points[0]["stages_ms"]
        },
        "achieved": bench_run.spread([p["achieved"] for p in points]),
        "mean_batch": bench_run.spread([p["mean_batch"] for p in points]),
        "missing": sum(p["missing"] for p in points),
        "load_1min": [p["load_1min"] for p in points],
        "runs": points,
    }
    return out


# ------------------------------------------------------------------ scenarios
def capacity(s: dict, emulator) -> dict:
    """End-to-end img/s at --rate 0 per batching policy, each repeat on a fresh server and topology."""
    from tqdm import tqdm

    policies = s["capacity_policies"]
    runs: dict[str, list[dict]] = {p: [] for p in policies}
    with tqdm(total=s["repeats"] * len(policies), desc="capacity", unit="run") as bar:
        for repeat in range(s["repeats"]):
            for policy in policies if repeat % 2 == 0 else policies[::-1]:
                suffix = bench_run.fresh()
                ensure_topology(bench_run.topology(suffix))
                with bench_run.server("server", suffix, extra=("--batching", policy)) as srv:
                    report = bench_run.stream(
                        suffix, s["capacity_images"], 0, emulator_pid=emulator.process.pid, server_obj=srv
                    )
                runs[policy].append(point(report))
                bar.set_postfix_str(f"{policy}: {report['throughput']['img_per_s']:.0f} img/s")
                bar.update()
    out = {}
    for policy, points in runs.items():
        windows = [p["cpu_window"] for p in points if p["cpu_window"]]
        out[policy] = {
            "img_per_s": bench_run.spread([p["img_per_s"] for p in points]),
            "client_cpu_us_per_img": bench_run.spread([w["streamer+collector"] / w["images"] * 1e6 for w in windows]),
            "server_cpu_us_per_img": bench_run.spread([w["server"] / w["images"] * 1e6 for w in windows]),
            "runs": points,
        }
    out["capacity"] = out["adaptive" if "adaptive" in out else policies[0]]["img_per_s"]["median"]
    return out


def timed_point(topo, images, rate: float, streams: int) -> dict:
    """One in-process run (bench.stages.timed_run: the streamer's own publishing, a plain results puller):
    latency, the server's share of it stage by stage, and the batches."""
    from bench import stages

    run = stages.timed_run(topo, images, rate, streams)
    st = run["stages"]
    st["compute"] = st["decode"] + st["model"]
    e2e = st["end_to_end"]
    e2e = e2e[np.isfinite(e2e)]
    quantile = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    return {
        "achieved": run["achieved_rate"],
        "img_per_s": run["throughput"],
        "latency_ms": {
            **{k: float(np.quantile(e2e, q)) for k, q in quantile.items()},
            "max": float(e2e.max()),
            "mean": float(e2e.mean()),
        },
        **{
            f"{name}_ms": {k: float(np.nanquantile(st[name], quantile[k])) for k in ("p50", "p99")}
            for name in ("queue", "compute", "batch_wait")
        },
        "stages_ms": {
            name: {"mean": float(np.nanmean(st[name])), "p50": float(np.nanquantile(st[name], 0.5))}
            for name in (*stages.ADDITIVE, "batch_wait", "end_to_end")
        },
        "mean_batch": float(np.mean(run["batch_size"])) if len(run["batch_size"]) else None,
        "missing": run["sent"] - run["answered"],
        "load_1min": load(),
    }


@contextlib.contextmanager
def served(kind: str, policy: str, warm_up: np.ndarray):
    """A fresh topology and server (`kind` server or echo, batching `policy`), warmed up untimed."""
    suffix = bench_run.fresh()
    topo = bench_run.topology(suffix)
    ensure_topology(topo)
    with bench_run.server(kind, suffix, extra=("--batching", policy)):
        if len(warm_up):
            timed_point(topo, warm_up, 0, 16)
        yield topo


def rate_sweep(s: dict, cap: float, images: np.ndarray) -> dict:
    """One server per batching policy offered each fraction of `cap`, the policies taking turns point by point.

    Both servers are up for the whole sweep and each goes first as often: run one policy's sweep after
    the other's, the AVX2 machine's speed drifted between them (it drifts up to 1.7x within an hour,
    docs/benchmarks.md), and that drift was in the comparison.
    """
    from tqdm import tqdm

    timed, warm = images[: s["images_per_point"]], images[-s["warm_up"] :] if s["warm_up"] else images[:0]
    policies = tuple(s["sweep_policies"])
    runs: dict[str, dict[float, list[dict]]] = {policy: {f: [] for f in s["fractions"]} for policy in policies}
    with (
        tqdm(total=len(policies) * s["repeats"] * len(s["fractions"]), desc="rate sweep", unit="point") as bar,
        contextlib.ExitStack() as stack,
    ):
        topos = {policy: stack.enter_context(served("server", policy, warm)) for policy in policies}
        for repeat in range(s["repeats"]):
            for i, f in enumerate(s["fractions"]):
                for policy in policies if (repeat + i) % 2 == 0 else policies[::-1]:
                    runs[policy][f].append(timed_point(topos[policy], timed, round(f * cap, 1), s["streams"]))
                    bar.set_postfix_str(f"{policy} {f:.0%}: p99 {runs[policy][f][-1]['latency_ms']['p99']:.0f} ms")
                    bar.update()
    out = {"capacity": cap, "interleaved": True, "policies": {}}
    for policy in policies:
        out["policies"][policy] = [
            {"fraction": f, "rate": round(f * cap, 1), **summary(points)} for f, points in runs[policy].items()
        ]
    # the default policy's curve is the sweep's
    out["points"] = out["policies"][load_config(None, "stream.py").server.batching]
    return out


def streams_sweep(s: dict, cap: float, images: np.ndarray) -> dict:
    """Server and echo floor at each stream count, at the lowest fraction of capacity.

    Both are up for the whole sweep and take turns point by point, each going first as often: run one
    after the other, the echo floor's p50 at 16 streams read 14.0 ms in one bench and 10.1 ms in the
    next, the server's 21.4 and 20.9, and their difference is a verdict.
    """
    from tqdm import tqdm

    timed, warm = images[: s["images_per_point"]], images[-s["warm_up"] :] if s["warm_up"] else images[:0]
    rate = round(min(s["fractions"]) * cap, 1)
    policy = load_config(None, "stream.py").server.batching
    kinds = ("echo", "server")
    runs: dict[str, dict[int, list[dict]]] = {kind: {n: [] for n in s["stream_counts"]} for kind in kinds}
    with (
        tqdm(total=2 * s["repeats"] * len(s["stream_counts"]), desc="streams", unit="point") as bar,
        served("echo", policy, warm) as echo,
        served("server", policy, warm) as server,
    ):
        topos = {"echo": echo, "server": server}
        for repeat in range(s["repeats"]):
            for i, n in enumerate(s["stream_counts"]):
                for kind in kinds if (repeat + i) % 2 == 0 else kinds[::-1]:
                    runs[kind][n].append(timed_point(topos[kind], timed, rate, n))
                    bar.set_postfix_str(f"{kind} {n} streams: p50 {runs[kind][n][-1]['latency_ms']['p50']:.0f} ms")
                    bar.update()
    out: dict = {"rate": rate, "policy": policy, "interleaved": True}
    for kind in kinds:
        out[kind] = {str(n): summary(points) for n, points in runs[kind].items()}
    return out


# ------------------------------------------------------------------- verdicts
def _median(summary_: dict, figure: str, q: str) -> float:
    return summary_[figure][q]["median"]


def lower_p(runs: list[float], baseline: list[float], ratio: float = 1.0) -> float:
    """One-sided exact Mann-Whitney p that `runs` are lower than `ratio` x `baseline` (1.0 when either is empty)."""
    from scipy.stats import mannwhitneyu

    if not runs or not baseline:
        return 1.0
    return float(mannwhitneyu(runs, [ratio * b for b in baseline], alternative="less", method="exact").pvalue)


def verdicts(r: dict, add) -> None:
    """The sweeps' same-run verdicts, through bench.run.verdicts' `add(metric, value, target, ok)`."""
    t = load_config(None, "bench.py").targets
    cap = r.get("capacity")
    if cap and "fixed" in cap and "adaptive" in cap:
        a, f = cap["adaptive"]["img_per_s"], cap["fixed"]["img_per_s"]
        ratio = a["median"] / f["median"]
        p = lower_p(a["runs"], f["runs"], t.adaptive_over_fixed)
        add(
            "capacity, adaptive / fixed batching (end-to-end img/s at --rate 0, medians; runs min-max)",
            f"{a['median']:.0f} / {f['median']:.0f} = {ratio:.2f} (runs {a['min']:.0f}-{a['max']:.0f} vs "
            f"{f['min']:.0f}-{f['max']:.0f}; lower: p = {p:.2f})",
            f">= {t.adaptive_over_fixed:.2f} (unless lower at p <= {t.capacity_alpha:.2f})",
            ratio >= t.adaptive_over_fixed or p > t.capacity_alpha,
        )
    if cap and "adaptive" in cap and cap["adaptive"]["client_cpu_us_per_img"]["runs"]:
        c, s = cap["adaptive"]["client_cpu_us_per_img"]["median"], cap["adaptive"]["server_cpu_us_per_img"]["median"]
        add(
            "streamer+collector CPU / server CPU per image at --rate 0 (first publish to last result)",
            f"{c:.0f} / {s:.0f} core-µs = {c / s:.2f}",
            f"<= {t.client_over_server_cpu:.2f}",
            c / s <= t.client_over_server_cpu,
        )
    sweep = r.get("rate_sweep")
    if sweep:
        by = {p["fraction"]: p for p in sweep["points"]}
        if 0.1 in by and 0.7 in by:
            lo, hi = _median(by[0.1], "latency_ms", "p99"), _median(by[0.7], "latency_ms", "p99")
            # The runs beside the medians: on this 2-core machine one point's p99 moves by up to 2x from run to run.
            runs = {f: by[f]["latency_ms"]["p99"] for f in (0.7, 0.1)}
            add(
                "p99 at 70% of capacity / p99 at 10%",
                f"{hi:.1f} / {lo:.1f} ms = {hi / lo:.1f}x (runs {runs[0.7]['min']:.0f}-{runs[0.7]['max']:.0f} "
                f"vs {runs[0.1]['min']:.0f}-{runs[0.1]['max']:.0f} ms; medians, runs min-max)",
                f"<= {t.p99_70_over_10:.0f}x",
                hi / lo <= t.p99_70_over_10,
            )
    streams = r.get("streams")
    if streams:
        echo, srv = streams["echo"], streams["server"]
        if "16" in srv and "16" in echo:
            # The server and echo floor at 16 streams, 10% of capacity: the former 200 img/s verdicts.
            s16, e16 = srv["16"], echo["16"]
            for q, target in (
                ("p50", bench_run.TARGETS["p50_overhead_ms"]),
                ("p99", bench_run.TARGETS["p99_overhead_ms"]),
            ):
                s_, e_, m_ = (
                    _median(x, k, q) for x, k in ((s16, "latency_ms"), (e16, "latency_ms"), (s16, "compute_ms"))
                )
                qs, qe = _median(s16, "queue_ms", q), _median(e16, "queue_ms", q)
                over = s_ - e_ - m_
                add(
                    f"{q} at 10% of capacity ({streams['rate']:.0f} img/s) beyond echo and the model",
                    f"{s_:.1f} - {e_:.1f} - {m_:.1f} = {over:+.1f} ms (queue incl. batching wait: {qs:.1f} vs echo {qe:.1f})",
                    f"<= {target:.0f} ms",
                    over <= target,
                )
        if all(k in srv and k in echo for k in ("16", "256")):
            b16, b256 = (
                _median(srv[k], "latency_ms", "p50") - _median(echo[k], "latency_ms", "p50") for k in ("16", "256")
            )
            ok = b256 <= t.streams_256_over_16 * max(b16, 1.0)
            add(
                "p50 beyond echo at 256 streams / at 16 (10% of capacity)",
                f"{b256:+.1f} / {b16:+.1f} ms",
                f"<= {t.streams_256_over_16:.0f}x (16's, at least 1 ms)",
                ok,
            )


# ------------------------------------------------------------------ reporting
def plot(r: dict, folder) -> dict:
    """docs/bench/rate_sweep.png (latency against % of capacity) and streams_sweep.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    sweep = r.get("rate_sweep")
    if sweep:
        pts = sweep["points"]
        x = [100 * p["fraction"] for p in pts]
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        default = load_config(None, "stream.py").server.batching
        for policy, curve in sweep["policies"].items():
            muted = policy != default
            for key, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^-")):
                if muted and key == "p90":
                    continue
                med = [p["latency_ms"][key]["median"] for p in curve]
                err = [
                    [m - p["latency_ms"][key]["min"] for m, p in zip(med, curve)],
                    [p["latency_ms"][key]["max"] - m for m, p in zip(med, curve)],
                ]
                ax.errorbar(
                    [100 * p["fraction"] for p in curve], med, yerr=err, fmt=style, capsize=3,
                    alpha=0.45 if muted else 1.0, color="grey" if muted else None,
                    label=f"{key}, {policy} batching" + ("" if muted else f" (median, min-max of {len(curve[0]['runs'])})"),
                )  # fmt: skip
        base = pts[0]["latency_ms"]["p99"]["median"]
        target = load_config(None, "bench.py").targets.p99_70_over_10
        ax.axhline(target * base, color="grey", ls=":", label=f"{target:.0f}x p99 at {x[0]:.0f}%")
        ax.axvline(70, color="grey", ls="-.", lw=0.8)
        ax.set_xlabel(f"offered load, % of capacity ({sweep['capacity']:.0f} img/s end-to-end at --rate 0)")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_yscale("log")
        ax.set_title(f"Latency against load (real server, 1 replica, {r['sweep_settings']['streams']} streams)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        paths["rate sweep"] = folder / "rate_sweep.png"
        fig.savefig(paths["rate sweep"])
        plt.close(fig)
    streams = r.get("streams")
    if streams:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for kind, color in (("server", "#258"), ("echo", "#aaa")):
            counts = sorted(streams[kind], key=int)
            for q, style in (("p50", "o-"), ("p99", "^--")):
                med = [streams[kind][n]["latency_ms"][q]["median"] for n in counts]
                lo = [m - streams[kind][n]["latency_ms"][q]["min"] for m, n in zip(med, counts)]
                hi = [streams[kind][n]["latency_ms"][q]["max"] - m for m, n in zip(med, counts)]
                ax.errorbar(
                    [int(n) for n in counts], med, yerr=[lo, hi], fmt=style, color=color, capsize=4, label=f"{kind} {q}"
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(n) for n in counts], [str(n) for n in counts])
        ax.set_yscale("log")
        ax.set_xlabel("--streams (ordering keys)")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_title(f"Latency against the number of streams at {streams['rate']:.0f} img/s (10% of capacity)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        paths["streams sweep"] = folder / "streams_sweep.png"
        fig.savefig(paths["streams sweep"])
        plt.close(fig)
    return paths


def _cell(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def markdown(r: dict) -> list[str]:
    """The sweeps' tables: medians over the repeats, min-max in brackets, the load average at each run."""
    lines = []
    cap = r.get("capacity")
    if cap:
        lines += [
            "",
            f"Capacity (end-to-end img/s at --rate 0, {r['sweep_settings']['capacity_images']} images, fresh server per run); "
            "CPU per image counted from the first publish to the last result:",
            "",
            "| policy | img/s | streamer+collector core-µs/img | server core-µs/img | load (1 min) |",
            "|---|---|---|---|---|",
        ]
        for policy in r["sweep_settings"]["capacity_policies"]:
            c = cap[policy]
            loads = ", ".join(f"{p['load_1min']:.1f}" for p in c["runs"])
            lines.append(
                f"| {policy} | {_cell(c['img_per_s'], 0)} | {_cell(c['client_cpu_us_per_img'], 0)} | "
                f"{_cell(c['server_cpu_us_per_img'], 0)} | {loads} |"
            )
    sweep = r.get("rate_sweep")
    if sweep:
        for policy, curve in sweep["policies"].items():
            lines += [
                "",
                f"Rate sweep relative to capacity ({sweep['capacity']:.0f} img/s), real server, **{policy}** batching, "
                f"{r['sweep_settings']['repeats']} x {r['sweep_settings']['images_per_point']} images per point:",
                "",
                "| % of capacity | offered img/s | p50 ms | p90 ms | p99 ms | batching wait p50 / p99 ms "
                "| mean batch | missing | load (1 min) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for p in curve:
                lines.append(
                    f"| {100 * p['fraction']:.0f}% | {p['rate']:.0f} | {_cell(p['latency_ms']['p50'])} | "
                    f"{_cell(p['latency_ms']['p90'])} | {_cell(p['latency_ms']['p99'])} | "
                    f"{p['batch_wait_ms']['p50']['median']:.1f} / {p['batch_wait_ms']['p99']['median']:.1f} | "
                    f"{_cell(p['mean_batch'])} | {p['missing']} | {', '.join(f'{x:.1f}' for x in p['load_1min'])} |"
                )
        lines += ["", *stage_table(sweep)]
    streams = r.get("streams")
    if streams:
        lines += [
            "",
            f"Streams at {streams['rate']:.0f} img/s (10% of capacity), server against the echo floor"
            + (", the two taking turns point by point:" if streams.get("interleaved") else ":"),
            "",
            "| --streams | server p50 / p99 ms | echo p50 / p99 ms | beyond echo p50 ms | server compute p50 ms, mean batch | load (1 min) |",
            "|---|---|---|---|---|---|",
        ]
        for n in sorted(streams["server"], key=int):
            s, e = streams["server"][n], streams["echo"][n]
            beyond = s["latency_ms"]["p50"]["median"] - e["latency_ms"]["p50"]["median"]
            lines.append(
                f"| {n} | {_cell(s['latency_ms']['p50'])} / {_cell(s['latency_ms']['p99'])} | "
                f"{_cell(e['latency_ms']['p50'])} / {_cell(e['latency_ms']['p99'])} | {beyond:+.1f} | "
                f"{s['compute_ms']['p50']['median']:.1f}, {s['mean_batch']['median']:.1f} | "
                f"{', '.join(f'{x:.1f}' for x in s['load_1min'] + e['load_1min'])} |"
            )
    return lines


def stage_table(sweep: dict, fractions: tuple[float, ...] = (0.1, 0.5, 0.7)) -> list[str]:
    """Mean ms per stage (bench/stages.py's stages; they add up to the end-to-end mean) per policy and load."""
    from bench.stages import ADDITIVE

    cols = [
        (policy, p)
        for f in fractions
        for policy, curve in sweep["policies"].items()
        for p in curve
        if abs(p["fraction"] - f) < 1e-9
    ]
    if not cols:
        return []
    lines = [
        "Where the time goes, mean ms per stage (median over the repeats; bench/stages.py says what each stage is):",
        "",
        "| stage | " + " | ".join(f"{policy} {100 * p['fraction']:.0f}%" for policy, p in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name in (*ADDITIVE, "end_to_end", "batch_wait"):
        label = name.replace("_", " ") + (" (inside queue)" if name == "batch_wait" else "")
        lines.append(
            f"| {label} | " + " | ".join(f"{p['stages_ms'][name]['mean']['median']:.1f}" for _, p in cols) + " |"
        )
    return lines
