"""The Born-Again Network Ensemble: which ensembles of a chain are reported, named how, averaged how.

A member's output is turned into float64 log-probabilities (:func:`to_log_probs`), and an
ensemble averages its members' probabilities (``average="probs"``, the paper's BANE) or
their logits (``average="logits"``: the mean log-softmax, then a softmax; the two differ by
a per-sample constant only).

Names follow the paper (Furlanello et al. 2018, Table 2): Ens*k averages BAN-1 .. BAN-k
without the teacher, Ens(0..k) includes it (:func:`chain_ensembles`). ``bandistill
ensemble`` and the report of ``bandistill ban`` both take their ensembles from
:func:`ensemble_probs`, so a name means one thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# -- which ensembles, and their names ---------------------------------------------------------------
@dataclass(frozen=True)
class Ensemble:
    """One ensemble of a list of members: its name and the members' indices in that list."""

    name: str
    members: tuple[int, ...]
    with_teacher: bool  # does it average generation 0 (the teacher) too?


def chain_ensembles(generations: Sequence[int]) -> list[Ensemble]:
    """The ensembles reported for members of these generations (in member order), as the paper names them.

    The paper's **Ens*k** averages BAN-1 .. BAN-k, *without* the teacher; **Ens(0..k)** is
    the teacher and BAN-1 .. BAN-k. For a chain 0, 1, ..., N that is Ens*2 .. Ens*N, then
    Ens(0..1) .. Ens(0..N) (the last is the whole BANE). Students alone (1..N) give Ens*2 ..
    Ens*N; a chain from generation s > 1 gives Ens(s..k). Members that are not one chain
    (a generation twice, a gap, a merged ensemble) give "first k" for each prefix and
    "all n" for the whole, by position.
    """
    gens, n = list(generations), len(generations)
    if n < 2:
        return []
    start = gens[0]
    if gens != list(range(start, start + n)):
        return [Ensemble(f"first {k}" if k < n else f"all {n}", tuple(range(k)), start == 0) for k in range(2, n + 1)]
    out = []
    if start <= 1:  # Ens*k: BAN-1 .. BAN-k
        first_student = 1 - start  # index of BAN-1
        out += [Ensemble(f"Ens*{k}", tuple(range(first_student, first_student + k)), False)
                for k in range(2, gens[-1] + 1)]
    if start != 1:  # Ens(s..k): the prefixes from the first generation given
        out += [Ensemble(f"Ens({start}..{gens[j]})", tuple(range(j + 1)), start == 0) for j in range(1, n)]
    return out


def ensemble_probs(log_probs: Sequence[np.ndarray], generations: Sequence[int],
                   average: str = "probs") -> list[tuple[Ensemble, np.ndarray]]:
    """Every ensemble of :func:`chain_ensembles` with its probabilities (:func:`combine` of its members).

    ``bandistill ensemble`` and the born-again report both compute their ensembles here.
    """
    return [(e, combine([log_probs[i] for i in e.members], average)) for e in chain_ensembles(generations)]
