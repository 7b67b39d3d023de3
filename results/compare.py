"""Two run results compared: two models on one stream, two saved runs (`report --diff`), a stream against
its offline evaluation.

Images are matched by identity (the dataset's digest and the image's index or file name), never by
position. Where both runs answered the same images the comparison is paired: accuracy on exactly
those images, and McNemar's exact test on the discordant pairs (b = A right and B wrong, c = A wrong
and B right; under "equally good" each is a fair coin, so the p-value is a two-sided binomial test
of b in b + c at 1/2). Otherwise it is unpaired, each run on its own images, and it says so.

Given a results.metrics.Uncertainty, it also says how sure the difference is (results/stats.py):
paired, Newcombe's paired interval next to the exact McNemar p-value, an exact McNemar test per
class with Holm's correction across the classes, the F1 difference by a paired bootstrap, and the
smallest difference this many paired images detect; unpaired, Newcombe's interval for two
independent proportions, overall and per class. ``headline`` puts it in one sentence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from results import agreement, metrics, stats
from results.metrics import Uncertainty, as_json, interval_at
from results.run import OfflineCheck
from results.tables import Block, Cell, Table, cells, estimate

if TYPE_CHECKING:
    from results.run import RunResult

MAX_EXAMPLES = 1000  # disagreements listed in report.json


def pair(a: RunResult, b: RunResult) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows of a's and b's answers that answered the same image, and a line saying what was paired."""
    none = np.zeros(0, int)
    if not a.dataset.digest or a.dataset.digest != b.dataset.digest:
        return (
            none,
            none,
            f"unpaired: different images (dataset {a.dataset.name} against {b.dataset.name}, digests differ)",
        )
    rows_b = {image: k for k, image in enumerate(b.answers.image)}
    pairs = [(k, rows_b[image]) for k, image in enumerate(a.answers.image) if image in rows_b]
    if not pairs:
        return none, none, "unpaired: no image was answered by both"
    ra, rb = (np.asarray(side, int) for side in zip(*pairs))
    return ra, rb, f"paired on the {len(pairs)} images both answered"


# Two-sided exact McNemar p-value for b and c discordant pairs (1 when there are none): results/stats.py's.
mcnemar_p_value = stats.mcnemar_exact


def _defined(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def delta(new: float | None, old: float | None) -> float | None:
    """new - old, or None when either is missing."""
    return None if new is None or old is None else new - old


@dataclasses.dataclass
class Comparison:
    a: RunResult
    b: RunResult
    fa: dict  # each run's figures (results.metrics.figures)
    fb: dict
    paired: bool
    note: str  # what was paired, or why nothing was
    paired_images: int
    accuracy_a: float | None  # on the paired images; unpaired, each on its own
    accuracy_b: float | None
    mcnemar: dict | None  # paired only
    per_class: list[dict]
    disagreements: int | None  # paired only
    disagreement_examples: list[dict]
    intervals: dict | None = None  # how sure the differences are: comparison_intervals (None: not asked for)

    @property
    def accuracy_delta(self) -> float | None:
        return delta(self.accuracy_b, self.accuracy_a)

    def to_json(self) -> dict:
        """report.json's "compare" (the second run's result goes beside it, as "b")."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("a", "b", "fa", "fb")}
        model_a = {**dataclasses.asdict(self.a.model), "seen": list(self.a.model.seen)}
        return {"a": {"model": model_a, "accuracy": self.fa["accuracy"]}, **own, "accuracy_delta": self.accuracy_delta}


def compare(
    a: RunResult, b: RunResult, fa: dict | None = None, fb: dict | None = None, uncertainty: Uncertainty | None = None
) -> Comparison:
    """Run B against run A: paired figures where they answered the same images, unpaired otherwise;
    with ``uncertainty``, every difference's interval and test too (and each run's figures' intervals)."""
    fa, fb = fa or metrics.figures(a, uncertainty), fb or metrics.figures(b, uncertainty)
    ra, rb, note = pair(a, b)
    right_a, right_b = metrics.correct(a)[ra], metrics.correct(b)[rb]
    paired = len(ra) > 0
    mcnemar = examples = None
    if paired:
        table = {
            "both_right": int((right_a & right_b).sum()),
            "a_right_b_wrong": int((right_a & ~right_b).sum()),
            "a_wrong_b_right": int((~right_a & right_b).sum()),
            "both_wrong": int((~right_a & ~right_b).sum()),
        }
        p_value = mcnemar_p_value(table["a_right_b_wrong"], table["a_wrong_b_right"])
        mcnemar = {**table, "p_value": p_value, "significant_at_0.05": p_value < 0.05}
        differ = np.flatnonzero(a.answers.prediction[ra] != b.answers.prediction[rb])
        examples = [
            {
                "index": int(a.answers.index[ra[k]]),
                "image": a.answers.image[ra[k]],
                "label": int(a.answers.label[ra[k]]),
                "a": int(a.answers.prediction[ra[k]]),
                "b": int(b.answers.prediction[rb[k]]),
            }
            for k in differ
        ]
    per_class = [
        {
            "class": ca["class"],
            "accuracy_a": ca["accuracy"],
            "accuracy_b": cb["accuracy"],
            "accuracy_delta": delta(cb["accuracy"], ca["accuracy"]),
            "f1_a": ca["f1"],
            "f1_b": cb["f1"],
            "f1_delta": delta(cb["f1"], ca["f1"]),
        }
        for ca, cb in zip(fa["per_class"], fb["per_class"])
    ]
    return Comparison(
        a, b, fa, fb, paired, note, len(ra),
        accuracy_a=float(right_a.mean()) if paired else fa["accuracy"],
        accuracy_b=float(right_b.mean()) if paired else fb["accuracy"],
        mcnemar=mcnemar, per_class=per_class,
        disagreements=None if examples is None else len(examples),
        disagreement_examples=(examples or [])[:MAX_EXAMPLES],
        intervals=None if uncertainty is None else comparison_intervals(a, b, ra, rb, uncertainty),
    )  # fmt: skip


def comparison_intervals(a: RunResult, b: RunResult, ra: np.ndarray, rb: np.ndarray, u: Uncertainty) -> dict:
    """How sure B - A is: paired on rows ``ra`` of a and ``rb`` of b (the same images), unpaired when they are empty.

    Per class, the difference is of recall (the class's images answered right). The tests are at
    alpha = 1 - level; the smallest detectable difference is at ``u.power``.
    """
    names, k = a.class_names, len(a.class_names)
    out: dict = {"level": u.level, "alpha": u.alpha, "power": u.power}
    if len(ra):
        right_a, right_b = metrics.correct(a)[ra], metrics.correct(b)[rb]
        labels = a.answers.label[ra]
        n = len(ra)
        overall = stats.compare_paired(right_a, right_b, u.level)
        tests = {c.label: c for c in stats.per_class_mcnemar(labels, right_a, right_b, k, u.alpha)}
        f1 = stats.paired_f1_difference(
            labels, a.answers.prediction[ra], b.answers.prediction[rb], k, u.level, u.resamples, u.seed
        )
        per_class = []
        for c, name in enumerate(names):
            mine, test = labels == c, tests.get(c)
            row: dict = {"class": name, "accuracy_difference": None, "p_value": None, "p_holm": None}
            if test is not None:
                ra_c, rb_c = right_a[mine], right_b[mine]
                counts = [int(np.sum(x)) for x in (ra_c & rb_c, ~ra_c & rb_c, ra_c & ~rb_c, ~ra_c & ~rb_c)]
                row |= {
                    "accuracy_difference": as_json(stats.paired_difference_interval(*counts, u.level)),
                    "p_value": test.p_value,
                    "p_holm": test.p_holm,
                    "significant": test.significant,
                    "better": test.better,
                }
            per_class.append(row | {"f1_difference": as_json(f1.per_class[c])})
        detectable = stats.detectable_paired_difference(n, overall.disagreement, u.alpha, u.power)
        return out | {
            "kind": "paired",
            "images": n,
            "method": (
                f"{overall.difference.method} interval for the accuracy difference, {overall.test}, the same test per "
                f"class with Holm's correction across the classes, F1 differences by a {f1.macro.method}"
            ),
            "accuracy_a": as_json(stats.wilson_interval(int(right_a.sum()), n, u.level)),
            "accuracy_b": as_json(stats.wilson_interval(int(right_b.sum()), n, u.level)),
            "accuracy_difference": as_json(overall.difference),
            "p_value": overall.p_value,
            "disagreement": overall.disagreement,
            "macro_f1_difference": as_json(f1.macro),
            "per_class": per_class,
            "detectable_difference": _defined(detectable),
        }
    right_a, right_b = metrics.correct(a), metrics.correct(b)
    na, nb = len(right_a), len(right_b)
    if not na or not nb:
        return out | {"kind": "unpaired", "images": [na, nb], "accuracy_difference": None, "per_class": []}
    ca, cb = (metrics.confusion_matrix(r.answers.label, r.answers.prediction, k) for r in (a, b))
    per_class = []
    for c, name in enumerate(names):
        sa, sb = int(ca[c].sum()), int(cb[c].sum())
        iv = stats.unpaired_difference_interval(int(ca[c, c]), sa, int(cb[c, c]), sb, u.level) if sa and sb else None
        per_class.append({"class": name, "accuracy_difference": None if iv is None else as_json(iv)})
    n_equal = 2 * na * nb / (na + nb)  # two runs of this size each have the variance of these two
    accuracy = float(right_a.mean())
    return out | {
        "kind": "unpaired",
        "images": [na, nb],
        "method": "Newcombe's hybrid score interval for two independent proportions, overall and per class",
        "accuracy_a": as_json(stats.wilson_interval(int(right_a.sum()), na, u.level)),
        "accuracy_b": as_json(stats.wilson_interval(int(right_b.sum()), nb, u.level)),
        "accuracy_difference": as_json(
            stats.unpaired_difference_interval(int(right_a.sum()), na, int(right_b.sum()), nb, u.level)
        ),
        "per_class": per_class,
        "detectable_difference": _defined(
            stats.detectable_unpaired_difference(max(1, round(n_equal)), accuracy, u.alpha, u.power)
        ),
    }


def offline_check(streamed: RunResult, offline: RunResult) -> OfflineCheck:
    """The streamed predictions against an offline evaluation of the same checkpoint, by results/agreement.py's
    rule: the same images (matched by identity) get identical labels, and confidences within its tolerance
    (the server's batch sizes differ from the offline one's, and XLA's last float digits with them)."""
    rs, ro, _ = pair(streamed, offline)
    s, o = streamed.answers, offline.answers
    check = agreement.compare_predictions(o.prediction[ro], s.prediction[rs], o.confidence[ro], s.confidence[rs])
    mismatches = sorted(int(s.index[rs[k]]) for k in check.label_mismatches)
    unpaired = len(s) - len(rs)
    return OfflineCheck(
        model=str(offline.model.identity),
        offline_accuracy=metrics.accuracy(offline),
        compared=len(s),
        agree=len(rs) - len(mismatches),
        mismatches=mismatches[:100],
        identical=check.ok and not unpaired and len(rs) == len(o),
        max_confidence_diff=check.max_confidence_diff,
        tolerance=agreement.TOLERANCE,
        differences=[str(d) for d in check.differences],
    )


# ------------------------------------------------------------------ tables
def model_text(r: RunResult) -> str:
    """The model identity, flagging runs where results came from more than one model."""
    others = [seen for seen in r.model.seen if seen != r.model.identity]
    identity = r.model.identity or "n/a"
    return f"{identity} (WARNING: also answered by {', '.join(others)})" if others else identity


def _points(x: float) -> str:
    return f"{100 * x:.2f}"


def headline(cmp: Comparison) -> str | None:
    """One sentence on B against A, e.g. "B is 2.94 points less accurate [2.43, 3.45], p = 9.2e-37; it is worse
    on 7 of 10 classes after correction, better on none." (None without intervals or answers)."""
    iv = cmp.intervals
    if not iv or not iv.get("accuracy_difference"):
        return None
    d = iv["accuracy_difference"]
    est, lo, hi = d["estimate"], d["lo"], d["hi"]
    if est < 0:
        text = f"B is {_points(-est)} points less accurate [{_points(-hi)}, {_points(-lo)}]"
    elif est > 0:
        text = f"B is {_points(est)} points more accurate [{_points(lo)}, {_points(hi)}]"
    else:
        text = f"B and A are equally accurate (difference {_points(est)} points [{_points(lo)}, {_points(hi)}])"
    if iv["kind"] != "paired":
        chance = "it could be chance" if lo <= 0 <= hi else "more than chance"
        return f"{text}: {chance} (the runs are {cmp.note}, so the interval is for two independent samples)."
    tested = [c for c in iv["per_class"] if c["p_value"] is not None]
    worse = sum(c["better"] == "A" for c in tested)
    better = sum(c["better"] == "B" for c in tested)
    return (
        f"{text}, p = {iv['p_value']:.2g}; it is worse on {worse or 'none'} of {len(tested)} classes after "
        f"correction, better on {better or 'none'}."
    )


def verdict(cmp: Comparison) -> str:
    """One sentence: what was paired, and whether the difference is more than chance."""
    if not cmp.paired:
        return f"The comparison is {cmp.note}: accuracies are each run's own, and McNemar's test needs paired images."
    mc = cmp.mcnemar
    better = "B" if (cmp.accuracy_delta or 0) > 0 else "A"
    return (
        f"On {cmp.paired_images} paired images the models disagree on {cmp.disagreements}. Discordant pairs: "
        f"A right/B wrong {mc['a_right_b_wrong']}, A wrong/B right {mc['a_wrong_b_right']}; exact McNemar "
        f"p = {mc['p_value']:.3g}: "
        + (
            f"model {better} is better by more than chance (p < 0.05)."
            if mc["significant_at_0.05"]
            else "the difference could be chance (p >= 0.05)."
        )
    )


def method_text(cmp: Comparison) -> str | None:
    """How the comparison's intervals and tests were made."""
    iv = cmp.intervals
    if not iv or "method" not in iv:
        return None
    level = f"{100 * iv['level']:g}%"
    if iv["kind"] != "paired":
        return f"{cmp.note[0].upper()}{cmp.note[1:]}; {level} intervals: {iv['method']}; no test by image."
    text = (
        f"Paired by image identity on {iv['images']} images; {level} intervals: {iv['method']}. Each class's interval "
        "is at that level on its own; only the Holm column is corrected for the number of classes."
    )
    if {cmp.fa["counts"]["answered"], cmp.fb["counts"]["answered"]} != {cmp.paired_images}:
        text += (
            " Per class, the points are each run's own (all it answered); the intervals and tests use the "
            f"{cmp.paired_images} images both answered."
        )
    return text


def detectable_text(cmp: Comparison) -> str | None:
    """The smallest accuracy difference a comparison of this size detects (paired: at its observed disagreement)."""
    iv = cmp.intervals
    if not iv or "method" not in iv:
        return None
    detectable = iv.get("detectable_difference")
    at = f"at {100 * iv['power']:g}% power (two-sided alpha {iv['alpha']:g})"
    if iv["kind"] != "paired":
        reach = f"{_points(detectable)} points" if detectable is not None else "no difference"
        return f"Two runs of this size on different images detect an accuracy difference of {reach} {at}."
    share = f"{100 * iv['disagreement']:.2f}% of images answered right by one model only"
    if detectable is None:
        return f"With {share}, no accuracy difference is detectable {at}."
    return f"With {share}, this comparison detects an accuracy difference of {_points(detectable)} points {at}."


def _interval(cmp: Comparison, key: str) -> dict | None:
    return (cmp.intervals or {}).get(key)


def overview_table(cmp: Comparison) -> Table:
    a, b, fa, fb = cmp.a, cmp.b, cmp.fa, cmp.fb
    rows: list[list] = []
    if a.run.run_id != b.run.run_id:
        rows.append(["Run", f"{a.run.run_id} {a.run.started_at}", f"{b.run.run_id} {b.run.started_at}", ""])
    same_model = "same" if a.model.identity == b.model.identity else "DIFFERENT"
    rows += [
        ["Model", model_text(a), model_text(b), same_model],
        ["Model folder", a.model.dir or "n/a", b.model.dir or "n/a", ""],
        ["Dataset / images", f"{a.dataset.name} / {a.dataset.size}", f"{b.dataset.name} / {b.dataset.size}", ""],
        ["Answered", *cells("count", fa["counts"]["answered"], fb["counts"]["answered"]), ""],
    ]
    label = f"Accuracy ({cmp.paired_images} paired images)" if cmp.paired else "Accuracy (unpaired)"
    difference = _interval(cmp, "accuracy_difference")
    rows.append(
        [
            label,
            Cell(cmp.accuracy_a, "percent", interval=_interval(cmp, "accuracy_a")),
            Cell(cmp.accuracy_b, "percent", interval=_interval(cmp, "accuracy_b")),
            Cell(cmp.accuracy_delta, "pts", interval=difference),
        ]
    )
    if cmp.paired and {fa["counts"]["answered"], fb["counts"]["answered"]} != {cmp.paired_images}:
        acc = fa["accuracy"], fb["accuracy"]
        rows.append(
            [
                "Accuracy (all each answered)",
                *(Cell(v, "percent", interval=interval_at(f, "accuracy")) for v, f in zip(acc, (fa, fb))),
                Cell(delta(acc[1], acc[0]), "pts"),
            ]
        )
    if "intervals" in fa:
        f1_a, f1_b = (
            estimate(interval_at(fa, "macro_f1"), "number", 4),
            estimate(interval_at(fb, "macro_f1"), "number", 4),
        )
        paired_f1 = _interval(cmp, "macro_f1_difference")  # on the paired images, by the paired bootstrap
        f1_delta = estimate(paired_f1, "signed", 4) if paired_f1 else Cell(delta(f1_b.value, f1_a.value), "signed", 4)
        partial = paired_f1 and {fa["counts"]["answered"], fb["counts"]["answered"]} != {cmp.paired_images}
        label = f"Macro F1 (B - A on the {cmp.paired_images} paired images)" if partial else "Macro F1"
        rows.append([label, f1_a, f1_b, f1_delta])
    ece = fa["calibration"]["ece"], fb["calibration"]["ece"]
    ece_iv = interval_at(fa, "calibration", "ece"), interval_at(fb, "calibration", "ece")
    rows.append(
        ["ECE", *(Cell(v, "percent", interval=iv) for v, iv in zip(ece, ece_iv)), Cell(delta(*ece[::-1]), "pts")]
    )
    la, lb = fa["latency_ms"], fb["latency_ms"]
    within = " (within each run)" if "intervals" in fa else ""
    rows += [
        [
            f"Latency {k}{within}",
            Cell(la[k], "ms", interval=interval_at(fa, "latency_ms", k)),
            Cell(lb[k], "ms", interval=interval_at(fb, "latency_ms", k)),
            Cell(delta(lb[k], la[k]), "signed_ms"),
        ]
        for k in ("p50", "p90", "p99")
    ]
    ta, tb = fa["throughput"]["img_per_s"], fb["throughput"]["img_per_s"]
    rows.append(["Throughput", *cells("rate", ta, tb), Cell(delta(tb, ta), "signed_rate")])
    return Table(["", f"A {a.model.identity}", f"B {b.model.identity}", "B - A"], rows)


def mcnemar_table(cmp: Comparison) -> Table:
    mc = cmp.mcnemar or {}
    return Table(
        ["McNemar (exact, two-sided)", "B right", "B wrong"],
        [
            ["A right", *cells("count", mc["both_right"], mc["a_right_b_wrong"])],
            ["A wrong", *cells("count", mc["a_wrong_b_right"], mc["both_wrong"])],
        ]
        if mc
        else [],
    )


def per_class_table(cmp: Comparison) -> Table:
    """Per class: each model's accuracy (recall) and F1, and B - A; with intervals, the difference's interval,
    and for paired images the exact McNemar p-value after Holm's correction and which model is better."""
    tests = {row["class"]: row for row in (_interval(cmp, "per_class") or [])}
    paired = cmp.paired and bool(tests)
    header = ["Class", "Accuracy A", "Accuracy B", "Δ accuracy"]
    header += ["McNemar p (Holm)", "Better (Holm)"] if paired else []
    header += ["F1 A", "F1 B", "Δ F1"]
    rows = []
    for row in cmp.per_class:
        test = tests.get(row["class"], {})
        f1_iv = test.get("f1_difference")
        rows.append(
            [
                row["class"],
                *cells("percent", row["accuracy_a"], row["accuracy_b"]),
                Cell(row["accuracy_delta"], "pts", interval=test.get("accuracy_difference")),
                *([Cell(test.get("p_holm"), "p_value"), test.get("better") or ""] if paired else []),
                *cells("number", row["f1_a"], row["f1_b"], digits=4),
                Cell(row["f1_delta"], "signed", 4, f1_iv),
            ]
        )
    return Table(header, rows)


def comparison_tables(cmp: Comparison) -> dict[str, Table]:
    """The comparison's tables by name: overview, mcnemar (paired only), per_class."""
    tables = {"overview": overview_table(cmp)}
    if cmp.paired:
        tables["mcnemar"] = mcnemar_table(cmp)
    tables["per_class"] = per_class_table(cmp)
    return tables


def comparison_text(cmp: Comparison, method: bool = True) -> list[str]:
    """The sentences under the overview: the headline (with intervals), the McNemar verdict, the smallest
    detectable difference and (with ``method``) how the intervals were made."""
    texts = (headline(cmp), verdict(cmp), detectable_text(cmp), method_text(cmp) if method else None)
    return [text for text in texts if text]


def comparison_blocks(cmp: Comparison) -> list[Block]:
    """The comparison as a report shows it, wherever it is shown: report, terminal, `report --diff`."""
    tables = comparison_tables(cmp)
    blocks: list[Block] = [("table", tables.pop("overview")), *(("text", t) for t in comparison_text(cmp))]
    return blocks + [("table", table) for table in tables.values()]


# ------------------------------------------------------------------ planning
def plan(
    delta: float, baseline: float, disagreement: float | None, alpha: float, power: float, source: str = ""
) -> list[str]:
    """How many images a comparison needs to detect an accuracy difference ``delta`` (a fraction), as lines of text.

    Paired (two models on the same images, McNemar) at ``disagreement``, the share of images one model
    gets right and the other wrong, or, when None, stats.assumed_disagreement's rule; unpaired (two runs
    on different images); and one run against ``baseline`` taken as known. Raises ValueError (one line)
    for a difference the baseline cannot have.
    """
    points = f"{100 * delta:g} point{'' if 100 * delta == 1 else 's'}"
    if not 0 <= (baseline - delta if baseline >= 0.5 else baseline + delta) <= 1:
        raise ValueError(
            f"an accuracy of {100 * baseline:g}% cannot {'fall' if baseline >= 0.5 else 'rise'} by {points} (a plan "
            "takes the change toward 50%, the one that needs more images)"
        )
    assumed = disagreement is None
    psi = stats.assumed_disagreement(baseline, delta) if assumed else disagreement
    if psi < abs(delta):
        raise ValueError(
            f"a disagreement of {100 * psi:g}% cannot carry a difference of {points}: "
            "every difference is made of images one model gets right and the other wrong"
        )
    paired = stats.images_needed_paired(delta, psi, alpha, power)
    unpaired = stats.images_needed_unpaired(delta, baseline, alpha, power)
    known = stats.images_needed_vs_baseline(delta, baseline, alpha, power)
    why = (
        f"assumed: the baseline's {100 * (1 - baseline):.2f}% errors + the {points} sought; --plan-disagreement sets it"
        if assumed
        else "as given"
    )
    return [
        f"To detect an accuracy difference of {points} at {100 * power:g}% power (two-sided alpha "
        f"{alpha:g}), from a baseline accuracy of {100 * baseline:.2f}%{f' ({source})' if source else ''}:",
        f"  two models on the same images (paired, McNemar's test): {paired:,} images, if one is right and the other "
        f"wrong on {100 * psi:.2f}% of them ({why})",
        f"  two runs on different images (unpaired): {unpaired:,} images in each run",
        f"  one run against the baseline taken as exactly known: {known:,} images",
    ]
