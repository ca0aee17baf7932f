"""Under torchrun a sample's random draws and cwtm's batch normaliser are the single-process ones.

Two real gloo processes (``torch.multiprocessing``), each holding its slice of one global
batch as :func:`bandistill.distributed.local_batch` cuts it (uneven: 5 and 4 samples):

* ``--loss cwtm``: each rank's loss, scaled as ``local_batch`` says and its gradient averaged
  over the ranks as DDP does, gives the single-process gradient; the ranks' losses weighted
  by their share give the single-process loss;
* dkpp's permutations and wrn's dropout masks of a rank are its rows of the single-process
  draws (same seed), not draws of their own.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bandistill import distributed
from bandistill.losses import make_loss, permute_non_argmax

B, C = 9, 6


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    t = 3 * torch.randn(B, C, generator=g)
    return s, y, t


def _rank(rank: int, world: int, init: str, results: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        s, y, t = _batch()
        cwtm = make_loss("cwtm")
        # the single-process reference, before any slice is set
        s1 = s.clone().requires_grad_(True)
        loss1 = cwtm(s1, y, t)
        loss1.backward()
        torch.manual_seed(5)
        perm1 = permute_non_argmax(t)
        torch.manual_seed(6)
        drop1 = distributed.batch_dropout(torch.ones(B, 3, 4, 4), 0.3, True)

        part, scale = distributed.local_batch(torch.arange(B))
        sr = s.clone().requires_grad_(True)
        loss = cwtm(sr[part], y[part], t[part])
        (loss * scale).backward()
        grad = sr.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # DDP's average of the ranks' gradients
        weighted = loss.detach() * part.numel() / B  # the epoch totals: loss x samples, summed over ranks
        dist.all_reduce(weighted)
        torch.manual_seed(5)
        perm = permute_non_argmax(t[part])
        torch.manual_seed(6)
        drop = distributed.batch_dropout(torch.ones(part.numel(), 3, 4, 4), 0.3, True)

        torch.testing.assert_close(grad, s1.grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(weighted, loss1.detach(), rtol=1e-6, atol=1e-7)
        assert torch.equal(perm, perm1[part])
        assert torch.equal(drop, drop1[part])
        assert not torch.equal(drop, drop1[: part.numel()]) or rank == 0  # rank 1's masks are not rank 0's
        with open(f"{results}.{rank}", "w") as f:
            f.write("ok")
    finally:
        distributed._batch_rows = None
        dist.destroy_process_group()


def test_cwtm_loss_dkpp_permutations_and_dropout_masks_on_two_gloo_processes_equal_one_process(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    results = str(tmp_path / "ok")
    mp.spawn(_rank, args=(2, init, results), nprocs=2, join=True)
    assert all(os.path.exists(f"{results}.{r}") for r in range(2))


def test_rank_slices_without_torchrun_are_plain_draws():
    distributed._batch_rows = None
    torch.manual_seed(1)
    a = distributed.batch_rand((4, 3))
    torch.manual_seed(1)
    assert torch.equal(a, torch.rand(4, 3))
    total, share = distributed.batch_sum(torch.tensor(2.5))
    assert total.item() == 2.5 and share == 1.0


def test_cwtm_is_accepted_under_torchrun(monkeypatch):
    from bandistill.train import TrainConfig

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    TrainConfig(model="resnet-20", dataset="digits", teacher_cache="c.h5", loss="cwtm").validate()


@pytest.mark.slow
def test_train_cwtm_under_torchrun_equals_one_process(digits_teacher, tmp_path):
    """End to end: ``train --loss cwtm`` on 2 gloo processes (--sync-bn) ends with the one-process weights."""
    import subprocess
    import sys

    from bandistill.dump import dump_logits
    from bandistill.train import TrainConfig, train

    cache = tmp_path / "c.h5"
    dump_logits(digits_teacher, "digits", cache, views="epochs", epochs=1, dtype="float32", device="cpu",
                progress=False)
    args = dict(model="resnet-8", dataset="digits", epochs=1, lr=0.001, seed=3, device="cpu", loss="cwtm",
                sync_bn=True)
    train(TrainConfig(**args, teacher_cache=str(cache)), tmp_path / "single", progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "bandistill",
           "train", "--model", "resnet-8", "--dataset", "digits", "--epochs", "1", "--lr", "0.001", "--seed", "3",
           "--device", "cpu", "--loss", "cwtm", "--sync-bn", "--teacher-logits", str(cache), "--out",
           str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one = torch.load(tmp_path / "single" / "model.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    assert max((one[k].float() - two[k].float()).abs().max().item() for k in one) < 1e-4
