"""The soft-target cache: file contract, replay, resumable dumps, verify-cache (real HDF5, real models)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bandistill.cache import schema
from bandistill.cache.reader import open_cache
from bandistill.checkpoint import load_checkpoint, save_checkpoint
from bandistill.identity import checkpoint_digest, file_digest
from conftest import assert_one_line_error, run_cli
from bandistill.soft_targets import open_soft_targets
from bandistill.dump import DumpInterrupted, LogitDump, dump_logits, is_complete
from bandistill.errors import UserError
from bandistill.inference import predict_logits
from bandistill.train import TrainConfig
from bandistill.data.views import normalize

N_TRAIN, N_TEST, N_CLASSES = 1438, 359, 10  # digits' fixed 80/20 split


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def teacher(digits_teacher) -> Path:
    return digits_teacher


@pytest.fixture
def full_dump(digits_cache) -> Path:
    return digits_cache


# -- the file contract ---------------------------------------------------------------------
def test_file_contract_names_shapes_attributes_and_layout(full_dump, teacher):
    with h5py.File(full_dump, "r") as f:
        assert f["logits"].shape == (4, N_TRAIN, N_CLASSES) and f["logits"].dtype == np.float16
        assert f["view_params"].shape == (4, N_TRAIN, 3) and f["view_params"].dtype == np.int16
        assert f["labels"].shape == (N_TRAIN,)
        assert f["test_logits"].shape == (N_TEST, N_CLASSES)
        assert f["views_complete"][()].tolist() == [1, 1, 1, 1]
        # one view = one sequential read: contiguous, uncompressed
        for name in ("logits", "view_params"):
            assert f[name].id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
            assert f[name].chunks is None and f[name].compression is None
        a = f.attrs
        for key in ("format_version", "dataset", "dataset_fingerprint", "num_classes", "num_samples",
                    "num_views", "view_policy", "seed", "teacher"):
            assert key in a
        assert a["format"] == schema.FORMAT and a["format_version"] == schema.FORMAT_VERSION
        assert a["dataset"] == "digits" and a["num_views"] == 4 and bool(a["complete"])
        assert '"pad": 1' in a["view_policy"]
        assert '"resnet-20"' in a["teacher"] and checkpoint_digest(teacher) in a["teacher"]
        ckpt = load_checkpoint(teacher)
        assert a["dataset_fingerprint"] == ckpt["dataset"]["fingerprint"]
    # the view parameters are the policy's pure function of (seed, view, sample)
    from bandistill.data import load_dataset

    ds = load_dataset("digits")
    with open_cache(full_dump) as cache:
        for v in range(4):
            assert np.array_equal(cache.read_view_params(v), ds.view_policy.params(0, v, np.arange(N_TRAIN)).numpy())
        assert np.array_equal(cache.read_labels(), ds.train_labels.numpy())
        test_logits, _ = cache.read_test()
    # test logits are the teacher's on the clean test split
    from bandistill.checkpoint import model_from_checkpoint

    norm = ckpt["normalization"]
    live = predict_logits(model_from_checkpoint(ckpt), ds.test_images, torch.tensor(norm["mean"]),
                          torch.tensor(norm["std"]))
    assert np.allclose(test_logits.astype(np.float32), live.numpy(), atol=1e-2, rtol=1e-3)


def test_storage_estimate_is_printed_before_the_work(teacher, tmp_path):
    out = tmp_path / "c.h5"
    result = run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--views", 2,
                     "--device", "cpu", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert f"{N_TRAIN} samples x 2 views x {N_CLASSES} classes x 2 bytes" in result.stderr
    import json

    summary = json.loads(result.stdout)
    assert summary["estimated_bytes"] <= summary["file_bytes"] <= summary["estimated_bytes"] + 64 * 1024
    assert summary["views_written"] == 2 and summary["complete"]


# -- replay ----------------------------------------------------------------------------------
def test_student_rebuilds_bit_identical_images_from_stored_parameters(teacher, tmp_path):
    """Capture the exact tensors the teacher ran on during the dump; rebuild them as a student does."""
    job = LogitDump(teacher, "digits", tmp_path / "c.h5", views=3, device="cpu", dtype="float32",
                    batch_size=500, progress=False)
    seen: list[torch.Tensor] = []
    job.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    job.run()
    inputs = torch.cat(seen)
    assert inputs.shape[0] == N_TEST + 3 * N_TRAIN  # test split first, then the views in order
    teacher_saw = inputs[N_TEST:].view(3, N_TRAIN, *inputs.shape[1:])

    ds = job.dataset
    config = TrainConfig(model="resnet-20", dataset="digits", teacher_cache=str(tmp_path / "c.h5"), seed=5)
    targets = open_soft_targets(config, ds, torch.device("cpu"))
    mean, std = (torch.tensor(v) for v in ds.normalization())
    for epoch in range(3):
        view = targets.view_for_epoch(epoch)
        params = targets.epoch_params(epoch)
        idx = torch.randperm(N_TRAIN)[:256]
        # exactly the training loop's expression
        student_x = normalize(ds.view_policy.apply(ds.train_images[idx], params[idx]), mean, std)
        assert torch.equal(student_x, teacher_saw[view][idx])  # bit-identical, not merely close
        # and the logits it reads are the teacher's on that image
        with torch.no_grad():
            live = job.model(student_x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(targets.batch_targets(epoch, idx), live, atol=1e-4, rtol=1e-4)


# -- resuming ----------------------------------------------------------------------------------
def test_killed_dump_resumes_to_the_logits_of_an_uninterrupted_one(teacher, full_dump, tmp_path):
    out = tmp_path / "resumed.h5"
    with pytest.raises(DumpInterrupted):
        dump_logits(teacher, "digits", out, views=4, device="cpu", progress=False, stop_after_views=2)
    partial = Path(schema.partial_path(str(out)))
    assert not out.exists() and partial.exists()  # never under the final name while partial
    assert not is_complete(partial)
    with pytest.raises(UserError, match="not finished: the dump stopped with 2 of 4 views written"):
        open_cache(out)
    with pytest.raises(UserError, match=r"incomplete dump \(views 2, 3 of 4 are missing\).*again to resume"):
        open_cache(partial)

    summary = dump_logits(teacher, "digits", out, views=4, device="cpu", progress=False)
    assert (summary["views_resumed"], summary["views_written"]) == (2, 2)
    assert out.exists() and not partial.exists()
    with open_cache(out) as a, open_cache(full_dump) as b:
        assert np.array_equal(a.read_logits(), b.read_logits())
        assert np.array_equal(a.read_view_params_all(), b.read_view_params_all())
        assert np.array_equal(a.read_test()[0], b.read_test()[0])


def test_rerunning_a_complete_dump_does_nothing(teacher, full_dump):
    before = file_digest(full_dump)
    summary = dump_logits(teacher, "digits", full_dump, views=4, device="cpu", progress=False)
    assert summary["already_complete"] and summary["views_written"] == 0
    assert file_digest(full_dump) == before


def test_other_settings_on_an_existing_cache_are_refused_unless_overwrite(teacher, full_dump, tmp_path):
    out = tmp_path / "c.h5"
    shutil.copy(full_dump, out)
    result = run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--views", 4, "--seed", 1,
                     "--device", "cpu", "--out", out)
    assert_one_line_error(result, "other settings", "seed=0, not 1", "--overwrite")
    result = run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--views", 4, "--seed", 1,
                     "--device", "cpu", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    with open_cache(out) as cache:
        assert cache.info.seed == 1


def test_unfinished_dump_with_other_settings_is_refused(teacher, tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(DumpInterrupted):
        dump_logits(teacher, "digits", out, views=3, device="cpu", progress=False, stop_after_views=1)
    result = run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--views", 3,
                     "--dtype", "float32", "--device", "cpu", "--out", out)
    assert_one_line_error(result, "unfinished dump", "dtype='float16', not 'float32'")


def test_unreadable_partial_file_is_started_over(teacher, tmp_path):
    out = tmp_path / "c.h5"
    Path(schema.partial_path(str(out))).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a torn write
    messages: list[str] = []
    summary = dump_logits(teacher, "digits", out, views=2, device="cpu", progress=False, log=messages.append)
    assert summary["views_written"] == 2 and is_complete(out)
    assert any("starting it over" in m for m in messages)


def test_output_that_is_not_a_cache_is_not_clobbered(teacher, tmp_path):
    out = tmp_path / "notes.h5"
    out.write_text("my notes")
    result = run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--views", 2,
                     "--device", "cpu", "--out", out)
    assert_one_line_error(result, "already exists", "not a bandistill cache", "replaces caches only")
    assert out.read_text() == "my notes"


def test_dump_refuses_a_checkpoint_trained_on_other_data(teacher, tmp_path):
    ckpt = load_checkpoint(teacher)
    ckpt["dataset"] = {**ckpt["dataset"], "fingerprint": "0123456789abcdef"}
    other = tmp_path / "other.pt"
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "format_version")}, other)
    result = run_cli("dump-logits", "--checkpoint", other, "--dataset", "digits", "--views", 2,
                     "--device", "cpu", "--out", tmp_path / "c.h5")
    assert_one_line_error(result, "other digits data", "fingerprint")
    assert not (tmp_path / "c.h5").exists() and not Path(schema.partial_path(str(tmp_path / "c.h5"))).exists()


def test_dump_refuses_bad_options(teacher, tmp_path):
    result = run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--views", 0,
                     "--out", tmp_path / "c.h5")
    assert_one_line_error(result, "--views")
    result = run_cli("dump-logits", "--checkpoint", tmp_path / "missing.pt", "--dataset", "digits", "--views", 2,
                     "--out", tmp_path / "c.h5")
    assert_one_line_error(result, "does not exist")


@pytest.mark.slow
def test_dump_killed_by_a_signal_resumes_to_identical_logits(teacher, tmp_path):
    """A real SIGKILL in the middle of the dump, then the same command again."""
    out = tmp_path / "killed.h5"
    partial = Path(schema.partial_path(str(out)))
    cmd = [sys.executable, "-m", "bandistill.cli.main", "dump-logits", "--checkpoint", str(teacher),
           "--dataset", "digits", "--views", "4", "--batch-size", "64", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            with h5py.File(partial, "r", locking=False) as f:
                done = int(f["views_complete"][()].sum())
        except (OSError, KeyError):
            done = 0
        if done >= 1:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the dump finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    messages: list[str] = []
    summary = dump_logits(teacher, "digits", out, views=4, device="cpu", batch_size=64, progress=False,
                          log=messages.append)
    assert summary["views_written"] + summary["views_resumed"] == 4
    # it resumed (or, had the kill torn a metadata write, said so and started over)
    assert summary["views_resumed"] >= 1 or any("starting it over" in m for m in messages)
    whole = tmp_path / "whole.h5"
    dump_logits(teacher, "digits", whole, views=4, device="cpu", batch_size=64, progress=False)
    with open_cache(out) as a, open_cache(whole) as b:
        assert np.array_equal(a.read_logits(), b.read_logits())
        assert np.array_equal(a.read_view_params_all(), b.read_view_params_all())
        assert np.array_equal(a.read_test()[0], b.read_test()[0])


# -- verify-cache ---------------------------------------------------------------------------
def test_verify_cache_passes_on_a_real_dump(teacher, full_dump):
    result = run_cli("verify-cache", "--checkpoint", teacher, "--cache", full_dump, "--samples", 200,
                     "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.stdout)
    assert report["passed"] and report["pairs"] == 200 and report["params_match_policy"]
    assert report["max_abs_diff"] < 0.02 and report["argmax_agreement"] == 1.0


def test_verify_cache_fails_with_exit_1_on_wrong_logits(teacher, full_dump, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(full_dump, bad)
    with h5py.File(bad, "r+") as f:
        f["logits"][1] = f["logits"][1] + np.float16(0.5)  # view 1 no longer matches its images
    result = run_cli("verify-cache", "--checkpoint", teacher, "--cache", bad, "--samples", 64, "--device", "cpu")
    err = assert_one_line_error(result, "exceeds the tolerance", code=1)
    assert "FAILED" in result.stdout and err.startswith("failed:")


def test_verify_cache_refuses_a_checkpoint_that_is_not_the_teacher(teacher, full_dump, tmp_path):
    other = tmp_path / "other.pt"
    ckpt = load_checkpoint(teacher)
    ckpt["epoch"] = 99  # other bytes with the same weights would be the same teacher (identity is content):
    ckpt["state_dict"] = {k: v + 0.01 if k == "classifier.bias" else v for k, v in ckpt["state_dict"].items()}
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "format_version")}, other)
    result = run_cli("verify-cache", "--checkpoint", other, "--cache", full_dump)
    assert_one_line_error(result, "is not the teacher of")


@pytest.mark.parametrize("tolerance", ["0", "-1"])
def test_verify_cache_refuses_a_tolerance_that_is_not_positive(teacher, full_dump, tolerance):
    """A bad --tolerance is the user's mistake (exit 2), not a cache that fails its check (exit 1)."""
    result = run_cli("verify-cache", "--checkpoint", teacher, "--cache", full_dump, "--tolerance", tolerance)
    assert_one_line_error(result, "--tolerance must be positive")


def test_estimate_matches_the_arithmetic():
    est = schema.storage_bytes(8, 50_000, 100, "float16", 3, 10_000)
    assert est["logits"] == 8 * 50_000 * 100 * 2 == 80_000_000
    assert est["view_params"] == 8 * 50_000 * 3 * 2
    assert math.isclose(est["total"], est["logits"] + est["view_params"] + est["other"])


# -- finite values and in-range views -------------------------------------------------------------
def _damaged_copy(full_dump, dest, change):
    shutil.copy(full_dump, dest)
    with h5py.File(dest, "r+") as f:
        change(f)
    return dest


def _inf_logit(f):
    f["logits"][1, 5, 3] = np.inf


def _nan_test_logit(f):
    f["test_logits"][0, 0] = np.nan


def _far_crop(f):
    f["view_params"][2, 7, 0] = 40  # digits pad by 1: offsets are 0..2


@pytest.mark.parametrize("change, fragment", [(_inf_logit, "logits holds NaN or inf"),
                                              (_nan_test_logit, "test_logits holds NaN or inf"),
                                              (_far_crop, "view_params of view 2 are out of range")])
def test_a_student_refuses_a_cache_with_garbage_values(full_dump, tmp_path, change, fragment):
    """inf/NaN logits used to be trained on (exit 0); an out-of-range crop raised IndexError."""
    cache = _damaged_copy(full_dump, tmp_path / "bad.h5", change)
    result = run_cli("train", "--model", "resnet-20", "--dataset", "digits", "--epochs", "1",
                     "--teacher-logits", cache, "--out", tmp_path / "s")
    assert_one_line_error(result, fragment, "dump the cache again")
    assert not (tmp_path / "s" / "model.pt").exists()


@pytest.mark.parametrize("change, fragment", [(_inf_logit, "logits holds NaN or inf"),
                                              (_far_crop, "out of range")])
def test_verify_cache_fails_on_garbage_values(teacher, full_dump, tmp_path, change, fragment):
    """verify-cache passed +inf (inf <= atol + rtol * inf) and raised IndexError on a far crop."""
    cache = _damaged_copy(full_dump, tmp_path / "bad.h5", change)
    result = run_cli("verify-cache", "--checkpoint", teacher, "--cache", cache, "--samples", 100000)
    assert_one_line_error(result, fragment, code=1)
