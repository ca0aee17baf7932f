"""torchrun: sharded dumps equal single-process dumps bit for bit, resume per shard, and report one line.

The multi-process tests start real ``python -m torch.distributed.run`` jobs of two gloo
processes (one intra-op thread each, so they fit a 2-core machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from bandistill.cache import schema
from bandistill.dump import DumpInterrupted, LogitDump
from bandistill.sharded_dump import KILL_HOOK_ENV, Shard, merge_shards, shard_partial, shard_range

#: Attributes that say when and where a file was made, not what it holds.
PROVENANCE_ATTRS = {"created_at"}


def torchrun(*args, nproc: int = 2, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m bandistill ARGS``, one thread per rank."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "bandistill", *[str(a) for a in args]]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_same_cache(a: Path, b: Path) -> None:
    """Every dataset equal byte for byte, every attribute equal but the creation time."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for key in fa:
            x, y = fa[key][()], fb[key][()]
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert x.tobytes() == y.tobytes(), key
            assert fa[key].chunks == fb[key].chunks and fa[key].compression == fb[key].compression, key
        attrs_a = {k: schema.decode_attr(v) for k, v in fa.attrs.items() if k not in PROVENANCE_ATTRS}
        attrs_b = {k: schema.decode_attr(v) for k, v in fb.attrs.items() if k not in PROVENANCE_ATTRS}
        assert attrs_a == attrs_b


@pytest.mark.parametrize("n,batch,size", [(1438, 512, 2), (1438, 128, 3), (100, 64, 4), (10, 512, 2), (0, 8, 2)])
def test_shards_are_disjoint_batch_aligned_and_cover_every_sample(n, batch, size):
    ranges = [shard_range(n, batch, r, size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a, b), (c, _) in zip(ranges, ranges[1:]):
        assert b == c  # contiguous, disjoint
    for a, b in ranges:
        assert a <= b and (a % batch == 0 or a == n)  # a shard starts on a single-process batch boundary


def test_shards_interrupted_on_one_rank_resume_and_merge_into_the_single_dump(digits_teacher, digits_cache, tmp_path,
                                                                              one_thread):
    """In one process, rank by rank: rank 1 stops after one view, resumes, and the merge equals the single dump."""
    out = tmp_path / "sharded.h5"

    def job() -> LogitDump:
        return LogitDump(digits_teacher, "digits", out, views=4, device="cpu", progress=False)

    with pytest.raises(DumpInterrupted):
        Shard(job(), 1, 2).write(set(), False, stop_after_views=1)
    with h5py.File(shard_partial(out, 1, 2), "r") as f:
        assert f[schema.VIEWS_COMPLETE][()].tolist() == [1, 0, 0, 0]
    assert Shard(job(), 0, 2).write(set(), False) == (4, 0)
    assert Shard(job(), 1, 2).write(set(), False) == (3, 1)  # resumed its own shard: one view kept
    merge_shards(job(), 2)
    assert not shard_partial(out, 0, 2).exists() and not shard_partial(out, 1, 2).exists()
    assert_same_cache(out, digits_cache)


def test_a_shard_with_other_settings_is_refused(digits_teacher, tmp_path, one_thread):
    from bandistill.errors import UserError

    out = tmp_path / "c.h5"
    with pytest.raises(DumpInterrupted):
        Shard(LogitDump(digits_teacher, "digits", out, views=2, device="cpu", progress=False), 0, 2).write(
            set(), False, stop_after_views=1)
    with pytest.raises(UserError, match="other settings"):
        Shard(LogitDump(digits_teacher, "digits", out, views=3, device="cpu", progress=False), 0, 2).open()


@pytest.mark.slow
def test_torchrun_dump_killed_on_one_rank_resumes_and_equals_the_single_dump(digits_teacher, digits_cache, tmp_path):
    out = tmp_path / "sharded.h5"
    args = ["dump-logits", "--checkpoint", digits_teacher, "--dataset", "digits", "--views", 4, "--device", "cpu",
            "--out", out]
    killed = torchrun(*args, env={KILL_HOOK_ENV: "0:2"})  # rank 0 dies after two views; torchrun stops rank 1
    assert killed.returncode != 0, killed.stderr
    assert not out.exists()
    with h5py.File(shard_partial(out, 0, 2), "r") as f:
        assert f[schema.VIEWS_COMPLETE][()].tolist() == [1, 1, 0, 0]

    resumed = torchrun(*args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 4 views already written" in resumed.stderr  # rank 0 resumed its own shard
    assert resumed.stdout.count('"cache"') == 1  # one summary, from rank 0
    assert not list(tmp_path.glob("*.shard-*"))
    assert_same_cache(out, digits_cache)


@pytest.mark.slow
def test_torchrun_user_error_is_one_line_from_rank_0(tmp_path):
    result = torchrun("dump-logits", "--checkpoint", tmp_path / "missing.pt", "--dataset", "digits", "--views", 1,
                      "--device", "cpu", "--out", tmp_path / "c.h5")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "missing.pt does not exist" in ours[0], result.stderr


# -- DDP training ---------------------------------------------------------------------------
#: A well-conditioned tiny run: random 32x32 images, a global batch of 35 (uneven slices of 18
#: and 17, then 15 and 15), a small lr so float rounding is not amplified from step to step.
DDP_ARGS = dict(model="resnet-20", dataset="cifar10", epochs=2, batch_size=35, lr=0.001, seed=0, device="cpu")


def _cli_args(data_dir: Path, **extra) -> list:
    opts = {**DDP_ARGS, "data_dir": data_dir, **extra}
    args = ["train"]
    for key, value in opts.items():
        if value is True:
            args.append(f"--{key.replace('_', '-')}")
        elif value is not False:
            args += [f"--{key.replace('_', '-')}", value]
    return args


def _weights(run: Path) -> dict:
    from bandistill.checkpoint import load_checkpoint

    return load_checkpoint(run / "model.pt")["state_dict"]


def _losses(run: Path) -> list[float]:
    import json

    return [json.loads(line)["loss"] for line in open(run / "metrics.jsonl")]


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
def test_ddp_train_on_two_processes_equals_one_process_and_resumes_at_another_world_size(tmp_path, monkeypatch,
                                                                                        one_thread):
    import bandistill.train as train_module
    from bandistill.train import TrainConfig, train

    from conftest import write_cifar

    data = write_cifar(tmp_path / "data", "cifar10", n_train=100, n_test=20)
    single = train(TrainConfig(**DDP_ARGS, data_dir=str(data), sync_bn=True), tmp_path / "single", progress=False)
    assert single["processes"] == 1

    ddp = torchrun(*_cli_args(data, sync_bn=True, out=tmp_path / "ddp", json=True))
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stdout.count('"processes": 2') == 1  # one summary, from rank 0
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    assert _max_diff(_weights(tmp_path / "ddp"), _weights(tmp_path / "single")) < 1e-4
    assert not list((tmp_path / "ddp").glob(".*.tmp"))  # rank 0 wrote atomically, nobody else wrote

    # killed after its first epoch in one process, resumed on two: the same run
    real_save = train_module.save_checkpoint

    def crash_after_first_epoch(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**DDP_ARGS, data_dir=str(data), sync_bn=True), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = torchrun(*_cli_args(data, sync_bn=True, out=tmp_path / "resumed", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    assert _max_diff(_weights(tmp_path / "resumed"), _weights(tmp_path / "single")) < 1e-4

    # per-rank BatchNorm (the default) normalises each slice by its own statistics: another result
    # (one process normalises by the whole batch, with or without --sync-bn: the same arithmetic up to rounding)
    per_rank = torchrun(*_cli_args(data, out=tmp_path / "per-rank"))
    assert per_rank.returncode == 0, per_rank.stderr
    assert _max_diff(_weights(tmp_path / "per-rank"), _weights(tmp_path / "single")) > 1e-3


# -- ban's stages under torchrun --------------------------------------------------------------
@pytest.mark.slow
def test_a_ban_stage_under_torchrun_returns_rank0_result_and_a_user_error_as_its_line(digits_teacher, digits_cache,
                                                                                     tmp_path, monkeypatch):
    from bandistill.errors import UserError
    from bandistill.launch import run_stage

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "c.h5"
    result = run_stage("dump", dict(checkpoint=str(digits_teacher), dataset="digits", out=str(out), views=4,
                                    device="cpu"), 2, progress=False)
    assert result["cache"] == str(out) and result["views_written"] == 4
    assert_same_cache(out, digits_cache)

    config = dict(model="resnet-20", dataset="digits", epochs=1, device="cpu", teacher_cache=str(tmp_path / "no.h5"))
    with pytest.raises(UserError, match="no.h5") as err:
        run_stage("train", {"config": config, "out": str(tmp_path / "gen1")}, 2, progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_ban_stage_failing_under_torchrun_for_another_reason_is_one_line_naming_stage_and_rank(tmp_path,
                                                                                                 monkeypatch):
    """A diverged training under torchrun was a bare RuntimeError('the train stage failed ... exit code 1')."""
    from bandistill.errors import StageFailed
    from bandistill.launch import run_stage

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = dict(model="resnet-8", dataset="digits", epochs=2, batch_size=512, lr=1e6, device="cpu")
    with pytest.raises(StageFailed, match=r"the train stage failed on rank \d of 2 under torchrun: training diverged"
                       ) as err:
        run_stage("train", {"config": config, "out": str(tmp_path / "gen0")}, 2, progress=False)
    assert "\n" not in str(err.value)
