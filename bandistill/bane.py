"""The Born-Again Network Ensemble: how members are averaged.

A member's output is turned into float64 log-probabilities (:func:`to_log_probs`), and an
ensemble averages its members' probabilities (``average="probs"``, the paper's BANE) or
their logits (``average="logits"``: the mean log-softmax, then a softmax; the two differ by
a per-sample constant only).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bandistill.errors import UserError
from bandistill.metrics import PROB_FLOOR, log_softmax

AVERAGES = ("probs", "logits")


def to_log_probs(raw: np.ndarray, output: str) -> np.ndarray:
    """A model's raw output (``logits``, or ``probs`` of a merged ensemble) as float64 log-probabilities."""
    if output == "probs":
        return np.log(np.maximum(raw.astype(np.float64), PROB_FLOOR))
    return log_softmax(raw)


def check_average(average: str) -> None:
    if average not in AVERAGES:
        raise UserError(f"unknown --average '{average}': use probs or logits")


def combine(log_probs: Sequence[np.ndarray], average: str = "probs") -> np.ndarray:
    """Ensemble probabilities from members' log-probabilities: mean of probs, or softmax of mean logits."""
    check_average(average)
    if average == "probs":
        return np.mean([np.exp(lp) for lp in log_probs], axis=0)
    return np.exp(log_softmax(np.mean(log_probs, axis=0)))
