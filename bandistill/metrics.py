"""Classification metrics on predicted probabilities: top-1 error, NLL, calibration (ECE).

Everything takes NumPy arrays (torch tensors are accepted and converted) of shape
``(N, classes)`` and integer labels ``(N,)``, and works in float64 so that a sum over
many samples does not lose precision. These are the figures the BAN paper's tables and
the calibration literature report:

* top-1 error -- the fraction of samples whose most probable class is not the label;
* NLL -- the mean negative log probability of the true class (of the ensemble's
  *averaged* probability, for an ensemble);
* ECE -- expected calibration error with 15 equal-width confidence bins (Guo et al.,
  "On Calibration of Modern Neural Networks", ICML 2017): the sample-weighted mean gap
  between the confidence (max probability) and the accuracy within each bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Number of equal-width confidence bins of the ECE (the standard choice).
ECE_BINS = 15

#: Floor on a probability before taking its log, so a confident mistake costs a large
#: but finite NLL (float32 softmax can round a tiny probability to exactly 0).
PROB_FLOOR = 1e-12


def _array(x: Any, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def log_softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64."""
    z = _array(logits)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Softmax in float64."""
    return np.exp(log_softmax(logits, axis=axis))


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _array(probs)
    y = _array(labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probabilities {p.shape} and labels {y.shape} do not match: expected (N, classes) and (N,)")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got [{y.min()}, {y.max()}]")
    return p, y


def top1_error(probs: Any, labels: Any) -> float:
    """Fraction of samples whose arg-max class is not the label."""
    p, y = _check(probs, labels)
    return float((p.argmax(axis=1) != y).mean()) if y.size else float("nan")


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log probability of the true class."""
    p, y = _check(probs, labels)
    if not y.size:
        return float("nan")
    return float(-np.log(np.maximum(p[np.arange(y.size), y], PROB_FLOOR)).mean())


def expected_calibration_error(probs: Any, labels: Any, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins ``(0, 1/bins], ..., ((bins-1)/bins, 1]``.

    ``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|`` where a sample's confidence is
    its largest probability and its prediction that arg-max class.
    """
    p, y = _check(probs, labels)
    if not y.size:
        return float("nan")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]: index ceil(c*bins) - 1 (0 for c == 0).
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    return float(np.abs(acc_sum - conf_sum).sum() / y.size)


def classification_metrics(probs: Any, labels: Any, bins: int = ECE_BINS) -> dict[str, float]:
    """``accuracy``, ``error`` (top-1), ``nll`` and ``ece`` of probabilities against labels."""
    err = top1_error(probs, labels)
    return {
        "accuracy": 1.0 - err,
        "error": err,
        "nll": nll(probs, labels),
        "ece": expected_calibration_error(probs, labels, bins),
    }
