"""Soft targets: view plans (epochs, all), the compact top-k cache, version 1 files, the live teacher.

The central test replays a whole epoch twice -- once from a ``--views epochs`` cache, once
with the teacher run live on the same plan -- and checks that every step got the same
images bit for bit and the same soft targets to float32 tolerance.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from bandistill.cache import schema
from bandistill.cache.reader import open_cache
from bandistill.cache.writer import CacheWriter
from bandistill.checkpoint import load_checkpoint
from bandistill.dump import dump_logits
from bandistill.errors import UserError
from bandistill.soft_targets import open_soft_targets, topk_log_probs
from bandistill.train import TrainConfig, TrainRun, train
from bandistill.verify import verify_cache
from bandistill.data.views import ViewPlan, ViewPolicy, expected_distinct
from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 2


@pytest.fixture(scope="module")
def epochs_cache(digits_teacher, tmp_path_factory):
    """A float32 ``--views epochs`` cache for a 2-epoch student."""
    out = tmp_path_factory.mktemp("epochs") / "gen0.h5"
    dump_logits(digits_teacher, "digits", out, views="epochs", epochs=EPOCHS, dtype="float32", device="cpu",
                progress=False)
    return out


class RecordingRun(TrainRun):
    """A real TrainRun that records, per step, the student's input and the teacher targets its loss got."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs: list[torch.Tensor] = []
        self.teachers: list[torch.Tensor] = []
        loss_fn = self.loss_fn

        def recording_loss(logits, labels, teacher):
            self.teachers.append(teacher.detach().clone())
            return loss_fn(logits, labels, teacher)

        self.loss_fn = recording_loss

    def _build(self) -> None:
        super()._build()
        self.model.register_forward_pre_hook(
            lambda module, args: self.inputs.append(args[0].detach().clone()) if module.training else None)


# -- the reference: a cached student is the live-teacher student -------------------------------
def test_epochs_cache_student_sees_what_a_live_teacher_student_sees(epochs_cache, digits_teacher, tmp_path):
    common = dict(model="resnet-20", dataset="digits", epochs=EPOCHS, seed=5, device="cpu", loss="ban+l")
    cached = RecordingRun(TrainConfig(**common, teacher_cache=str(epochs_cache)), tmp_path / "cached",
                          progress=False)
    live = RecordingRun(TrainConfig(**common, teacher_checkpoint=str(digits_teacher), views="epochs", view_seed=0),
                        tmp_path / "live", progress=False)
    cached.run()
    live.run()
    steps = -(-1438 // 128)
    assert len(cached.inputs) == len(live.inputs) == EPOCHS * steps
    assert len(cached.teachers) == len(live.teachers) == EPOCHS * steps
    for x_cached, x_live in zip(cached.inputs, live.inputs):
        assert torch.equal(x_cached, x_live)  # the same images, bit for bit
    for t_cached, t_live in zip(cached.teachers, live.teachers):
        torch.testing.assert_close(t_cached, t_live, atol=1e-4, rtol=1e-4)  # float32 cache: float tolerance
    # the two epochs showed different views, and each sample its own crop
    assert not torch.equal(cached.inputs[0], cached.inputs[steps])
    link = load_checkpoint(tmp_path / "live" / "model.pt")["teacher"]
    assert link["live_teacher"] and link["view_plan"] == "epochs" and link["teacher_generation"] == 0
    assert load_checkpoint(tmp_path / "cached" / "model.pt")["teacher"]["view_plan"] == "epochs"


def test_a_student_longer_than_an_epochs_cache_is_refused(epochs_cache, tmp_path):
    r = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", EPOCHS + 1, "--device", "cpu",
                "--teacher-logits", epochs_cache, "--out", tmp_path / "s")
    assert_one_line_error(r, "one view per epoch for 2 epochs", "--views epochs --epochs 3")


def test_teacher_logits_and_teacher_checkpoint_are_exclusive(epochs_cache, digits_teacher, tmp_path):
    r = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                "--teacher-logits", epochs_cache, "--teacher-checkpoint", digits_teacher, "--out", tmp_path / "s")
    assert_one_line_error(r, "not both")


# -- view plans ------------------------------------------------------------------------------
def test_plans_parse_and_name_their_views():
    policy = ViewPolicy(pad=4, flip=True)
    assert ViewPlan.parse("all", policy, epochs=10) == ViewPlan("all", 162, 0)
    assert ViewPlan.parse("epochs", policy, epochs=30, seed=2) == ViewPlan("epochs", 30, 2)
    assert ViewPlan.parse(4, policy, epochs=None) == ViewPlan("fixed", 4, 0)
    for bad in ("0", "-3", "some", "2.5"):
        with pytest.raises(ValueError, match="positive integer, 'epochs' or 'all'"):
            ViewPlan.parse(bad, policy, epochs=10)


def test_all_plan_enumerates_the_whole_space_and_draws_any_view_per_sample():
    policy = ViewPolicy(pad=4, flip=True)
    params = policy.enumerate_params(np.arange(policy.num_distinct)).numpy()
    assert len({tuple(p) for p in params}) == 162  # every crop and flip once
    assert params[:, :2].min() == 0 and params[:, :2].max() == 8 and set(params[:, 2]) == {0, 1}
    plan = ViewPlan("all", 162, 0)
    views = plan.epoch_views(7, 0, 5000)
    assert len(np.unique(views)) == 162  # samples draw their own views ...
    assert not np.array_equal(views, plan.epoch_views(7, 1, 5000))  # ... afresh each epoch
    assert np.array_equal(views, plan.epoch_views(7, 0, 5000))  # ... as a pure function
    seen = plan.views_seen(policy, 200)
    assert seen["draws"] == 200 and seen["distinct"] == pytest.approx(expected_distinct(162, 200))
    assert ViewPlan("fixed", 4, 0).views_seen(policy, 200)["draws"] == 4


def test_all_cache_in_memory_and_streamed_serve_the_same_targets(digits_teacher, digits, tmp_path):
    out = tmp_path / "all.h5"
    result = dump_logits(digits_teacher, "digits", out, views="all", top_k=3, device="cpu", progress=False)
    assert result["views"] == 9 and result["view_plan"] == "all" and result["top_k"] == 3  # digits: pad 1, no flip
    config = dict(model="resnet-20", dataset="digits", teacher_cache=str(out), seed=3)
    mem = open_soft_targets(TrainConfig(**config), digits, "cpu")
    stream = open_soft_targets(TrainConfig(**config, device_cache_gb=0.0), digits, "cpu")
    assert (mem.mode, stream.mode) == ("memory", "stream")
    idx = torch.randperm(digits.num_train)[:200]
    with open_cache(out) as cache:
        stored = cache.read_stored_all()
        stored_params = cache.read_view_params_all()
    for epoch in range(3):
        views = mem.epoch_views(epoch)
        assert len(np.unique(views)) == 9
        params = mem.epoch_params(epoch)
        assert torch.equal(params, stream.epoch_params(epoch))
        assert np.array_equal(params.numpy(), stored_params[views, np.arange(len(views))])
        got = mem.batch_targets(epoch, idx)
        assert torch.equal(got, stream.batch_targets(epoch, idx))
        rec = stored[views[idx.numpy()], idx.numpy()]
        expect = topk_log_probs(*fields(rec), 10)
        assert torch.equal(got, expect)


# -- the compact form ------------------------------------------------------------------------
def fields(rec: np.ndarray) -> list[torch.Tensor]:
    """values, indices, logsumexp of top-k records, as tensors."""
    return [torch.from_numpy(np.ascontiguousarray(rec[name])) for name in ("values", "indices", "logsumexp")]


def _write(path, logits: np.ndarray, top_k: int, dtype: str = "float16"):
    views, n, c = logits.shape
    attrs = {"dataset": "synthetic", "dataset_fingerprint": "f", "split": "train", "view_policy": "{}",
             "seed": 0, "teacher": schema.teacher_attr("m", "d", 0, "", None),
             "view_plan": ViewPlan("fixed", views, 0).to_json()}
    w = CacheWriter.create(path, attrs=attrs, num_views=views, num_samples=n, num_classes=c, num_params=3,
                           dtype=dtype, labels=np.zeros(n), test_labels=np.zeros(4), top_k=top_k)
    for v in range(views):
        w.write_view(v, logits[v], np.zeros((n, 3), np.int16))
    w.write_test(np.zeros((4, c), np.float32))
    return w.finish()


def test_top5_of_100_classes_is_at_least_5x_smaller_and_its_top_probabilities_exact(tmp_path):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((2, 2000, 100)) * 3).astype(np.float32)
    full = _write(tmp_path / "full.h5", logits, 0)
    top = _write(tmp_path / "top.h5", logits, 5)
    assert full.stat().st_size / top.stat().st_size >= 5.0
    est_full = schema.storage_bytes(8, 50_000, 100, "float16", 3, 10_000)
    est_top = schema.storage_bytes(8, 50_000, 100, "float16", 3, 10_000, top_k=5)
    assert est_full["total"] / est_top["total"] >= 5.0
    with h5py.File(top, "r") as f:  # one view = one sequential read of one contiguous array
        assert f["topk"].id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
        assert "logits" not in f and f.attrs["top_k"] == 5
    exact = _write(tmp_path / "top32.h5", logits, 5, "float32")  # float32: exact to float tolerance
    with open_cache(exact) as cache:
        rec = cache.read_stored_view(1)
    got = topk_log_probs(*fields(rec), 100).exp()
    p = torch.softmax(torch.from_numpy(logits[1]).double(), dim=1)
    top5 = p.topk(5, dim=1)
    assert torch.equal(torch.from_numpy(rec["indices"].astype(np.int64)), top5.indices)
    torch.testing.assert_close(got.gather(1, top5.indices).double(), top5.values, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(2000), atol=1e-5, rtol=0)
    tail = (1 - top5.values.sum(1)) / 95  # the rest, spread evenly
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, top5.indices, False)
    torch.testing.assert_close(got[mask].view(2000, 95).double(), tail[:, None].expand(2000, 95),
                               atol=1e-6, rtol=1e-4)


def test_top_k_cache_passes_verify_cache_and_states_its_error(digits_teacher, tmp_path):
    out = tmp_path / "top.h5"
    r = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", "epochs",
                "--top-k", 3, "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    assert "writing the top 3" in r.stderr and "x smaller" in r.stderr
    r = run_cli("verify-cache", "--checkpoint", digits_teacher, "--cache", out, "--device", "cpu", "--samples", 128)
    assert r.exit_code == 0, r.output
    assert "passed" in r.stdout and "top-3 error" in r.stdout and "KL(teacher || reconstruction)" in r.stdout
    report = verify_cache(digits_teacher, out, samples=128, device="cpu")
    assert report["passed"] and report["top_k"] == 3 and report["view_plan"] == "epochs"
    assert 0 <= report["topk_kl_mean"] <= report["topk_kl_max"] and 0 <= report["topk_tv_max"] < 1
    # a stored value that is not the teacher's fails
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(out.read_bytes())
    with h5py.File(damaged, "r+") as f:
        rec = f["topk"][()]
        rec["values"] += 0.5
        f["topk"][...] = rec
    assert not verify_cache(digits_teacher, damaged, samples=64, device="cpu")["passed"]


def test_top_k_must_leave_classes_out(digits_teacher, tmp_path):
    r = run_cli("dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 2,
                "--top-k", 10, "--device", "cpu", "--out", tmp_path / "c.h5")
    assert_one_line_error(r, "--top-k must be 0 (full rows) or between 1 and 9")


# -- version 1 files -------------------------------------------------------------------------
def test_a_version_1_cache_still_trains_a_student(digits_cache, tmp_path):
    v1 = tmp_path / "v1.h5"
    v1.write_bytes(digits_cache.read_bytes())
    with h5py.File(v1, "r+") as f:  # what version 1 wrote: no view plan, no top_k
        f.attrs["format_version"] = 1
        del f.attrs["view_plan"], f.attrs["top_k"]
    with open_cache(v1) as cache:
        assert cache.info.format_version == 1 and cache.info.view_plan == ViewPlan("fixed", 4, 0)
        assert cache.info.top_k == 0
    result = train(TrainConfig(model="resnet-20", dataset="digits", epochs=1, device="cpu", teacher_cache=str(v1)),
                   tmp_path / "student", progress=False)
    assert result["generation"] == 1 and np.isfinite(result["test_loss"])
    assert result["teacher"]["cache_format_version"] == 1 and result["teacher"]["view_plan"] == "fixed"


def test_a_newer_format_is_refused_with_one_line(digits_cache, tmp_path):
    v3 = tmp_path / "v3.h5"
    v3.write_bytes(digits_cache.read_bytes())
    with h5py.File(v3, "r+") as f:
        f.attrs["format_version"] = 3
    r = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                "--teacher-logits", v3, "--out", tmp_path / "s")
    assert_one_line_error(r, "format version 3", "reads versions 1, 2", "upgrade bandistill")


def test_cache_file_records_its_plan(epochs_cache):
    with h5py.File(epochs_cache, "r") as f:
        assert f.attrs["format_version"] == 2 and f.attrs["top_k"] == 0
        assert json.loads(f.attrs["view_plan"]) == {"kind": "epochs", "num_views": EPOCHS, "seed": 0}
        assert f["logits"].shape[0] == EPOCHS


def test_topk_log_probs_with_k_rows_summing_past_one_are_renormalised():
    values = torch.tensor([[0.0, 0.0]])
    lse = torch.tensor([0.0])  # rounding made each top probability 1
    out = topk_log_probs(values, torch.tensor([[0, 1]]), lse, 4).exp()
    torch.testing.assert_close(out.sum(1), torch.ones(1))
    assert out[0, 2] < 1e-30 and out[0, 0] == pytest.approx(0.5)


def test_live_teacher_of_other_data_is_refused(digits_teacher, cifar10_dir, tmp_path):
    with pytest.raises(UserError, match="was trained on digits"):
        TrainRun(TrainConfig(model="resnet-20", dataset="cifar10", data_dir=str(cifar10_dir), epochs=1,
                             device="cpu", teacher_checkpoint=str(digits_teacher)), tmp_path / "s", progress=False)


def test_a_live_teacher_run_resumes_by_the_teacher_it_started_with(digits_teacher, epochs_cache, tmp_path):
    config = dict(model="resnet-20", dataset="digits", epochs=1, device="cpu", batch_size=512)
    live = TrainConfig(**config, teacher_checkpoint=str(digits_teacher))
    first = train(live, tmp_path / "live", progress=False)
    moved = tmp_path / "teacher.pt"  # the same teacher under another path resumes
    moved.write_bytes(digits_teacher.read_bytes())
    again = train(TrainConfig(**config, teacher_checkpoint=str(moved)), tmp_path / "live", resume=True, progress=False)
    assert again["test_accuracy"] == first["test_accuracy"]
    with pytest.raises(UserError, match="cannot resume"):  # a cache is not the live teacher it started with
        train(TrainConfig(**config, teacher_cache=str(epochs_cache)), tmp_path / "live", resume=True, progress=False)
