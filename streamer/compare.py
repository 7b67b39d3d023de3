"""Two models on the same requests: is B better than A by more than chance?

The images both models answered are paired. McNemar's exact test looks only at the discordant
pairs: b = A right and B wrong, c = A wrong and B right. Under "equally good", each discordant pair
is a fair coin, so the two-sided p-value is 2·P(Binomial(b + c, 1/2) ≤ min(b, c)), capped at 1.
"""

from __future__ import annotations

import math


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def compare_summaries(a: dict, b: dict) -> dict:
    """Side-by-side figures of model A's and model B's summaries of the same run."""
    pa = {p["index"]: p for p in a["predictions"]}
    pb = {p["index"]: p for p in b["predictions"]}
    both = sorted(set(pa) & set(pb))
    a_right = [pa[i]["prediction"] == pa[i]["label"] for i in both]
    b_right = [pb[i]["prediction"] == pb[i]["label"] for i in both]
    table = {
        "both_right": sum(x and y for x, y in zip(a_right, b_right)),
        "a_right_b_wrong": sum(x and not y for x, y in zip(a_right, b_right)),
        "a_wrong_b_right": sum(y and not x for x, y in zip(a_right, b_right)),
        "both_wrong": sum(not x and not y for x, y in zip(a_right, b_right)),
    }
    p_value = mcnemar_exact(table["a_right_b_wrong"], table["a_wrong_b_right"])
    acc_a = sum(a_right) / len(both) if both else None
    acc_b = sum(b_right) / len(both) if both else None
    per_class = []
    for ca, cb in zip(a["per_class"], b["per_class"]):
        per_class.append(
            {
                "class": ca["class"],
                "accuracy_a": ca["accuracy"],
                "accuracy_b": cb["accuracy"],
                "accuracy_delta": delta(cb["accuracy"], ca["accuracy"]),
                "f1_a": ca["f1"],
                "f1_b": cb["f1"],
                "f1_delta": delta(cb["f1"], ca["f1"]),
            }
        )
    disagreements = [
        {"index": i, "label": pa[i]["label"], "a": pa[i]["prediction"], "b": pb[i]["prediction"]}
        for i in both
        if pa[i]["prediction"] != pb[i]["prediction"]
    ]
    return {
        "a": {"model": a["model"], "accuracy": a["accuracy"]},
        "b": b,
        "paired_images": len(both),
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "accuracy_delta": delta(acc_b, acc_a),
        "mcnemar": {**table, "p_value": p_value, "significant_at_0.05": p_value < 0.05},
        "per_class": per_class,
        "disagreements": len(disagreements),
        "disagreement_examples": disagreements[:1000],
    }


def delta(new, old):
    """new - old, or None when either is missing."""
    return None if new is None or old is None else round(new - old, 6)
