"""Students trained from a cache: no teacher on disk, lineage, schedule, memory modes, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bandistill.cache import schema
from bandistill.checkpoint import load_checkpoint
from bandistill.identity import cache_digest, checkpoint_digest, lineage_chain
from conftest import run_cli
from bandistill.soft_targets import open_soft_targets
from bandistill.data.views import view_schedule
from bandistill.dump import DumpInterrupted, dump_logits
from bandistill.losses import LOSSES
from bandistill.train import TrainConfig, TrainRun, train

EPOCHS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gen0(digits_teacher) -> Path:
    return digits_teacher


@pytest.fixture
def cache(digits_cache) -> Path:
    return digits_cache


def student_args(cache_path, out, *extra):
    return ["train", "--model", "resnet-20", "--dataset", "digits", "--epochs", EPOCHS, "--device", "cpu",
            "--teacher-logits", cache_path, "--out", out, *extra]


# -- the pipeline -----------------------------------------------------------------------------
def test_generations_train_from_caches_with_their_teachers_deleted(gen0, tmp_path):
    """gen0 -> dump -> (delete gen0) -> gen1 -> dump -> (delete gen1) -> gen2, all through the CLI."""
    teacher = tmp_path / "gen0" / "model.pt"
    teacher.parent.mkdir()
    shutil.copy(gen0, teacher)
    gen0_digest = checkpoint_digest(teacher)
    for gen in (1, 2):
        cache_path = tmp_path / f"cache/gen{gen - 1}.h5"
        r = run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--views", 4,
                    "--device", "cpu", "--out", cache_path, "--json")
        assert r.exit_code == 0, r.output
        teacher.unlink()  # the student must not need its teacher's weights
        r = run_cli(*student_args(cache_path, tmp_path / f"gen{gen}", "--seed", gen, "--json"))
        assert r.exit_code == 0, r.output
        result = json.loads(r.stdout)
        assert result["generation"] == gen
        assert 0.0 <= result["test_accuracy"] <= 1.0
        teacher = tmp_path / f"gen{gen}" / "model.pt"
        ckpt = load_checkpoint(teacher)
        assert ckpt["generation"] == gen
        link = ckpt["teacher"]
        assert link["cache"] == str(cache_path.resolve())
        assert link["cache_digest"] == cache_digest(cache_path)  # content, not bytes
        assert link["loss"] == "ban+l" and link["temperature"] == 1.0
        assert link["teacher_generation"] == gen - 1 and link["teacher_model"] == "resnet-20"
    chain = lineage_chain(teacher)
    assert [c["generation"] for c in chain] == [2, 1, 0]
    assert chain[2]["checkpoint_digest"] == gen0_digest
    assert chain[0]["cache"].endswith("gen1.h5") and chain[1]["cache"].endswith("gen0.h5")
    assert chain[0]["loss"] == chain[1]["loss"] == "ban+l"


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_a_student(cache, tmp_path, loss):
    config = TrainConfig(model="resnet-20", dataset="digits", epochs=1, device="cpu", teacher_cache=str(cache),
                         loss=loss, temperature=2.0 if loss == "kd" else 1.0)
    result = train(config, tmp_path / "run", progress=False)
    assert result["generation"] == 1 and np.isfinite(result["test_loss"])
    link = load_checkpoint(tmp_path / "run" / "model.pt")["teacher"]
    assert link["loss"] == loss and link["temperature"] == config.temperature


# -- the schedule and memory modes ---------------------------------------------------------------
def test_schedule_cycles_through_every_view_and_depends_on_the_seed():
    for k in (1, 3, 4, 8):
        for cycle in range(3):
            views = [view_schedule(7, cycle * k + e, k) for e in range(k)]
            assert sorted(views) == list(range(k))
    orders = {tuple(view_schedule(seed, e, 8) for e in range(8)) for seed in range(10)}
    assert len(orders) > 1
    assert [view_schedule(3, e, 4) for e in range(12)] == [view_schedule(3, e, 4) for e in range(12)]


def test_memory_and_streaming_modes_serve_the_same_targets(cache, digits):
    mem = open_soft_targets(TrainConfig("resnet-20", "digits", teacher_cache=str(cache), seed=1), digits, "cpu")
    stream = open_soft_targets(TrainConfig("resnet-20", "digits", teacher_cache=str(cache), seed=1,
                                           device_cache_gb=0.0), digits, "cpu")
    assert (mem.mode, stream.mode) == ("memory", "stream")
    idx = torch.randperm(digits.num_train)[:100]
    for epoch in range(9):
        assert torch.equal(mem.epoch_params(epoch), stream.epoch_params(epoch))
        assert torch.equal(mem.batch_targets(epoch, idx), stream.batch_targets(epoch, idx))
        assert stream._table.parts[0].shape == (digits.num_train, digits.num_classes)  # one view resident
    assert mem.batch_targets(0, idx).dtype == torch.float32


def test_in_memory_targets_never_touch_the_file_again(cache, digits, tmp_path):
    moved = tmp_path / "c.h5"
    shutil.copy(cache, moved)
    targets = open_soft_targets(TrainConfig("resnet-20", "digits", teacher_cache=str(moved)), digits, "cpu")
    moved.unlink()
    idx = torch.arange(64)
    with h5py.File(cache, "r") as f:
        for epoch in range(8):
            view = targets.view_for_epoch(epoch)
            assert np.array_equal(targets.batch_targets(epoch, idx).numpy(), f["logits"][view, :64].astype(np.float32))
            assert np.array_equal(targets.epoch_params(epoch).numpy(), f["view_params"][view])


def test_student_is_the_same_whether_the_cache_is_in_memory_or_streamed(cache, tmp_path):
    runs = {}
    for budget in (4.0, 0.0):
        config = TrainConfig(model="resnet-20", dataset="digits", epochs=EPOCHS, device="cpu",
                             teacher_cache=str(cache), device_cache_gb=budget, seed=3)
        run = TrainRun(config, tmp_path / f"b{budget}", progress=False)
        assert run.targets.mode == ("memory" if budget else "stream")
        run.run()
        runs[budget] = load_checkpoint(tmp_path / f"b{budget}" / "model.pt")["state_dict"]
    for key, value in runs[4.0].items():
        assert torch.equal(value, runs[0.0][key]), key


def test_resume_accepts_the_same_cache_under_another_path_and_budget(cache, tmp_path):
    """A student resumed with ./c.h5 for c.h5, a moved cache or another --cache-memory-gb is the same run."""
    from bandistill.errors import UserError
    from bandistill.train import train

    config = dict(model="resnet-20", dataset="digits", epochs=1, device="cpu", seed=3)
    train(TrainConfig(**config, teacher_cache=str(cache)), tmp_path / "s", progress=False)
    moved = Path(shutil.copy(cache, tmp_path / "moved.h5"))
    result = train(TrainConfig(**config, teacher_cache=str(moved), device_cache_gb=0.0), tmp_path / "s",
                   resume=True, progress=False)
    assert result["epochs"] == 1
    other = _copy_with(cache, tmp_path / "other.h5", created_by="someone else")  # other bytes, same content
    assert train(TrainConfig(**config, teacher_cache=str(other)), tmp_path / "s", resume=True,
                 progress=False)["epochs"] == 1


def test_resume_refuses_another_teachers_cache_under_the_same_name(cache, tmp_path, monkeypatch):
    """A student killed after epoch 1 whose cache file was replaced used to resume, mixing two teachers."""
    import bandistill.train as train_module
    from bandistill.errors import UserError
    from bandistill.train import train

    path = Path(shutil.copy(cache, tmp_path / "teacher.h5"))
    config = TrainConfig(model="resnet-20", dataset="digits", epochs=2, device="cpu", seed=3, teacher_cache=str(path))
    real_save = train_module.save_checkpoint

    def killed_after_epoch_1(obj, where):
        real_save(obj, where)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "s", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    with h5py.File(path, "r+") as f:  # another teacher's logits under the same name
        f["logits"][...] = f["logits"][...] * np.float16(0.5)
    with pytest.raises(UserError, match="started from another cache"):
        train(config, tmp_path / "s", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "s" / "last.pt")["epoch"] == 1


# -- refusals -------------------------------------------------------------------------------------
def _copy_with(cache: Path, dest: Path, **attrs) -> Path:
    shutil.copy(cache, dest)
    with h5py.File(dest, "r+") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
    return dest


def _resized(cache: Path, dest: Path, *, classes: int = 0, samples: int = 0) -> Path:
    """A complete, self-consistent cache with one class or one sample more than digits has."""
    with h5py.File(cache, "r") as src, h5py.File(dest, "w") as f:
        for key, value in src.attrs.items():
            f.attrs[key] = value
        k, n, c = src["logits"].shape
        f.create_dataset("logits", data=np.zeros((k, n + samples, c + classes), np.float16))
        f.create_dataset("view_params", data=np.zeros((k, n + samples, 3), np.int16))
        f.create_dataset("labels", data=np.zeros(n + samples, np.int64))
        f.create_dataset("test_logits", data=np.zeros((src["test_logits"].shape[0], c + classes), np.float16))
        f.create_dataset("test_labels", data=src["test_labels"][()])
        f.create_dataset("views_complete", data=np.ones(k, np.uint8))
        f.attrs["num_classes"] = c + classes
        f.attrs["num_samples"] = n + samples
    return dest


REFUSALS = {
    "not_hdf5": ("is not an HDF5 file", lambda c, d: (d.write_text("logits\n1,2,3\n"), d)[1]),
    "format_version": ("format version 99", lambda c, d: _copy_with(c, d, format_version=99)),
    "other_dataset": ("dataset 'cifar10'", lambda c, d: _copy_with(c, d, dataset="cifar10")),
    "fingerprint": ("fingerprint 00000000deadbeef", lambda c, d: _copy_with(c, d, dataset_fingerprint="00000000deadbeef")),
    "class_count": ("11 classes", lambda c, d: _resized(c, d, classes=1)),
    "sample_count": ("1439 train samples", lambda c, d: _resized(c, d, samples=1)),
    "view_policy": ("view policy", lambda c, d: _copy_with(
        c, d, view_policy='{"flip": true, "name": "pad-crop-flip", "pad": 4}')),
    "views_missing": ("views 1, 3 of 4 are missing", lambda c, d: _missing_views(c, d)),
    "other_format": ("not a bandistill soft-target cache", lambda c, d: _copy_with(c, d, format="something-else")),
    "absent": ("does not exist", lambda c, d: d),
}


def _missing_views(cache: Path, dest: Path) -> Path:
    _copy_with(cache, dest, complete=False)
    with h5py.File(dest, "r+") as f:
        f["views_complete"][[1, 3]] = 0
    return dest


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_cache_that_does_not_fit_is_refused_before_training(cache, tmp_path, case):
    needle, make = REFUSALS[case]
    bad = make(cache, tmp_path / "bad.h5")
    result = run_cli(*student_args(bad, tmp_path / "run"))
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert needle in err, err
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "model.pt").exists()


def test_an_unfinished_dump_says_how_to_resume(gen0, tmp_path):
    out = tmp_path / "gen0.h5"
    with pytest.raises(DumpInterrupted):
        dump_logits(gen0, "digits", out, views=4, device="cpu", progress=False, stop_after_views=1)
    for path in (out, schema.partial_path(str(out))):
        result = run_cli(*student_args(path, tmp_path / "run"))
        assert result.exit_code == 2, result.output
        err = result.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert "run the same 'bandistill dump-logits' command again to resume" in err
    assert "1 of 4 views written" in run_cli(*student_args(out, tmp_path / "run")).stderr


def test_another_split_of_the_same_data_is_refused(cache, tmp_path):
    result = run_cli(*student_args(cache, tmp_path / "run", "--val-split", "0.1"))
    assert result.exit_code == 2
    assert "another --val-split" in result.stderr
