"""Two run results compared: two models on one stream, two saved runs (`report --diff`), a stream against
its offline evaluation.

Images are matched by identity (the dataset's digest and the image's index or file name), never by
position. Where both runs answered the same images the comparison is paired: accuracy on exactly
those images, and McNemar's exact test on the discordant pairs (b = A right and B wrong, c = A wrong
and B right; under "equally good" each is a fair coin, so the p-value is a two-sided binomial test
of b in b + c at 1/2). Otherwise it is unpaired, each run on its own images, and it says so.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import binomtest

from results import agreement, metrics
from results.run import OfflineCheck
from results.tables import Block, Cell, Table, cells

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


def mcnemar_p_value(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (1 when there are none)."""
    return float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0


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

    @property
    def accuracy_delta(self) -> float | None:
        return delta(self.accuracy_b, self.accuracy_a)

    def to_json(self) -> dict:
        """report.json's "compare" (the second run's result goes beside it, as "b")."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("a", "b", "fa", "fb")}
        model_a = {**dataclasses.asdict(self.a.model), "seen": list(self.a.model.seen)}
        return {"a": {"model": model_a, "accuracy": self.fa["accuracy"]}, **own, "accuracy_delta": self.accuracy_delta}


def compare(a: RunResult, b: RunResult, fa: dict | None = None, fb: dict | None = None) -> Comparison:
    """Run B against run A: paired figures where they answered the same images, unpaired otherwise."""
    fa, fb = fa or metrics.figures(a), fb or metrics.figures(b)
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
    )  # fmt: skip


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
    rows.append([label, *cells("percent", cmp.accuracy_a, cmp.accuracy_b), Cell(cmp.accuracy_delta, "pts")])
    if cmp.paired and {fa["counts"]["answered"], fb["counts"]["answered"]} != {cmp.paired_images}:
        acc = fa["accuracy"], fb["accuracy"]
        rows.append(["Accuracy (all each answered)", *cells("percent", *acc), Cell(delta(acc[1], acc[0]), "pts")])
    ece = fa["calibration"]["ece"], fb["calibration"]["ece"]
    rows.append(["ECE", *cells("percent", *ece), Cell(delta(ece[1], ece[0]), "pts")])
    la, lb = fa["latency_ms"], fb["latency_ms"]
    rows += [
        [f"Latency {k}", *cells("ms", la[k], lb[k]), Cell(delta(lb[k], la[k]), "signed_ms")]
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
    return Table(
        ["Class", "Accuracy A", "Accuracy B", "Δ accuracy", "F1 A", "F1 B", "Δ F1"],
        [
            [
                row["class"],
                *cells("percent", row["accuracy_a"], row["accuracy_b"]),
                Cell(row["accuracy_delta"], "pts"),
                *cells("number", row["f1_a"], row["f1_b"], row["f1_delta"], digits=4),
            ]
            for row in cmp.per_class
        ],
    )


def comparison_tables(cmp: Comparison) -> dict[str, Table]:
    """The comparison's tables by name: overview, mcnemar (paired only), per_class."""
    tables = {"overview": overview_table(cmp)}
    if cmp.paired:
        tables["mcnemar"] = mcnemar_table(cmp)
    tables["per_class"] = per_class_table(cmp)
    return tables


def comparison_blocks(cmp: Comparison) -> list[Block]:
    """The comparison as a report shows it, wherever it is shown: report, terminal, `report --diff`."""
    tables = comparison_tables(cmp)
    blocks: list[Block] = [("table", tables.pop("overview")), ("text", verdict(cmp))]
    return blocks + [("table", table) for table in tables.values()]
