"""Temperature scaling: the one calibration step training takes (fitted on validation, saved in metadata.json).

The calibration figures themselves (ECE, reliability bins, NLL, Brier) are results/metrics.py's.
"""

from __future__ import annotations

import numpy as np

# log T searched on a grid: T from 0.2 to 5 covers every model we have trained (fitted 0.6-1.0)
_LOG_T_GRID = np.linspace(np.log(0.2), np.log(5.0), 2001)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising NLL of softmax(log p / T) on held-out data.

    softmax is shift-invariant, so log-probabilities at T=1 stand in for the logits exactly.
    A grid over log T is deterministic and needs no optimiser: NLL(T) is smooth and unimodal.
    """
    logp = np.log(np.maximum(np.asarray(probs, np.float64), 1e-300))
    labels = np.asarray(labels, int)
    true = logp[np.arange(len(labels)), labels]
    best_t, best = 1.0, np.inf
    for log_t in _LOG_T_GRID:
        t = float(np.exp(log_t))
        z = logp / t
        zmax = z.max(-1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(-1))
        loss = float((lse - true / t).mean())
        if loss < best:
            best_t, best = t, loss
    return best_t
