"""``dump-logits`` refusals (issue 20): what it must not overwrite, resume or accept, each one line, exit 2.

All of them are decided before the teacher runs on a single view, so each test is quick.
"""

from __future__ import annotations

import os
import shutil

import h5py
import pytest

from bandistill.cache import schema
from bandistill.dump import DumpInterrupted, LogitDump, dump_logits
from bandistill.errors import UserError
from bandistill.sharded_dump import Shard, shard_partial
from conftest import assert_one_line_error, run_cli
from test_disk_full import PAGE, small_disk  # noqa: F401  (a fixture)


def dump_cli(teacher, out, *args):
    return run_cli("dump-logits", "--checkpoint", teacher, "--dataset", "digits", "--device", "cpu", "--out", out,
                   *args)


def test_overwrite_replaces_a_cache_but_never_a_checkpoint(digits_teacher, digits_cache, tmp_path):
    """--overwrite replaced any file, a checkpoint included (and its own refusal suggested --overwrite)."""
    victim = tmp_path / "model.pt"
    shutil.copy(digits_teacher, victim)
    before = victim.read_bytes()
    assert_one_line_error(dump_cli(digits_teacher, victim, "--views", 2, "--overwrite"), "not a bandistill cache",
                          "replaces caches only")
    assert victim.read_bytes() == before
    plain = dump_cli(digits_teacher, victim, "--views", 2)
    assert "--overwrite to replace" not in assert_one_line_error(plain, "not a bandistill cache")
    # a cache is still replaced
    cache = tmp_path / "c.h5"
    shutil.copy(digits_cache, cache)
    done = dump_logits(digits_teacher, "digits", cache, views=1, device="cpu", progress=False, overwrite=True)
    assert done["views"] == 1 and done["views_written"] == 1


@pytest.mark.parametrize("args, fragment", [
    (["--views", "epochs", "--epochs", 0], "--epochs must be a positive integer"),
    (["--views", "epochs", "--epochs", -3], "--epochs must be a positive integer"),
    (["--views", 2, "--epochs", 5], "sizes a '--views epochs' plan only"),
    (["--views", "all", "--epochs", 5], "sizes a '--views epochs' plan only"),
    (["--views", 10**20], "more views than a cache holds"),
    (["--views", 2, "--seed", 10**20], "--seed must fit"),
    (["--views", "epochs", "--epochs", 10**12], "a cache holds at most"),
    (["--views", 2 * 10**9], "the cache needs"),  # refused on arithmetic, before anything of that size exists
])
def test_values_no_dump_can_honour_are_one_line(digits_teacher, tmp_path, args, fragment):
    """--epochs 0 silently meant the teacher's epochs, --epochs with --views K was ignored, and the
    rest were tracebacks (object dtype into HDF5; a 931 GiB allocation before the disk check)."""
    out = tmp_path / "c.h5"
    assert_one_line_error(dump_cli(digits_teacher, out, *args), fragment)
    assert not out.exists() and not os.path.exists(schema.partial_path(str(out)))


def test_ban_refuses_a_dump_value_before_generation_0_trains(tmp_path):
    from bandistill.run import BanOptions

    for bad in (dict(views=10**20), dict(views=2, seed=2**63 - 1)):
        with pytest.raises(UserError):
            BanOptions(model="resnet-8", dataset="digits", epochs=1, **bad).validate()


def test_a_dump_started_in_another_precision_is_not_resumed(digits_teacher, tmp_path, one_thread):
    """A dump started on the CPU (float32) and resumed on CUDA (bf16) mixed the two and still said 'cpu'.

    The partial file stands in for one started on a GPU; resuming it on the CPU must be refused the same way.
    """
    out = tmp_path / "c.h5"
    with pytest.raises(DumpInterrupted):
        dump_logits(digits_teacher, "digits", out, views=3, device="cpu", progress=False, stop_after_views=1)
    with h5py.File(schema.partial_path(str(out)), "r+") as f:
        f.attrs["device"], f.attrs["autocast"] = "cuda", "bf16"
    result = dump_cli(digits_teacher, out, "--views", 3)
    assert_one_line_error(result, "computed on cuda (bf16 autocast)", "--device cuda", "--overwrite")
    with h5py.File(schema.partial_path(str(out)), "r") as f:
        assert f[schema.VIEWS_COMPLETE][()].tolist() == [1, 0, 0]  # nothing was added to it
    assert dump_logits(digits_teacher, "digits", out, views=3, device="cpu", progress=False,
                       overwrite=True)["views_written"] == 3


def test_a_shard_is_reserved_at_its_full_size(digits_teacher, tmp_path, one_thread):
    """Sharded dumps skipped the disk-space check and the preallocation a single-process dump makes."""
    job = LogitDump(digits_teacher, "digits", tmp_path / "c.h5", views=8, device="cpu", progress=False)
    shard = Shard(job, 0, 2)
    shard.open().close()
    (a, b), (ta, tb) = shard.train, shard.test
    arrays = schema.storage_bytes(8, b - a, 10, "float16", job.policy.num_params, tb - ta)["total"]
    assert os.stat(shard_partial(job.out, 0, 2)).st_blocks * 512 >= arrays


def test_a_shard_that_does_not_fit_the_disk_is_one_line(digits_teacher, small_disk, one_thread):  # noqa: F811
    out = small_disk(16 * PAGE) / "c.h5"  # a shard of 64 views takes ~1.2 MB
    job = LogitDump(digits_teacher, "digits", out, views=64, device="cpu", progress=False)
    with pytest.raises(UserError, match="the cache needs"):
        Shard(job, 0, 2).open()
    assert not shard_partial(out, 0, 2).exists()


def test_the_dump_does_not_hash_a_teacher_this_process_has_just_hashed(digits_teacher, tmp_path, monkeypatch):
    """ban's manifest hashes the teacher checkpoint, then its dump hashed the same weights again."""
    from bandistill import dump, identity

    calls = []
    real = identity.checkpoint_identity

    def counted(ckpt):
        calls.append(1)
        return real(ckpt)

    monkeypatch.setattr(identity, "checkpoint_identity", counted)
    monkeypatch.setattr(dump, "checkpoint_identity", counted)
    identity._memo.clear()
    digest = identity.checkpoint_digest(digits_teacher)  # what the manifest records
    job = LogitDump(digits_teacher, "digits", tmp_path / "c.h5", views=1, device="cpu", progress=False)
    assert job.teacher_digest == digest and len(calls) == 1
    identity._memo.clear()  # a process that has not hashed it hashes the loaded weights once
    assert LogitDump(digits_teacher, "digits", tmp_path / "c.h5", views=1, device="cpu",
                     progress=False).teacher_digest == digest and len(calls) == 2


def test_sharded_dump_does_not_import_dump():
    """dump <-> sharded_dump was an import circle (sharded_dump imported LogitDump and DumpInterrupted)."""
    import subprocess
    import sys

    code = "import sys, bandistill.sharded_dump; sys.exit('bandistill.dump' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_sharded_dump_checks_room_for_its_shards_and_the_merge_up_front(digits_teacher, small_disk,  # noqa: F811
                                                                          one_thread):
    from bandistill.sharded_dump import check_room

    job = LogitDump(digits_teacher, "digits", small_disk(900 * PAGE) / "c.h5", views=64, device="cpu",
                    progress=False)
    arrays = job.storage_estimate(0)["total"]
    assert arrays < 900 * PAGE < 2 * arrays  # one copy fits, the shards and the merged copy do not
    with pytest.raises(UserError, match="the cache needs"):
        check_room(job, 2)
