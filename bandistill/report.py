"""The paper-style report of a born-again run: Table 2 of Furlanello et al. (2018).

One row per network; columns baseline (generation 0), BAN-1 .. BAN-N, Ens*2 .. Ens*N (the
paper's convention: Ens*k averages the probabilities of BAN-1 .. BAN-k, *without* the
baseline) and the ensemble of every generation including the baseline. Cells are test
error %, with NLL and ECE in tables of the same shape. Over several seeds, cells are
mean ± standard deviation; over one seed the report says that tenths of a percent are noise.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bandistill.bane import ensemble_probs, to_log_probs
from bandistill.atomic import atomic_write
from bandistill.metrics import classification_metrics

REPORT_FILES = ("report.md", "report.json", "report.png")
FIGURES = ("error", "nll", "ece")


def generation_metrics(member_probs: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """Metrics of each generation, of Ens*k (BAN-1..BAN-k) and of all generations with gen0.

    ``member_probs[k]`` are generation k's test probabilities ``(samples, classes)``. The
    ensembles are :func:`bandistill.bane.ensemble_probs`' (as in ``bandistill ensemble``);
    the report keeps the paper's columns, Ens*k, and the whole chain Ens(0..N).
    """
    labels = np.asarray(labels)
    cells: dict[str, dict[str, float]] = {}
    for k, probs in enumerate(member_probs):
        cells["baseline" if k == 0 else f"BAN-{k}"] = _figures(probs, labels)
    generations = range(len(member_probs))
    log_probs = [to_log_probs(np.asarray(p), "probs") for p in member_probs]
    for ens, probs in ensemble_probs(log_probs, generations, average="probs"):
        if not ens.with_teacher or len(ens.members) == len(member_probs):
            cells[ens.name] = _figures(probs, labels)
    return {"columns": list(cells), "cells": cells, "test_samples": int(labels.size)}


def variant_metrics(probs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Error %, NLL and ECE of each variant's student (name -> test probabilities)."""
    return {name: _figures(p, np.asarray(labels)) for name, p in probs.items()}


def _figures(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    m = classification_metrics(probs, labels)
    return {"error": 100.0 * m["error"], "nll": m["nll"], "ece": m["ece"]}


def aggregate(network: str, parameters: int, chains: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over repeats of each cell of :func:`generation_metrics`."""
    columns = chains[0]["columns"]
    row: dict[str, Any] = {"network": network, "parameters": parameters, "repeats": len(chains),
                           "test_samples": chains[0]["test_samples"], "cells": {}}
    for col in columns:
        row["cells"][col] = {}
        for fig in FIGURES:
            values = [c["cells"][col][fig] for c in chains if col in c["cells"]]
            mean = float(np.mean(values))
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            row["cells"][col][fig] = {"mean": mean, "std": std, "values": values}
    row["columns"] = columns
    return row


def aggregate_variants(chains: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Generation 1's variants (one student each, all from generation 0's cache) over repeats.

    Each chain's ``evaluation.json`` holds ``variants``: ``order`` (names as given),
    ``chain`` (the variant the chain goes on from), ``cells`` (name -> error/nll/ece) and
    ``collapse`` (name -> verdict). Rows: the baseline, then every variant; cells mean,
    std (None for one seed) and values, as :func:`aggregate`'s; ``collapsed``: in how many seeds.
    """
    with_variants = [c for c in chains if c.get("variants")]
    if not with_variants:
        return None
    first = with_variants[0]["variants"]
    names = ["baseline", *first["order"]]
    rows = []
    for name in names:
        cells: dict[str, Any] = {}
        for fig in FIGURES:
            values = [c["cells"]["baseline"][fig] if name == "baseline" else c["variants"]["cells"][name][fig]
                      for c in with_variants if name == "baseline" or name in c["variants"]["cells"]]
            cells[fig] = {"mean": float(np.mean(values)), "values": values,
                          "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
        verdicts = [(c.get("collapse") or {}).get("baseline") if name == "baseline"
                    else (c["variants"].get("collapse") or {}).get(name) for c in with_variants]
        collapsed = sum(bool((v or {}).get("collapsed")) for v in verdicts)
        rows.append({"variant": name, "chain": name == first["chain"], "cells": cells, "collapsed": collapsed,
                     "repeats": len(cells["error"]["values"])})
    return {"rows": rows, "chain": first["chain"]}


def variants_markdown(variants: dict[str, Any]) -> list[str]:
    """The variants table: one row per student recipe, beside the baseline (the paper's Tables 2 and 4)."""
    lines = ["## Generation 1: one student per variant, all from generation 0's cache", "",
             "| student | test error % | test NLL | ECE | collapsed |", "|---|---|---|---|---|"]
    for row in variants["rows"]:
        name = row["variant"] + (" (the chain goes on from it: BAN-1)" if row["chain"] else "")
        cells = " | ".join(format_cell(row["cells"][fig], fig) for fig in FIGURES)
        lines.append(f"| {name} | {cells} | {row['collapsed']} of {row['repeats']} |")
    return lines + [""]


def collapse_notes(chains: Sequence[dict[str, Any]]) -> list[str]:
    """One line per collapsed run (a generation or a variant of one seed), saying why."""
    notes = []
    for c in chains:
        found = [(col, v) for col, v in (c.get("collapse") or {}).items() if v and v.get("collapsed")]
        found += [(f"variant {n}", v) for n, v in ((c.get("variants") or {}).get("collapse") or {}).items()
                  if v and v.get("collapsed")]
        notes += [f"COLLAPSED: {col} of seed {c['seed']}: {v['why']}." for col, v in found]
    return notes


def provider_note(chains: Sequence[dict[str, Any]]) -> str | None:
    """Which onnxruntime provider evaluated the members (from each chain's ``providers``)."""
    used: dict[str, list[str]] = {}
    for c in chains:
        for member, provider in (c.get("providers") or {}).items():
            used.setdefault(provider, []).append(member)
    if not used:
        return None
    if len(used) == 1:
        return f"Every member was evaluated by onnxruntime on the {next(iter(used))} provider."
    return "Members were evaluated by onnxruntime on the " + "; ".join(
        f"{p} provider ({', '.join(sorted(set(m)))})" for p, m in used.items()) + "."


def format_cell(value: dict[str, Any], fig: str) -> str:
    fmt = "{:.2f}" if fig == "error" else "{:.3f}" if fig == "nll" else "{:.4f}"
    text = fmt.format(value["mean"])
    if value["std"] is not None:
        text += " ± " + fmt.format(value["std"])
    return text


def markdown(rows: Sequence[dict[str, Any]], title: str = "Born-again run", notes: Sequence[str] = (),
             variants: dict[str, Any] | None = None) -> str:
    """The report as Markdown: one table per figure, one row per network; then the variants, if any."""
    lines = [f"# {title}", ""]
    titles = {"error": "Test error %", "nll": "Test NLL", "ece": "Expected calibration error (15 bins)"}
    for fig in FIGURES:
        columns = rows[0]["columns"]
        lines += [f"## {titles[fig]}", "", "| network | params | " + " | ".join(columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for row in rows:
            cells = " | ".join(format_cell(row["cells"][c][fig], fig) if c in row["cells"] else "/" for c in columns)
            lines.append(f"| {row['network']} | {row['parameters'] / 1e6:.2f}M | {cells} |")
        lines.append("")
    lines += ["Ens*k averages the probabilities of BAN-1 .. BAN-k (the paper's convention, without the baseline);",
              f"{rows[0]['columns'][-1]} averages every generation including the baseline.", ""]
    if variants:
        lines += variants_markdown(variants)
    lines.append(noise_note(rows[0]))
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def noise_note(row: dict[str, Any]) -> str:
    one = 100.0 / row["test_samples"]
    base = f"The test split has {row['test_samples']} images: one image is {one:.2f} points of error."
    if row["repeats"] > 1:
        return base + f" Cells are mean ± standard deviation over {row['repeats']} seeds."
    return base + (" This is a single seed: differences of a few tenths of a percent (or of a few images)"
                   " are within seed noise. Use --repeats to measure it.")


def plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write report.png (:func:`figure`)."""
    import matplotlib.pyplot as plt

    fig = figure(rows)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def figure(rows: Sequence[dict[str, Any]]):
    """report.png's figure: every generation and ensemble on one axis, with the noise drawn.

    One axis, so a difference looks as large as it is: error % of each column, bars of
    ± one standard deviation over seeds under ``--repeats``, and a grey band one test image
    wide (100 / test images points) on either side of the baseline. Two panels with their
    own zoomed axes made a one-image difference on digits look like a cliff.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(rows[0]["columns"])
    for row in rows[1:]:
        columns += [c for c in row["columns"] if c not in columns]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(columns) + 2), 4.2))
    one = 100.0 / rows[0]["test_samples"]
    lows, highs = [], []
    for n, row in enumerate(rows):
        cols = [c for c in columns if c in row["cells"]]
        x = [columns.index(c) + 0.08 * (n - (len(rows) - 1) / 2) for c in cols]
        means = [row["cells"][c]["error"]["mean"] for c in cols]
        stds = [row["cells"][c]["error"]["std"] or 0.0 for c in cols]
        label = row["network"] + (f" ({row['repeats']} seeds, ± std)" if row["repeats"] > 1 else " (1 seed)")
        ax.errorbar(x, means, yerr=stds, marker="o", linestyle="none", capsize=3, label=label)
        lows += [m - s for m, s in zip(means, stds)]
        highs += [m + s for m, s in zip(means, stds)]
        if "baseline" in row["cells"]:
            base = row["cells"]["baseline"]["error"]["mean"]
            ax.axhspan(base - one, base + one, color="grey", alpha=0.2, lw=0,
                       label=f"baseline ± 1 test image ({one:.2f} points)" if n == 0 else None)
            lows.append(base - one)
            highs.append(base + one)
    pad = max(3 * one, 0.25 * (max(highs) - min(lows)))
    ax.set_ylim(max(0.0, min(lows) - pad), max(highs) + pad)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_ylabel("test error %")
    ax.set_title("test error % per generation and ensemble")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_report(out: str | os.PathLike, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None,
                 notes: Sequence[str] = (), variants: dict[str, Any] | None = None) -> dict[str, str]:
    """Write report.md, report.json and report.png into ``out``; return their paths."""
    out = Path(out)
    md = markdown(rows, notes=notes, variants=variants)
    data = {"rows": list(rows), "note": noise_note(rows[0]), "notes": list(notes), **(extra or {})}
    if variants:
        data["variants"] = variants
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(md))
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default)))
    plot(rows, out / "report.png")
    return {name: str(out / name) for name in REPORT_FILES}


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
