"""A student that learns nothing is said to have collapsed, by ``train`` and in ``ban``'s report.

The forced case: a teacher whose logits favour one class by a wide margin (the digits
teacher with +30 on one class's bias), a student taught by it alone (``--loss ban``): it
predicts that class everywhere, and ``train`` says so on stderr, in its table and JSON,
and in ``model.pt``. A healthy run is not flagged.
"""

from __future__ import annotations

import json

import pytest
import torch

from bandistill.checkpoint import load_checkpoint, save_checkpoint
from bandistill.collapse import verdict
from bandistill.dump import dump_logits
from bandistill.train import TrainConfig, learning_rate
from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_class_cache(digits_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("collapse")
    ckpt = load_checkpoint(digits_teacher)
    bias = next(k for k in ckpt["state_dict"] if k.endswith("classifier.bias"))
    ckpt["state_dict"][bias] = ckpt["state_dict"][bias].clone()
    ckpt["state_dict"][bias][3] += 30.0
    save_checkpoint(ckpt, root / "one-class.pt")
    dump_logits(root / "one-class.pt", "digits", root / "one-class.h5", views="epochs", epochs=2, device="cpu",
                progress=False)
    return root / "one-class.h5"


def test_a_student_of_a_one_class_teacher_is_reported_collapsed_by_train(one_class_cache, tmp_path):
    out = tmp_path / "student"
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "2", "--device", "cpu",
                     "--teacher-logits", str(one_class_cache), "--loss", "ban", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    v = data["collapse"]
    assert v["collapsed"] and v["top_class"] == "3" and v["top_class_share"] > 0.9
    assert "test predictions are class '3'" in v["why"]
    assert "collapsed:" in result.stderr and "--warmup-epochs" in result.stderr
    assert load_checkpoint(out / "model.pt")["collapse"]["collapsed"]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(e["teacher_train_accuracy"] < 0.2 for e in epochs)  # the teacher answers 3 everywhere too


def test_a_healthy_run_is_not_flagged(digits_gen0):
    v = digits_gen0["collapse"]
    assert v["collapsed"] is False and v["top_class_share"] < 0.5, v


def test_verdict_at_the_majority_rate_needs_a_teacher_that_knew_more():
    history = [{"train_accuracy": 0.31, "top_class": 0, "top_class_share": 0.4, "top_class_label_share": 0.25}]
    assert not verdict(history, 0.25, ["a", "b"])["collapsed"]  # predictions spread, 6 points over the majority rate
    history[-1]["train_accuracy"] = 0.28
    assert verdict(history, 0.25, ["a", "b"])["collapsed"]  # within 5 points of it (no teacher: the margin alone)
    history[-1]["teacher_train_accuracy"] = 0.30  # a teacher no better than the majority class: not the student's fault
    assert not verdict(history, 0.25, ["a", "b"])["collapsed"]
    history[-1]["teacher_train_accuracy"] = 0.45
    v = verdict(history, 0.25, ["a", "b"])
    assert v["collapsed"] and "majority-class rate 25.0%" in v["why"] and "45.0%" in v["why"]


def test_warmup_raises_the_lr_linearly_then_keeps_the_schedule():
    c = TrainConfig(model="resnet-20", dataset="digits", epochs=10, lr=0.1, warmup_epochs=2).validate()
    lrs = [learning_rate(c, e, s, 5) for e in range(3) for s in range(5)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    plain = TrainConfig(model="resnet-20", dataset="digits", epochs=10, lr=0.1).validate()
    assert all(learning_rate(plain, e, s, 5) == learning_rate(c, e, s, 5) for e in range(2, 10) for s in range(5))
    assert "warmup_epochs" not in plain.to_dict()  # off by default: older runs' configs still compare equal


def test_verdict_of_a_run_that_trained_no_epoch_is_not_a_crash():
    # A 0-epoch run (benchmarks build a model without training it) has only its evaluation record.
    out = verdict([{"test_accuracy": 0.0}], majority=0.1, classes=["a", "b"])
    assert out["collapsed"] is False and out["train_accuracy"] is None
