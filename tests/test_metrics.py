"""Tests for bandistill.metrics: top-1 error, NLL and 15-bin ECE against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from bandistill.metrics import (
    ECE_BINS,
    classification_metrics,
    expected_calibration_error,
    log_softmax,
    nll,
    softmax,
    top1_error,
)


def _random_probs(n: int = 500, k: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, k))
    labels = rng.integers(0, k, size=n)
    return softmax(logits), labels


def _ece_loop(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """The textbook definition, one bin at a time (Guo et al. 2017)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def test_error_and_nll_by_hand() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([0, 2, 1, 0])
    assert top1_error(probs, labels) == pytest.approx(0.5)
    expected = -(math.log(0.7) + math.log(0.6) + math.log(0.4) + math.log(0.2)) / 4
    assert nll(probs, labels) == pytest.approx(expected)


def test_nll_matches_sklearn_log_loss() -> None:
    probs, labels = _random_probs()
    assert nll(probs, labels) == pytest.approx(log_loss(labels, probs, labels=list(range(7))), rel=1e-9)


def test_nll_of_a_zero_probability_is_large_but_finite() -> None:
    value = nll(np.array([[1.0, 0.0]]), np.array([1]))
    assert math.isfinite(value) and value > 20


def test_ece_by_hand() -> None:
    # Two samples at confidence 0.9 (bin 14: one right, one wrong), one at 0.6 (bin 9, right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    expected = (2 / 3) * abs(0.5 - 0.9) + (1 / 3) * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_the_bin_by_bin_definition(seed: int) -> None:
    probs, labels = _random_probs(seed=seed)
    assert ECE_BINS == 15
    assert expected_calibration_error(probs, labels) == pytest.approx(_ece_loop(probs, labels), abs=1e-12)


def test_ece_bin_edges_are_right_closed() -> None:
    # Confidence exactly 1/15 belongs to the first bin (0, 1/15], exactly 1.0 to the last.
    k = 15
    edge = np.full((1, k), 1.0 / k)
    assert expected_calibration_error(edge, np.array([0])) == pytest.approx(abs(1.0 - 1.0 / k))
    one_hot = np.eye(3)[[0, 1]]
    assert expected_calibration_error(one_hot, np.array([0, 1])) == 0.0


def test_perfectly_calibrated_bins_have_zero_ece() -> None:
    # 10 samples at confidence 0.8, 8 of them right.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_softmax_is_stable_and_accepts_tensors() -> None:
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    p = softmax(logits)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)
    assert np.allclose(p[1], torch.softmax(logits[1].double(), 0).numpy())
    assert np.allclose(log_softmax(logits)[1], torch.log_softmax(logits[1].double(), 0).numpy())


def test_classification_metrics_and_shape_errors() -> None:
    probs, labels = _random_probs()
    m = classification_metrics(probs, labels)
    assert set(m) == {"accuracy", "error", "nll", "ece"}
    assert m["accuracy"] + m["error"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="do not match"):
        top1_error(probs, labels[:-1])
    with pytest.raises(ValueError, match="labels must lie"):
        nll(probs, labels + 7)
