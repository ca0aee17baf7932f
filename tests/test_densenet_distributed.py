"""DenseNet's two training forms under torchrun: the shared-buffer block and --memory-efficient with --sync-bn.

Each is trained for three steps by two gloo processes (DDP, synchronised BatchNorm, float64)
and compared with the plain concatenating network trained by one process on the whole
batches: with BatchNorm statistics over the global batch, the two runs are the same
arithmetic up to rounding. The shared-buffer block is what CUDA training uses; here it is
forced onto the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.nn.functional as F
    import bandistill.models.densenet as densenet
    from bandistill import distributed
    from bandistill.models import build_model
    from bandistill.sync_batchnorm import convert_sync_batchnorm

    out, cpu = sys.argv[1], torch.device("cpu")
    w = distributed.start("cpu")
    for mode in sys.argv[2:]:  # plain | shared (the block on one buffer) | efficient (--memory-efficient)
        densenet.SHARED_BUFFER_DEVICES = ("cpu",) if mode == "shared" else ()
        torch.manual_seed(0)
        model = build_model("densenet-bc-16-4", 10, memory_efficient=mode == "efficient").double()
        model = convert_sync_batchnorm(model, cpu)
        net = distributed.wrap_for_training(model, cpu)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, 8, 3, 12, 12, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (3, 8), generator=g)
        for step in range(3):
            idx, scale = distributed.local_batch(torch.arange(8))  # this rank's half of the batch
            loss = F.cross_entropy(net(x[step][idx]), y[step][idx]) * scale
            opt.zero_grad()
            loss.backward()
            opt.step()
        if w.is_main:
            torch.save(model.state_dict(), f"{out}/{mode}.pt")
    distributed.stop()
''')


def _run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_densenet_shared_buffer_and_memory_efficient_under_ddp_equal_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one = _run(script, tmp_path, "plain")  # one process, no torchrun
    assert one.returncode == 0, one.stderr
    two = _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script, tmp_path, "shared", "efficient")
    assert two.returncode == 0, two.stderr[-3000:]
    plain = torch.load(tmp_path / "plain.pt")
    for mode in ("shared", "efficient"):
        got = torch.load(tmp_path / f"{mode}.pt")
        assert got.keys() == plain.keys()
        for k in plain:
            torch.testing.assert_close(got[k], plain[k], rtol=1e-9, atol=1e-9, msg=f"{mode}: {k}")
