"""Did a student learn nothing? A collapsed run is said out loud, never passed silently.

A student taught by a weak, high-entropy teacher at the paper's lr 0.1 can settle on the
majority class in its first steps and stay there (issue 18: train accuracy 25.3, 26.9,
27.8 % on a set whose largest class is 25 %, where the same seed on labels alone reached
31.9 % after one epoch). Nothing fails: the loss is finite and the run "finishes". So every
run is checked when it ends, from figures it already has:

* **predictions on one class**: the most predicted class takes at least
  :data:`CONCENTRATED_SHARE` of the test predictions, and at least twice its share of the
  test labels (so a dataset whose largest class really is half the data is not flagged);
* **at the majority rate**: the last epoch's train accuracy is within
  :data:`MAJORITY_MARGIN` of always answering the largest training class, while the
  teacher's own accuracy on the same training views (read from the cache, so the teacher
  is not loaded) is at least :data:`TEACHER_MARGIN` above that rate: the teacher knew more
  than the majority class and the student did not learn it. A run without a teacher
  (generation 0) is judged by the margin alone.

The verdict goes into ``model.pt`` (``collapse``), ``train``'s output and ``ban``'s report.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

CONCENTRATED_SHARE = 0.5
MAJORITY_MARGIN = 0.05
TEACHER_MARGIN = 0.10


def prediction_spread(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float | int]:
    """The most predicted class of ``logits``, its share of the predictions and of the labels."""
    preds = logits.argmax(dim=1).cpu()
    counts = torch.bincount(preds, minlength=num_classes)
    top = int(counts.argmax())
    n = max(int(preds.numel()), 1)
    label_share = float((labels.cpu() == top).sum()) / n
    return {"top_class": top, "top_class_share": float(counts[top]) / n, "top_class_label_share": label_share}


def majority_rate(labels: torch.Tensor, num_classes: int) -> float:
    """The accuracy of always answering the largest class of ``labels``."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return float(counts.max()) / max(int(labels.numel()), 1)


def verdict(history: Sequence[dict[str, Any]], majority: float, classes: Sequence[str]) -> dict[str, Any]:
    """Whether the run whose per-epoch records are ``history`` collapsed, and why (module docstring)."""
    last = history[-1]
    evaluated = next((h for h in reversed(history) if "top_class_share" in h), None)
    train_accuracy = last.get("train_accuracy")  # absent when no epoch trained (a 0-epoch run, a resumed final state)
    out: dict[str, Any] = {"collapsed": False, "majority_rate": majority, "train_accuracy": train_accuracy}
    reasons = []
    if evaluated is not None:
        share, label_share = evaluated["top_class_share"], evaluated["top_class_label_share"]
        name = classes[evaluated["top_class"]] if evaluated["top_class"] < len(classes) else str(evaluated["top_class"])
        out.update(top_class=name, top_class_share=share)
        if share >= CONCENTRATED_SHARE and share >= 2 * label_share:
            reasons.append(f"{100 * share:.0f}% of its test predictions are class {name!r} "
                           f"({100 * label_share:.0f}% of the labels)")
    teacher = last.get("teacher_train_accuracy")
    if teacher is not None:
        out["teacher_train_accuracy"] = teacher
    at_majority = train_accuracy is not None and train_accuracy <= majority + MAJORITY_MARGIN
    if at_majority and (teacher is None or teacher >= majority + TEACHER_MARGIN):
        taught = "" if teacher is None else f", while its teacher's on the same views is {100 * teacher:.1f}%"
        reasons.append(f"its last train accuracy {100 * train_accuracy:.1f}% is at the majority-class rate "
                       f"{100 * majority:.1f}%{taught}")
    if reasons:
        out["collapsed"] = True
        out["why"] = "; ".join(reasons)
    return out


def warning(v: dict[str, Any] | None) -> str | None:
    """The one line ``train`` prints for a collapsed run (None when it did not collapse)."""
    if not v or not v.get("collapsed"):
        return None
    return (f"collapsed: the model learned little beyond one class ({v['why']}); a student's ban+l loss is "
            "twice a cross entropy, so it starts at twice generation 0's step size: --warmup-epochs 1 or half "
            "the --lr fixed this in benchmarks/collapse.py (see the README)")
