"""A student's cache: read once at start-up, and held stable while it streams (issue 20, item 9 and the
three reads of a student start)."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from bandistill.dump import dump_logits
from bandistill import identity
from bandistill.identity import cache_digest
from bandistill.soft_targets import open_soft_targets
from bandistill.train import TrainConfig


def _read_chars() -> int:
    """Bytes this process has read through read()/pread() so far, page-cache hits included."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_a_streaming_student_keeps_its_teacher_when_the_cache_is_overwritten(digits_teacher, digits_cache, digits,
                                                                             tmp_path, one_thread):
    """It re-opened the cache by path every epoch: a dump --overwrite mid-run switched teachers."""
    path = tmp_path / "c.h5"
    shutil.copy(digits_cache, path)
    config = TrainConfig("resnet-20", "digits", teacher_logits=str(path), seed=1, cache_memory_budget_gb=0.0)
    targets = open_soft_targets(config, digits, "cpu")
    assert targets.mode == "stream"
    idx = torch.arange(digits.num_train)
    before = targets.batch_targets(0, idx)
    # another teacher's cache (other view seed, float32) replaces the file while the student trains
    dump_logits(digits_teacher, "digits", path, views=4, seed=9, dtype="float32", device="cpu", progress=False,
                overwrite=True)
    assert cache_digest(path) != targets.digest
    with h5py.File(digits_cache, "r") as f:
        for epoch in range(1, 6):
            view = targets.view_for_epoch(epoch)
            assert np.array_equal(targets.batch_targets(epoch, idx).numpy(), f["logits"][view].astype(np.float32))
            assert np.array_equal(targets.epoch_params(epoch).numpy(), f["view_params"][view])
        assert np.array_equal(targets.test_logits()[0].numpy(), f["test_logits"][()].astype(np.float32))
    assert torch.equal(targets.batch_targets(0, idx), before)  # read again, from the file it started with
    targets.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read through /proc/self/io")
@pytest.mark.parametrize("budget_gb", [4.0, 0.0], ids=["memory", "stream"])
def test_a_student_start_reads_its_cache_once(digits_cache, digits, budget_gb):
    """The value check, the content digest and the load each read the whole file: three passes, now one."""
    size = os.path.getsize(digits_cache)
    config = TrainConfig("resnet-20", "digits", teacher_logits=str(digits_cache), cache_memory_budget_gb=budget_gb)
    identity._memo.clear()  # as in a fresh process: no digest remembered
    start = _read_chars()
    targets = open_soft_targets(config, digits, "cpu")
    read = _read_chars() - start
    assert size * 0.9 <= read <= size * 1.3, (read, size)
    assert targets.digest == cache_digest(digits_cache)
