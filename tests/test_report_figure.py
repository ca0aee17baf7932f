"""report.png: one axis for generations and ensembles, the seed spread and one test image drawn."""

from __future__ import annotations

import pytest

from bandistill.report import aggregate, figure, plot


def _chain(seed: int, errors: dict[str, float]) -> dict:
    return {"columns": list(errors), "test_samples": 359, "seed": seed,
            "cells": {c: {"error": e, "nll": 0.1, "ece": 0.01} for c, e in errors.items()}}


def test_generations_and_ensembles_share_one_axis_with_the_noise_drawn(tmp_path):
    chains = [_chain(0, {"baseline": 1.11, "BAN-1": 0.84, "Ens(0..1)": 0.56}),
              _chain(1000, {"baseline": 0.56, "BAN-1": 1.39, "Ens(0..1)": 0.84})]
    row = aggregate("resnet-20", 270000, chains)
    fig = figure([row])
    assert len(fig.axes) == 1  # not one panel per kind with its own zoom
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "BAN-1", "Ens(0..1)"]
    band = [p for p in ax.patches if p.get_label().startswith("baseline ± 1 test image")]
    assert len(band) == 1
    height = band[0].get_height() if hasattr(band[0], "get_height") else \
        max(y for _, y in band[0].get_xy()) - min(y for _, y in band[0].get_xy())
    assert height == pytest.approx(2 * 100 / 359)  # one test image either side of the baseline
    low, high = ax.get_ylim()
    assert high - low >= 6 * 100 / 359  # never zoomed in below a few test images
    errorbars = ax.containers
    assert len(errorbars) == 1 and errorbars[0].has_yerr  # the seed spread
    plot([row], tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
