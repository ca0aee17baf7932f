"""A run's report from what is on disk: each seed's ``evaluation.json`` -> report.md/.json/.png.

The tables themselves (Table 2 of the paper: cells, aggregation over seeds, Markdown, the
figure) are :mod:`bandistill.report`; this module finds a run's evaluations, checks them and
adds what only a run knows (its network label, parameter count, the views its students saw).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from bandistill.errors import NonFiniteError, UserError
from bandistill.models import build_model, count_parameters, model_options
from bandistill.run.options import OPTIONS_FILE, BanOptions, mistyped, read_options
from bandistill.data.views import ViewPlan, ViewPolicy, generation0_views_seen

EVALUATION_FILE = "evaluation.json"


def views_seen(o: BanOptions, policy: ViewPolicy) -> dict[str, Any]:
    """Views per training image over a generation: generation 0's fresh draws against the students' cache."""
    plan = ViewPlan.parse(o.views, policy, epochs=o.epochs)
    return {"space": policy.num_distinct, "views": plan.label, "gen0": generation0_views_seen(policy, o.epochs),
            "students": plan.views_seen(policy, o.epochs), "gen0_imported": o.teacher}


def views_note(seen: dict[str, Any]) -> str:
    """One sentence: how many views per image the students saw against generation 0."""
    g, s = seen["gen0"], seen["students"]
    space = (f"of the {seen['space']} the view policy makes" if seen["space"] < 1 << 62
             else "from the view policy's continuum")  # RandomResizedCrop boxes
    if seen.get("gen0_imported"):  # --teacher: generation 0 was not trained here
        return (f"Generation 0 was imported from {Path(seen['gen0_imported']).name} (not trained here); the "
                f"students, from caches of --views {seen['views']}, drew {s['draws']:.0f} views per training image "
                f"(about {s['distinct']:.1f} distinct {space}).")
    return (f"Views per training image over a generation: generation 0 drew {g['draws']:.0f} "
            f"(about {g['distinct']:.1f} distinct {space}); the students, "
            f"from caches of --views {seen['views']}, {s['draws']:.0f} (about {s['distinct']:.1f} distinct).")


def network_label(o: BanOptions) -> str:
    if o.student_model and o.student_model != o.model:
        return f"{o.model} -> {o.student_model}"
    return o.model


def parameters_of(o: BanOptions, num_classes: int, in_channels: int, image_shape=None) -> int:
    name = o.student_model or o.model
    options = model_options(name, image_shape) if image_shape else {}
    return count_parameters(build_model(name, num_classes, in_channels, **options))


def find_evaluations(out: str | Path) -> list[Path]:
    """The evaluation of each seed's chain under ``out`` (one seed: ``out/evaluation.json``).

    With a ``ban.json``, exactly the chains of its seeds; chains left from other options are not reported.
    """
    out = Path(out)
    saved = read_options(out)
    if saved is not None:
        wrong = mistyped(saved)
        try:
            if wrong:
                raise TypeError(wrong[0])
            opts = BanOptions(**{k: v for k, v in saved.items() if k in {f.name for f in fields(BanOptions)}})
            paths = [opts.chain_dir(out, s) / EVALUATION_FILE for s in opts.chain_seeds()]
        except TypeError as exc:
            raise UserError(f"{out / OPTIONS_FILE} is damaged ({exc}); restore it") from None
        return [p for p in paths if p.is_file()]
    if (out / EVALUATION_FILE).is_file():
        return [out / EVALUATION_FILE]
    return sorted(out.glob(f"seed-*/{EVALUATION_FILE}"))


def read_evaluation(path: Path) -> dict[str, Any]:
    """One chain's evaluation.json, or :class:`UserError` when it is damaged (cut short, edited)."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        data = exc
    keys = ("network", "parameters", "seed", "columns", "cells", "test_samples")
    figures = ("error", "nll", "ece")
    if (not isinstance(data, dict) or any(k not in data for k in keys) or not isinstance(data["cells"], dict)
            or not all(isinstance(c, dict) and all(_is_number(c.get(f)) for f in figures)
                       for c in data["cells"].values())):
        raise UserError(f"{path} is damaged (not a complete evaluation); move it aside and rerun the same "
                        "'bandistill ban' command to evaluate the generations again")
    bad = [f"{col} {f}" for col, c in data["cells"].items() for f in figures if not math.isfinite(c[f])]
    if bad:  # a report of NaN cells is garbage: it must not pass as a result (exit 1, nothing written)
        raise NonFiniteError(f"{path} holds figures that are not finite ({', '.join(bad[:4])}"
                             f"{' ...' if len(bad) > 4 else ''}): those generations output NaN or inf; no report "
                             "written; check them with 'bandistill ensemble --onnx <run>/onnx/gen*.onnx'")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_report(out: str | Path) -> dict[str, Any]:
    """Regenerate report.md, report.json and report.png from the evaluations on disk."""
    from bandistill.report import (aggregate, aggregate_variants, collapse_notes, markdown, provider_note,
                                   write_report)

    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out} is not a folder; pass the --out of a 'bandistill ban' run")
    paths = find_evaluations(out)
    if not paths:
        raise UserError(f"{out} holds no finished born-again run (no {EVALUATION_FILE}); run 'bandistill ban --out {out}' first")
    chains = [read_evaluation(p) for p in paths]
    by_network: dict[str, list[dict[str, Any]]] = {}
    for c in chains:
        by_network.setdefault(c["network"], []).append(c)
    rows = [aggregate(name, group[0]["parameters"], group) for name, group in by_network.items()]
    seen = chains[0].get("views_seen")
    notes = [views_note(seen)] if seen else []
    notes += [n for n in (teacher_note(chains[0].get("taught_by")), provider_note(chains)) if n]
    notes += collapse_notes(chains)
    variants = aggregate_variants(chains)
    files = write_report(out, rows, extra={"seeds": [c["seed"] for c in chains], "views_seen": seen,
                                           "taught_by": chains[0].get("taught_by")}, notes=notes, variants=variants)
    return {"rows": rows, "files": files, "markdown": markdown(rows, notes=notes, variants=variants), "notes": notes,
            "variants": variants}


def teacher_note(taught_by: dict[str, Any] | None) -> str | None:
    """How generations 2..N were taught, when not by the previous generation alone."""
    if not taught_by or not taught_by.get("bane"):
        return None
    return (f"Generations 2..N were taught by the BANE: generation k by the average ({taught_by['average']}) of "
            "generations 0..k-1's cached soft targets on the same views (--bane-teacher).")
