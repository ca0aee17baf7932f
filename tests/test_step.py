"""The hot step (bandistill.step) and the checkpoint writer that keeps bookkeeping off it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bandistill.background import BackgroundWriter, host_snapshot
from bandistill.data import load_dataset
from bandistill.models import build_model
from bandistill.step import StepData, TrainStep


def _step_for(ds, *, lr_tensor: bool, fused: bool | None, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("resnet-20", ds.num_classes, ds.in_channels).to(memory_format=torch.channels_last)
    lr = torch.tensor(0.05) if lr_tensor else 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4, fused=fused)
    mean, std = (torch.tensor(v) for v in ds.normalization())
    data = StepData(ds.train_images, ds.train_labels, torch.empty(0), mean, std, ds.view_policy)
    return model, TrainStep(model, opt, lambda s, y, t: F.cross_entropy(s, y), data)


def test_the_gpu_settings_fused_sgd_and_a_device_lr_train_like_the_cpu_ones():
    """What --device cuda uses (fused SGD reading the lr from a tensor) is the same optimizer, run here."""
    ds = load_dataset("digits")
    params = ds.view_policy.params(0, 0, np.arange(ds.num_train))
    models, losses = [], []
    for lr_tensor, fused in ((False, None), (True, True)):
        model, step = _step_for(ds, lr_tensor=lr_tensor, fused=fused)
        step.begin_epoch(params)
        for i, lr in enumerate((0.05, 0.05, 0.01, 0.01)):
            step.set_lr(lr)
            step.step(torch.arange(i * 64, (i + 1) * 64))
        losses.append(step.end_epoch())
        models.append(model)
    assert isinstance(step.optimizer.param_groups[0]["lr"], torch.Tensor) and step.lr == 0.01
    assert losses[0][2] == losses[1][2] == 256
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-4)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_host_snapshot_is_a_copy_the_next_step_cannot_change():
    w = torch.ones(3)
    snap, ready = host_snapshot({"state": {"w": w}, "history": [{"epoch": 1}], "n": 2})
    w.add_(1.0)
    assert ready is None and torch.equal(snap["state"]["w"], torch.ones(3)) and snap["n"] == 2


def test_background_writer_reports_a_failed_write_in_the_training_thread(tmp_path):
    written = []
    writer = BackgroundWriter()
    writer.submit(lambda obj, path: written.append((copy.deepcopy(obj), path)), {"a": torch.zeros(1)}, "p1")
    writer.wait()
    assert written[0][1] == "p1"

    def fail(obj, path):
        raise OSError("disk full")

    writer.submit(fail, {}, "p2")
    with pytest.raises(OSError, match="disk full"):
        writer.submit(fail, {}, "p3")  # the next submit waits for the previous write and raises its error
    writer.wait()  # nothing pending any more: the error was reported once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("model", ["resnet-20", "densenet-bc-22-8"])
def test_the_captured_step_trains_as_well_as_the_eager_one(model, tmp_path):
    """A few hundred steps (digits: 1,437 images, batch 64 -> 23 steps an epoch, the last partial)."""
    from bandistill.train import TrainConfig, train

    results = {}
    for mode in ("graph", "none"):
        config = TrainConfig(model=model, dataset="digits", epochs=12, batch_size=64, seed=5, device="cuda",
                             compile=mode, eval_every=4)
        results[mode] = train(config, tmp_path / mode, progress=False)
    assert results["graph"]["compile"] == "graph" and results["none"]["compile"] == "none"
    assert results["none"]["test_accuracy"] > 0.8
    assert abs(results["graph"]["test_accuracy"] - results["none"]["test_accuracy"]) < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_capture_waits_for_the_checkpoint_writer(tmp_path, monkeypatch):
    """Two full batches an epoch: capture (after 3 warm-up steps) falls in epoch 2, while epoch 1's
    checkpoint is being written on the writer's thread (slowed down here). The write finishes first."""
    import time

    import bandistill.train as train_module
    from bandistill.step import TrainStep
    from bandistill.train import TrainConfig, train

    events = []
    real_save, real_capture = train_module.save_checkpoint, TrainStep._capture

    def slow_save(obj, path):
        time.sleep(1.0)
        real_save(obj, path)
        events.append(("written", obj["epoch"]))

    def capture(self, loss_scale):
        events.append(("capture", None))
        real_capture(self, loss_scale)

    monkeypatch.setattr(train_module, "save_checkpoint", slow_save)
    monkeypatch.setattr(TrainStep, "_capture", capture)
    config = TrainConfig(model="resnet-8", dataset="digits", epochs=3, batch_size=512, device="cuda", compile="graph")
    result = train(config, tmp_path / "run", progress=False)
    assert result["compile"] == "graph"
    assert events.index(("capture", None)) == events.index(("written", 1)) + 1, events
