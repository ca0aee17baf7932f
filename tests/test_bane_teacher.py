"""The BANE as teacher: a student's targets are the average of its members' cached targets.

Two members dumped on the same ``--views epochs`` plan and seed (full rows and top-k);
their average, served per step, equals the average computed here from the files; caches
of other views are refused with one line.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from bandistill.cache import schema
from bandistill.checkpoint import load_checkpoint, save_checkpoint
from bandistill.dump import dump_logits
from bandistill.soft_targets import EnsembleSoftTargets, open_soft_targets, topk_log_probs
from bandistill.train import TrainConfig, train
from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 2


@pytest.fixture(scope="module")
def members(digits_teacher, tmp_path_factory):
    """gen0's cache and a second member's (the teacher with perturbed weights, as generation 1), same views."""
    root = tmp_path_factory.mktemp("bane")
    ckpt = load_checkpoint(digits_teacher)
    g = torch.Generator().manual_seed(0)
    ckpt["state_dict"] = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    ckpt["generation"] = 1
    other = root / "gen1.pt"
    save_checkpoint(ckpt, other)
    paths = {}
    for name, src, extra in (("a", digits_teacher, {}), ("b", other, {}), ("b-top3", other, {"top_k": 3}),
                             ("b-seed1", other, {"seed": 1}), ("b-views2", other, {"views": 2})):
        paths[name] = root / f"{name}.h5"
        views = extra.pop("views", "epochs")  # --epochs sizes the epochs plan only (refused with --views K)
        dump_logits(src, "digits", paths[name], views=views, epochs=EPOCHS if views == "epochs" else None,
                    dtype="float32", device="cpu", progress=False, **extra)
    return paths


def _stored_log_probs(path, view: int) -> torch.Tensor:
    """Log-probabilities of one cached view, read straight from the file (full rows or top-k)."""
    with h5py.File(path, "r") as f:
        if "topk" in f:
            rec = f["topk"][view]
            return topk_log_probs(torch.from_numpy(np.ascontiguousarray(rec["values"])),
                                  torch.from_numpy(rec["indices"].astype(np.int64)),
                                  torch.from_numpy(np.ascontiguousarray(rec["logsumexp"])), int(f.attrs["num_classes"]))
        return torch.log_softmax(torch.from_numpy(f[schema.LOGITS][view]).float(), dim=1)


@pytest.mark.parametrize("second", ["b", "b-top3"])
@pytest.mark.parametrize("average", ["probs", "logits"])
def test_bane_teacher_targets_are_the_average_of_the_members_cached_targets(members, digits, second, average):
    config = TrainConfig(model="resnet-20", dataset="digits", epochs=EPOCHS, device="cpu", seed=3,
                         teacher_cache=[str(members["a"]), str(members[second])], teacher_average=average).validate()
    targets = open_soft_targets(config, digits, "cpu")
    assert isinstance(targets, EnsembleSoftTargets)
    idx = torch.arange(digits.num_train)
    for epoch in range(EPOCHS):  # an epochs plan shows view e in epoch e
        a, b = _stored_log_probs(members["a"], epoch), _stored_log_probs(members[second], epoch)
        if average == "probs":
            want = torch.log((a.exp() + b.exp()) / 2)
        else:
            want = (a + b) / 2
        got = targets.batch_targets(epoch, idx)
        # what every loss sees: the softmax of the served row
        torch.testing.assert_close(torch.softmax(got, 1), torch.softmax(want, 1), rtol=1e-5, atol=1e-6)
        with h5py.File(members["a"], "r") as f:
            assert torch.equal(targets.epoch_params(epoch), torch.from_numpy(f[schema.VIEW_PARAMS][epoch]))


def test_a_bane_taught_student_records_its_members_in_its_lineage(members, tmp_path):
    res = train(TrainConfig(model="resnet-20", dataset="digits", epochs=1, device="cpu", seed=2,
                            teacher_cache=[str(members["a"]), str(members["b"])]), tmp_path / "s", progress=False)
    teacher = load_checkpoint(res["checkpoint"])["teacher"]
    assert teacher["ensemble_teacher"] and teacher["teacher_average"] == "probs"
    assert [m["cache"] for m in teacher["members"]] == [str(members["a"].resolve()), str(members["b"].resolve())]
    assert teacher["teacher_generations"] == [0, 1] and res["generation"] == 2


@pytest.mark.parametrize("other,fragment", [("b-seed1", "seed 0 vs 1"), ("b-views2", "--views epochs of 2 vs fixed of 2")])
def test_members_of_other_views_are_refused_in_one_line(members, tmp_path, other, fragment):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
                     "--teacher-logits", str(members["a"]), "--teacher-logits", str(members[other]),
                     "--out", str(tmp_path / "s"))
    assert_one_line_error(result, "dumped on other views", fragment)
    assert not (tmp_path / "s").exists()


def test_teacher_average_needs_several_caches(members, tmp_path):
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
                     "--teacher-logits", str(members["a"]), "--teacher-average", "logits", "--out", str(tmp_path / "s"))
    assert_one_line_error(result, "--teacher-average combines several")
